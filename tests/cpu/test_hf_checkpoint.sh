#!/bin/bash
# test_hf_checkpoint.sh MOEPPC WORKDIR: the path a user takes with the released model, on a tiny one:
# a Hugging Face config.json → moeppc import-hf → a bf16 checkpoint sharded like HF stores it
# (model.safetensors.index.json + shards, opened through the directory) → moeppc run on the CPU
# backend and on the interpreter → both against the NumPy oracle (bf16: 2e-2).
set -u
MOEPPC=$1 WORK=$2
PY=${PYTHON:-/usr/bin/python3}
HERE=$(cd "$(dirname "$0")" && pwd)
IDS="5 77 140 3 255 9 31 200"
rm -rf "$WORK" && mkdir -p "$WORK/ckpt" || exit 2
run() { echo "+ $*"; "$@" || { echo "FAILED (exit $?): $*"; exit 1; }; }
run "$MOEPPC" import-hf "$HERE/hf-tiny/config.json" -o "$WORK/spec.yaml"
run "$MOEPPC" check "$WORK/spec.yaml"
run "$MOEPPC" init-weights "$WORK/spec.yaml" --seed 6 -o "$WORK/full.safetensors"
run "$PY" "$HERE/shard.py" "$WORK/full.safetensors" "$WORK/ckpt" --shards 3
run "$MOEPPC" run "$WORK/spec.yaml" --weights "$WORK/ckpt" --ids "$IDS" --backend cpu --logits-out "$WORK/cpu.bin"
run "$MOEPPC" run "$WORK/spec.yaml" --weights "$WORK/ckpt/model.safetensors.index.json" --ids "$IDS" \
    --backend interp --logits-out "$WORK/interp.bin"
run "$PY" "$HERE/../oracle/oracle.py" "$WORK/spec.yaml" "$WORK/ckpt" --ids "$IDS" --logits-out "$WORK/oracle.bin"
run "$PY" "$HERE/../oracle/compare.py" "$WORK/cpu.bin" "$WORK/oracle.bin" --vocab 256 --tol 2e-2
run "$PY" "$HERE/../oracle/compare.py" "$WORK/interp.bin" "$WORK/oracle.bin" --vocab 256 --tol 2e-2
echo "imported config, sharded bf16 checkpoint: CPU backend and interpreter agree with the oracle"
