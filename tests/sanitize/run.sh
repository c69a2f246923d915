#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the whole project with AddressSanitizer + UndefinedBehaviorSanitizer
# (-DVLAPIC_SANITIZE=ON, see the top-level CMakeLists.txt) into its own build
# directory and runs every test there through ctest. Any sanitizer report
# fails the test that triggered it: UBSan is built with
# -fno-sanitize-recover, ASan aborts on the first error, and LeakSanitizer
# (on by default with ASan) fails a process that exits with leaked memory.
#
# Usage: bash tests/sanitize/run.sh [build-dir [ctest-args...]]   (default: build-asan)
# Not a ctest test itself (it would nest a second full build inside ctest);
# CI calls it as a separate job.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/packages.sh
install_packages
build_dir=${1:-build-asan}
jobs=$(nproc)
start=$(date +%s)
# g++ 12 reports -Wmaybe-uninitialized false positives inside kj::Maybe's
# placement new once ASan instruments the code; the release build (the one
# that must be warning-free) keeps the warning.
# -O1 with line tables only: about twice as fast to build as -O2 -g, still
# fast to run, and ASan's reports still name file and line. Benchmarks are
# not built here: they are not tests.
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Sanitize -DVLAPIC_SANITIZE=ON \
  -DVLAPIC_BUILD_BENCHMARKS=OFF \
  "-DCMAKE_CXX_FLAGS=-O1 -g1 -Wno-maybe-uninitialized" "-DCMAKE_C_FLAGS=-O1 -g1"
cmake --build "$build_dir" -j"$jobs"
built=$(date +%s)
# halt_on_error: the first report ends the process with a failing status.
# detect_leaks: a test process that leaks fails. abort_on_error=0 keeps the
# exit status (1) instead of SIGABRT so ctest prints the report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cd "$build_dir"
status=0
ctest --output-on-failure -j"$jobs" --timeout 900 "${@:2}" || status=$?
end=$(date +%s)
echo "sanitize: build $((built - start)) s, tests $((end - built)) s, total $((end - start)) s"
exit $status
