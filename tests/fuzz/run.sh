#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the libFuzzer harnesses with clang (a configuration of the whole
# project in its own build directory, separate from the main g++ build) and
# runs each for a bounded time over the committed corpus under
# tests/fuzz/corpus/<name>.
#
# Usage: tests/fuzz/run.sh [--seconds N] [--build-dir DIR] [--build-only]
#                          [--grow] [harness...]
#   harness: core, vm, server (default: every harness that was built)
#   --grow: add the new interesting inputs to the committed corpus (after
#           merging, so it stays minimal) instead of a scratch directory.
# Exit status: 0 no crash, 1 a crash or invariant violation (the reproducer
# is written next to the build dir and named in the output), 77 clang or
# libFuzzer is not installed (ctest reports SKIP).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
seconds=60
build_dir="$repo/build-fuzz"
build_only=0
grow=0
harnesses=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --build-only) build_only=1; shift ;;
    --grow) grow=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) harnesses+=("$1"); shift ;;
  esac
done

if ! command -v clang++ >/dev/null; then
  echo "SKIP: clang++ is not installed (apt-get install clang libclang-rt-14-dev)"
  exit 77
fi
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
     clang++ -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  echo "SKIP: clang++ cannot link libFuzzer (apt-get install libclang-rt-14-dev)"
  exit 77
fi

# The harnesses are built in a clang configuration of the whole project
# (tests/fuzz/CMakeLists.txt defines them when VLAPIC_FUZZ is on): every
# library gets libFuzzer's coverage instrumentation and ASan/UBSan. The build
# is serialised with a lock so the per-harness ctest entries can share it.
mkdir -p "$build_dir"
(
  flock 9
  if [ ! -f "$build_dir/CMakeCache.txt" ]; then
    cmake -S "$repo" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DVLAPIC_FUZZ=ON \
      "-DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
      "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined" >/dev/null
  fi
  cmake --build "$build_dir" -j"$(nproc)" --target fuzz-harnesses
) 9>"$build_dir/.build-lock"
[ "$build_only" -eq 1 ] && exit 0

if [ ${#harnesses[@]} -eq 0 ]; then
  for exe in "$build_dir"/tests/fuzz/fuzz-*; do
    [ -x "$exe" ] && harnesses+=("${exe##*/fuzz-}")
  done
fi

status=0
for name in "${harnesses[@]}"; do
  exe="$build_dir/tests/fuzz/fuzz-$name"
  corpus="$here/corpus/$name"
  mkdir -p "$corpus" "$build_dir/artifacts"
  scratch=$(mktemp -d)
  # New inputs go to the scratch directory first; the committed corpus is
  # only read (or, with --grow, merged into at the end).
  log="$build_dir/fuzz-$name.log"
  set +e
  ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 \
    "$exe" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    ${FUZZ_SEED:+-seed="$FUZZ_SEED"} \
    -artifact_prefix="$build_dir/artifacts/$name-" "$scratch" "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  if [ $rc -ne 0 ]; then
    status=1
    echo "fuzz-$name: FAILED after ${execs:-?} executions (exit $rc); log: $log"
    grep -E 'INVARIANT VIOLATED|ERROR: |SUMMARY: |runtime error|Test unit written|^INFO: Seed' "$log" | head -20 || true
    # The reproducer, printed so a failure on a machine whose build tree is
    # gone (CI) can be replayed: decode it (xxd -r -p, or python3
    # bytes.fromhex) into a file and run fuzz-$name on that file.
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ -n "$artifact" ] && [ -f "$artifact" ] && [ "$(stat -c %s "$artifact")" -le 8192 ]; then
      echo "reproducer (hex, $(stat -c %s "$artifact") bytes):"
      od -An -v -tx1 "$artifact" | tr -d ' \n' | fold -w 128
      echo
    fi
  else
    echo "fuzz-$name: ${execs:-?} executions in ${seconds} s, no crash (${cov:-cov: ?}, corpus $(ls "$corpus" | wc -l) committed + $(ls "$scratch" | wc -l) new)"
  fi
  # Bugs already reported (the harness's knownFindings list) are not
  # crashes, but they are never silent.
  grep '^KNOWN FINDING' "$log" || true
  if [ "$grow" -eq 1 ] && [ $rc -eq 0 ]; then
    "$exe" -merge=1 "$corpus" "$scratch" >/dev/null 2>&1
    echo "fuzz-$name: corpus now $(ls "$corpus" | wc -l) inputs"
  fi
  rm -rf "$scratch"
done
exit $status
