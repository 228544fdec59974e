#!/bin/bash
# test_device_emu.sh MOEPPC: choosing the GPU, on the CUDA emulator (one device; MOEPPC_CUDA_DRIVER from
# CTest). `--device cuda:0` decodes what `--device cuda` decodes; `cuda:1` is refused with exit status 1
# and a message that says how many GPUs there are (run, bench, tune --target sm_90, which writes nothing);
# tune's --device without a GPU target and a malformed ordinal are usage errors (exit 2).
# MOEPPC_PROGRESS=1 says the upload's progress up to 100 %.
set -u
MOEPPC=$1
HERE=$(cd "$(dirname "$0")" && pwd)
SPEC=$HERE/../../specs/tiny/tiny-moepp.yaml
fail() { echo "FAILED: $*"; exit 1; }
run() { timeout 120 "$MOEPPC" run "$SPEC" --random-weights 1 --ids "1 2 3" --generate 4 --device "$@" 2>&1; }
want=$(run cuda | grep generated) || fail "--device cuda: $(run cuda)"
got=$(run cuda:0 | grep generated) && [ "$got" = "$want" ] || fail "--device cuda:0: '$got', not '$want'"
echo "cuda:0 as cuda:$want"
# start-up's progress as the weights are uploaded (MOEPPC_PROGRESS=1: a line a tenth off a terminal)
p=$(MOEPPC_PROGRESS=1 timeout 120 "$MOEPPC" run "$SPEC" --random-weights 1 --ids "1" --device cuda 2>&1 >/dev/null)
grep -q "^moeppc run: weights ready: 100% (" <<<"$p" || fail "MOEPPC_PROGRESS=1 --device cuda: $p"
out=$(run cuda:1); rc=$?
[ $rc -eq 1 ] && grep -q "error: CUDA backend: CUDA driver: no GPU 1: it has 1 (ordinals 0..0" <<<"$out" &&
  ! grep -q generated <<<"$out" || fail "--device cuda:1: exit $rc: $out"
out=$(timeout 120 "$MOEPPC" bench "$SPEC" --device cuda:1 --tokens 1 --reps 1 2>&1); rc=$?
[ $rc -eq 1 ] && grep -q "no GPU 1: it has 1" <<<"$out" || fail "bench --device cuda:1: exit $rc: $out"
BF16=$HERE/../../specs/tiny/tiny-bf16.yaml
db=${TMPDIR:-/tmp}/moeppc-device-emu-$$.yaml
out=$(timeout 200 "$MOEPPC" tune "$BF16" --target sm_90 --device cuda:1 --tokens 1 --budget 5 -o "$db" 2>&1)
rc=$?
[ $rc -eq 1 ] && grep -q "no GPU 1: it has 1" <<<"$out" && [ ! -e "$db" ] ||
  { rm -f "$db"; fail "tune --device cuda:1: exit $rc: $out"; }
out=$("$MOEPPC" tune "$BF16" --device cuda:0 -o /dev/null 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "only with a GPU target" <<<"$out" || fail "tune --device without --target: exit $rc: $out"
for bad in cuda:x cuda: cuda:256 cuda:-1 gpu; do
  out=$(run "$bad"); rc=$?
  [ $rc -eq 2 ] && grep -q "expected cpu, cuda or cuda:N" <<<"$out" || fail "run --device $bad: exit $rc: $out"
  out=$("$MOEPPC" bench "$SPEC" --device "$bad" 2>&1); rc=$?
  [ $rc -eq 2 ] || fail "bench --device $bad: exit $rc: $out"
  out=$("$MOEPPC" tune "$BF16" --target sm_90 --device "$bad" -o /dev/null 2>&1); rc=$?
  [ $rc -eq 2 ] || fail "tune --device $bad: exit $rc: $out"
done
echo "device: ok"
