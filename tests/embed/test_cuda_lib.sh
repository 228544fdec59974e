#!/bin/bash
# test_cuda_lib.sh LIB WORK ARCH [unsupported|oom]: tests/embed/test_cuda_lib.c built against a CUDA build
# of the layer library through pkg-config (shared and static) and run: on a machine without a GPU it
# checks the documented MOEPP_ERR_NO_DEVICE (with a GPU or the CUDA emulator, a layer that refuses
# host memory; with "unsupported", a device the library must refuse: MOEPP_ERR_UNSUPPORTED; with
# "oom", on the emulator with a 64 KB device, weights that do not fit: MOEPP_ERR_OUT_OF_MEMORY); then
# once more with the toolkit's stub libcuda standing in for the driver (it loads, and cuInit
# refuses), when the toolkit has one. Env: CC, PKG_CONFIG, CUDA_HOME, MOEPPC_CUDA_DRIVER (the stub
# run goes without it).
set -u
LIB=$1 WORK=$2 ARCH=$3 EXPECT=${4:-}
CC=${CC:-cc} PKG_CONFIG=${PKG_CONFIG:-pkg-config} CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
HERE=$(cd "$(dirname "$0")" && pwd)
fail() { echo "FAILED: $*"; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
export PKG_CONFIG_PATH=$LIB
"$CC" -O1 -g -Wall -Wextra -Werror "$HERE/test_cuda_lib.c" $("$PKG_CONFIG" --cflags --libs moepp_layer) \
      -Wl,-rpath,"$LIB" -o "$WORK/test_cuda_lib" || fail "building test_cuda_lib (shared)"
"$CC" -O1 -g -Wall -Wextra -Werror "$HERE/test_cuda_lib.c" $("$PKG_CONFIG" --cflags moepp_layer) \
      $("$PKG_CONFIG" --variable=static_libs moepp_layer) -o "$WORK/test_cuda_lib_static" || fail "building test_cuda_lib (static)"
[ "$EXPECT" = oom ] && export MOEPPC_CUDAEMU_MEMORY=65536
"$WORK/test_cuda_lib" "$ARCH" $EXPECT || fail "test_cuda_lib (shared library)"
"$WORK/test_cuda_lib_static" "$ARCH" $EXPECT > "$WORK/static.txt" || { cat "$WORK/static.txt"; fail "test_cuda_lib (static library)"; }
stub=$CUDA_HOME/lib64/stubs/libcuda.so
if [ -e "$stub" ] && ! ldconfig -p 2>/dev/null | grep -q "libcuda.so.1 "; then
  mkdir -p "$WORK/stub" && ln -sf "$stub" "$WORK/stub/libcuda.so.1"
  env -u MOEPPC_CUDA_DRIVER LD_LIBRARY_PATH="$WORK/stub${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$WORK/test_cuda_lib" "$ARCH" > "$WORK/stub.txt" ||
    { cat "$WORK/stub.txt"; fail "test_cuda_lib with the stub driver"; }
  grep -q "MOEPP_ERR_NO_DEVICE" "$WORK/stub.txt" || { cat "$WORK/stub.txt"; fail "the stub driver did not give MOEPP_ERR_NO_DEVICE"; }
  grep -A1 "MOEPP_ERR_NO_DEVICE" "$WORK/stub.txt" | tail -1
fi
tail -1 "$WORK/static.txt"
