#!/bin/bash
# test_bench_panels.sh MOEPPC WORKDIR: `moeppc bench --panel-cache DIR` keeps --layer's and --model's
# packed weights in DIR's files, and a second bench maps every step's from them (said on stderr; the
# figures still printed); an empty DIR is a usage error (exit 2) naming the option. Timing is not
# asserted (README: the 7B layer runs alike on mapped panels).
set -u
MOEPPC=$1 WORK=$2
SPEC=$(cd "$(dirname "$0")/../../specs/tiny" && pwd)/tiny-bf16.yaml
fail() { echo "FAILED: $*"; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
for k in 1 2; do
  "$MOEPPC" bench "$SPEC" --tokens 1,8 --reps 2 --panel-cache "$WORK/panels" >"$WORK/out$k" 2>"$WORK/err$k" ||
    fail "bench --panel-cache (run $k): $(cat "$WORK/err$k")"
  cat "$WORK/out$k" "$WORK/err$k"
  grep -q "^layer  T = 8 " "$WORK/out$k" && grep -q "^model  T = 8 " "$WORK/out$k" || fail "run $k: figures missing"
done
# (two models a run: the layer's steps and the whole model's; the layer's files serve the model's
# first layer, the same weights)
grep -q "^moeppc bench: panel cache .*: 0 steps' panels mapped (0.0 MB), [1-9][0-9]* packed and kept" "$WORK/err1" ||
  fail "run 1: the layer's panels not kept"
n=$(grep -c "^moeppc bench: panel cache .*: [1-9][0-9]* steps' panels mapped .*, 0 packed and kept" "$WORK/err2")
[ "$n" -eq 2 ] || fail "run 2: $n of the 2 models mapped all their panels"
ls "$WORK/panels"/panels-*.bin >/dev/null 2>&1 || fail "no panel files"
err=$("$MOEPPC" bench "$SPEC" --panel-cache "" 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$err" | grep -q -- "--panel-cache" || fail "--panel-cache '': exit $rc: $err"
echo "ok: bench --panel-cache"
