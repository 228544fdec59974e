#!/usr/bin/env bash
# device-check.sh: the one prepared script for a machine with an NVIDIA GPU. In one go (5 minutes
# for the issue's checks; the extras after them while MOEPPC_DEVICE_CHECK_BUDGET seconds last) it
#   1. builds (or takes the binaries scripts/device-prebuild.sh made elsewhere: MOEPPC_PREBUILT=DIR),
#   2. measures the GPU's ceilings in the same run (PyTorch, when the machine has it): dense bf16
#      matrix product (8192^3) and device-to-device copy bandwidth (bytes read + written),
#   3. runs the generated kernels against C references (tests/cuda/test_cuda_gpu.c) and the whole
#      tiny and 0.6B models and the 7B layer of step 5 against the interpreter on fresh random inputs,
#      outputs poisoned before every call (tests/cuda/test_cuda_model.c),
#   4. decodes with `moeppc run --device cuda` (CUDA graph per token), and (an extra) runs the CUDA build of the
#      embedding library (tests/embed: examples/embed_c and examples/embed_python --cuda on the GPU
#      against the interpreter: device and host weights, in place, with and without the gating
#      residual; embed_c needs the CUDA runtime; a library emitted for the CUDA emulator refused),
#   5. benchmarks the 7B layer at T = 1, 64, 512, 4096 (on sm_90 the grouped GEMMs on wgmma with W by the
#      TMA, programmatic launches: the defaults there) and checks it at 512 and 4096 against the CPU
#      backend (tests/oracle/compare.py --flipped-rows); then, budget permitting, in this order: the tiny
#      models on the other forms (mma.sync, wgmma alone, warp-specialised, plain launches), random models
#      against the NumPy oracle (tests/oracle/random_models.py), tuning (moeppc tune
#      --target sm_90 at T = 4096, 512, 64, 1, written to $OUT/gpu-sm90-moepp-7b.yaml) and a bench
#      with its database at the table's T (issue 6's speed-up), the embedding library (step 4's),
#      compute-sanitizer's memcheck and racecheck on the kernels' tests, the 7B layer's A/Bs, decoding
#      A/Bs, batched decoding (--batch 8 against one by one), a batch's decode attention (one launch
#      over the caches' table against a launch a sequence, the 7B's and Mixtral's GQA layer), a shared
#      prefix (forked against run whole), the vanilla and own-routing benches, tuning the other paper
#      sizes for sm_90; and prints the table last.
# Logs go to $OUT (the device tool brings them back) or ./device-check-out; scratch files to work.tgz there.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-check-out}
mkdir -p "$out"
# $out gets the log, the 7B table and the GPU tuning databases (the device tool brings back 8 files);
# everything else goes to $work, brought back as one archive
work=$(mktemp -d)
trap 'tar czf "$out/work.tgz" -C "$work" . 2>/dev/null; rm -rf "$work"' EXIT
trap 'exit 143' TERM INT
root=$PWD
step() { echo; echo "== $*"; }
# run SECONDS CMD...: with a time limit; a failure is reported and counted, never fatal
fails=0
# The issue's checks (kernels, models, decoding, the 7B table) fit in 5 minutes; what follows them runs
# while the elapsed time is under MOEPPC_DEVICE_CHECK_BUDGET seconds (default 270: the whole script
# stays near 5 minutes; a session with more device time gives it more, e.g. 540).
budget=${MOEPPC_DEVICE_CHECK_BUDGET:-270}
more() {
  if [ "$SECONDS" -lt "$budget" ]; then return 0; fi
  echo; echo "== skipped at ${SECONDS} s (MOEPPC_DEVICE_CHECK_BUDGET=$budget): $*"
  return 1
}
run() {
  local limit=$1; shift
  echo "\$ $*"
  timeout "$limit" "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then echo "!! exit status $rc$([ $rc -eq 124 ] && echo ' (time limit)')"; fails=$((fails + 1)); fi
  return 0
}

{
  step "$(date -u)  $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  if [ -n "${MOEPPC_PREBUILT:-}" ]; then
    bin=$root/$MOEPPC_PREBUILT
    export LD_LIBRARY_PATH="$bin/lib:${LD_LIBRARY_PATH:-}"
    step "prebuilt binaries from $MOEPPC_PREBUILT ($(cat "$bin/BUILD_INFO" 2>/dev/null))"
  else
    step "build (Release, tests on)"
    bash scripts/deps.sh --tests
    cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DMOEPPC_TESTS=ON >/dev/null &&
      cmake --build build-device -j"$(nproc)" --target moeppc cuda_gpu cuda_model >/dev/null || echo "!! build failed"
    bin=$root/build-device
    ln -sf tests/cuda/cuda_gpu tests/cuda/cuda_model -t "$bin" 2>/dev/null
  fi
  # NVRTC: the toolkit's, or the one PyTorch's wheels carry
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c 'import glob,site;print(" ".join(glob.glob(site.getsitepackages()[0]+"/nvidia/*/lib")))' 2>/dev/null); do
    [ -e "$d/libnvrtc.so.13" ] || [ -e "$d/libnvrtc.so.12" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
  done
  if ldd "$bin/moeppc" | grep -q "not found"; then # search the machine for what is missing
    for d in $(find / -xdev \( -name 'libnvrtc.so.1[23]' -o -name 'libcuda.so.1' \) 2>/dev/null | xargs -r -n1 dirname | sort -u); do
      export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
    done
    ldd "$bin/moeppc" | grep "not found"
  fi
  export MOEPPC_SOURCE_DIR=$root
  # NVRTC's results shared by the steps (each `moeppc run/bench --device cuda` and test compiles at load)
  export MOEPPC_NVRTC_CACHE=$work/nvrtc-cache
  # the embedding examples need pkg-config (device-prebuild.sh carries one) and a python3 with NumPy
  command -v pkg-config >/dev/null || [ ! -x "$bin/bin/pkg-config" ] || export PKG_CONFIG=$bin/bin/pkg-config
  export PYTHON=${PYTHON:-$(command -v python3)}

  step "ceilings (PyTorch: bf16 8192^3 matrix product, device-to-device copy)"
  timeout 60 python3 - >"$work/ceilings.txt" 2>"$work/ceilings.err" <<'EOF'
import torch
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16); b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(3): a @ b
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
torch.cuda.synchronize(); s.record()
for _ in range(10): a @ b
e.record(); e.synchronize()
tflops = 2 * n ** 3 / (s.elapsed_time(e) / 10 * 1e-3) / 1e12
x = torch.empty(4 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(2): y.copy_(x)
torch.cuda.synchronize(); s.record()
for _ in range(5): y.copy_(x)
e.record(); e.synchronize()
gbs = 2 * x.numel() / (s.elapsed_time(e) / 5 * 1e-3) / 1e9
print(f"{tflops:.1f} {gbs:.0f}")
EOF
  read -r peak bw <"$work/ceilings.txt" || { peak=""; bw=""; }
  if [ -n "$peak" ]; then echo "bf16 dense peak $peak TFLOP/s, copy bandwidth $bw GB/s (read + written)"
  else echo "no ceilings measured (no PyTorch?):"; cat "$work/ceilings.err"; fi

  step "generated kernels against C references"
  run 60 "$bin/cuda_gpu"
  step "whole models against the interpreter (poisoned outputs, fresh seed)"
  run 150 "$bin/cuda_model"
  step "decoding on the GPU (moepp-0.6b, random weights)"
  run 60 "$bin/moeppc" run specs/moepp-0.6b.yaml --random-weights 1 --ids "1 2 3 4 5 6 7 8" --device cuda --generate 64
  if [ -d "$bin/models" ]; then
    step "executables from moeppc build --target (cubin for sm_90; PTX for sm_80, compiled by the driver)"
    ids="3 17 42 99 128 200 255 0 64 7 11 13"
    for spec in tiny-moepp tiny-bf16; do # small enough that no routing decision is a near-tie
      run 60 "$bin/models/$spec" --random-weights 5 --ids "$ids" --device cuda --logits-out "$work/$spec.gpu.bin" --generate 32 |
        grep -E "ran|decode|error|!!"
      run 60 "$bin/moeppc" run specs/tiny/$spec.yaml --random-weights 5 --ids "$ids" --backend interp --precision f32 \
        --logits-out "$work/$spec.ref.bin" >/dev/null
      run 30 python3 tests/oracle/compare.py "$work/$spec.gpu.bin" "$work/$spec.ref.bin" --vocab 256 --tol 2e-2 --show 0
    done
    run 60 "$bin/models/moepp-0.6b" --random-weights 5 --ids "$ids" --device cuda --generate 64 | grep -E "ran|decode|error|!!"
  fi
  step "7B layer on the GPU"
  ceil=()
  [ -n "$peak" ] && ceil=(--peak-tflops "$peak" --bandwidth-gbs "$bw")
  echo "routing set to the paper's tau = 0.75 share (FFN share 0.75, 16 experts in use)"
  run 120 "$bin/moeppc" bench specs/moepp-7b.yaml --device cuda --tokens 1,64,512,4096 --zc-share 0.25 "${ceil[@]}" >"$out/bench.txt"
  cat "$out/bench.txt"
  step "the table's kernels checked: the 7B layer (cut as bench cuts it) at T = 512 and 4096 against the CPU backend"
  sed -e 's/^  vocab: .*/  vocab: 256/' -e 's/^  layers: .*/  layers: 1/' specs/moepp-7b.yaml >"$work/layer7b.yaml"
  for T in 512 4096; do # (a token whose picks flip between near-equal weights is left out: its row alone follows)
    ids=$(seq 0 $((T - 1)) | awk '{ printf "%d ", ($1 * 7919) % 256 }')
    for dev in cuda cpu; do
      run 120 "$bin/moeppc" run "$work/layer7b.yaml" --random-weights 3 --ids "$ids" --device $dev \
        --logits-out "$work/l7b-$T.$dev.bin" --routes-out "$work/l7b-$T.$dev.routes" >"$work/l7b-$T.$dev.log" 2>&1
      grep "^ran" "$work/l7b-$T.$dev.log"
    done
    run 60 python3 tests/oracle/compare.py "$work/l7b-$T.cuda.bin" "$work/l7b-$T.cpu.bin" --vocab 256 --tol 2e-2 \
      --routes-a "$work/l7b-$T.cuda.routes" --routes-b "$work/l7b-$T.cpu.routes" --flipped-rows 0.01 --show 0
  done
  # ab WHAT "VAR=VALUE..." TOKENS: the 7B layer again with those switches set, against the table above
  ab() {
    more "$1" || return 0
    step "$1"
    run 60 env $2 "$bin/moeppc" bench specs/moepp-7b.yaml --device cuda --tokens "$3" --zc-share 0.25 "${ceil[@]}" |
      grep "^T ="
  }
  # extras past the issue's five minutes, most informative first, each only while the budget lasts
  if more "the other forms on the GPU"; then
    # (the defaults on an sm_90 GPU, which the steps above ran: the grouped GEMMs on wgmma with W by the
    # TMA, programmatic launches)
    step "the tiny models with the grouped GEMMs on the cp.async mma.sync form, as other GPUs run them (MOEPPC_CUDA_TMA=0)"
    run 60 env MOEPPC_CUDA_TMA=0 MOEPPC_GPU_SKIP_SMALL_MODELS=1 "$bin/cuda_model" | grep -E "bf16|f16|FAIL|error"
    step "the tiny models on wgmma without the TMA (MOEPPC_CUDA_TMA=0 MOEPPC_CUDA_WGMMA=1)"
    run 60 env MOEPPC_CUDA_TMA=0 MOEPPC_CUDA_WGMMA=1 MOEPPC_GPU_SKIP_SMALL_MODELS=1 "$bin/cuda_model" | grep -E "bf16|f16|FAIL|error"
    step "the tiny models with the TMA GEMMs warp-specialised and persistent (MOEPPC_CUDA_WS=1)"
    run 60 env MOEPPC_CUDA_WS=1 MOEPPC_GPU_SKIP_SMALL_MODELS=1 "$bin/cuda_model" | grep -E "bf16|f16|FAIL|error"
    step "the tiny models with plain launches (MOEPPC_CUDA_PDL=0)"
    run 60 env MOEPPC_CUDA_PDL=0 MOEPPC_GPU_SKIP_SMALL_MODELS=1 "$bin/cuda_model" | grep -E "f32|bf16|f16|FAIL|error"
  fi
  if more "random models on the GPU"; then
    step "random models on the GPU against the float64 oracle (tests/oracle/random_models.py: odd sizes, every knob; 60 s)"
    if python3 -c "import numpy" 2>/dev/null; then
      run 120 python3 tests/oracle/random_models.py "$bin/moeppc" --regressions tests/oracle/random-regressions \
        --seeds 0:500 --paths gpu,gpu-batch,gpu-serve --budget 60 --work "$work/random_models" | grep -E "FAILED|random models|^  "
    else echo "no python3 with NumPy on this machine"; fi
  fi
  if more "GPU tuning"; then
    step "GPU tuning: moeppc tune --target sm_90 (tiles compiled, checked, measured), then the layer with its database"
    run 150 "$bin/moeppc" tune specs/moepp-7b.yaml --target sm_90 --tokens 4096,512,64,1 --budget 100 -o "$out/gpu-sm90-moepp-7b.yaml" |
      grep -E "tiles compile|step 1|wrote|error"
    [ -f "$out/gpu-sm90-moepp-7b.yaml" ] &&
      run 60 "$bin/moeppc" bench specs/moepp-7b.yaml --device cuda --tokens 1,64,512,4096 --zc-share 0.25 --reps 10 \
        --tuning "$out/gpu-sm90-moepp-7b.yaml" "${ceil[@]}" | grep "^T ="
  fi
  if more "the embedding library"; then
    step "the embedding library's CUDA build (examples/embed_c and embed_python --cuda on the GPU against the interpreter)"
    if [ -n "${MOEPPC_PREBUILT:-}" ] && [ -d "$bin/cudalib" ]; then # libraries emitted on the build machine
      for spec in tiny-moepp tiny-vanilla tiny-bf16 tiny-every2; do
        for kind in cuda cuda-python; do
          run 120 env CC=${CC:-cc} bash tests/embed/test_example.sh $kind "$bin/moeppc" "$bin/embed_layer_ref" \
            "$bin/cudalib/$spec" specs/tiny/$spec.yaml "$work/embed_${kind}_$spec"
        done
      done
      [ -d "$bin/cudalib/emu-tiny-moepp" ] && run 60 env -u MOEPPC_CUDA_DRIVER CC=${CC:-cc} bash tests/embed/test_cuda_lib.sh \
        "$bin/cudalib/emu-tiny-moepp" "$work/embed_emu_lib_on_gpu" emu unsupported
    elif [ -z "${MOEPPC_PREBUILT:-}" ]; then
      cmake --build build-device -j"$(nproc)" --target embed_layer_ref >/dev/null || echo "!! build failed"
      run 300 ctest --test-dir build-device -R embed_cuda --output-on-failure --no-tests=error
      run 60 env -u MOEPPC_CUDA_DRIVER CC=${CC:-cc} bash tests/embed/test_cuda_lib.sh \
        build-device/tests/embed/emulib_tiny-moepp "$work/embed_emu_lib_on_gpu" emu unsupported
    else
      echo "no prebuilt CUDA layer libraries in $MOEPPC_PREBUILT (scripts/device-prebuild.sh makes them)"
    fi
  fi
  if more "compute-sanitizer"; then
    step "compute-sanitizer on the generated kernels (memcheck: out-of-bounds and misaligned accesses; racecheck: shared memory)"
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
    if [ -n "$cs" ]; then
      for tool in memcheck racecheck; do
        limit=60; [ $tool = racecheck ] && limit=150 # (racecheck took over 60 s on an H200)
        run $limit "$cs" --tool $tool --error-exitcode 1 --print-limit 20 "$bin/cuda_gpu" >"$work/sanitizer-$tool.txt" 2>&1
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^=+ (Invalid|Error|Race)|FAILED|PASSED|^!!" "$work/sanitizer-$tool.txt" | head -12
      done
    else echo "no compute-sanitizer on this machine"; fi
  fi
  if more "A/Bs of the 7B layer"; then
    ab "decode A/B: T = 1's up and down as their two decode GEMVs (MOEPPC_CUDA_MLP=0), against one decode MLP kernel above" \
      MOEPPC_CUDA_MLP=0 1
    ab "decode A/B: the decode MLP on 16 rows of h a block (MOEPPC_CUDA_MLP=16x8: twice the blocks and reductions)" \
      MOEPPC_CUDA_MLP=16x8 1
    ab "decode A/B: the decode MLP on 64 rows a block, 16 warps (MOEPPC_CUDA_MLP=64x16: half the reductions, a block an SM)" \
      MOEPPC_CUDA_MLP=64x16 1
    ab "decode A/B: the fused router on one block a token (MOEPPC_CUDA_ROUTE_SPLIT=0; the layer's time has it), against W1's rows over 21 blocks above" \
      MOEPPC_CUDA_ROUTE_SPLIT=0 1
    ab "prefill A/B: the large DOWN tile's last wave as whole tiles (MOEPPC_CUDA_STREAMK=0), against stream-K above" \
      MOEPPC_CUDA_STREAMK=0 4096
    ab "decode A/B: T = 1 on the general GEMV (MOEPPC_CUDA_DECODE_GEMV=0: up and down apart), against the decode MLP above" \
      MOEPPC_CUDA_DECODE_GEMV=0 1
    ab "launch A/B: plain launches (MOEPPC_CUDA_PDL=0) against the programmatic dependent launches above" \
      MOEPPC_CUDA_PDL=0 1,64
    ab "fusion A/B: the MoE block's combine, scale and dispatch launched apart (MOEPPC_CUDA_FUSE=0) against the folded ones above" \
      MOEPPC_CUDA_FUSE=0 1
    ab "prefill A/B: the TMA form on one tile for every T (MOEPPC_CUDA_TILE_PAIR=0), against the rule's two above" \
      MOEPPC_CUDA_TILE_PAIR=0 64,512,4096
    ab "prefill A/B: UP's x rows gathered by the threads' cp.async (MOEPPC_CUDA_TMA_A=0), against x gathered into slot order and taken by the TMA above" \
      MOEPPC_CUDA_TMA_A=0 512,4096
    ab "prefill A/B: the rule's large DOWN tile not warp-specialised (MOEPPC_CUDA_WS=0), against warp-specialised above" \
      MOEPPC_CUDA_WS=0 4096
    ab "prefill A/B: the grouped GEMMs on the cp.async mma.sync form (MOEPPC_CUDA_TMA=0), against wgmma with W by the TMA above" \
      MOEPPC_CUDA_TMA=0 64,512,4096
    ab "prefill A/B: the grouped GEMMs on the register-pipelined MMA form, f32 activations (MOEPPC_CUDA_ASYNC_GEMM=0)" \
      MOEPPC_CUDA_ASYNC_GEMM=0 512,4096
    ab "prefill attention on the f32 tiled form (MOEPPC_CUDA_ATTN_TC=0) against the tensor-core form above" \
      MOEPPC_CUDA_ATTN_TC=0 512,4096
    ab "prefill on wgmma without the TMA (MOEPPC_CUDA_TMA=0 MOEPPC_CUDA_WGMMA=1)" "MOEPPC_CUDA_TMA=0 MOEPPC_CUDA_WGMMA=1" 512,4096
    ab "prefill on the warp-specialised persistent TMA form (MOEPPC_CUDA_WS=1) against TMA above" MOEPPC_CUDA_WS=1 512,4096
  fi
  if more "decode A/Bs"; then
    # decode_ab TITLE SETTING: the 0.6B's decode tokens/s with that setting, against the run above
    decode_ab() {
      echo "-- the same $1: decode tokens/s A/B"
      run 60 env $2 "$bin/moeppc" run specs/moepp-0.6b.yaml --random-weights 1 --ids "1 2 3 4 5 6 7 8" \
        --device cuda --generate 64 | grep -E "ran|decode|program|error"
    }
    decode_ab "with up and down as two GEMVs (MOEPPC_CUDA_MLP=0), not one decode MLP kernel" MOEPPC_CUDA_MLP=0
    decode_ab "with the fused router on one block a token (MOEPPC_CUDA_ROUTE_SPLIT=0)" MOEPPC_CUDA_ROUTE_SPLIT=0
    decode_ab "with plain launches (MOEPPC_CUDA_PDL=0)" MOEPPC_CUDA_PDL=0
    decode_ab "without the folded launches (MOEPPC_CUDA_FUSE=0: combine, scale, dispatch, KV store, RoPE apart)" \
      MOEPPC_CUDA_FUSE=0
  fi
  if more "long-context decode A/B"; then
    step "a decode step at position 4095 (4096 keys): attention's keys in splits merged by the last (flash-decoding), then one block a head (MOEPPC_CUDA_ATTN_SPLIT=0)"
    for split in 1 0; do
      run 60 env MOEPPC_CUDA_ATTN_SPLIT=$split "$bin/moeppc" bench specs/moepp-7b.yaml --device cuda --tokens 1 --context 4095 \
        --zc-share 0.25 "${ceil[@]}" | grep "^T ="
    done
  fi
  if more "batched decoding"; then
    step "--batch on the GPU: 8 prompts of 32 ids, 64 tokens each, one after the other, then 8 at once (moepp-0.6b)"
    awk 'BEGIN { for (p = 0; p < 8; p++) { l = ""; for (t = 0; t < 32; t++) l = l " " (3 + (p * 7919 + t * 104729) % 31997); print l } }' \
      >"$work/prompts8.txt"
    for b in 1 8; do
      run 120 "$bin/moeppc" run specs/moepp-0.6b.yaml --random-weights 1 --device cuda --prompts "$work/prompts8.txt" \
        --generate 64 --ignore-eos --top 0 --batch $b >"$work/batch$b.txt"
      awk -v b=$b '/^ decode:/ { n += $2; s += $5 } /^ran / { p += $5 } /batch:/ { w = $13 }
        END { if (b == 1) printf "--batch 1: decode %.1f tokens/s (prefills %.3f s)\n", n / s, p
              else printf "--batch %d: decode %.1f tokens/s (%s)\n", b, n / (w - p), "the run less its prefills" }' "$work/batch$b.txt"
    done
    grep "^ generated" "$work/batch1.txt" >"$work/batch1.ids"; grep "^ generated" "$work/batch8.txt" >"$work/batch8.ids"
    cmp -s "$work/batch1.ids" "$work/batch8.ids" && echo "the same tokens either way" ||
      echo "!! --batch 8 generated other tokens than one by one (a bf16 near-tie, or a fault: see $work/batch*.txt)"
  fi
  if more "batched decode attention"; then
    step "a serving batch's decode step at position 2048 (bench --batch: T sequences, a token each):" \
      "attention one launch a layer over the caches' table, then a launch a sequence (MOEPPC_CUDA_ATTN_SEQS=0);" \
      "the 7B (16 heads) and Mixtral-8x7B's layer (GQA: 4 query heads a block of its kv head; then one," \
      "MOEPPC_CUDA_ATTN_GQ=0); and 8 sequences of 8 tokens and 4 of 128 (prompts' chunks: --rows) on the 7B's"
    run 30 "$bin/moeppc" import-hf tests/frontend/hf/mixtral-8x7b-config.json -o "$work/mixtral.yaml"
    for spec in specs/moepp-7b.yaml "$work/mixtral.yaml"; do
      for ab in SEQS=1 SEQS=0 GQ=0; do
        [ "$ab" = GQ=0 ] && [ "$spec" = specs/moepp-7b.yaml ] && continue # (MHA: a head a block already)
        echo "-- $(basename "$spec") MOEPPC_CUDA_ATTN_$ab"
        run 90 env "MOEPPC_CUDA_ATTN_$ab" "$bin/moeppc" bench "$spec" --device cuda --batch --context 2048 \
          --tokens 8,32 --reps 10 "${ceil[@]}" | grep "^T =" |
          sed 's/  \[.*experts; MoE block: [0-9]* GPU ops\]//'
      done
    done
    for seqs in 1 0; do # prompts' chunks: 8 of 8 tokens, 4 of 128: one launch a layer (a store first) or 3 a chunk
      for rows in 8 128; do
        echo "-- moepp-7b.yaml --rows $rows (sequences of $rows tokens) MOEPPC_CUDA_ATTN_SEQS=$seqs"
        run 90 env MOEPPC_CUDA_ATTN_SEQS=$seqs "$bin/moeppc" bench specs/moepp-7b.yaml --device cuda --batch \
          --rows $rows --context 2048 --tokens $((rows * (rows == 8 ? 8 : 4))) --reps 10 "${ceil[@]}" |
          grep "^T =" | sed 's/  \[.*experts; MoE block: [0-9]* GPU ops\]//'
      done
    done
  fi
  if more "shared prefix"; then
    step "--batch 8, 8 prompts of a shared 500-token prefix and 12 ids each: prefix reuse (the first prompt's caches forked) against --no-prefix-reuse (moepp-0.6b)"
    awk 'BEGIN { s = ""; for (t = 0; t < 500; t++) s = s " " (3 + (t * 104729) % 31997)
                 for (p = 0; p < 8; p++) { l = s; for (t = 0; t < 12; t++) l = l " " (3 + (p * 7919 + t * 7907) % 31997); print l } }' \
      >"$work/shared8.txt"
    for x in --prefix-reuse --no-prefix-reuse; do
      run 120 "$bin/moeppc" run specs/moepp-0.6b.yaml --random-weights 1 --device cuda --prompts "$work/shared8.txt" \
        --generate 16 --ignore-eos --top 0 --batch 8 $([ $x = --no-prefix-reuse ] && echo $x) >"$work/shared$x.txt"
      echo "$x: $(grep -c "in the caches$" "$work/shared$x.txt") prompts forked;$(grep "batch:" "$work/shared$x.txt" | cut -d: -f3-)"
    done
    diff <(grep "^ generated" "$work/shared--prefix-reuse.txt") <(grep "^ generated" "$work/shared--no-prefix-reuse.txt") >/dev/null &&
      echo "the same tokens either way" || echo "!! prefix reuse generated other tokens (a bf16 near-tie, or a fault: see $work/shared*.txt)"
  fi
  if more "vanilla and own-routing 7B benches"; then
    step "the vanilla 7B layer (the baseline: every pick an FFN expert), same routing generator"
    run 120 "$bin/moeppc" bench specs/vanilla-7b.yaml --device cuda --tokens 1,64,512,4096 --zc-share 0 "${ceil[@]}" | grep "^T ="
    step "the MoE++ 7B layer with its random router's own decisions"
    run 120 "$bin/moeppc" bench specs/moepp-7b.yaml --device cuda --tokens 512,4096 "${ceil[@]}" | grep "^T ="
  fi
  if more "GPU tuning of the other paper sizes"; then
    step "GPU tuning of the 0.6B, 1B and 2B (moeppc tune --target sm_90, 60 s each: databases for tuning/)"
    for size in 0.6b 1b 2b; do
      more "tuning the $size" || break
      run 100 "$bin/moeppc" tune specs/moepp-$size.yaml --target sm_90 --tokens 4096,512,64,1 --budget 60 \
        -o "$out/gpu-sm90-moepp-$size.yaml" | grep -E "wrote|error"
    done
  fi
  step "summary: $fails failed step(s); 7B layer, bf16 (grouped GEMM TFLOP/s vs the bf16 peak; MoE-block weight bytes/s vs the copy bandwidth)"
  grep "^T = " "$out/bench.txt"
} 2>&1 | tee "$out/device-check.log"
