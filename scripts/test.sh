#!/usr/bin/env bash
# test.sh: the whole test suite. Installs what is missing, builds with strict warnings, runs every
# test (CMocka units, golden texts, the NumPy oracle), then does it again under ASan + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --tests
jobs=2

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEPPC_TESTS=ON >/dev/null
cmake --build build -j$jobs
# NVRTC's results kept by their source and options in the build folder: a kernel that several tests
# (and both builds) compile goes through NVRTC once (cuda_nvrtc.c)
export MOEPPC_NVRTC_CACHE="$PWD/build/nvrtc-cache"
ctest --test-dir build -j$jobs --output-on-failure

# (the CUDA emulator's kernel objects are the same in both builds, none sanitized: the release build's)
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMOEPPC_SANITIZE=ON -DMOEPPC_TESTS=ON \
  -DMOEPPC_CUDAEMU_CACHE_DIR="$PWD/build/cudaemu-cache" >/dev/null
cmake --build build-asan -j$jobs
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan -j$jobs --output-on-failure

# The optional dependencies stay optional: without the CUDA toolkit, and without LLVM too, moeppc
# still compiles (warnings as errors), runs, and refuses what it cannot do with a message.
spec=specs/tiny/tiny-moepp.yaml ids="3 17 42"
cmake -S . -B build-nocuda -DCMAKE_BUILD_TYPE=Release -DMOEPPC_CUDA=OFF -DMOEPPC_TESTS=OFF >/dev/null
cmake --build build-nocuda -j$jobs >/dev/null
build-nocuda/moeppc build $spec -o build-nocuda/tiny && build-nocuda/tiny --random-weights 1 --ids "$ids" >/dev/null
if build-nocuda/moeppc emit $spec --emit lib --target sm_80 -o build-nocuda/lib 2>/dev/null; then
  echo "a build without CUDA emitted a CUDA library"; exit 1
fi
# The minimal build with clang where there is one (its warnings differ from gcc's; -Werror as always)
cc=$(command -v clang || command -v cc)
cmake -S . -B build-minimal -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER="$cc" -DMOEPPC_CUDA=OFF -DMOEPPC_LLVM=OFF \
  -DMOEPPC_TESTS=OFF >/dev/null
cmake --build build-minimal -j$jobs >/dev/null
build-minimal/moeppc run $spec --random-weights 1 --ids "$ids" >/dev/null
bash tests/frontend/test_version.sh build-minimal/moeppc >/dev/null # (says what it lacks)
echo "builds without CUDA and without LLVM ($(basename "$cc")): compiled and ran"
