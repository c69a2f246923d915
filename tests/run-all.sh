#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs what the tests need, builds everything and runs every test through
# ctest; then builds the whole project again with ASan+UBSan and runs the
# suite there too (tests/sanitize/run.sh). Safe to run twice; works on a
# fresh Debian 12 machine as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/packages.sh
install_packages
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" --timeout 600)

# The sanitizer pass. The fuzz tests are left out here: the fuzzers already
# run under ASan+UBSan in their own clang build in the pass above.
bash tests/sanitize/run.sh build-asan -E '^fuzz-'
