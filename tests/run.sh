#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, build, run CTest (CPU and
# Python tests; GPU tests run on the GPU machine via tests/gpu/run_all.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
cd build && ctest -LE gpu --output-on-failure -j"$(nproc)" "$@"
