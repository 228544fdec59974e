#!/bin/bash
# test_emit.sh MOEPPC WORKDIR [cuda]: moeppc emit writes every CPU kernel of a tiny spec as optimised LLVM
# IR and as objects defining their symbols (and, with "cuda", every CUDA kernel as CUDA C and PTX);
# kernels.txt lists what was written; a bad kind is a usage error.
set -u
MOEPPC=$1 WORK=$2 CUDA=${3:-}
SPEC=$(cd "$(dirname "$0")/../../specs/tiny" && pwd)/tiny-moepp.yaml
rm -rf "$WORK"
fail() { echo "FAILED: $*"; exit 1; }
"$MOEPPC" emit "$SPEC" --emit llvm -o "$WORK/llvm" || fail "emit llvm"
"$MOEPPC" emit "$SPEC" --emit obj -o "$WORK/obj" || fail "emit obj"
n=$(wc -l < "$WORK/llvm/kernels.txt")
[ "$n" -gt 5 ] && [ "$(ls "$WORK/llvm"/*.ll | wc -l)" -eq "$n" ] || fail "expected $n .ll files"
for f in "$WORK"/llvm/*.ll; do grep -q "^define" "$f" || fail "$f defines no function"; done
[ "$(ls "$WORK/obj"/*.o | wc -l)" -eq "$n" ] || fail "expected $n objects"
while read -r sym _; do
  nm "$WORK/obj/$sym.o" | grep -q " T $sym\$" || fail "$sym.o does not define $sym"
done < "$WORK/obj/kernels.txt"
# compiled on every CPU at once or one by one: the same kernels, the same bytes
MOEPPC_JIT_SERIAL=1 "$MOEPPC" emit "$SPEC" --emit obj -o "$WORK/obj1" > /dev/null || fail "emit obj, serial"
MOEPPC_JIT_SERIAL=1 "$MOEPPC" emit "$SPEC" --emit llvm -o "$WORK/llvm1" > /dev/null || fail "emit llvm, serial"
diff -r "$WORK/obj" "$WORK/obj1" > /dev/null || fail "objects differ when compiled one by one"
diff -r "$WORK/llvm" "$WORK/llvm1" > /dev/null || fail "LLVM IR differs when compiled one by one"
# one object that cannot be written: an error naming it, and none of the others left behind
last=$(tail -1 "$WORK/obj/kernels.txt" | cut -d' ' -f1)
mkdir -p "$WORK/bad/$last.o"
"$MOEPPC" emit "$SPEC" --emit obj -o "$WORK/bad" 2> "$WORK/bad.err" > /dev/null && fail "emit into a blocked object path passed"
grep -q "error: writing object file .*$last.o" "$WORK/bad.err" || { cat "$WORK/bad.err"; fail "the blocked object not named"; }
[ "$(ls "$WORK/bad")" = "$last.o" ] || fail "half-written output left: $(ls "$WORK/bad" | tr '\n' ' ')"
if [ "$CUDA" = cuda ]; then
  "$MOEPPC" emit "$SPEC" --emit cuda -o "$WORK/cuda" || fail "emit cuda"
  "$MOEPPC" emit "$SPEC" --emit ptx --target sm_80 -o "$WORK/ptx" || fail "emit ptx"
  for f in "$WORK"/cuda/*.cu; do grep -q "__global__" "$f" || fail "$f has no kernel"; done
  for f in "$WORK"/ptx/*.ptx; do grep -q "^.version" "$f" || fail "$f is not PTX"; done
  # text alone (NVRTC's size counts a NUL, which ptxas refuses as an unexpected end), and ptxas takes it
  for f in "$WORK"/ptx/*.ptx; do [ "$(tail -c 1 "$f" | od -An -tx1 | tr -d ' ')" = 0a ] || fail "$f ends in a NUL"; done
  PTXAS=$(command -v ptxas || echo /usr/local/cuda/bin/ptxas)
  if [ -x "$PTXAS" ]; then
    k=$(ls "$WORK"/ptx/moeppc_cu_gemm_up_*.ptx | head -1)
    "$PTXAS" -arch=sm_80 -o "$WORK/k-ptx.cubin" "$k" > "$WORK/ptxas.txt" 2>&1 || { cat "$WORK/ptxas.txt"; fail "ptxas $k"; }
  fi
  [ "$(ls "$WORK/cuda"/*.cu | wc -l)" -eq "$(ls "$WORK/ptx"/*.ptx | wc -l)" ] || fail "as many .cu as .ptx"
  [ -s "$WORK/cuda/README.md" ] || fail "no README.md beside the kernels"
  [ "$(grep -c "__global__" "$WORK/cuda/moeppc_kernels.cuh")" -eq "$(ls "$WORK/cuda"/*.cu | wc -l)" ] ||
    fail "moeppc_kernels.cuh does not declare every kernel"
  # usable on its own: nvcc compiles a kernel and a host file that includes the header, without a warning
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  if [ -x "$NVCC" ]; then
    k=$(ls "$WORK"/cuda/moeppc_cu_gemm_up_*.cu | head -1)
    "$NVCC" -cubin -arch=sm_80 -o "$WORK/k.cubin" "$k" > "$WORK/nvcc.txt" 2>&1 || { cat "$WORK/nvcc.txt"; fail "nvcc $k"; }
    printf '#include "moeppc_kernels.cuh"\nint main(void) { return 0; }\n' > "$WORK/cuda/host.cu"
    "$NVCC" -arch=sm_80 -c -o "$WORK/host.o" "$WORK/cuda/host.cu" >> "$WORK/nvcc.txt" 2>&1 || { cat "$WORK/nvcc.txt"; fail "nvcc host.cu"; }
    # a 16-bit model's header too (its cp.async GEMMs take u16 activations)
    "$MOEPPC" emit "$(dirname "$SPEC")/tiny-bf16.yaml" --emit cuda -o "$WORK/cuda16" > /dev/null || fail "emit cuda (bf16)"
    printf '#include "moeppc_kernels.cuh"\nint main(void) { return 0; }\n' > "$WORK/cuda16/host.cu"
    "$NVCC" -arch=sm_80 -c -o "$WORK/host16.o" "$WORK/cuda16/host.cu" >> "$WORK/nvcc.txt" 2>&1 ||
      { cat "$WORK/nvcc.txt"; fail "nvcc host.cu (bf16)"; }
    ! grep -q warning "$WORK/nvcc.txt" || { cat "$WORK/nvcc.txt"; fail "nvcc warned"; }
  fi
fi
"$MOEPPC" emit "$SPEC" --emit asm -o "$WORK/x" 2> "$WORK/bad.err"; rc=$?
[ $rc -eq 2 ] && grep -q "expected llvm, obj, lib, cuda, ptx or cubin" "$WORK/bad.err" || fail "bad --emit: exit $rc"
echo "emit: $n CPU kernels as LLVM IR and objects${CUDA:+, CUDA C and PTX}"
