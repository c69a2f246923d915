# SPDX-License-Identifier: MIT
# Shared by run-guest.sh and survive-restart.sh (sourced, not run).

# require_kvm KERNEL: SKIP (exit 77, ctest's SKIP_RETURN_CODE) without a
# usable /dev/kvm.
require_kvm() {
  if ! [ -c /dev/kvm ] || ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then
    echo "SKIP: /dev/kvm is not available: $(basename "$1") needs KVM"
    exit 77
  fi
}

# check_guest_run STATUS LOG: vlapic-kvm's exit status must be 1 (the guest
# wrote 0 to the debug-exit port) and LOG must hold a SUMMARY line with at
# least one PASS and no FAIL line. Exits 77 (SKIP) when vlapic-kvm found no
# usable KVM, 1 on any failure; returns when the run was clean.
check_guest_run() {
  local status=$1 log=$2
  if [ "$status" -eq 4 ]; then
    echo "SKIP: vlapic-kvm found no usable KVM"
    exit 77
  fi
  if [ "$status" -ne 1 ]; then
    echo "FAILED: vlapic-kvm exited with status $status, want 1 (guest wrote 0)"
    exit 1
  fi
  if grep -q '^FAIL' "$log"; then
    echo "FAILED: the guest reported failures"
    exit 1
  fi
  if ! grep -Eq '^SUMMARY passed=[1-9][0-9]* failed=0$' "$log"; then
    echo "FAILED: no clean SUMMARY line"
    exit 1
  fi
}
