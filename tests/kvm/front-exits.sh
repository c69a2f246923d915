#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# vlapic-kvm's exit statuses and messages (client/kvm/machine.h):
# usage 2, no KVM 4, vlapicd unavailable or gone 6, triple fault 8, and the
# guest's own (v << 1) | 1.
#   front-exits.sh VLAPIC_KVM VLAPICD GUEST_DIR
set -uo pipefail
vlapic_kvm=$1 vlapicd=$2 guests=$3
failures=0
work=$(mktemp -d /tmp/vlapic-front-exits.XXXXXX)
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

expect() {  # expect NAME WANT_STATUS GOT_STATUS OUTPUT_FILE [REGEX]
  local name=$1 want=$2 got=$3 file=$4 regex=${5:-}
  if [ "$got" -ne "$want" ]; then
    echo "FAIL $name: status $got, want $want"; sed 's/^/    /' "$file"; failures=$((failures + 1)); return
  fi
  if [ -n "$regex" ] && ! grep -Eq -- "$regex" "$file"; then
    echo "FAIL $name: no line matches '$regex'"; sed 's/^/    /' "$file"; failures=$((failures + 1)); return
  fi
  echo "PASS $name (status $got)"
}

"$vlapic_kvm" > "$work/usage" 2>&1
expect "no arguments is a usage error" 2 $? "$work/usage" "--kernel is required"

"$vlapic_kvm" --kernel "$work/missing.elf" --spawn-vlapicd > "$work/missing" 2>&1
expect "missing kernel file" 2 $? "$work/missing" "cannot load"

if [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
  if command -v unshare > /dev/null && unshare -m true 2> /dev/null; then
    # /dev/null bind-mounted over /dev/kvm in a private mount namespace.
    unshare -m sh -c 'mount --bind /dev/null /dev/kvm && exec "$0" --kernel "$1" --vlapicd /nonexistent' \
      "$vlapic_kvm" "$guests/exit-value.elf" > "$work/nokvm" 2>&1
    expect "no usable /dev/kvm" 4 $? "$work/nokvm" "KVM is not available"
  else
    echo "SKIP no usable /dev/kvm: cannot hide /dev/kvm (no mount namespace)"
  fi

  "$vlapic_kvm" --kernel "$guests/exit-value.elf" --vlapicd "$work/nobody.sock" > "$work/absent" 2>&1
  expect "no vlapicd listening" 6 $? "$work/absent" "cannot use vlapicd"

  VLAPICD="$vlapicd" "$vlapic_kvm" --spawn-vlapicd --timeout 60 --kernel "$guests/exit-value.elf" > "$work/exit" 2>&1
  expect "guest exit value 0x2a -> status 85" 85 $? "$work/exit" "EXITING with 0x2a"

  VLAPICD="$vlapicd" "$vlapic_kvm" --spawn-vlapicd --timeout 60 --kernel "$guests/triple-fault.elf" > "$work/triple" 2>&1
  expect "triple fault" 8 $? "$work/triple" "triple fault"

  # vlapicd killed under a running guest: a clear message and status 6.
  # (Confined as always, with the shared-memory HAL the default channel
  # transport's page reads use.)
  "$vlapicd" --hal shared --socket "$work/vlapicd.sock" > "$work/daemon" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 100); do [ -S "$work/vlapicd.sock" ] && break; sleep 0.05; done
  "$vlapic_kvm" --vlapicd "$work/vlapicd.sock" --timeout 60 --kernel "$guests/wait-forever.elf" > "$work/gone" 2>&1 &
  front_pid=$!
  for _ in $(seq 200); do grep -q READY "$work/gone" 2>/dev/null && break; sleep 0.05; done
  kill -9 "$daemon_pid"
  wait "$daemon_pid" 2>/dev/null
  daemon_pid=""
  wait "$front_pid"
  expect "vlapicd killed under a running guest" 6 $? "$work/gone" "vlapicd went away"
else
  echo "SKIP the KVM cases: /dev/kvm is not available"
  [ $failures -eq 0 ] && exit 77
fi

echo "SUMMARY failures=$failures"
[ $failures -eq 0 ]
