#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job: build vlapic, start vlapicd as a separate protection domain,
# drive it with a real workload, show the resulting state with vlapicctl, and
# boot a guest kernel on vlapic-kvm whose every APIC access goes through that
# vlapicd. Safe to run twice; works on a fresh Debian 12 machine as root.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
source deploy/packages.sh
install_packages

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"

work=$(mktemp -d /tmp/vlapic-main.XXXXXX)
socket="$work/vlapicd.sock"
vlapicd_pid=""
cleanup() {
  if [ -n "$vlapicd_pid" ] && kill -0 "$vlapicd_pid" 2>/dev/null; then
    kill -TERM "$vlapicd_pid" 2>/dev/null || true
    wait "$vlapicd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting vlapicd (sandboxed: namespaces + seccomp) on $socket"
if bash deploy/vlapicd-sandbox.sh --socket "$socket" --vlapicd build/server/daemon/vlapicd \
     -- --hal=shared 2>"$work/vlapicd.log" &
then :; fi
vlapicd_pid=$!
for _ in $(seq 1 100); do [ -S "$socket" ] && break; sleep 0.05; done
if [ ! -S "$socket" ]; then
  # bubblewrap needs user namespaces; without them vlapicd still confines
  # itself (seccomp, no_new_privs, unprivileged user).
  echo "   (namespace sandbox unavailable: $(tail -n 1 "$work/vlapicd.log" 2>/dev/null); starting vlapicd with its own seccomp sandbox only)"
  kill "$vlapicd_pid" 2>/dev/null || true
  build/server/daemon/vlapicd --socket="$socket" --hal=shared --sandbox 2>"$work/vlapicd.log" &
  vlapicd_pid=$!
  for _ in $(seq 1 100); do [ -S "$socket" ] && break; sleep 0.05; done
fi
[ -S "$socket" ] || { cat "$work/vlapicd.log" >&2; echo "vlapicd did not start" >&2; exit 1; }

echo
echo "== workload: a 4-vCPU VM driven through the client library"
build/client/workload/vlapic-workload "$socket" --keep 2 | tee "$work/workload.out" &
workload_pid=$!
for _ in $(seq 1 200); do grep -q '^VM .* ready' "$work/workload.out" 2>/dev/null && break; sleep 0.05; done
vm_id=$(sed -n 's/^VM \([0-9]*\) ready/\1/p' "$work/workload.out")
if [ -n "$vm_id" ]; then
  echo
  echo "== vlapicctl status; vlapicctl dump $vm_id 3 (the vCPU in x2APIC mode)"
  build/client/ctl/vlapicctl --socket="$socket" status
  build/client/ctl/vlapicctl --socket="$socket" dump "$vm_id" 3
fi
wait "$workload_pid"

if [ -x build/client/kvm/vlapic-kvm ] && [ -n "${VLAPIC_MAIN_GUEST:-}" -o -e build/tests/guests/main-demo.elf ]; then
  guest=${VLAPIC_MAIN_GUEST:-build/tests/guests/main-demo.elf}
  echo
  echo "== vlapic-kvm: booting $(basename "$guest") with 4 vCPUs; every APIC access goes to vlapicd"
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    # The guest ends through the debug-exit port: writing v exits with
    # (v << 1) | 1, so a guest that wrote 0 (all checks passed) exits 1.
    status=0
    build/client/kvm/vlapic-kvm --vlapicd "$socket" --smp 4 --memory 64M --kernel "$guest" || status=$?
    if [ "$status" -ne 1 ]; then
      echo "main-demo failed: vlapic-kvm exited with status $status (1 means the guest passed)" >&2
      exit 1
    fi
  else
    echo "SKIP: /dev/kvm is not available on this machine; the guest run needs KVM"
  fi
fi

echo
echo "== vlapicd totals"
build/client/ctl/vlapicctl --socket="$socket" status
