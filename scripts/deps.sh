#!/usr/bin/env bash
# deps.sh [--tests] [PACKAGE...]: installs, through apt-get, whatever the build (and with --tests, the
# test suite) needs and this machine lacks, and each further Debian PACKAGE not installed (the other
# scripts' own needs: fuzz.sh's clang, check-llvm.sh's llvm-NN-dev). Does nothing when everything is
# present.
set -euo pipefail
want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1 && shift

missing=()
need_pkg() { dpkg -s "$1" >/dev/null 2>&1 || missing+=("$1"); }
for p in "$@"; do need_pkg "$p"; done
for p in cmake gcc make pkg-config libyaml-dev libcjson-dev; do need_pkg "$p"; done
# The LLVM C API (14 or newer) for CPU code generation: any installed llvm-NN-dev will do.
ls /usr/lib/llvm-*/lib/cmake/llvm/LLVMConfig.cmake >/dev/null 2>&1 || missing+=("llvm-dev")
if [ "$want_tests" = 1 ]; then
  # python3-sentencepiece (and its python3-protobuf): the reference the tokenizer is tested against
  # g++: the CUDA emulator's tests compile kernels for the CPU with the host's C++ compiler
  for p in libcmocka-dev python3 python3-numpy python3-yaml python3-sentencepiece python3-protobuf g++; do need_pkg "$p"; done
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null ||
      { echo "deps: installing needs root, and sudo is not here: as root, apt-get install ${missing[*]}"; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
