#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Leak check of a server that served and released many VMs: vlapicd runs
# under valgrind (memcheck, --no-sandbox: valgrind's own system calls would
# be killed by the seccomp filter) while bench-load drives it with several
# fronts that create, hammer and release VMs, one of them killed mid-run;
# then vlapicd is stopped with SIGTERM. Fails on any definitely or
# indirectly lost block or memcheck error, or if the load itself failed.
# Usage: leak-check.sh VLAPICD BENCH_LOAD [SECONDS]   (exit 77: no valgrind)
set -euo pipefail
vlapicd=$1
bench=$2
seconds=${3:-25}
command -v valgrind >/dev/null || { echo "SKIP: valgrind is not installed"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
valgrind --leak-check=full --show-leak-kinds=definite,indirect,possible \
  --errors-for-leak-kinds=definite,indirect --error-exitcode=42 \
  --log-file="$dir/valgrind.log" "$vlapicd" --no-sandbox --socket "$dir/sock" \
  >"$dir/vlapicd.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do [ -S "$dir/sock" ] && break; sleep 0.1; done
[ -S "$dir/sock" ] || { cat "$dir/vlapicd.log" "$dir/valgrind.log"; exit 1; }
load_status=0
"$bench" --fronts 4 --vcpus 4 --seconds "$seconds" --socket "$dir/sock" --server-pid "$server" \
  || load_status=$?
kill -TERM "$server"
server_status=0
wait "$server" || server_status=$?
grep -E "in use at exit|definitely lost|indirectly lost|possibly lost|ERROR SUMMARY" "$dir/valgrind.log" |
  sed 's/^==[0-9]*== */valgrind: /'
if [ "$server_status" -ne 0 ] || [ "$load_status" -ne 0 ]; then
  echo "leak-check: FAILED (vlapicd exit $server_status, bench-load exit $load_status)"
  cat "$dir/valgrind.log"
  exit 1
fi
echo "leak-check: no leak and no memcheck error in vlapicd after the load"
