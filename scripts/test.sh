#!/usr/bin/env bash
# test.sh: the whole test suite. Installs what is missing, builds with strict warnings, runs every
# test (CMocka units, golden texts, the NumPy oracle), then does it again under ASan + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --tests
jobs=2

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEPPC_TESTS=ON >/dev/null
cmake --build build -j$jobs
ctest --test-dir build -j$jobs --output-on-failure

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMOEPPC_SANITIZE=ON -DMOEPPC_TESTS=ON >/dev/null
cmake --build build-asan -j$jobs
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan -j$jobs --output-on-failure
