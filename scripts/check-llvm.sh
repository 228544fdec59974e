#!/usr/bin/env bash
# check-llvm.sh NN [NN...]: builds moeppc against LLVM NN (installing llvm-NN-dev through apt-get when
# it is missing) in build-llvmNN, with the warnings as errors as always, and runs every test that
# the CPU code generator reaches (all but the CUDA emulator's and NVRTC's, which do not use LLVM).
# The brief asks that the code keep building on LLVMs newer than the 14 it is developed with; this is
# how to check it, e.g. `bash scripts/check-llvm.sh 19 22` (Debian 12 packages both).
# The packages stay installed, and a new build folder takes the newest LLVM it finds (CMake's
# codegen/llvm/CMakeLists.txt), no longer 14: say -DLLVM_DIR=/usr/lib/llvm-14/lib/cmake/llvm there, or
# remove llvm-NN-dev again, before timing against 14 or running .ci/run as CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: scripts/check-llvm.sh NN [NN...]  (LLVM major versions, e.g. 19 22)" >&2; exit 2; }
pkgs=()
for v in "$@"; do
  case "$v" in '' | *[!0-9]*) echo "check-llvm: '$v' is not an LLVM major version" >&2; exit 2 ;; esac
  [ -f "/usr/lib/llvm-$v/lib/cmake/llvm/LLVMConfig.cmake" ] || pkgs+=("llvm-$v-dev")
done
bash scripts/deps.sh --tests "${pkgs[@]}"
jobs=2
for v in "$@"; do
  dir=/usr/lib/llvm-$v/lib/cmake/llvm
  cmake -S . -B "build-llvm$v" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEPPC_TESTS=ON -DLLVM_DIR="$dir" |
    grep "moeppc: LLVM"
  cmake --build "build-llvm$v" -j$jobs >/dev/null
  MOEPPC_NVRTC_CACHE="$PWD/build-llvm$v/nvrtc-cache" \
    ctest --test-dir "build-llvm$v" -j$jobs -E 'emu|cuda_compile' --output-on-failure
  echo "check-llvm: LLVM $v: built and passed"
done
echo "check-llvm: llvm-NN-dev stay installed: a new build folder now takes the newest LLVM (-DLLVM_DIR picks one)"
