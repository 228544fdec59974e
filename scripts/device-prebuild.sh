#!/usr/bin/env bash
# device-prebuild.sh [DIR]: build, on this machine, what scripts/device-check.sh runs on a GPU machine
# that cannot install packages (the `device` tool's machines): moeppc and the two GPU tests (Release,
# no LLVM: the GPU side needs none), with the shared libraries they need beside them (libyaml, cJSON,
# CMocka; NVRTC and the driver come from the GPU machine). DIR defaults to .devbin (git-ignored
# through .git/info/exclude). Then: MOEPPC_PREBUILT=DIR bash scripts/device-check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.devbin}
grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >>.git/info/exclude
cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DMOEPPC_LLVM=OFF -DMOEPPC_TESTS=ON >/dev/null
cmake --build build-device -j2 --target moeppc cuda_gpu cuda_model >/dev/null
rm -rf "$dir" && mkdir -p "$dir/lib"
cp build-device/moeppc build-device/tests/cuda/cuda_gpu build-device/tests/cuda/cuda_model "$dir/"
for lib in $(ldd "$dir"/moeppc "$dir"/cuda_gpu "$dir"/cuda_model | awk '/libyaml|libcjson|libcmocka/ {print $3}' | sort -u); do
  cp -L "$lib" "$dir/lib/"
done
# pkg-config for the embedding examples (the GPU machine may have none): pkgconf and its library
pc=$(command -v pkg-config || true)
if [ -n "$pc" ]; then
  mkdir -p "$dir/bin" && cp -L "$pc" "$dir/bin/pkg-config"
  ldd "$pc" | awk '/libpkgconf/ {print $3}' | xargs -r -I{} cp -L {} "$dir/lib/"
fi
# executables `moeppc build --target` writes (needs the LLVM build for their CPU kernels): the 0.6B
# for sm_90 (cubin) and a tiny one for sm_80 (PTX, which the driver compiles for a newer GPU)
if cmake -S . -B build -DMOEPPC_TESTS=ON >/dev/null && cmake --build build -j2 --target moeppc >/dev/null &&
   [ -n "$(grep -l MOEPPC_HAVE_JIT build/CMakeFiles/moeppc.dir/flags.make 2>/dev/null)" ]; then
  mkdir -p "$dir/models"
  build/moeppc build specs/moepp-0.6b.yaml --target sm_90 -o "$dir/models/moepp-0.6b" >/dev/null
  build/moeppc build specs/tiny/tiny-moepp.yaml --target sm_80 -o "$dir/models/tiny-moepp" >/dev/null
  build/moeppc build specs/tiny/tiny-bf16.yaml --target sm_90 -o "$dir/models/tiny-bf16" >/dev/null
  # the embedding library's CUDA build per tiny spec (cubin sm_90, PTX) and the interpreter's reference
  # for its example (device-check.sh runs examples/embed_c on the GPU against it)
  cmake --build build -j2 --target embed_layer_ref >/dev/null && cp build/tests/embed/embed_layer_ref "$dir/"
  for spec in tiny-moepp tiny-vanilla tiny-bf16 tiny-every2; do
    build/moeppc emit specs/tiny/$spec.yaml --emit lib --target sm_90 -o "$dir/cudalib/$spec" >/dev/null
  done
  # and one for the CUDA emulator, which a GPU must refuse (MOEPP_ERR_UNSUPPORTED)
  build/moeppc emit specs/tiny/tiny-moepp.yaml --emit lib --target emu -o "$dir/cudalib/emu-tiny-moepp" >/dev/null
fi
echo "$(git rev-parse --short HEAD)$(git diff --quiet || echo +changes), built $(date -u +%FT%TZ)" >"$dir/BUILD_INFO"
du -sh "$dir"
