#!/usr/bin/env bash
# device-check.sh: the one prepared script for a machine with an NVIDIA GPU (the `device` tool runs it
# there): builds, runs every CUDA test — the kernels compiled by NVRTC for this GPU's architecture
# and run against C references (tests/cuda/test_cuda_gpu.c) — and reports. What issue 5 still needs
# (the whole model on the GPU against the CPU backend, benchmarks) is not here yet: the CUDA executor
# does not exist. Writes its logs to $OUT (or ./device-check-out) for the device tool to bring back.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-check-out}
mkdir -p "$out"
{
  echo "== $(date -u)"; nvidia-smi 2>&1 | head -15
  bash scripts/deps.sh --tests
  cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DMOEPPC_TESTS=ON >/dev/null && cmake --build build-device -j"$(nproc)" >/dev/null
  echo "== CUDA tests (compile for sm_80/sm_90; kernels on this GPU against C references)"
  ctest --test-dir build-device -L cuda --output-on-failure -V 2>&1 | tail -60
  echo "== the CPU backend's tests, for reference"
  ctest --test-dir build-device -L cpu -j"$(nproc)" 2>&1 | grep -E "tests passed|Failed"
} 2>&1 | tee "$out/device-check.log"
