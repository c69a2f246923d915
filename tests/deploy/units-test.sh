#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The shipped systemd units, checked without a running systemd (our CI
# machines have none as PID 1): a faithful replay of what systemd would do.
#   1. systemd-analyze verify accepts the units (service + both sockets).
#   2. The unit's SystemCallFilter, expanded with systemd's own group
#      tables (systemd-analyze syscall-filter) and applied in order, allows
#      every call vlapicd makes: its own seccomp allow-list (read from
#      server/daemon/sandbox.cc, the filter's source) plus what it does
#      before confining itself (seccomp, prctl; its setrlimit may fail).
#   3. TasksMax fits the channel limit the unit starts vlapicd with (one
#      thread per channel plus the loop and a few).
#   4. systemd-analyze security --offline scores at most 0.4.
# Usage: units-test.sh SOURCE_DIR VLAPICD_BINARY. Exits 77 (SKIP) without
# systemd-analyze.
set -euo pipefail
src=${1:?source dir}
vlapicd=${2:?vlapicd binary}
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze not installed"; exit 77; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in vlapicd.service vlapicd.socket vlapicd-admin.socket; do
  # The units name the installed binary; point them at the one built here.
  sed "s|^ExecStart=/usr/local/bin/vlapicd|ExecStart=$vlapicd|" "$src/deploy/$unit" >"$work/$unit"
done

echo "== systemd-analyze verify"
(cd "$work" && systemd-analyze verify --man=no ./vlapicd.service ./vlapicd.socket ./vlapicd-admin.socket)

echo "== SystemCallFilter replay"
declare -A expanded=()
expand() {   # prints the system calls of a name or @group, recursively
  local name=$1
  if [[ $name != @* ]]; then echo "$name"; return; fi
  if [[ -n ${expanded[$name]:-} ]]; then return; fi
  expanded[$name]=1
  local entry
  for entry in $(systemd-analyze syscall-filter --no-pager "$name" | sed -e '1d' -e 's/#.*//'); do
    expand "$entry"
  done
}
declare -A allowed=()
first=1
while IFS= read -r line; do
  value=${line#SystemCallFilter=}
  deny=0
  if [[ $value == ~* ]]; then deny=1; value=${value#\~}; fi
  if [ "$first" -eq 1 ] && [ "$deny" -eq 1 ]; then
    echo "FAIL: the first SystemCallFilter line is a deny list; this replay assumes an allow list"
    exit 1
  fi
  first=0
  for item in $value; do
    for call in $(expand "$item"); do
      if [ "$deny" -eq 1 ]; then unset "allowed[$call]"; else allowed[$call]=1; fi
    done
  done
done < <(grep '^SystemCallFilter=' "$work/vlapicd.service")

# vlapicd's own allow-list: the SCMP_SYS names of addServingSyscalls() up
# to the sanitizer-only block, minus the calls it answers with an errno.
needed=$(sed -n '/^void addServingSyscalls/,/if (VLAPIC_SANITIZER_BUILD)/p' \
           "$src/server/daemon/sandbox.cc" | grep -v 'filter.fail' |
         grep -o 'SCMP_SYS([a-z0-9_]*)' | sed 's/SCMP_SYS(\(.*\))/\1/' | sort -u)
[ "$(echo "$needed" | wc -l)" -gt 30 ] || { echo "FAIL: could not read sandbox.cc's allow-list"; exit 1; }
missing=0
for call in $needed seccomp prctl; do
  if [ -z "${allowed[$call]:-}" ]; then
    echo "FAIL: the unit's SystemCallFilter blocks $call, which vlapicd makes"
    missing=1
  fi
done
[ "$missing" -eq 0 ] || exit 1
echo "all $(echo "$needed" | wc -w) + 2 calls allowed"

echo "== TasksMax against the channel limit"
tasks=$(sed -n 's/^TasksMax=//p' "$work/vlapicd.service")
channels=$(sed -n 's/^ExecStart=.*--max-channels \([0-9]*\).*/\1/p' "$work/vlapicd.service")
[ -n "$channels" ] || { echo "FAIL: ExecStart does not set --max-channels"; exit 1; }
if [ "$tasks" -lt $((channels + 8)) ]; then
  echo "FAIL: TasksMax=$tasks does not fit --max-channels $channels (+8 for the loop and helpers)"
  exit 1
fi
echo "TasksMax=$tasks fits $channels channels"

echo "== systemd-analyze security"
score=$(cd "$work" && systemd-analyze security --offline=yes --no-pager ./vlapicd.service 2>/dev/null |
        sed -n 's/.*Overall exposure level for vlapicd.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || { echo "FAIL: no exposure score"; exit 1; }
echo "exposure $score"
awk -v s="$score" 'BEGIN { exit !(s <= 0.4) }' || { echo "FAIL: exposure $score > 0.4"; exit 1; }
echo "PASS"
