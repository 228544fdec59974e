#!/usr/bin/env bash
# layer_vs_openblas.sh [--smoke] [--rounds N] [--zc-share P]: the expert part of the MoE++ 7B layer
# (zero-computation terms, dispatch, grouped GEMMs, combine) compiled by moeppc against the per-expert loop
# over OpenBLAS sgemm that mirrors the published PyTorch code, f32, 2 threads, T = 1, 64, 512,
# interleaved round by round in one session; prints a table with the ratio. Both sides draw the same
# synthetic routing (same generator and seed: identical picks), by default with the share of
# zero-computation picks a uniform router gives (4 of 20 experts: 0.2), so the comparison is exact.
# MOEPPC and BASELINE name the two programs (defaults: build/moeppc, build/bench/bench_baseline_openblas).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
MOEPPC=${MOEPPC:-$root/build/moeppc}
BASELINE=${BASELINE:-$root/build/bench/bench_baseline_openblas}
PY=${PYTHON:-/usr/bin/python3}
spec=$root/specs/moepp-7b.yaml
base_args=()
tokens=1,64,512
rounds=3
reps=7
share=0.2
if [ "${1:-}" = --smoke ]; then
  spec=$root/specs/tiny/tiny-moepp.yaml; tokens=1,8; rounds=1; reps=1
  base_args=(--hidden 64 --inter 32 --ffn 4 --allow-unfair)
fi
while [ $# -gt 0 ]; do
  case "$1" in --rounds) rounds=$2; shift ;; --zc-share) share=$2; shift ;; esac
  shift
done
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
echo "# $MOEPPC bench $spec --experts --zc-share $share --dtype f32 --tokens $tokens --threads 2 --reps $reps --json"
echo "# OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE $BASELINE ${base_args[*]} --zc-share $share --tokens $tokens --threads 2 --reps $reps --json"
out=$(mktemp)
for r in $(seq "$rounds"); do
  "$MOEPPC" bench "$spec" --experts --zc-share "$share" --dtype f32 --tokens "$tokens" --threads 2 --reps "$reps" \
      --json | grep '"experts"' | sed 's/^/moeppc /' >> "$out"
  "$BASELINE" "${base_args[@]}" --zc-share "$share" --tokens "$tokens" --threads 2 --reps "$reps" --json \
      | grep '"tokens"' | sed 's/^/openblas /' >> "$out"
done
"$PY" - "$out" <<'PYEOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    impl, js = line.split(" ", 1)
    d = json.loads(js)
    runs.setdefault((impl, d["tokens"]), []).append(d)
core = next((d["corename"] for (i, _), ds in runs.items() if i == "openblas" for d in ds), "?")
print("OpenBLAS core: %s" % core)
print("| T | FFN picks (moeppc / OpenBLAS) | moeppc ms (median of rounds; range) | OpenBLAS loop ms | moeppc tokens/s | OpenBLAS tokens/s | ratio |")
print("|---|---|---|---|---|---|---|")
for T in sorted({t for (_, t) in runs}):
    a = [d["median_s"] for d in runs.get(("moeppc", T), [])]
    b = [d["median_s"] for d in runs.get(("openblas", T), [])]
    if not a or not b: continue
    ma, mb = statistics.median(a), statistics.median(b)
    pa, pb = runs[("moeppc", T)][0]["ffn_picks"], runs[("openblas", T)][0]["ffn_picks"]
    print("| %d | %d / %d | %.2f (%.2f-%.2f) | %.2f (%.2f-%.2f) | %.0f | %.0f | %.2fx |" % (T, pa, pb, 1e3*ma,
          1e3*min(a), 1e3*max(a), 1e3*mb, 1e3*min(b), 1e3*max(b), T/ma, T/mb, mb/ma))
PYEOF
rm -f "$out"
