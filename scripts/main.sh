#!/usr/bin/env bash
# main.sh [SPEC]: the main job. Installs what is missing, builds moeppc, checks the default spec and
# runs it on seeded random weights: predicted tokens per position, routing statistics, time.
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-specs/moepp-0.6b.yaml}
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMOEPPC_TESTS=OFF >/dev/null
cmake --build build -j2 >/dev/null
./build/moeppc check "$spec"
echo
./build/moeppc run "$spec" --random-weights 1 --ids "1 306 4684 338 263 1243 310 1571"
