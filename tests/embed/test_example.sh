#!/bin/bash
# test_example.sh c|python|cuda|cuda-python MOEPPC REF LIB SPEC WORK: the example of examples/embed_c (built through
# pkg-config against LIB only, shared and static) or examples/embed_python (ctypes) against the
# reference interpreter (embed_layer_ref) on a checkpoint of SPEC: the spec's first MoE layer without
# residual_in and its last one with one (when the spec has a gating residual), 19 tokens and 5
# (its last layer: a decode-sized batch), several thread
# counts. Each "--mutate" run (a negated down-projection; a dropped residual_in) must fail, or the
# check could not catch them. cuda: LIB is a CUDA build and examples/embed_c is built with
# -DEMBED_CUDA and the CUDA runtime ($CUDA_HOME, default /usr/local/cuda; the libcudart of folder
# $CUDART_DIR when set: the CUDA emulator's test one, with LIB emitted for --target emu); each case
# runs with device weights, host weights and in place; exit 77 (skipped) without the runtime's header
# or without a usable GPU. cuda-python: the same cases through examples/embed_python --cuda (the
# driver API by ctypes: libcuda.so.1, or $MOEPPC_CUDA_DRIVER). Env: CC, PKG_CONFIG, PYTHON, CUDA_HOME,
# CUDART_DIR, MOEPPC_CUDA_DRIVER, EMBED_MUTANTS=0 (no mutants: tests/oracle/random_models.py's).
set -u
KIND=$1 MOEPPC=$2 REF=$3 LIB=$4 SPEC=$5 WORK=$6
CC=${CC:-cc} PKG_CONFIG=${PKG_CONFIG:-pkg-config} PY=${PYTHON:-/usr/bin/python3}
HERE=$(cd "$(dirname "$0")" && pwd)
EX=$HERE/../../examples
fail() { echo "FAILED: $*"; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
export PKG_CONFIG_PATH=$LIB
sanitized=0
"$PKG_CONFIG" --cflags moepp_layer | grep -q fsanitize=address && sanitized=1

if [ "$KIND" = cuda ]; then
  CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  [ -e "$CUDA_HOME/include/cuda_runtime.h" ] || { echo "skipped: no CUDA runtime in $CUDA_HOME"; exit 77; }
  CUDART_DIR=${CUDART_DIR:-$CUDA_HOME/lib64}
  cudart=("-I$CUDA_HOME/include" "-L$CUDART_DIR" -lcudart "-Wl,-rpath,$CUDART_DIR")
  "$CC" -O2 -Wall -Wextra -Werror -DEMBED_CUDA "$EX/embed_c/embed_layer.c" $("$PKG_CONFIG" --cflags --libs moepp_layer) \
        "${cudart[@]}" -lm -Wl,-rpath,"$("$PKG_CONFIG" --variable=libdir moepp_layer)" -o "$WORK/embed_layer" ||
        fail "building embed_c for the GPU (shared)"
  "$CC" -O2 -Wall -Wextra -Werror -DEMBED_CUDA "$EX/embed_c/embed_layer.c" $("$PKG_CONFIG" --cflags moepp_layer) \
        $("$PKG_CONFIG" --variable=static_libs moepp_layer) "${cudart[@]}" -o "$WORK/embed_layer_static" ||
        fail "building embed_c for the GPU (static)"
  run() { "$WORK/embed_layer" "$@"; }
  run_static() { "$WORK/embed_layer_static" "$@"; }
elif [ "$KIND" = c ]; then
  "$CC" -O2 -Wall -Wextra -Werror "$EX/embed_c/embed_layer.c" $("$PKG_CONFIG" --cflags --libs moepp_layer) -lm \
        -Wl,-rpath,"$("$PKG_CONFIG" --variable=libdir moepp_layer)" -o "$WORK/embed_layer" || fail "building embed_c (shared)"
  "$CC" -O2 -Wall -Wextra -Werror "$EX/embed_c/embed_layer.c" $("$PKG_CONFIG" --cflags moepp_layer) \
        $("$PKG_CONFIG" --variable=static_libs moepp_layer) -o "$WORK/embed_layer_static" || fail "building embed_c (static)"
  readelf -d "$WORK/embed_layer_static" | grep -q moepp_layer && fail "the static build still needs the shared library"
  run() { "$WORK/embed_layer" "$@"; }
  run_static() { "$WORK/embed_layer_static" "$@"; }
else # python, cuda-python
  if [ $sanitized = 1 ]; then
    # An ASan-instrumented library inside an uninstrumented Python: its runtime must come first, and
    # Python's own allocations are not leaks worth reporting. clang's runtime holds its UBSan's too.
    rt=$("$CC" -print-file-name="libclang_rt.asan-$(uname -m).so")
    if [ "${rt#/}" != "$rt" ]; then export LD_PRELOAD=$rt
    else export LD_PRELOAD="$("$CC" -print-file-name=libasan.so) $("$CC" -print-file-name=libubsan.so)"; fi
    export ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0
  fi
  cuda_flag=(); [ "$KIND" = cuda-python ] && cuda_flag=(--cuda)
  run() { "$PY" "$EX/embed_python/run_layer.py" "$LIB" "$@" "${cuda_flag[@]}"; }
  run_static() { run "$@"; }
fi

"$MOEPPC" init-weights "$SPEC" --seed 7 -o "$WORK/w.safetensors" > /dev/null || fail "init-weights"
read -r first last residual < <("$PY" - "$SPEC" <<'PYEOF'
import sys, yaml
s = yaml.safe_load(open(sys.argv[1]))
L, every = s["model"]["layers"], s["moe"]["every"]
moe = [l for l in range(L) if (l + 1) % every == 0]
print(moe[0], moe[-1], int(s["moe"]["router"]["residual"]))
PYEOF
)
# (layer, seed, tokens, flag): 19 tokens a prefill-sized call; 5 a decode-sized batch, where the CUDA
# build's fused router also combines and dispatches (up to 16 tokens)
cases=("$first 1 19 --no-residual")
if [ "$residual" = 1 ]; then cases+=("$last 2 19" "$last 3 5"); else cases+=("$last 3 5 --no-residual"); fi
n=0
for c in "${cases[@]}"; do
  read -r layer seed tokens flag <<< "$c"
  D="$WORK/case$n"; n=$((n + 1))
  mkdir -p "$D" && ln -sf "$WORK/w.safetensors" "$D/w.safetensors"
  "$REF" "$SPEC" "$WORK/w.safetensors" "$layer" "$tokens" "$seed" "$D" $flag > /dev/null ||
    fail "reference for layer $layer, $tokens tokens"
  if [ "$KIND" = cuda ] || [ "$KIND" = cuda-python ]; then
    run "$D"; rc=$?
    [ $rc -eq 77 ] && { echo "skipped: no usable GPU"; exit 77; }
    [ $rc -eq 0 ] || fail "layer $layer on the GPU (device weights): the library differs from the reference"
    run "$D" --host-weights || fail "layer $layer on the GPU (host weights, uploaded)"
    run "$D" --in-place || fail "layer $layer on the GPU (in place: y = x, residual_out = residual_in)"
  else
    for threads in 1 3; do
      run "$D" --threads $threads || fail "layer $layer, $threads threads: the library differs from the reference"
    done
  fi
  run_static "$D" --threads 2 || fail "layer $layer (static library)"
  [ "${EMBED_MUTANTS:-1}" = 0 ] && continue # (random models: a layer may route no token to an FFN expert)
  run "$D" --mutate weight > "$WORK/mutant.txt" 2>&1 && fail "a negated down-projection was not caught"
  grep -q MISMATCH "$WORK/mutant.txt" || { cat "$WORK/mutant.txt"; fail "no MISMATCH verdict for the weight mutant"; }
  if [ -z "$flag" ]; then
    run "$D" --mutate residual > "$WORK/mutant.txt" 2>&1 && fail "a dropped residual_in was not caught"
    grep -q MISMATCH "$WORK/mutant.txt" || fail "no MISMATCH verdict for the residual mutant"
  fi
done
if [ "${KIND#cuda-}" = python ] && [ "$first" -gt 0 ]; then  # a dense layer is refused with its status
  "$PY" - "$EX/embed_python" "$LIB" <<'PYEOF' || fail "layer 0 (dense) was not refused"
import sys; sys.path.insert(0, sys.argv[1]); import moepp_layer as m
lib = m.Library(sys.argv[2] + "/libmoepp_layer.so")
gpu = m.CudaDriver() if lib.info["backend"] == m.BACKEND_CUDA else None
try:
    m.Layer(lib, 0, {}, device=gpu); sys.exit(1)
except m.MoeppError as e:
    print("dense layer 0:", e); sys.exit(0 if e.status == 2 and "dense" in str(e) else 1)
PYEOF
fi
caught=$([ "${EMBED_MUTANTS:-1}" = 0 ] || echo "; every mutant caught")
echo "embed $KIND: ${#cases[@]} case(s) of $(basename "$SPEC") match the reference$caught"
