#!/usr/bin/env bash
# main.sh [SPEC]: the main job. Installs what is missing, builds moeppc, checks the default spec,
# compiles it to one executable (generated CPU kernels + plan + runtime) and runs that on seeded random
# weights: predicted tokens per position, routing statistics, greedy decoding, time.
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-specs/moepp-0.6b.yaml}
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMOEPPC_TESTS=OFF >/dev/null
cmake --build build -j2 >/dev/null
./build/moeppc check "$spec"
echo
ids="1 306 4684 338 263 1243 310 1571"
model=build/$(basename "$spec" .yaml)
if ./build/moeppc build "$spec" -o "$model"; then
  echo
  "$model" --random-weights 1 --ids "$ids" --generate 16 --route-stats  # threads: one a core it may use
else
  echo "(no CPU code generator in this build: running the reference interpreter instead)"
  ./build/moeppc run "$spec" --random-weights 1 --ids "$ids" --route-stats
fi
