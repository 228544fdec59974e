#!/bin/bash
# test_tune.sh MOEPPC WORKDIR: a tiny `moeppc tune` writes a database that reads back, that compile shows
# on the ops (tile_src "database"), and that build uses — the executable still equals the interpreter;
# a database for another target is ignored with a warning; a zero budget keeps the rule's tiles.
set -u
MOEPPC=$1 WORK=$2
PY=${PYTHON:-/usr/bin/python3}
HERE=$(cd "$(dirname "$0")" && pwd)
SPEC=$HERE/../../specs/tiny/tiny-moepp.yaml
IDS="3 17 42 99 128 200 255 0 64 7"
rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
run() { echo "+ $*"; "$@" || { echo "FAILED (exit $?): $*"; exit 1; }; }
run "$MOEPPC" tune "$SPEC" --tokens 1,16 --budget 20 --threads 2 -o "$WORK/db.yaml" 2>/dev/null
grep -q "entries:" "$WORK/db.yaml" && grep -q "best:" "$WORK/db.yaml" || { echo "no entries in the database"; exit 1; }
"$MOEPPC" compile "$SPEC" --tuning "$WORK/db.yaml" --print-ir > "$WORK/tuned.ir" || exit 1
grep -q 'tile_src = "database"' "$WORK/tuned.ir" || { echo "compile did not use the database"; exit 1; }
grep -q 'tile_schedule = ' "$WORK/tuned.ir" || { echo "no tile schedule on the ops"; exit 1; }
run "$MOEPPC" build "$SPEC" --tuning "$WORK/db.yaml" -o "$WORK/model"
run "$WORK/model" --random-weights 2 --ids "$IDS" --logits-out "$WORK/model.bin"
run "$MOEPPC" run "$SPEC" --random-weights 2 --ids "$IDS" --backend interp --logits-out "$WORK/interp.bin"
run "$PY" "$HERE/../oracle/compare.py" "$WORK/model.bin" "$WORK/interp.bin" --vocab 256 --tol 1e-5
# --check: the model timed on the database and on the rule at each bucket; with a margin of -100 %
# (the database would have to take no time) every bucket keeps the rule's configurations: each
# entry's best is its first measured (the rule's, tried first), and it runs as the interpreter does
"$MOEPPC" tune "$SPEC" --tokens 1,16 --budget 3 --threads 2 --check-margin -100 -o "$WORK/checked.yaml" \
  > "$WORK/checked.out" 2>/dev/null || { echo "tune --check failed"; cat "$WORK/checked.out"; exit 1; }
[ "$(grep -c "^check at T = .* the rule's configurations kept for this bucket$" "$WORK/checked.out")" = 2 ] ||
  { echo "tune --check: not a line a bucket"; cat "$WORK/checked.out"; exit 1; }
grep -q "(the model)" "$WORK/checked.out" || { echo "tune --check: not the whole tiny model"; cat "$WORK/checked.out"; exit 1; }
# where both configurations' models would not fit (tiny: 1.3 MB at most while the second is made), its
# first layer, said so
MOEPPC_MEM_LIMIT_MB=1 "$MOEPPC" tune "$SPEC" --tokens 1 --budget 1 --threads 2 --check -o "$WORK/layer.yaml" \
  > "$WORK/layer.out" 2> "$WORK/layer.err" || { echo "tune --check in 1 MB failed"; tail -c 300 "$WORK/layer.err"; exit 1; }
grep -q "^check at T = 1 (its first layer)" "$WORK/layer.out" &&
  grep -q "check times the first layer: the whole model on both configurations needs" "$WORK/layer.err" ||
  { echo "tune --check in 1 MB: not the first layer"; cat "$WORK/layer.out"; tail -c 300 "$WORK/layer.err"; exit 1; }
"$PY" - "$WORK/checked.yaml" <<'EOF' || exit 1
import re, sys
pairs = [re.search(r"best: ([^,]+), measured: \{([^:]+): [0-9.]+\}", ln) for ln in open(sys.argv[1]) if "best:" in ln]
if not pairs or any(not m or m.group(1) != m.group(2) for m in pairs):
    sys.exit("tune --check-margin -100: entries not reduced to the rule's measurement alone: %s" % open(sys.argv[1]).read())
EOF
run "$MOEPPC" run "$SPEC" --random-weights 2 --ids "$IDS" --tuning "$WORK/checked.yaml" --logits-out "$WORK/checked.bin"
run "$PY" "$HERE/../oracle/compare.py" "$WORK/checked.bin" "$WORK/interp.bin" --vocab 256 --tol 1e-5
"$MOEPPC" tune "$SPEC" --check-margin x -o "$WORK/x.yaml" 2> "$WORK/margin.err"
[ $? = 2 ] && grep -q "check-margin: expected a percentage" "$WORK/margin.err" ||
  { echo "a bad --check-margin"; cat "$WORK/margin.err"; exit 1; }
"$MOEPPC" tune "$SPEC" --target sm_90 --check -o "$WORK/x.yaml" 2> "$WORK/gpucheck.err"
[ $? = 2 ] && grep -q "not with a GPU --target" "$WORK/gpucheck.err" ||
  { echo "--check with a GPU target"; cat "$WORK/gpucheck.err"; exit 1; }
# a top-1 MoE++ model (tiny-top1: half the picks to FFN experts): the down-projection's problem has
# fewer slots than tokens, and the tuner had written its output past the slots' rows (a crash in
# every run, found by tests/oracle/random_models.py); its database then runs as the interpreter does
TOP1=$HERE/../../specs/tiny/tiny-top1.yaml
run "$MOEPPC" tune "$TOP1" --tokens 16,64 --budget 2 --threads 2 -o "$WORK/top1.yaml" 2>/dev/null
run "$MOEPPC" run "$TOP1" --random-weights 2 --ids "$IDS" --tuning "$WORK/top1.yaml" --logits-out "$WORK/top1.bin" --top 0
run "$MOEPPC" run "$TOP1" --random-weights 2 --ids "$IDS" --backend interp --logits-out "$WORK/top1.ref.bin" --top 0
run "$PY" "$HERE/../oracle/compare.py" "$WORK/top1.bin" "$WORK/top1.ref.bin" --vocab 256 --tol 1e-5
# a database that gives a layer's Q projection other tiles than its K and V (tiny-gqa: n 64 and
# 32): the executor runs the three one call each instead of one multi-matrix call (run_linears), the
# prompt's logits and the decoded tokens still the interpreter's
GQA=$HERE/../../specs/tiny/tiny-gqa.yaml
{ sed -n '1,/^entries:/p' "$WORK/db.yaml"
  for t in 1 16; do
    echo "  - {op: linear, dtype: f32, n: 64, k: 64, groups: 1, tokens: $t, best: 6x16, measured: {6x16: 2.0, 1x48: 1.0}}"
    echo "  - {op: linear, dtype: f32, n: 32, k: 64, groups: 1, tokens: $t, best: 1x48, measured: {6x16: 1.0, 1x48: 2.0}}"
  done; } > "$WORK/split.yaml"
"$MOEPPC" compile "$GQA" --tuning "$WORK/split.yaml" --print-ir > "$WORK/split.ir" || exit 1
grep -q 'l0.q .*tile_m = 6, tile_n = 16, .*tile_src = "database"' "$WORK/split.ir" &&
  grep -q 'l0.k .*tile_m = 1, tile_n = 48, .*tile_src = "database"' "$WORK/split.ir" ||
  { echo "the split database's tiles are not on Q and K"; grep -E "l0\.[qk] " "$WORK/split.ir"; exit 1; }
G=(--random-weights 2 --ids "$IDS" --generate 6 --ignore-eos --quiet)
"$MOEPPC" run "$GQA" "${G[@]}" --tuning "$WORK/split.yaml" --logits-out "$WORK/split.bin" > "$WORK/split.out" &&
  "$MOEPPC" run "$GQA" "${G[@]}" --backend interp --logits-out "$WORK/gqa.bin" > "$WORK/gqa.out" || exit 1
run "$PY" "$HERE/../oracle/compare.py" "$WORK/split.bin" "$WORK/gqa.bin" --vocab 256 --tol 1e-5
cmp -s "$WORK/split.out" "$WORK/gqa.out" || { echo "decoded tokens differ from the interpreter's"; diff "$WORK/split.out" "$WORK/gqa.out"; exit 1; }
# another target: warned about and ignored
sed 's/cpu: [a-z0-9_-]*/cpu: some-other-cpu/' "$WORK/db.yaml" > "$WORK/other.yaml"
"$MOEPPC" compile "$SPEC" --tuning "$WORK/other.yaml" --print-ir > "$WORK/other.ir" 2> "$WORK/other.err" || exit 1
grep -q "warning" "$WORK/other.err" && grep -q "some-other-cpu" "$WORK/other.err" || { echo "no warning for another target"; cat "$WORK/other.err"; exit 1; }
grep -q 'tile_src = "database"' "$WORK/other.ir" && { echo "an entry for another target was used"; exit 1; }
# a zero budget: the rule's tiles, said so, and a valid (empty) database
"$MOEPPC" tune "$SPEC" --budget 0 -o "$WORK/empty.yaml" > "$WORK/empty.out" 2>/dev/null || exit 1
grep -q "too small" "$WORK/empty.out" || { echo "no message for a zero budget"; exit 1; }
run "$MOEPPC" compile "$SPEC" --tuning "$WORK/empty.yaml" --stats > /dev/null
# a corrupt database: an error with file:line:col, exit 1
printf 'moeppc_tuning: 1\ncompiler: "0.1.0"\nllvm: [x\n' > "$WORK/bad.yaml"
"$MOEPPC" compile "$SPEC" --tuning "$WORK/bad.yaml" > /dev/null 2> "$WORK/bad.err"
rc=$?
[ $rc -eq 1 ] && grep -Eq "bad.yaml:[0-9]+:[0-9]+: error" "$WORK/bad.err" || { echo "corrupt database: exit $rc"; cat "$WORK/bad.err"; exit 1; }
# the command line: nonsense is refused, exit 2, nothing written
for args in "--target sm_75" "--target gpu" "--budget -1" "--tokens 0" "--threads 0"; do
  "$MOEPPC" tune "$SPEC" $args -o "$WORK/cli.yaml" > /dev/null 2> "$WORK/cli.err"
  rc=$?
  [ $rc -eq 2 ] && grep -q "moeppc tune: error" "$WORK/cli.err" && [ ! -e "$WORK/cli.yaml" ] ||
    { echo "tune $args: exit $rc"; cat "$WORK/cli.err"; exit 1; }
done
# a GPU target (when moeppc has NVRTC): every tile compiled for it, spills and oversized ones discarded
# before anything runs; measuring needs that GPU, so here (no GPU, or another one) nothing is written
if "$MOEPPC" emit "$SPEC" --emit cuda --target sm_80 -o "$WORK/cu" > /dev/null 2>&1; then
  # (sm_86: an SM's 99 KB of shared memory leaves out the deepest 128x128 tile)
  "$MOEPPC" tune "$HERE/../../specs/tiny/tiny-bf16.yaml" --target sm_86 -o "$WORK/gpu.yaml" > "$WORK/gpu.out" 2> "$WORK/gpu.err"
  rc=$?
  [ $rc -eq 1 ] && [ ! -e "$WORK/gpu.yaml" ] && grep -q "measuring the tiles needs a GPU of architecture sm_86" "$WORK/gpu.err" ||
    { echo "tune --target sm_86: exit $rc"; cat "$WORK/gpu.out" "$WORK/gpu.err"; exit 1; }
  grep -Eq "^grouped_up 64x64, 4 experts \(sm_86, NVRTC [0-9.]+\): [0-9]+ of 27 tiles compile" "$WORK/gpu.out" &&
    grep -Eq "^  64x64/kc32 +ok +[0-9]+ registers" "$WORK/gpu.out" &&
    grep -Eq "^  128x128/kc64 +discarded  [0-9]+ B of shared memory, above sm_86's 99 KB" "$WORK/gpu.out" ||
    { echo "tune --target sm_86: no candidate table"; cat "$WORK/gpu.out"; exit 1; }
  "$MOEPPC" tune "$SPEC" --target sm_80 -o "$WORK/gpu.yaml" > /dev/null 2> "$WORK/gpu.err"
  grep -q "tunes the tensor-core path of bf16/f16 models" "$WORK/gpu.err" || { echo "f32 spec on a GPU target"; exit 1; }
  # a GPU database (written here as the GPU tuner writes it) is built into an executable for its sm
  nvrtc=$(grep -Eo "NVRTC [0-9]+\.[0-9]+" "$WORK/gpu.out" | head -1)
  BF=$HERE/../../specs/tiny/tiny-bf16.yaml
  {
    echo "moeppc_tuning: 1"
    echo "compiler: \"$(sed -n 's/^#define MOEPPC_VERSION "\(.*\)"/\1/p' "$HERE/../../support/support.h")\""
    echo "llvm: \"$nvrtc\""
    echo "target: {cpu: \"NVIDIA Test GPU\", isa: sm_80, features: 0123456789abcdef}"
    echo "entries:"
    echo "  - {op: grouped_up, dtype: bf16, n: 64, k: 64, groups: 4, tokens: 64, best: 64x64/kc32, measured: {64x64/kc32: 3.0, 32x64/kc16: 1.5}}"
    echo "  - {op: grouped_up, dtype: bf16, n: 64, k: 64, groups: 4, tokens: 512, best: 32x64/kc16, measured: {64x64/kc32: 1.0, 32x64/kc16: 2.0}}"
    echo "  - {op: grouped_down, dtype: bf16, n: 64, k: 32, groups: 4, tokens: 512, best: 64x32/kc32, measured: {64x64/kc32: 1.0, 64x32/kc32: 2.0}}"
    echo "  - {op: attention, dtype: bf16, n: 4, k: 16, groups: 4, tokens: 512, best: 32x8/kv16, measured: {64x4: 1.0, 32x8/kv16: 2.0}}"
    echo "  - {op: route, dtype: bf16, n: 64, k: 64, groups: 1, tokens: 1, best: 1x512, measured: {1x256: 1.0, 1x512: 2.0}}"
  } > "$WORK/gpudb.yaml"
  run "$MOEPPC" build "$BF" --target sm_80 --tuning "$WORK/gpudb.yaml" --keep-temps -o "$WORK/gpumodel" > "$WORK/gpubuild.out" 2>&1
  kept=$(sed -n 's/^kept the intermediate files in //p' "$WORK/gpubuild.out")
  # (by token count: up has two buckets, each tile's kernel built in; the executor picks per T;
  # attention's and the router's tuned forms too)
  grep -qF 'tile_sched[4] = {"-1;64:64x64/kc32@3.0,32x64/kc16@1.5;512:64x64/kc32@1.0,32x64/kc16@2.0", "-1;512:64x32/kc32@2.0", "-1;512:32x8/kv16@2.0", "-1;1:1x512@2.0"}' \
    "$kept/main.c" && grep -q "t64x64x32_s3" "$kept/main.c" && grep -q "t32x64x16_s3" "$kept/main.c" &&
    grep -q "attention_tiled_bf16_h4_kv4_hd16_q32_t8_b16" "$kept/main.c" && grep -Eq "moeppc_cu_fused_[a-z0-9_]*_t512" "$kept/main.c" ||
    { echo "the GPU database's tiles are not built in"; cat "$WORK/gpubuild.out"; grep tile_sched "$kept/main.c"; exit 1; }
  rm -rf "$kept"
  # and compile shows them on the ops, from the database; the rule's (the CUDA executor's default) elsewhere
  "$MOEPPC" compile "$BF" --target sm_80 --tuning "$WORK/gpudb.yaml" --print-ir > "$WORK/gpu.ir" 2>/dev/null
  grep -q 'moe.grouped_up .*tile_m = 32, tile_n = 64, tile_k = 16, tile_src = "database"' "$WORK/gpu.ir" &&
    grep -q 'moe.grouped_down .*tile_m = 64, tile_n = 32, tile_k = 32, tile_src = "database"' "$WORK/gpu.ir" &&
    grep -q 'linear .*tile_m = 64, tile_n = 64, tile_k = 32, tile_src = "rule"' "$WORK/gpu.ir" &&
    grep -q 'attention .*tile_m = 32, tile_n = 8, kv_block = 16, tile_src = "database", tile_schedule = "-1;512:32x8/kv16@2.0"' "$WORK/gpu.ir" &&
    grep -q 'moe.route .*tile_m = 1, tile_n = 512, tile_k = 16, tile_src = "database"' "$WORK/gpu.ir" ||
    { echo "compile --target sm_80 does not show the GPU database's tiles"; grep -E "grouped|linear|attention|route" "$WORK/gpu.ir" | head; exit 1; }
  run "$WORK/gpumodel" --random-weights 2 --ids "$IDS" > /dev/null
  "$MOEPPC" build "$BF" --target sm_86 --tuning "$WORK/gpudb.yaml" -o "$WORK/gpumodel86" > /dev/null 2> "$WORK/gpu86.err"
  grep -q "made for sm_80, and this build is for sm_86" "$WORK/gpu86.err" || { echo "a GPU database for another sm was not refused"; exit 1; }
fi
# the tuner's configurations beyond tiles reach the ops: some op of the tuned module names them
grep -Eq 'tile_unroll = [0-9]+, tile_mc = [0-9]+, tile_src = "database"' "$WORK/tuned.ir" || { echo "no tuned unroll/blocking"; exit 1; }
grep -Eq 'attention .*kv_block = [0-9]+, tile_src = "database", tile_schedule = "0;1:kv' "$WORK/tuned.ir" ||
  { echo "attention not tuned"; grep attention "$WORK/tuned.ir"; exit 1; }
grep -Eq 'moe.route .*tile_src = "database"' "$WORK/tuned.ir" || { echo "router GEMMs not tuned"; exit 1; }
# a bf16 model: where the bf16 dot product pays, tune measures its GEMMs on it (act: bf16 entries) and
# compile --tuning shows the ops as this host runs them, from those entries; with MOEPPC_BF16_DOT=0 the
# ops take f32 activations, which the entries do not serve (the rule's tiles)
BFS=$HERE/../../specs/tiny/tiny-bf16.yaml
# A budget that runs out shares itself: every shape gets the rule and its first candidates (its entry),
# where the shapes first in line used to spend it all (under ASan on a slow host the AMX ones went untried)
run "$MOEPPC" tune "$BFS" --tokens 16 --budget 5 --threads 2 -o "$WORK/bfdb.yaml" 2> "$WORK/bfdb.err" > "$WORK/bfdb.out"
cat "$WORK/bfdb.out"
grep -Eq 'wrote .*: ([0-9]+) entries \(of \1 shapes x 1 token' "$WORK/bfdb.out" || { echo "a shape left untuned"; exit 1; }
"$MOEPPC" compile "$BFS" --tuning "$WORK/bfdb.yaml" --print-ir > "$WORK/bf.ir" || exit 1
if grep -q "AMX tiles: yes" "$WORK/bfdb.err"; then # AMX takes the bf16 GEMMs: its tiles tuned (act: amx)
  ! grep -q "act: bf16" "$WORK/bfdb.yaml" && grep -q "act: amx" "$WORK/bfdb.yaml" &&
    grep -Eq 'moe.grouped_up .*act_bf16 = 1, amx = 1, tile_m = (16|32), tile_n = (16|32), .*tile_src = "database"' "$WORK/bf.ir" ||
    { echo "AMX GEMMs not tuned, or not shown on the ops"; grep -E "grouped" "$WORK/bf.ir"; exit 1; }
  # every AMX tile the tuner may pick, on 40 tokens (whole 32-row tiles, 16-row tiles and FMA edges),
  # computes what the rule's tiles do; 4e-3: an f32 rounding apart may round a bf16 activation the
  # other way a layer later (as cpu_test_backend's AMX check, which compares with the interpreter)
  "$PY" - "$WORK/bfdb.yaml" "$WORK/bf16x16.yaml" <<'EOF' || exit 1
import re, sys
out = []
for line in open(sys.argv[1]):  # every act: amx entry: 16 x 16 measured fastest, so the best
    if "act: amx" in line:
        line = re.sub(r"best: [^,]+", "best: 16x16", line)
        line = re.sub(r"measured: \{(.*)\}\}", lambda m: "measured: {" + ", ".join(
            [p for p in m.group(1).split(", ") if not p.startswith("16x16:")] + ["16x16: 1e9"]) + "}}", line)
    out.append(line)
open(sys.argv[2], "w").write("".join(out))
EOF
  "$MOEPPC" compile "$BFS" --tuning "$WORK/bf16x16.yaml" --print-ir | grep -E "grouped|linear" > "$WORK/bf16x16.ir"
  grep -q "amx = 1" "$WORK/bf16x16.ir" && ! grep "amx = 1" "$WORK/bf16x16.ir" | grep -vq "tile_m = 16, tile_n = 16" ||
    { echo "the AMX ops do not take the forced 16 x 16 tiles"; cat "$WORK/bf16x16.ir"; exit 1; }
  IDS40=$(seq -s ' ' 3 6 240)
  for db in bfdb bf16x16; do
    run "$MOEPPC" build "$BFS" --tuning "$WORK/$db.yaml" -o "$WORK/bfmodel"
    run "$WORK/bfmodel" --random-weights 2 --ids "$IDS40" --logits-out "$WORK/$db.bin"
  done
  run "$MOEPPC" run "$BFS" --random-weights 2 --ids "$IDS40" --backend cpu --logits-out "$WORK/bfrule.bin"
  for db in bfdb bf16x16; do
    run "$PY" "$HERE/../oracle/compare.py" "$WORK/$db.bin" "$WORK/bfrule.bin" --vocab 256 --tol 4e-3 > /dev/null
  done
  MOEPPC_AMX=0 "$MOEPPC" compile "$BFS" --tuning "$WORK/bfdb.yaml" --print-ir > "$WORK/bf0.ir" || exit 1
  ! grep -q "amx = 1" "$WORK/bf0.ir" && ! grep -q 'tile_src = "database"' <(grep -E "grouped|linear" "$WORK/bf0.ir") ||
    { echo "MOEPPC_AMX=0 left AMX on, or act: amx entries served other ops"; exit 1; }
elif grep -q "bf16 dot product: yes" "$WORK/bfdb.err"; then
  grep -q "act: bf16" "$WORK/bfdb.yaml" &&
    grep -q 'moe.grouped_up .*act_bf16 = 1, tile_m = [0-9]*, .*tile_src = "database"' "$WORK/bf.ir" &&
    ! grep -q 'moe.route .*act_bf16' "$WORK/bf.ir" ||
    { echo "the bf16 dot product's entries are not shown on the ops"; grep -E "grouped|route" "$WORK/bf.ir"; exit 1; }
  MOEPPC_BF16_DOT=0 "$MOEPPC" compile "$BFS" --tuning "$WORK/bfdb.yaml" --print-ir > "$WORK/bf0.ir" || exit 1
  ! grep -q 'act_bf16' "$WORK/bf0.ir" && grep -q 'moe.grouped_up .*tile_src = "rule"' "$WORK/bf0.ir" ||
    { echo "act: bf16 entries served ops with f32 activations"; grep grouped "$WORK/bf0.ir"; exit 1; }
else
  ! grep -q "act: bf16" "$WORK/bfdb.yaml" || { echo "act: bf16 entries without the bf16 dot product"; exit 1; }
fi
echo "tuning database: written, read back, used by compile and build, checked"
