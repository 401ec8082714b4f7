#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, build, run CTest (CPU and
# Python tests), then the same suite again under AddressSanitizer + UBSan built
# with clang, plus the libFuzzer harnesses for a bounded time. GPU tests run
# on the GPU machine via tests/gpu/run_all.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest -LE gpu --output-on-failure -j"$jobs" "$@")
CC=clang cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_SANITIZE=ON \
  -DSLUICE_FUZZ=ON >/dev/null
cmake --build build-asan -j"$jobs"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0
cd build-asan && ctest -LE gpu --output-on-failure -j"$jobs" "$@"
