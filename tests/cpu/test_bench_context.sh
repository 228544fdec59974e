#!/bin/bash
# test_bench_context.sh MOEPPC: `moeppc bench --context P` on the CPU times the model's T tokens at
# positions P.. after a P-token prefill and says the KV caches' size: tiny-bf16 (2 layers, 4 KV heads
# of 16) at T = 1 after 30 positions holds 31 positions of keys and values, 2 bytes each in a bf16
# model's caches (15.9 KB) and 4 in an f32 one's (31.7 KB); T = 40 would pass max_positions 64 and is
# skipped, said so; --context with --layer, or negative, is a usage error (exit 2) naming the option.
# --batch: T sequences, one token each at position P of its own: T = 3 holds three sequences' 31
# positions (47.6 KB), and T = 40 at position 63 fits (one position each); --batch --layer exit 2.
set -u
MOEPPC=$1
SPEC=$(cd "$(dirname "$0")/../../specs/tiny" && pwd)/tiny-bf16.yaml
fail() { echo "FAILED: $*"; exit 1; }
for dt in bf16:15.9 f32:31.7; do
  out=$("$MOEPPC" bench "$SPEC" --context 30 --tokens 1,40 --reps 3 --dtype "${dt%%:*}") || fail "bench --dtype ${dt%%:*}: $out"
  echo "$out"
  echo "$out" | grep -q "^model  T = 1 " || fail "no T = 1 figure"
  echo "$out" | grep -q "KV caches at position 30: ${dt##*:} KB, read at" || fail "${dt%%:*}: expected ${dt##*:} KB of caches"
  echo "$out" | grep -q "T = 40    skipped: positions 30.. pass max_positions 64" || fail "T = 40 not said skipped"
  ! echo "$out" | grep -q "^layer" || fail "--context timed a layer"
done
out=$("$MOEPPC" bench "$SPEC" --context 30 --batch --tokens 1,3 --reps 3) || fail "bench --batch: $out"
echo "$out"
echo "$out" | grep -q "KV caches at position 30, every sequence's: 15.9 KB" &&
  echo "$out" | grep -q "KV caches at position 30, every sequence's: 47.6 KB" || fail "--batch: expected 15.9 and 47.6 KB of caches"
echo "$out" | grep -q "^batch  T = 3 " || fail "--batch: no T = 3 figure"
out=$("$MOEPPC" bench "$SPEC" --context 63 --batch --tokens 40 --reps 1) && echo "$out" | grep -q "^batch  T = 40 " ||
  fail "--batch --context 63 --tokens 40: $out"
for bad in "--context 5 --layer" "--context -1" "--batch --layer"; do
  err=$("$MOEPPC" bench "$SPEC" $bad 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$err" | grep -q -- "${bad%% *}" || fail "$bad: exit $rc: $err"
done
echo "ok: bench --context and --batch on the CPU"
