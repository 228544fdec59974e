#!/bin/bash
# test_version.sh MOEPPC [EMU_DRIVER]: `moeppc --version` is one line, the version; with --verbose
# (or -v) it adds the build, the CPU and its kernels (or that LLVM is not built in), NVRTC's version
# and targets and the CUDA driver: none usable where the library cannot be opened (said why, exit
# 0 still), the emulator's one device when MOEPPC_CUDA_DRIVER names it; MOEPPC_ISA=avx2 on an
# AVX-512 host narrows the kernels and says so; any other argument is a usage error (exit 2).
set -u -o pipefail
MOEPPC=$1 EMU=${2:-}
fail() { echo "FAILED: $*"; exit 1; }
out=$("$MOEPPC" --version) || fail "--version: exit $?"
[[ "$out" =~ ^moeppc\ [0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "--version: '$out'"
v=$(MOEPPC_CUDA_DRIVER=/nonexistent/libcuda.so.1 "$MOEPPC" --version --verbose) || fail "--verbose: exit $?"
[ "$(head -1 <<<"$v")" = "$out" ] || fail "--verbose's first line: $v"
for want in "^  built:        [A-Za-z]* build, " "^  CPU:          [0-9]+ CPUs this process may use, [0-9.]+ GB"; do
  grep -Eq "$want" <<<"$v" || fail "no '$want' in: $v"
done
if grep -q "^  LLVM:         not built in" <<<"$v"; then
  grep -q "^  CPU kernels:" <<<"$v" && fail "kernels without LLVM: $v"
else
  grep -Eq "^  LLVM:         [0-9]+\.[0-9]+" <<<"$v" && grep -Eq "^  CPU kernels:  (avx512|avx2|sse), for " <<<"$v" &&
    grep -Eq "^  bf16 GEMMs:   on the bf16 dot product: (yes|no)" <<<"$v" || fail "the CPU's part: $v"
  if grep -q "^  CPU kernels:  avx512" <<<"$v"; then
    n=$(MOEPPC_ISA=avx2 "$MOEPPC" --version -v | grep "^  CPU kernels") &&
      [[ "$n" == *"avx2, for "*"; MOEPPC_ISA narrowed them from avx512" ]] || fail "MOEPPC_ISA=avx2: $n"
  fi
fi
if grep -q "^  CUDA:         not built in" <<<"$v"; then
  [ -z "$EMU" ] || fail "an emulator but no CUDA: $v"
else
  grep -Eq "^  NVRTC:        [0-9]+\.[0-9]+; targets: sm_80" <<<"$v" || fail "NVRTC: $v"
  grep -q "^  CUDA driver:  none usable: cannot open the CUDA driver MOEPPC_CUDA_DRIVER=/nonexistent/libcuda.so.1" \
    <<<"$v" || fail "a driver that is not there: $v"
  if [ -n "$EMU" ]; then
    e=$(MOEPPC_CUDA_DRIVER=$EMU "$MOEPPC" --version -v) || fail "emulator: exit $?"
    grep -q "^  CUDA driver:  $EMU; 1 device$" <<<"$e" &&
      grep -q "^    0: moeppc CUDA emulator (CPU), emu, 4 SMs$" <<<"$e" || fail "emulator: $e"
    # the devices queried without a context on any (the emulator refusing every one): the same lines
    e2=$(MOEPPC_CUDAEMU_NO_CONTEXTS=1 MOEPPC_CUDA_DRIVER=$EMU "$MOEPPC" --version -v) || fail "no contexts: exit $?"
    [ "$(sed -n '/^  CUDA driver:/,$p' <<<"$e2")" = "$(sed -n '/^  CUDA driver:/,$p' <<<"$e")" ] ||
      fail "no contexts: $e2"
  fi
fi
for bad in "--frob" "--verbose x"; do
  err=$("$MOEPPC" --version $bad 2>&1); rc=$?
  [ $rc -eq 2 ] && grep -q "^moeppc --version: error: unexpected argument" <<<"$err" &&
    grep -q "^usage: moeppc --version \[--verbose\]$" <<<"$err" || fail "--version $bad: exit $rc: $err"
done
echo "version: ok"
