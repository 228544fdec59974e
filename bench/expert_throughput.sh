#!/usr/bin/env bash
# expert_throughput.sh [--smoke] [--out DIR] [--reps N] [--dtype f32|bf16] [--sizes "0.6b 7b"] [--tokens "4096"]:
# the paper's headline (MoE++ expert throughput against vanilla MoE, Table 3) measured with moeppc's own
# CPU kernels.
#
# For each paper size it times the expert part of one layer (dispatch, grouped GEMMs, zero-computation
# terms, combine) of the MoE++ spec and of its vanilla twin (f32 weights unless --dtype), at T = 512 and 4096, with routing whose
# zero-computation share follows the paper's tau (FFN share tau*N_ffn / (tau*N_ffn + N_zc), §3.4), and
# with the random router's own decisions. Writes DIR/expert_throughput.md (the table), .tsv (the data)
# and .svg (measured vs ideal speed-up against the zero-computation share, with gnuplot).
# MOEPPC (default build/moeppc) is the compiler; PYTHON (default /usr/bin/python3) assembles the table.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
MOEPPC=${MOEPPC:-$root/build/moeppc}
PY=${PYTHON:-/usr/bin/python3}
out=$root/bench
reps=5
dtype=f32
sizes="0.6b 1b 2b 7b"
tokens="512 4096"
taus="0.1 0.25 0.5 0.75 1.0"
smoke=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; sizes="tiny"; tokens="8 64"; taus="0.25 1.0"; reps=1 ;;
    --out) out=$2; shift ;;
    --reps) reps=$2; shift ;;
    --dtype) dtype=$2; shift ;;   # the weights' (bf16: on the bf16 dot product where the CPU gains from it)
    --sizes) sizes=$2; shift ;;
    --tokens) tokens=$2; shift ;;
    *) echo "usage: $0 [--smoke] [--out DIR] [--reps N] [--dtype f32|bf16] [--sizes LIST] [--tokens LIST]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
tsv=$out/expert_throughput.tsv
spec_of() { if [ "$1" = tiny ]; then echo "$root/specs/tiny/tiny-$2.yaml"; else echo "$root/specs/$2-$1.yaml"; fi; }

echo "# $0 $*"
ceil=$(dirname "$MOEPPC")/codegen/llvm/bench_ceilings
if [ -x "$ceil" ] && [ $smoke = 0 ]; then "$ceil" | sed 's/^/# /'; fi
printf 'size\ttokens\tmode\ttau\tzc_share\tffn_picks\tmedian_s\tvanilla_picks\tvanilla_s\n' > "$tsv"
for size in $sizes; do
  moe=$(spec_of "$size" moepp)
  van=$(spec_of "$size" vanilla)
  [ "$size" = tiny ] && van=$root/specs/tiny/tiny-vanilla.yaml
  # N_ffn and N_zc of the MoE++ spec, from moeppc check's expert line "E = Nf FFN + Nc constant + ..."
  read -r nf nzc < <("$MOEPPC" check "$moe" | "$PY" -c '
import re, sys
m = re.search(r"= (\d+) FFN \+ (\d+) constant \+ (\d+) copy \+ (\d+) zero", sys.stdin.read())
print(m.group(1), int(m.group(2)) + int(m.group(3)) + int(m.group(4)))')
  for T in $tokens; do
    vj=$("$MOEPPC" bench "$van" --experts --dtype "$dtype" --tokens "$T" --zc-share 0 --reps "$reps" --json | grep '"experts"')
    vp=$(echo "$vj" | "$PY" -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["ffn_picks"], d["median_s"])')
    run_moe() {  # run_moe MODE TAU [SHARE]
      local args=(--experts --dtype "$dtype" --tokens "$T" --reps "$reps" --json)
      [ -n "${3:-}" ] && args+=(--zc-share "$3")
      "$MOEPPC" bench "$moe" "${args[@]}" | grep '"experts"' | "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read()); mode, tau, share, vp = sys.argv[1:5]
picks = d["ffn_picks"]; k_t = int(sys.argv[5])
share = share if share else "%.4f" % (1 - picks / k_t)
print("\t".join([sys.argv[6], str(d["tokens"]), mode, tau, share, str(picks), "%.6g" % d["median_s"]] + vp.split()))' \
        "$1" "$2" "${3:-}" "$vp" "$(echo "$vp" | cut -d' ' -f1)" "$size" >> "$tsv"
    }
    for tau in $taus; do
      share=$("$PY" -c "t=$tau; nf=$nf; nz=$nzc; print('%.4f' % (1 - t*nf/(t*nf + nz)))")
      run_moe tau "$tau" "$share"
    done
    run_moe router -
  done
done

"$PY" - "$tsv" "$out/expert_throughput.md" <<'PYEOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
with open(sys.argv[2], "w") as f:
    f.write("| size | T | routing | zero-comp. share | FFN picks (MoE++ / vanilla) | vanilla ms | MoE++ ms | speed-up | ideal | efficiency |\n")
    f.write("|---|---|---|---|---|---|---|---|---|---|\n")
    for size, T, mode, tau, share, picks, t, vpicks, vt in rows:
        speed, ideal = float(vt) / float(t), float(vpicks) / max(float(picks), 1.0)
        label = "tau %s" % tau if mode == "tau" else "random router"
        f.write("| %s | %s | %s | %.3f | %s / %s | %.2f | %.2f | %.2fx | %.2fx | %.2f |\n" % (
            size, T, label, float(share), picks, vpicks, 1e3 * float(vt), 1e3 * float(t), speed, ideal, speed / ideal))
PYEOF
cat "$out/expert_throughput.md"

if command -v gnuplot >/dev/null 2>&1; then
  T=$(echo $tokens | awk '{print $NF}')
  plot=""
  for size in $sizes; do
    awk -F'\t' -v s="$size" -v T="$T" 'NR > 1 && $1 == s && $2 == T { print $5, $9/$7, $8/($6 > 0 ? $6 : 1) }' "$tsv" | sort -n > "$out/.et_$size.dat"
    plot="$plot '$out/.et_$size.dat' using 1:2 with linespoints title '$size measured', '$out/.et_$size.dat' using 1:3 with lines dashtype 2 title '$size ideal',"
  done
  gnuplot -e "set terminal svg size 720,480; set output '$out/expert_throughput.svg'; set title 'MoE++ over vanilla MoE: expert-part speed-up at T = $T ($dtype, CPU)'; set xlabel 'share of picks to zero-computation experts'; set ylabel 'speed-up over vanilla'; set key left top; plot ${plot%,}"
  rm -f "$out"/.et_*.dat
  echo "plot: $out/expert_throughput.svg"
else
  echo "gnuplot not installed (apt-get install gnuplot-nox): no plot"
fi
