#!/bin/bash
# test_bench_context.sh MOEPPC: `moeppc bench --context P` on the CPU times the model's T tokens at
# positions P.. after a P-token prefill and says the KV caches' size: tiny-bf16 (2 layers, 4 KV heads
# of 16) at T = 1 after 30 positions holds 31 positions of keys and values, 2 bytes each in a bf16
# model's caches (15.9 KB) and 4 in an f32 one's (31.7 KB); T = 40 would pass max_positions 64 and is
# skipped, said so; --context with --layer, or negative, is a usage error (exit 2) naming the option.
# The weights each step's dense GEMMs read: 2 layers of q, k, v, o (64 x 64) and the lm_head (256 x 64),
# 49152 elements: 98.3 KB in bf16, 196.6 KB in f32; the grouped GEMMs, at T = 1, the experts the token
# picked: 0 to 4 FFN experts (top-2 of 2 layers) of 6144 elements each (up 64 x 64, down 64 x 32), 12.3 KB
# each in bf16, 24.6 in f32 (all 8 a layer would be 196.6 and 393.2).
# A bf16 model's report says which form attention takes (here f32 FMAs: head_dim 16); an f32 one's does not.
# --batch: T sequences, one token each at position P of its own: T = 3 holds three sequences' 31
# positions (47.6 KB), and T = 40 at position 63 fits (one position each); --batch --layer exit 2;
# --rows R: T / R sequences of R tokens; without --batch, or a T not a multiple of R: exit 2.
set -u
MOEPPC=$1
SPEC=$(cd "$(dirname "$0")/../../specs/tiny" && pwd)/tiny-bf16.yaml
fail() { echo "FAILED: $*"; exit 1; }
for dt in bf16:15.9:98.3:0.0,12.3,24.6,36.9,49.2 f32:31.7:196.6:0.0,24.6,49.2,73.7,98.3; do
  IFS=: read -r dtype kv weights experts <<< "$dt"
  out=$("$MOEPPC" bench "$SPEC" --context 30 --tokens 1,40 --reps 3 --dtype "$dtype") ||
    fail "bench --dtype $dtype: $out"
  echo "$out"
  echo "$out" | grep -q "^model  T = 1 " || fail "no T = 1 figure"
  echo "$out" | grep -q "KV caches at position 30: $kv KB, read at" || fail "$dtype: expected $kv KB of caches"
  echo "$out" | grep -q "dense GEMMs $weights KB at [0-9.]* GB/s" ||
    fail "$dtype: expected the dense GEMMs to read $weights KB"
  echo "$out" | grep -Eq "grouped GEMMs (${experts//,/|}) KB at [0-9.]* GB/s" ||
    fail "$dtype: expected the grouped GEMMs to read one of ${experts//,/, } KB"
  echo "$out" | grep -q "T = 40    skipped: positions 30.. pass max_positions 64" || fail "T = 40 not said skipped"
  ! echo "$out" | grep -q "^layer" || fail "--context timed a layer"
  if [ "$dtype" = bf16 ]; then # head_dim 16: never the amx form, on any CPU
    echo "$out" | grep -qx "bf16 attention: f32 FMAs (head_dim not a multiple of 32)" ||
      fail "bf16 attention's form not said"
  else
    ! echo "$out" | grep -q "^bf16 attention" || fail "an f32 model said a bf16 attention form"
  fi
done
out=$("$MOEPPC" bench "$SPEC" --context 30 --batch --tokens 1,3 --reps 3) || fail "bench --batch: $out"
echo "$out"
echo "$out" | grep -q "KV caches at position 30, every sequence's: 15.9 KB" &&
  echo "$out" | grep -q "KV caches at position 30, every sequence's: 47.6 KB" || fail "--batch: expected 15.9 and 47.6 KB of caches"
echo "$out" | grep -q "^batch  T = 3 " || fail "--batch: no T = 3 figure"
out=$("$MOEPPC" bench "$SPEC" --context 63 --batch --tokens 40 --reps 1) && echo "$out" | grep -q "^batch  T = 40 " ||
  fail "--batch --context 63 --tokens 40: $out"
# --rows 3: T / 3 sequences of 3 tokens at positions 30..32 (prompts' chunks): 33 positions of each
# sequence's caches, one sequence at T = 3 (16.9 KB), two at T = 6
out=$("$MOEPPC" bench "$SPEC" --context 30 --batch --rows 3 --tokens 3,6 --reps 3) ||
  fail "bench --batch --rows 3: $out"
echo "$out"
echo "$out" | grep -q "KV caches at position 30, every sequence's: 16.9 KB" &&
  echo "$out" | grep -q "KV caches at position 30, every sequence's: 33.8 KB" ||
  fail "--rows 3: expected 16.9 and 33.8 KB"
echo "$out" | grep -q "^batch  T = 6 " || fail "--rows 3: no T = 6 figure"
for bad in "--context 5 --layer" "--context -1" "--batch --layer" "--rows 2 --batch --tokens 3" \
           "--rows 2 --tokens 4"; do
  err=$("$MOEPPC" bench "$SPEC" $bad 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$err" | grep -q -- "${bad%% *}" || fail "$bad: exit $rc: $err"
done
echo "ok: bench --context, --batch and --rows on the CPU"
