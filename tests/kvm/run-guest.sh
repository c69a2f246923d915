#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs one guest test kernel on vlapic-kvm with a private vlapicd and checks
# its report: exit status 1 (the guest wrote 0 to the debug-exit port), a
# SUMMARY line with at least one PASS and no FAIL.
#   run-guest.sh VLAPIC_KVM VLAPICD KERNEL [--expect-line REGEX] [vlapic-kvm args...]
# Without a usable /dev/kvm it says SKIP and exits 77 (ctest SKIP_RETURN_CODE).
set -uo pipefail
source "$(dirname "$0")/guest-report.sh"
vlapic_kvm=$1 vlapicd=$2 kernel=$3
shift 3
expect_line=""
if [ "${1:-}" = "--expect-line" ]; then
  expect_line=$2
  shift 2
fi

require_kvm "$kernel"
log=$(mktemp /tmp/vlapic-guest.XXXXXX)
trap 'rm -f "$log"' EXIT
VLAPICD="$vlapicd" "$vlapic_kvm" --spawn-vlapicd --timeout 90 --kernel "$kernel" "$@" > "$log" 2>&1
status=$?
cat "$log"
check_guest_run "$status" "$log"
if [ -n "$expect_line" ] && ! grep -Eq -- "$expect_line" "$log"; then
  echo "FAILED: no output line matches $expect_line"
  exit 1
fi
exit 0
