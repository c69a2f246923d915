#!/usr/bin/env bash
# Runs one guest test kernel on vlapic-kvm with a private vlapicd and checks
# its report: exit status 1 (the guest wrote 0 to the debug-exit port), a
# SUMMARY line with at least one PASS and no FAIL.
#   run-guest.sh VLAPIC_KVM VLAPICD KERNEL [--expect-line REGEX] [vlapic-kvm args...]
# Without a usable /dev/kvm it says SKIP and exits 77 (ctest SKIP_RETURN_CODE).
set -uo pipefail
vlapic_kvm=$1 vlapicd=$2 kernel=$3
shift 3
expect_line=""
if [ "${1:-}" = "--expect-line" ]; then
  expect_line=$2
  shift 2
fi

if ! [ -c /dev/kvm ] || ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then
  echo "SKIP: /dev/kvm is not available: $(basename "$kernel") needs KVM"
  exit 77
fi

output=$(VLAPICD="$vlapicd" "$vlapic_kvm" --spawn-vlapicd --timeout 90 --kernel "$kernel" "$@" 2>&1)
status=$?
printf '%s\n' "$output"
if [ "$status" -eq 4 ]; then
  echo "SKIP: vlapic-kvm found no usable KVM"
  exit 77
fi
if [ "$status" -ne 1 ]; then
  echo "FAILED: vlapic-kvm exited with status $status, want 1 (guest wrote 0)"
  exit 1
fi
if printf '%s\n' "$output" | grep -q '^FAIL'; then
  echo "FAILED: the guest reported failures"
  exit 1
fi
if ! printf '%s\n' "$output" | grep -Eq '^SUMMARY passed=[1-9][0-9]* failed=0$'; then
  echo "FAILED: no clean SUMMARY line"
  exit 1
fi
if [ -n "$expect_line" ] && ! printf '%s\n' "$output" | grep -Eq -- "$expect_line"; then
  echo "FAILED: no output line matches $expect_line"
  exit 1
fi
exit 0
