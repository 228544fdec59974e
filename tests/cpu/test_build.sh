#!/bin/bash
# test_build.sh MOEPPC SPEC TOL WORKDIR [TARGET]: `moeppc build` writes an executable whose logits equal
# the interpreter's (max rel err ≤ TOL), reading a real safetensors file; bad input exits non-zero.
# TARGET (sm_XX): built with --target too; `--device cuda` then matches the interpreter on a machine
# with a GPU, and is refused with a clear message (exit 1) on one without; built without, it is refused
# as such. MODEL --help describes the executable's own options.
set -u
MOEPPC=$1 SPEC=$2 TOL=$3 WORK=$4 TARGET=${5:-}
PY=${PYTHON:-/usr/bin/python3}
HERE=$(cd "$(dirname "$0")" && pwd)
IDS="3 17 42 99 128 200 255 0 64 7"
rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
run() { echo "+ $*"; "$@" || { echo "FAILED (exit $?): $*"; exit 1; }; }
run "$MOEPPC" build "$SPEC" -o "$WORK/model" ${TARGET:+--target "$TARGET"}
run "$MOEPPC" init-weights "$SPEC" --seed 5 -o "$WORK/w.safetensors"
run "$WORK/model" --weights "$WORK/w.safetensors" --ids "$IDS" --threads 2 --logits-out "$WORK/model.bin" --generate 3
run "$MOEPPC" run "$SPEC" --weights "$WORK/w.safetensors" --ids "$IDS" --backend interp --logits-out "$WORK/interp.bin"
# --panel-cache: the packed weights kept in files, then mapped from them; the same logits bit for bit
for k in 1 2; do
  if [ $k = 1 ]; then set -- --panel-cache "$WORK/panels"; else set --; fi
  MOEPPC_PANEL_CACHE="$WORK/panels" run "$WORK/model" --weights "$WORK/w.safetensors" --ids "$IDS" --threads 2 \
    --logits-out "$WORK/panels$k.bin" --generate 3 "$@" 2>"$WORK/panels$k.txt"
  cmp "$WORK/model.bin" "$WORK/panels$k.bin" || { echo "--panel-cache: other logits (run $k)"; exit 1; }
done
grep -q " 0 steps' panels mapped (0.0 MB), [1-9][0-9]* packed and kept" "$WORK/panels1.txt" &&
  grep -q " [1-9][0-9]* steps' panels mapped .*, 0 packed and kept" "$WORK/panels2.txt" ||
  { echo "--panel-cache: not kept, then mapped:"; cat "$WORK/panels1.txt" "$WORK/panels2.txt"; exit 1; }
"$WORK/model" --random-weights 1 --ids 1 --panel-cache "" >/dev/null 2>&1
[ $? -eq 2 ] || { echo "--panel-cache '': not a usage error"; exit 1; }
# random weights larger than memory (MOEPPC_MEM_LIMIT_MB between what stays in memory with a panel
# cache, KV caches and the tables read in place, and that plus the panels): refused without the cache,
# naming it; with it kept, then mapped, the logits those of a run without the limit bit for bit
need() { # MB the run says it needs ("(0.6 MB) do not fit"), asked with almost no memory
  MOEPPC_MEM_LIMIT_MB=0.000001 "$WORK/model" --random-weights 1 --ids 1 "$@" 2>&1 |
    sed -n 's/.*(\([0-9.]*\) \([MG]\)B) do not fit.*/\1 \2/p' | awk '{print $2 == "G" ? $1 * 1000 : $1}'
}
lo=$(need --panel-cache "$WORK/rpanels") hi=$(need)
[ -n "$lo" ] && [ -n "$hi" ] || { echo "random weights in no memory: no need said ($lo, $hi)"; exit 1; }
lim=$(awk -v a="$lo" -v b="$hi" 'BEGIN { if (b - a < 0.15) exit 1; printf "%.6f", (a + b) / 2 / 0.9 / 1.048576 }') ||
  { echo "random weights: $lo MB with a panel cache, $hi MB without: too close to test"; exit 1; }
run "$WORK/model" --random-weights 1 --ids "$IDS" --threads 2 --logits-out "$WORK/random.bin"
MOEPPC_MEM_LIMIT_MB=$lim "$WORK/model" --random-weights 1 --ids "$IDS" >/dev/null 2>"$WORK/rlimit.txt"
[ $? -eq 1 ] && grep -q "do not fit .*--panel-cache" "$WORK/rlimit.txt" ||
  { echo "random weights in $lim MiB without a panel cache: not refused so"; cat "$WORK/rlimit.txt"; exit 1; }
for k in 1 2; do
  MOEPPC_MEM_LIMIT_MB=$lim run "$WORK/model" --random-weights 1 --ids "$IDS" --threads 2 --panel-cache "$WORK/rpanels" \
    --logits-out "$WORK/rpanels$k.bin" 2>"$WORK/rpanels$k.txt"
  cmp "$WORK/random.bin" "$WORK/rpanels$k.bin" || { echo "random weights in $lim MiB: other logits (run $k)"; exit 1; }
done
grep -q " 0 steps' panels mapped (0.0 MB), [1-9][0-9]* packed and kept" "$WORK/rpanels1.txt" &&
  grep -q " [1-9][0-9]* steps' panels mapped .*, 0 packed and kept" "$WORK/rpanels2.txt" ||
  { echo "random weights in $lim MiB: not kept, then mapped:"; cat "$WORK/rpanels1.txt" "$WORK/rpanels2.txt"; exit 1; }
V=$("$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); import oracle; print(oracle.load_spec(sys.argv[2]).V)' "$HERE/../oracle" "$SPEC")
run "$PY" "$HERE/../oracle/compare.py" "$WORK/model.bin" "$WORK/interp.bin" --vocab "$V" --tol "$TOL"
if [ -n "$TARGET" ]; then
  "$WORK/model" --weights "$WORK/w.safetensors" --ids "$IDS" --device cuda --logits-out "$WORK/gpu.bin" >"$WORK/gpu.txt" 2>&1
  rc=$?
  if grep -q "no CUDA driver\|CUDA_ERROR_NO_DEVICE\|no CUDA-capable" "$WORK/gpu.txt"; then
    [ $rc -eq 1 ] || { echo "no GPU, yet exit $rc"; cat "$WORK/gpu.txt"; exit 1; }
    echo "no GPU here: --device cuda refused cleanly: $(grep error "$WORK/gpu.txt")"
  else
    [ $rc -eq 0 ] || { echo "--device cuda failed (exit $rc)"; cat "$WORK/gpu.txt"; exit 1; }
    grep "on the GPU" "$WORK/gpu.txt"
    run "$PY" "$HERE/../oracle/compare.py" "$WORK/gpu.bin" "$WORK/interp.bin" --vocab "$V" --tol "$TOL"
  fi
else # built for the CPU only: --device cuda refused as such, whatever the machine
  "$WORK/model" --random-weights 1 --ids "1" --device cuda >"$WORK/gpu.txt" 2>&1
  rc=$?
  [ $rc -eq 1 ] && grep -q "built for the CPU only" "$WORK/gpu.txt" ||
    { echo "--device cuda on a CPU-only executable: exit $rc"; cat "$WORK/gpu.txt"; exit 1; }
fi
# --perplexity against NumPy's from the same logits (--logits-out, f32): each NLL and the perplexity
"$WORK/model" --weights "$WORK/w.safetensors" --ids "$IDS" --perplexity --logits-out "$WORK/ppl.bin" >"$WORK/ppl.txt" ||
  { echo "--perplexity: exit $?"; exit 1; }
run "$PY" - "$WORK/ppl.bin" "$WORK/ppl.txt" "$V" "$IDS" <<'EOF'
import re, sys
import numpy as np
logits = np.fromfile(sys.argv[1], dtype="<f4").astype(np.float64).reshape(-1, int(sys.argv[3]))
ids = [int(t) for t in sys.argv[4].split()]
m = logits.max(axis=1, keepdims=True)
lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
nll = np.array([lse[t] - logits[t, ids[t + 1]] for t in range(len(ids) - 1)])
text = open(sys.argv[2]).read()
got = [float(x) for x in re.findall(r"NLL (-?[0-9.]+)\n", text)]
ppl = float(re.search(r"perplexity ([0-9.e+]+) over %d predictions" % (len(ids) - 1), text).group(1))
assert len(got) == len(nll), (got, nll)
assert np.allclose(got, nll, rtol=0, atol=2e-4), (got, nll)  # printed to 4 decimals; logits rounded to f32
assert abs(ppl / np.exp(nll.mean()) - 1) < 1e-4, (ppl, np.exp(nll.mean()))
print("perplexity %.6g (NumPy %.6g), %d NLLs agree" % (ppl, np.exp(nll.mean()), len(got)))
EOF
# decoding: drawn tokens are a function of the seed and the logits, so the executable and `moeppc run`'s
# JIT-compiled kernels draw the same; top-k 1 is greedy at any temperature; --stop ends at its token
gen() { "$@" 2>&1 | sed -n 's/^ generated[^:]*: //p'; }
DRAW="--generate 12 --temperature 0.8 --top-k 50 --top-p 0.95 --repetition-penalty 1.3 --presence-penalty 0.4
      --frequency-penalty -0.3 --logit-bias 3:-100,7:1.5 --seed 9"
a=$(gen "$WORK/model" --weights "$WORK/w.safetensors" --ids "$IDS" $DRAW)
b=$(gen "$MOEPPC" run "$SPEC" --weights "$WORK/w.safetensors" --ids "$IDS" --backend cpu $DRAW)
[ -n "$a" ] && [ "$a" = "$b" ] || { echo "drawn tokens: executable '$a', moeppc run '$b'"; exit 1; }
greedy=$(gen "$WORK/model" --weights "$WORK/w.safetensors" --ids "$IDS" --generate 6)
k1=$(gen "$WORK/model" --weights "$WORK/w.safetensors" --ids "$IDS" --generate 6 --top-k 1 --temperature 3 --seed 4)
[ -n "$greedy" ] && [ "$greedy" = "$k1" ] || { echo "top-k 1 '$k1' is not greedy '$greedy'"; exit 1; }
read -r g1 g2 _ <<<"$greedy"
stopped=$(gen "$WORK/model" --weights "$WORK/w.safetensors" --ids "$IDS" --generate 6 --stop "$g2")
want=$g1; [ "$g1" = "$g2" ] || want="$g1 $g2"
[ "$stopped" = "$want" ] || { echo "--stop $g2 after '$greedy': '$stopped', want '$want'"; exit 1; }
# the spec's model.eos_token_id stops it the same way; --ignore-eos decodes past it; --stop replaces it
sed "s/^model:$/model:\n  eos_token_id: $g2/" "$SPEC" >"$WORK/eos.yaml"
eos() { gen "$MOEPPC" run "$WORK/eos.yaml" --weights "$WORK/w.safetensors" --ids "$IDS" --backend cpu --generate 6 "$@"; }
[ "$(eos)" = "$want" ] || { echo "eos_token_id $g2 after '$greedy': '$(eos)', want '$want'"; exit 1; }
[ "$(eos --ignore-eos)" = "$greedy" ] || { echo "--ignore-eos: '$(eos --ignore-eos)', want '$greedy'"; exit 1; }
[ "$(eos --stop "$g1")" = "$g1" ] || { echo "--stop $g1 over eos_token_id $g2: '$(eos --stop "$g1")'"; exit 1; }
echo "decoding: drawn '$a' (the executable and moeppc run agree), greedy '$greedy', stopped '$stopped'"
# --help: its own usage (no SPEC, no --tuning: both are built in) and every option described
"$WORK/model" --help >"$WORK/help.txt" || { echo "--help: exit $?"; exit 1; }
head -1 "$WORK/help.txt" | grep -q "^usage: $WORK/model (--weights" || { echo "--help's usage line:"; head -1 "$WORK/help.txt"; exit 1; }
! grep -q -- "--tuning" "$WORK/help.txt" || { echo "--help offers --tuning, which an executable refuses"; exit 1; }
for o in --weights --random-weights --ids --prompts --generate --temperature --top-k --top-p --repetition-penalty \
         --presence-penalty --frequency-penalty --logit-bias --seed --stop --ignore-eos --top --perplexity --quiet \
         --route-stats \
         --logits-out --routes-out --device --backend --threads --precision -O0 --version; do
  grep -v "^usage:" "$WORK/help.txt" | grep -q -- "^  $o" || { echo "--help does not describe $o"; exit 1; }
done
# bad input: a token outside the vocabulary, an empty list, no arguments
expect() { local want=$1; shift; "$@" > "$WORK/out.txt" 2>&1; local rc=$?
           [ $rc -eq "$want" ] || { echo "expected exit $want, got $rc: $*"; cat "$WORK/out.txt"; exit 1; }
           grep -q "error" "$WORK/out.txt" || { echo "no error message: $*"; exit 1; }; }
expect 1 "$WORK/model" --random-weights 1 --ids "3 $V"
expect 1 "$WORK/model" --random-weights 1 --ids " "
expect 2 "$WORK/model"
expect 2 "$WORK/model" --random-weights 1 --ids "1" --generate 2 --top-p 0
expect 2 "$WORK/model" --random-weights 1 --ids "1" --temperature 0.5
expect 2 "$WORK/model" --random-weights 1 --ids "1" --ignore-eos
expect 2 "$WORK/model" --random-weights 1 --ids "1" --generate 2 --repetition-penalty 0
expect 2 "$WORK/model" --random-weights 1 --ids "1" --generate 2 --presence-penalty 2.5
expect 2 "$WORK/model" --random-weights 1 --ids "1" --generate 2 --frequency-penalty -3
expect 2 "$WORK/model" --random-weights 1 --ids "1" --generate 2 --frequency-penalty nan
expect 2 "$WORK/model" --random-weights 1 --ids "1" --generate 2 --logit-bias "$V:1"
expect 2 "$WORK/model" --random-weights 1 --ids "1" --generate 2 --logit-bias "3:1,3:2"
expect 2 "$WORK/model" --random-weights 1 --ids "1" --generate 2 --logit-bias "3:-101"
expect 1 "$WORK/model" --random-weights 1 --ids "1" --perplexity
expect 1 "$WORK/model" --random-weights 1 --ids "1" --generate 2 --stop "$V"
expect 1 "$WORK/model" --weights "$WORK/missing.safetensors" --ids "1"
# a CPU without an extension the kernels were compiled with (made to look so): refused at start,
# the extension named, instead of an illegal instruction in a kernel
expect 1 env MOEPPC_CPU_HIDE=sse2 "$WORK/model" --random-weights 1 --ids "1"
grep -q "this CPU lacks sse2" "$WORK/out.txt" || { echo "the missing extension is not named"; cat "$WORK/out.txt"; exit 1; }
# start-up's progress (MOEPPC_PROGRESS): forced, a line a tenth (stderr is not a terminal) up to 100 %;
# on a terminal (script's pty), the line rewritten and cleared at the end; a model this small shows
# none on a terminal unless forced, and none when stderr is not one
p=$(MOEPPC_PROGRESS=1 "$WORK/model" --random-weights 1 --ids "1 2" --top 0 2>&1 >/dev/null)
[ "$(grep -c "^$WORK/model: weights ready: " <<<"$p")" -le 11 ] &&
  grep -q "^$WORK/model: weights ready: 100% (" <<<"$p" || { echo "MOEPPC_PROGRESS=1: $p"; exit 1; }
p=$("$WORK/model" --random-weights 1 --ids "1 2" --top 0 2>&1 >/dev/null)
! grep -q "weights ready" <<<"$p" || { echo "progress off a terminal: $p"; exit 1; }
if command -v script >/dev/null; then
  p=$(script -qec "MOEPPC_PROGRESS=1 '$WORK/model' --random-weights 1 --ids '1 2' --top 0 >/dev/null" /dev/null |
    od -An -c | tr -d ' \n')
  [[ "$p" == *'\r'*"weightsready:100%"*'\r033[K' ]] || { echo "progress on a terminal: $p"; exit 1; }
  p=$(script -qec "'$WORK/model' --random-weights 1 --ids '1 2' --top 0 >/dev/null" /dev/null)
  [ -z "$p" ] || { echo "progress on a terminal, a small model: $p"; exit 1; }
fi
# --version: its model, what built it, the CPU its kernels were compiled for and whether this one runs
# them (an extension hidden: not), its GPU kernels
name=$(sed -n 's/^name: *//p' "$SPEC")
v=$("$WORK/model" --version) || { echo "--version: exit $?"; exit 1; }
ver=$("$MOEPPC" --version)
grep -q "^$WORK/model: $name ([a-z0-9]*, [0-9]* layers*), built by $ver$" <<<"$v" &&
  grep -Eq "^  CPU kernels:  [0-9]+, compiled for [a-z0-9_-]+ \(.*\+sse2.*\); this CPU runs them$" <<<"$v" ||
  { echo "--version: $v"; exit 1; }
if [ -n "$TARGET" ]; then
  grep -Eq "^  GPU kernels:  [0-9]+, for $TARGET .*, tiles by the rule$" <<<"$v" ||
    { echo "--version's GPU kernels: $v"; exit 1; }
else
  grep -q "^  GPU kernels:  none (built for the CPU only)$" <<<"$v" || { echo "--version's GPU kernels: $v"; exit 1; }
fi
v=$(MOEPPC_CPU_HIDE=sse2 "$WORK/model" --version) && grep -q "; this CPU lacks sse2: " <<<"$v" ||
  { echo "--version, sse2 hidden: $v"; exit 1; }
echo "built executable matches the interpreter; bad input rejected"
