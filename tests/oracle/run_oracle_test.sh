#!/bin/bash
# run_oracle_test.sh MOEPPC SPEC SEED "IDS" TOL WORKDIR [--expect-fail MUTATION]
#
# Checks `moeppc run` against the float64 NumPy oracle on seeded random weights:
#   MOEPPC init-weights SPEC --seed SEED -o WORKDIR/w.safetensors
#   MOEPPC run SPEC --weights WORKDIR/w.safetensors --ids IDS --logits-out WORKDIR/interp.bin
#          --routes-out WORKDIR/interp_routes.txt       (omitted when ORACLE_NO_ROUTES=1)
#   oracle.py SPEC WORKDIR/w.safetensors --ids IDS --logits-out WORKDIR/oracle.bin
#          --routes-out WORKDIR/routes.txt [--mutate MUTATION]
#   compare.py interp.bin oracle.bin --vocab V --tol TOL [--routes-a .. --routes-b ..]
# Normal mode: exit status of compare. --expect-fail MUTATION: the oracle runs mutated and the test
# passes only if compare FAILS (the comparison detects the mutation).
# PYTHON overrides the interpreter (default /usr/bin/python3); MOEPPC_RUN_ARGS adds options to
# `moeppc run` (e.g. "--backend cpu").
set -u
if [ $# -ne 6 ] && [ $# -ne 8 ]; then
    echo "usage: $0 MOEPPC SPEC SEED \"IDS\" TOL WORKDIR [--expect-fail MUTATION]" >&2
    exit 2
fi
MOEPPC=$1 SPEC=$2 SEED=$3 IDS=$4 TOL=$5 WORK=$6
MUTATION=""
if [ $# -eq 8 ]; then
    [ "$7" = "--expect-fail" ] || { echo "$0: unknown option $7" >&2; exit 2; }
    MUTATION=$8
fi
PY=${PYTHON:-/usr/bin/python3}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$WORK" || exit 2
rm -f "$WORK"/w.safetensors "$WORK"/interp.bin "$WORK"/oracle.bin "$WORK"/routes.txt "$WORK"/interp_routes.txt

step() {   # step NAME CMD...: run, report and abort (exit 2) on failure
    local name=$1; shift
    echo "+ $*"
    "$@" || { echo "$0: $name failed (exit $?)" >&2; exit 2; }
}

VOCAB=$("$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); import oracle; print(oracle.load_spec(sys.argv[2]).V)' "$HERE" "$SPEC") \
    || { echo "$0: cannot read spec $SPEC" >&2; exit 2; }

# A Python stand-in (fake_moeppc.py) runs under the same interpreter.
MOE=("$MOEPPC")
case "$MOEPPC" in *.py) MOE=("$PY" "$MOEPPC") ;; esac

step init-weights "${MOE[@]}" init-weights "$SPEC" --seed "$SEED" -o "$WORK/w.safetensors"
ROUTE_ARGS=()
CMP_ROUTES=()
if [ "${ORACLE_NO_ROUTES:-0}" != 1 ]; then
    ROUTE_ARGS=(--routes-out "$WORK/interp_routes.txt")
    CMP_ROUTES=(--routes-a "$WORK/interp_routes.txt" --routes-b "$WORK/routes.txt")
fi
read -r -a RUN_EXTRA <<< "${MOEPPC_RUN_ARGS:-}"
step "moeppc run" "${MOE[@]}" run "$SPEC" --weights "$WORK/w.safetensors" --ids "$IDS" \
    --logits-out "$WORK/interp.bin" "${ROUTE_ARGS[@]}" "${RUN_EXTRA[@]}"
MUT_ARGS=()
[ -n "$MUTATION" ] && MUT_ARGS=(--mutate "$MUTATION")
step oracle "$PY" "$HERE/oracle.py" "$SPEC" "$WORK/w.safetensors" --ids "$IDS" \
    --logits-out "$WORK/oracle.bin" --routes-out "$WORK/routes.txt" "${MUT_ARGS[@]}"

echo "+ compare.py interp.bin oracle.bin --tol $TOL"
"$PY" "$HERE/compare.py" "$WORK/interp.bin" "$WORK/oracle.bin" --vocab "$VOCAB" --tol "$TOL" "${CMP_ROUTES[@]}"
rc=$?
if [ -z "$MUTATION" ]; then
    exit $rc
fi
if [ $rc -eq 1 ]; then
    echo "expect-fail: mutation '$MUTATION' detected (compare failed as it should)"
    exit 0
fi
if [ $rc -eq 0 ]; then
    echo "expect-fail: mutation '$MUTATION' NOT detected: moeppc matches the mutated oracle within $TOL" >&2
else
    echo "expect-fail: compare could not run (exit $rc)" >&2
fi
exit 1
