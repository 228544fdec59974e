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
wanted=() # tried, and only warned about when they cannot be installed (no network, say)
if [ "$want_tests" = 1 ]; then
  # g++: the CUDA emulator's tests compile kernels for the CPU with the host's C++ compiler
  for p in libcmocka-dev python3 python3-numpy python3-yaml g++; do need_pkg "$p"; done
  # the sentencepiece library: the reference the tokenizer is tested against (runtime_tokenizer and
  # runtime_text are not registered without it, and CMake says so)
  # and jinja2: the chat templates of examples/serve_http (cpu_serve_chat is not registered without it)
  for p in python3-sentencepiece python3-protobuf python3-jinja2; do dpkg -s "$p" >/dev/null 2>&1 || wanted+=("$p"); done
fi
sudo=""
if [ "$(id -u)" -ne 0 ] && [ $((${#missing[@]} + ${#wanted[@]})) -gt 0 ]; then
  if command -v sudo >/dev/null; then
    sudo="sudo"
  elif [ "${#missing[@]}" -gt 0 ]; then
    echo "deps: installing needs root, and sudo is not here: as root, apt-get install ${missing[*]} ${wanted[*]}"; exit 1
  else
    echo "deps: warning: ${wanted[*]} not installed (needs root): the tokenizer's tests against sentencepiece and the chat test will not run"
    wanted=()
  fi
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ "${#wanted[@]}" -gt 0 ]; then
  echo "deps: installing ${wanted[*]}"
  { [ "${#missing[@]}" -gt 0 ] || $sudo apt-get update -qq; } &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${wanted[@]}" ||
    echo "deps: warning: could not install ${wanted[*]}: the tokenizer's tests against sentencepiece and the chat test will not run"
fi
