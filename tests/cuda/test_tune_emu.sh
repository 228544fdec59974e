#!/bin/bash
# test_tune_emu.sh MOEPPC WORKDIR: `moeppc tune --target sm_90` end to end on the CUDA emulator
# (MOEPPC_CUDA_DRIVER from CTest): every tile that compiles for sm_90 without spills runs the layer,
# and its logits must match the rule's tile (the tuner discards and warns otherwise: here that is a
# failure, since every tile computes the same product); the database is the emulator's (isa emu), and
# `run --device cuda --tuning` takes it without a warning (its schedule by tokens said: the GEMV form
# at T = 1, the tile at 64) and matches the CPU backend's routing; the same for split-K, attention and
# the router.
set -u
MOEPPC=$1 WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
SPEC=$HERE/../../specs/tiny/tiny-bf16.yaml
rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
"$MOEPPC" tune "$SPEC" --target sm_90 --tokens 1,64 --budget 120 -o "$WORK/db.yaml" > "$WORK/tune.out" 2> "$WORK/tune.err" ||
  { echo "tune failed"; cat "$WORK/tune.out" "$WORK/tune.err"; exit 1; }
cat "$WORK/tune.out"
grep -q "logits differ" "$WORK/tune.err" && { echo "a tile's logits differ from the rule's:"; grep "logits differ" "$WORK/tune.err"; exit 1; }
grep -q "isa: emu" "$WORK/db.yaml" || { echo "the database is not the emulator's"; cat "$WORK/db.yaml"; exit 1; }
for op in grouped_up grouped_down; do
  n=$(grep "op: $op" "$WORK/db.yaml" | grep "tokens: 64" | grep -o 'x[0-9]*/kc[0-9]*: ' | wc -l)
  [ "$n" -ge 10 ] || { echo "$op: only $n tiles measured"; cat "$WORK/db.yaml"; exit 1; }
  # the winner with deeper cp.async rings; the wgmma tiles (--target sm_90) among the candidates
  grep "op: $op" "$WORK/db.yaml" | grep "tokens: 64" | grep -Eq '/s[45](/wg)?: [0-9.]+, [0-9x]+/kc[0-9]+/s[56](/wg)?: ' ||
    { echo "$op: the winning tile was not tried with deeper rings"; cat "$WORK/db.yaml"; exit 1; }
  n=$(grep "op: $op" "$WORK/db.yaml" | grep "tokens: 64" | grep -o '/kc[0-9]*/wg: ' | wc -l)
  [ "$n" -ge 6 ] || { echo "$op: only $n wgmma tiles measured"; cat "$WORK/db.yaml"; exit 1; }
  # T = 1: the GEMV forms of one slot per pass (9: warps x k unroll; the decode form among them)
  n=$(grep "op: $op" "$WORK/db.yaml" | grep "tokens: 1," | grep -o '1x[0-9]*/u[0-9]*: ' | wc -l)
  [ "$n" -ge 5 ] || { echo "$op: only $n GEMV forms measured at T = 1"; cat "$WORK/db.yaml"; exit 1; }
done
# split-K: the down-projection's T = 1 winner with k split 2 and 4 ways (k = 32: 4 chunks of 8, so
# not 8 ways); the up-projection never (its SwiGLU epilogue is not a sum)
grep "op: grouped_down" "$WORK/db.yaml" | grep "tokens: 1," | grep -q '/sk2: .*/sk4: ' ||
  { echo "grouped_down: the T = 1 winner was not tried with split-K"; cat "$WORK/db.yaml"; exit 1; }
grep "op: grouped_down" "$WORK/db.yaml" | grep "tokens: 1," | grep -q '/sk8: ' &&
  { echo "grouped_down: split 8 ways over 4 chunks of k"; cat "$WORK/db.yaml"; exit 1; }
grep "op: grouped_up" "$WORK/db.yaml" | grep -q '/sk[0-9]' && { echo "grouped_up split"; cat "$WORK/db.yaml"; exit 1; }
IDS=$(seq -s ' ' 1 40)
"$MOEPPC" run "$SPEC" --random-weights 2 --ids "$IDS" --device cuda --tuning "$WORK/db.yaml" --route-stats \
  > "$WORK/gpu.out" 2> "$WORK/gpu.err" || { echo "run --device cuda failed"; cat "$WORK/gpu.err"; exit 1; }
grep -q "warning" "$WORK/gpu.err" && { echo "the emulator's database was not taken:"; cat "$WORK/gpu.err"; exit 1; }
grep -Eq "grouped GEMM tiles by tokens \(T:tile@GFLOP/s;...\): up 1:1x[0-9]+/u[0-9]+@[0-9.]+(,[^;]*)?;64:[0-9]+x[0-9]+/kc[0-9]+(/s[0-9])?(/wg)?@" "$WORK/gpu.err" ||
  { echo "run did not say which tiles it took:"; cat "$WORK/gpu.err"; exit 1; }
"$MOEPPC" run "$SPEC" --random-weights 2 --ids "$IDS" --route-stats > "$WORK/cpu.out" 2>/dev/null || exit 1
diff <(grep -A4 "picks per MoE layer" "$WORK/cpu.out") <(grep -A4 "picks per MoE layer" "$WORK/gpu.out") ||
  { echo "routing differs between the CPU backend and the tuned GPU path"; exit 1; }
# a database whose T = 64 winners are wgmma tiles (their measurement raised by hand): the executor
# builds them from the schedule and the routing still matches the CPU's
sed -E '/tokens: 64/ s#(/kc[0-9]+/wg): [0-9.]+#\1: 999.0#' "$WORK/db.yaml" > "$WORK/db_wg.yaml"
"$MOEPPC" run "$SPEC" --random-weights 2 --ids "$IDS" --device cuda --tuning "$WORK/db_wg.yaml" --route-stats \
  > "$WORK/wg.out" 2> "$WORK/wg.err" || { echo "run with wgmma tiles failed"; cat "$WORK/wg.err"; exit 1; }
grep -Eq "up 1:[^;]*;64:[0-9]+x[0-9]+/kc[0-9]+/wg@999.0, .*down 1:[^;]*;64:[0-9]+x[0-9]+/kc[0-9]+/wg@999.0" "$WORK/wg.err" ||
  { echo "the wgmma tiles were not taken:"; cat "$WORK/wg.err"; exit 1; }
diff <(grep -A4 "picks per MoE layer" "$WORK/cpu.out") <(grep -A4 "picks per MoE layer" "$WORK/wg.out") ||
  { echo "routing differs between the CPU backend and the GPU path on the database's wgmma tiles"; exit 1; }
# a database whose T = 1 down winner is split 2 ways: 9 tokens run on that GEMV (T <= 16), routing as the CPU's
sed -E '/op: grouped_down.*tokens: 1,/ s#(/sk2): [0-9.]+#\1: 999.0#' "$WORK/db.yaml" > "$WORK/db_sk.yaml"
IDS9=$(seq -s ' ' 1 9)
"$MOEPPC" run "$SPEC" --random-weights 2 --ids "$IDS9" --device cuda --tuning "$WORK/db_sk.yaml" --route-stats \
  > "$WORK/sk.out" 2> "$WORK/sk.err" || { echo "run with split-K failed"; cat "$WORK/sk.err"; exit 1; }
grep -Eq "down 1:1x[0-9]+/u[0-9]+/sk2@999.0" "$WORK/sk.err" || { echo "the split-K GEMV was not taken:"; cat "$WORK/sk.err"; exit 1; }
"$MOEPPC" run "$SPEC" --random-weights 2 --ids "$IDS9" --route-stats > "$WORK/cpu9.out" 2>/dev/null || exit 1
diff <(grep -A4 "picks per MoE layer" "$WORK/cpu9.out") <(grep -A4 "picks per MoE layer" "$WORK/sk.out") ||
  { echo "routing differs between the CPU backend and the GPU path with split-K"; exit 1; }
# attention (tuned after the GEMMs, with what the budget leaves): the per-query kernel's warps at
# T = 1 (no tiled form there); at T = 64 forms of both kernels. A database whose T = 64 winner is a
# tiled form of 8 threads a query and key tiles of 16 (raised by hand): 64 tokens run on it, routing
# and the top logits as the CPU's
grep "op: attention" "$WORK/db.yaml" | grep "tokens: 1," | grep -Eq 'measured: \{1x[0-9]+: [0-9.]+, 1x[0-9]+: [0-9.]+, 1x[0-9]+: ' ||
  { echo "attention: fewer than 3 per-query forms measured at T = 1"; cat "$WORK/db.yaml"; exit 1; }
grep "op: attention" "$WORK/db.yaml" | grep "tokens: 1," | grep -Eq '[0-9]+x[0-9]+/kv|[2-9][0-9]*x[0-9]+: ' &&
  { echo "attention: a tiled form measured at T = 1"; cat "$WORK/db.yaml"; exit 1; }
grep "op: attention" "$WORK/db.yaml" | grep "tokens: 64," | grep -q '16x8/kv16: ' ||
  { echo "attention: 16x8/kv16 not measured at T = 64"; cat "$WORK/db.yaml"; exit 1; }
sed -E '/op: attention.*tokens: 64,/ s#(16x8/kv16): [0-9.]+#\1: 999.0#' "$WORK/db.yaml" > "$WORK/db_att.yaml"
IDS64=$(seq -s ' ' 1 64)
"$MOEPPC" run "$SPEC" --random-weights 2 --ids "$IDS64" --device cuda --tuning "$WORK/db_att.yaml" --route-stats \
  > "$WORK/att.out" 2> "$WORK/att.err" || { echo "run with a tuned attention failed"; cat "$WORK/att.err"; exit 1; }
grep -Eq "; attention 1:1x[0-9]+@[0-9.]+;64:[^;]*16x8/kv16@999.0" "$WORK/att.err" ||
  { echo "the tuned attention form was not taken:"; cat "$WORK/att.err"; exit 1; }
"$MOEPPC" run "$SPEC" --random-weights 2 --ids "$IDS64" --route-stats > "$WORK/cpu64.out" 2>/dev/null || exit 1
diff <(grep -A4 "picks per MoE layer" "$WORK/cpu64.out") <(grep -A4 "picks per MoE layer" "$WORK/att.out") ||
  { echo "routing differs between the CPU backend and the GPU path with a tuned attention"; exit 1; }
# the router (after attention): fused with 64 .. 1024 threads and the unfused path (at T = 1 on its
# linears' GEMV: one tile stands for all; at T = 64 several FMA tiles). A database whose T = 64
# winner is the unfused path on 32x32/kc16 (raised by hand): 64 tokens run on it, routing as the CPU's
grep "op: route" "$WORK/db.yaml" | grep "tokens: 1," | grep -Eq '1x64: .*1x1024: .*64x64/kc16: ' ||
  { echo "route: the fused forms and the unfused path not measured at T = 1"; cat "$WORK/db.yaml"; exit 1; }
n=$(grep "op: route" "$WORK/db.yaml" | grep "tokens: 1," | grep -o '[0-9]*x[0-9]*/kc[0-9]*: ' | wc -l)
[ "$n" -eq 1 ] || { echo "route: $n tiles measured at T = 1 (the GEMV's: 1)"; cat "$WORK/db.yaml"; exit 1; }
n=$(grep "op: route" "$WORK/db.yaml" | grep "tokens: 64," | grep -o '[0-9]*x[0-9]*/kc[0-9]*: ' | wc -l)
[ "$n" -ge 5 ] || { echo "route: only $n tiles measured at T = 64"; cat "$WORK/db.yaml"; exit 1; }
sed -E '/op: route.*tokens: 64,/ s#(32x32/kc16): [0-9.]+#\1: 999.0#' "$WORK/db.yaml" > "$WORK/db_route.yaml"
"$MOEPPC" run "$SPEC" --random-weights 2 --ids "$IDS64" --device cuda --tuning "$WORK/db_route.yaml" --route-stats \
  > "$WORK/route.out" 2> "$WORK/route.err" || { echo "run with a tuned router failed"; cat "$WORK/route.err"; exit 1; }
grep -Eq "; router 1:[^;]*;64:[^;]*32x32/kc16@999.0" "$WORK/route.err" ||
  { echo "the tuned router form was not taken:"; cat "$WORK/route.err"; exit 1; }
diff <(grep -A4 "picks per MoE layer" "$WORK/cpu64.out") <(grep -A4 "picks per MoE layer" "$WORK/route.out") ||
  { echo "routing differs between the CPU backend and the GPU path with a tuned router"; exit 1; }
echo "ok: $(grep -c 'op: ' "$WORK/db.yaml") entries, every tile agrees with the rule's"
