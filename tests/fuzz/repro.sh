#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs every reproducer under tests/fuzz/repro against its harness with
# FUZZ_STRICT=1 (known findings are fatal) and fails if any still fails.
# File names start with the harness name: core-*, server-*.
# Usage: tests/fuzz/repro.sh [fuzz-build-dir]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build_dir=${1:-$here/../../build-fuzz}
[ -x "$build_dir/tests/fuzz/fuzz-core" ] || { echo "SKIP: fuzz harnesses not built in $build_dir (run.sh --build-only)"; exit 77; }
status=0
for input in "$here"/repro/*; do
  [ -f "$input" ] || continue
  name=$(basename "$input")
  exe="$build_dir/tests/fuzz/fuzz-${name%%-*}"
  if FUZZ_STRICT=1 "$exe" "$input" >/dev/null 2>&1; then
    echo "fixed: $name"
  else
    status=1
    echo "still failing: $name: $(FUZZ_STRICT=1 "$exe" "$input" 2>&1 | grep -m1 -E 'KNOWN FINDING|INVARIANT|ERROR')"
  fi
done
exit $status
