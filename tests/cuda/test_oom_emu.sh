#!/bin/bash
# test_oom_emu.sh MOEPPC: running out of GPU memory, on the CUDA emulator with a small device
# (MOEPPC_CUDAEMU_MEMORY bytes; MOEPPC_CUDA_DRIVER from CTest). `moeppc run SPEC --device cuda
# --generate 4` on devices from 64 KB up to the size at which it first runs, in 32 KB steps: each run
# either decodes exactly the tokens it decodes on an unlimited device, or fails with exit status 1
# and one message naming GPU memory (the up-front check of weights and KV caches against the free
# memory, or the allocation that failed and what it was for) — never a crash, a hang or partial
# output. Both kinds of refusal must occur, or the sweep did not reach the allocations.
set -u
MOEPPC=$1
HERE=$(cd "$(dirname "$0")" && pwd)
SPEC=$HERE/../../specs/tiny/tiny-moepp.yaml
run() { timeout 60 "$MOEPPC" run "$SPEC" --random-weights 1 --ids "1 2 3" --device cuda --generate 4 2>&1; }
want=$(env -u MOEPPC_CUDAEMU_MEMORY bash -c "$(declare -f run); MOEPPC='$MOEPPC' SPEC='$SPEC' run" | grep generated) ||
  { echo "no tokens on an unlimited device"; exit 1; }
echo "unlimited device:$want"
check=0 alloc=0 ran=0
for ((kb = 64; kb <= 4096; kb += 32)); do
  out=$(MOEPPC_CUDAEMU_MEMORY=$((kb * 1024)) run); rc=$?
  if [ $rc -eq 0 ]; then
    got=$(echo "$out" | grep generated)
    [ "$got" = "$want" ] || { echo "$kb KB: ran, but generated '$got', not '$want'"; exit 1; }
    echo "$kb KB: runs, the same tokens"
    ran=1
    break
  fi
  [ $rc -eq 1 ] || { echo "$kb KB: exit status $rc (a crash or a hang?):"; echo "$out"; exit 1; }
  errs=$(echo "$out" | grep -c "error")
  [ "$errs" -eq 1 ] || { echo "$kb KB: $errs error lines:"; echo "$out"; exit 1; }
  echo "$out" | grep -q "generated" && { echo "$kb KB: tokens printed before failing:"; echo "$out"; exit 1; }
  if echo "$out" | grep -q "not enough GPU memory: the weights and KV caches need"; then
    check=$((check + 1))
  elif echo "$out" | grep -qE "allocating [0-9.]+ [KM]B on the GPU for .*: CUDA driver: mem_alloc: out of memory"; then
    alloc=$((alloc + 1))
    [ $alloc -eq 1 ] && echo "$kb KB: $(echo "$out" | grep error)"
  else
    echo "$kb KB: failed without naming GPU memory:"; echo "$out"; exit 1
  fi
done
echo "refused: $check by the up-front check, $alloc at an allocation"
[ $ran -eq 1 ] && [ $check -gt 0 ] && [ $alloc -gt 0 ] || { echo "the sweep missed a case"; exit 1; }
# Without MOEPPC_CUDAEMU_MEMORY the emulated device's free memory is what the host may still give the
# process (MemAvailable and its cgroup; MOEPPC_MEM_LIMIT_MB stands for both), not MemFree: KV caches
# of 4096 positions (4.2 MB) on a host with 2 MB to give are refused up front, naming both sizes
spec4k=$(mktemp) || exit 2
trap 'rm -f "$spec4k"' EXIT
sed 's/max_positions: 64/max_positions: 4096/' "$SPEC" > "$spec4k"
out=$(env -u MOEPPC_CUDAEMU_MEMORY MOEPPC_MEM_LIMIT_MB=2 timeout 60 "$MOEPPC" run "$spec4k" --random-weights 1 \
  --ids "1 2 3" --device cuda 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$out" | grep -q "not enough GPU memory: the weights and KV caches need 4.7 MB and 2.1 MB of" ||
  { echo "2 MB of host memory to give, 4096 positions: exit $rc:"; echo "$out"; exit 1; }
echo "a host with 2 MB to give: $(echo "$out" | grep error)"
