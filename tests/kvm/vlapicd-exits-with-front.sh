#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A vlapicd that vlapic-kvm spawned (--spawn-vlapicd) ends when vlapic-kvm is
# killed with SIGKILL, so no orphaned server outlives its front. Run as root,
# vlapicd drops to an unprivileged user at start-up, which clears
# PR_SET_PDEATHSIG: the spawned daemon watches a pipe from vlapic-kvm instead
# (vlapicd --exit-with-parent-fd, client/kvm/spawn.cc).
#   vlapicd-exits-with-front.sh VLAPIC_KVM VLAPICD KERNEL [vlapic-kvm args...]
# KERNEL must run until killed (tests/guests' wait-forever). Without a usable
# /dev/kvm it says SKIP and exits 77.
set -uo pipefail
source "$(dirname "$0")/guest-report.sh"
vlapic_kvm=$1 vlapicd=$2 kernel=$3
shift 3

require_kvm "$kernel"

log=$(mktemp /tmp/vlapic-orphan.XXXXXX)
front="" server=""
cleanup() {
  # Only the processes this test started, by pid.
  [ -n "$front" ] && kill -9 "$front" 2>/dev/null
  [ -n "$server" ] && kill -9 "$server" 2>/dev/null
  # vlapic-kvm removes its vlapicd's socket directory on an orderly exit
  # only; this one was killed.
  local socket
  socket=$(sed -n 's|^[0-9.]* INFO serving on \(/tmp/vlapic-kvm\.[A-Za-z0-9]*\)/vlapicd\.sock .*|\1|p' "$log")
  [ -n "$socket" ] && rm -rf "$socket"
  rm -f "$log"
}
trap cleanup EXIT

# Alive means present and not a zombie: an exited orphan stays a zombie until
# whoever adopted it reaps it.
alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

VLAPICD="$vlapicd" "$vlapic_kvm" --spawn-vlapicd --smp 2 --timeout 60 \
  --kernel "$kernel" "$@" > "$log" 2>&1 &
front=$!
for _ in $(seq 200); do
  grep -q '^READY' "$log" && break
  if ! kill -0 "$front" 2>/dev/null; then
    wait "$front"
    status=$?
    cat "$log"
    [ "$status" -eq 4 ] && { echo "SKIP: vlapic-kvm found no usable KVM"; exit 77; }
    echo "FAILED: vlapic-kvm exited (status $status) before the guest was ready"
    exit 1
  fi
  sleep 0.05
done
if ! grep -q '^READY' "$log"; then
  cat "$log"
  echo "FAILED: the guest did not get ready within 10 s"
  exit 1
fi
server=$(pgrep -P "$front" -x vlapicd)
if [ -z "$server" ]; then
  cat "$log"
  echo "FAILED: no vlapicd child of vlapic-kvm"
  exit 1
fi
echo "vlapicd (pid $server) runs as uid $(awk '/^Uid:/ {print $2}' "/proc/$server/status")"

kill -9 "$front"
wait "$front" 2>/dev/null
front=""
echo "killed vlapic-kvm with SIGKILL"
for _ in $(seq 100); do
  alive "$server" || break
  sleep 0.05
done
cat "$log"
if alive "$server"; then
  echo "FAILED: vlapicd (pid $server) outlived its front by 5 s"
  exit 1
fi
server=""
echo "PASS: the spawned vlapicd ended with its front"
