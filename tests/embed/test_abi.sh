#!/bin/bash
# test_abi.sh LIB WORK: tests/embed/test_abi.c built against the tiny-moepp layer library through
# pkg-config, as an engine would (shared and static), and run. Env: CC, PKG_CONFIG.
set -u
LIB=$1 WORK=$2
CC=${CC:-cc} PKG_CONFIG=${PKG_CONFIG:-pkg-config}
HERE=$(cd "$(dirname "$0")" && pwd)
fail() { echo "FAILED: $*"; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
export PKG_CONFIG_PATH=$LIB
"$CC" -O1 -g -Wall -Wextra -Werror "$HERE/test_abi.c" $("$PKG_CONFIG" --cflags --libs moepp_layer) -lm \
      -Wl,-rpath,"$LIB" -o "$WORK/test_abi" || fail "building test_abi (shared)"
"$CC" -O1 -g -Wall -Wextra -Werror "$HERE/test_abi.c" $("$PKG_CONFIG" --cflags moepp_layer) \
      $("$PKG_CONFIG" --variable=static_libs moepp_layer) -o "$WORK/test_abi_static" || fail "building test_abi (static)"
"$WORK/test_abi" || fail "test_abi (shared library)"
"$WORK/test_abi_static" > "$WORK/static.txt" || { cat "$WORK/static.txt"; fail "test_abi (static library)"; }
tail -1 "$WORK/static.txt"
