#!/bin/bash
# test_prompts.sh MOEPPC [DEVICE]: `moeppc run --prompts F` runs each line of F as a new sequence on the
# model loaded once, and prints for each what `--ids LINE` prints alone (predictions, routing,
# generated tokens): a long prompt, then a short one over its stale cache positions, then the long one
# again; blank and # lines skipped; a bad line named by its number, the rest still run, exit 1.
# DEVICE: cpu (default) or cuda (with MOEPPC_CUDA_DRIVER: the emulator, from CTest).
set -u
MOEPPC=$1 DEVICE=${2:-cpu}
SPEC=$(cd "$(dirname "$0")" && pwd)/../../specs/tiny/tiny-moepp.yaml
WORK=$(mktemp -d) && trap 'rm -rf "$WORK"' EXIT
LONG="3 17 42 99 128 200 255 0 64 7" SHORT="5 6"
printf '%s\n\n# a comment\n%s\n1 2 999\n%s\n' "$LONG" "$SHORT" "$LONG" >"$WORK/prompts"
OPTS=(--random-weights 1 --device "$DEVICE" --generate 5 --route-stats --top 3)
# what a run prints of one prompt, without the timings
block() { grep -v -e "^moeppc run:" -e "^ran " -e "^ decode:" -e "^== prompt" -e "^$"; }
"$MOEPPC" run "$SPEC" "${OPTS[@]}" --prompts "$WORK/prompts" >"$WORK/all.txt" 2>"$WORK/err.txt"
rc=$?
[ $rc -eq 1 ] || { echo "a bad line: exit $rc, want 1"; cat "$WORK/err.txt"; exit 1; }
grep -q "error: --prompts line 5: token 3 is 999, outside the vocabulary" "$WORK/err.txt" ||
  { echo "the bad line is not named:"; cat "$WORK/err.txt"; exit 1; }
[ "$(grep -c "^== prompt" "$WORK/all.txt")" -eq 3 ] || { echo "not 3 prompts run:"; cat "$WORK/all.txt"; exit 1; }
for k in 1 2 3; do
  ids=$([ $k -eq 2 ] && echo "$SHORT" || echo "$LONG")
  "$MOEPPC" run "$SPEC" "${OPTS[@]}" --ids "$ids" | block >"$WORK/alone$k.txt" || { echo "--ids '$ids' failed"; exit 1; }
  awk -v k=$k '/^== prompt /{n++} n==k' "$WORK/all.txt" | block >"$WORK/in$k.txt"
  grep -q "generated" "$WORK/in$k.txt" || { echo "prompt $k: nothing generated"; cat "$WORK/all.txt"; exit 1; }
  diff "$WORK/alone$k.txt" "$WORK/in$k.txt" || { echo "prompt $k ('$ids') differs from its run alone"; exit 1; }
done
printf '%s\n' "$SHORT" | "$MOEPPC" run "$SPEC" "${OPTS[@]}" --prompts - | block | diff "$WORK/alone2.txt" - ||
  { echo "--prompts - (standard input) differs"; exit 1; }
echo "--prompts on $DEVICE: 3 prompts as alone, the bad line named, standard input read"
