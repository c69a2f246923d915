#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A guest keeps running across `kill -9` of vlapicd (issue 8): vlapic-kvm
# with --spawn-vlapicd snapshots the VM's LAPIC state every 100 ms, and when
# its vlapicd dies it starts a new one, restores every vCPU and goes on.
#   survive-restart.sh VLAPIC_KVM VLAPICD KERNEL [vlapic-kvm args...]
# Without a usable /dev/kvm it says SKIP and exits 77.
set -uo pipefail
source "$(dirname "$0")/guest-report.sh"
vlapic_kvm=$1 vlapicd=$2 kernel=$3
shift 3

require_kvm "$kernel"

log=$(mktemp /tmp/vlapic-survive.XXXXXX)
trap 'rm -f "$log"' EXIT
VLAPICD="$vlapicd" "$vlapic_kvm" --spawn-vlapicd --snapshot-ms 100 --smp 2 --timeout 60 \
  --kernel "$kernel" "$@" > "$log" 2>&1 &
front=$!
for _ in $(seq 200); do grep -q '^RUNNING' "$log" && break; sleep 0.05; done
sleep 1
victim=$(pgrep -P "$front" -x vlapicd)
if [ -z "$victim" ]; then
  cat "$log"
  echo "FAILED: no vlapicd child of vlapic-kvm to kill"
  kill "$front" 2>/dev/null
  exit 1
fi
kill -9 "$victim"
echo "killed vlapicd (pid $victim) with SIGKILL under the running guest"
wait "$front"
status=$?
cat "$log"
check_guest_run "$status" "$log"
if ! grep -q 'restored every vCPU from the last snapshot' "$log"; then
  echo "FAILED: vlapic-kvm did not report a recovery"
  exit 1
fi
if kill -0 "$victim" 2>/dev/null; then
  echo "FAILED: the killed vlapicd is still there"
  exit 1
fi
echo "PASS: the guest ran on across vlapicd's death"
