#!/bin/bash
# emit_check.sh MOEPPC SPEC LIB [ARCH]: `moeppc emit SPEC --emit lib [--target ARCH] -o LIB` writes the
# header, both libraries and the pkg-config file; the libraries' only global symbols are the functions
# the header declares, the shared one needs nothing but the C library (no libyaml, cJSON or LLVM; a
# CUDA build (ARCH sm_XX, or emu: the emulator's kernel objects embedded whole) no libcuda, libcudart or
# NVRTC either: it opens libcuda itself), the header
# is ASCII C89 (and C++), and pkg-config finds the library. Env: CC, CXX (optional), PKG_CONFIG.
set -u
MOEPPC=$1 SPEC=$2 LIB=$3 ARCH=${4:-}
CC=${CC:-cc} PKG_CONFIG=${PKG_CONFIG:-pkg-config}
fail() { echo "FAILED: $*"; exit 1; }
rm -rf "$LIB"
"$MOEPPC" emit "$SPEC" --emit lib --target sm_75 -o "$LIB" 2> /dev/null; [ $? -eq 2 ] || fail "--emit lib --target sm_75 is not a usage error"
"$MOEPPC" emit "$SPEC" --emit lib ${ARCH:+--target "$ARCH"} -o "$LIB" || fail "moeppc emit --emit lib ${ARCH:+--target $ARCH}"
ls "$LIB" | grep -q '\.tmp$' && fail "temporary files left in $LIB"
for f in moepp_layer.h libmoepp_layer.a libmoepp_layer.so.1 moepp_layer.pc moepp_layer.ir; do
  [ -s "$LIB/$f" ] || fail "$LIB/$f is missing"
done
[ "$(readlink "$LIB/libmoepp_layer.so")" = libmoepp_layer.so.1 ] || fail "libmoepp_layer.so is not a link to libmoepp_layer.so.1"
readelf -d "$LIB/libmoepp_layer.so.1" | grep -q "SONAME.*\[libmoepp_layer.so.1\]" || fail "soname"

# the ABI: what the header declares = what each library exports
grep -E '^[a-z].*moepp_[a-z_]+\(' "$LIB/moepp_layer.h" | grep -oE 'moepp_[a-z_]+\(' | head -100 | tr -d '(' | sort -u > "$LIB/.declared"
nm -D --defined-only "$LIB/libmoepp_layer.so.1" | awk '{print $3}' | sort -u > "$LIB/.so_syms"
nm -g --defined-only "$LIB/libmoepp_layer.a" | awk 'NF == 3 {print $3}' | sort -u > "$LIB/.a_syms"
[ "$(wc -l < "$LIB/.declared")" -ge 11 ] || fail "the header declares $(wc -l < "$LIB/.declared") functions"
diff "$LIB/.declared" "$LIB/.so_syms" || fail "libmoepp_layer.so exports other symbols than the header declares"
diff "$LIB/.declared" "$LIB/.a_syms" || fail "libmoepp_layer.a defines other global symbols than the header declares"
needed=$(readelf -d "$LIB/libmoepp_layer.so.1" | grep NEEDED | grep -oE '\[[^]]*\]' | tr -d '[]' |
         grep -vE '^(libc|libm|libpthread|libdl|ld-linux[-a-z0-9_]*|libasan|libubsan|libclang_rt\.asan-[a-z0-9_]+|libgcc_s)\.so' || true)
[ -z "$needed" ] || fail "libmoepp_layer.so needs $needed"

# the header: ASCII, C89, C++
! LC_ALL=C grep -nP '[^\x00-\x7F]' "$LIB/moepp_layer.h" || fail "moepp_layer.h is not ASCII"
printf '#include "moepp_layer.h"\nint main(void) { moepp_layer_desc d; d.struct_size = sizeof d; return (int)d.struct_size - (int)sizeof d; }\n' > "$LIB/.c89.c"
"$CC" -std=c89 -pedantic -Wall -Wextra -Werror -fsyntax-only -I"$LIB" "$LIB/.c89.c" || fail "moepp_layer.h is not C89"
CXX=${CXX:-}
if [ -n "$CXX" ] && command -v "$CXX" > /dev/null; then
  "$CXX" -std=c++98 -pedantic -Wall -Werror -fsyntax-only -x c++ -I"$LIB" "$LIB/.c89.c" || fail "moepp_layer.h in C++"
fi

# pkg-config
export PKG_CONFIG_PATH=$LIB
[ "$("$PKG_CONFIG" --modversion moepp_layer)" = 1.0.0 ] || fail "pkg-config --modversion moepp_layer"
"$PKG_CONFIG" --cflags moepp_layer | grep -q -- "-I$LIB" || fail "pkg-config --cflags"
"$PKG_CONFIG" --libs moepp_layer | grep -q -- "-L$LIB -lmoepp_layer" || fail "pkg-config --libs"
"$PKG_CONFIG" --variable=static_libs moepp_layer | grep -q "$LIB/libmoepp_layer.a" || fail "static_libs"
if [ -n "$ARCH" ]; then # a CUDA build: kernels for ARCH, said by the header and the library
  grep -q "^#define MOEPP_LAYER_BACKEND MOEPP_BACKEND_CUDA" "$LIB/moepp_layer.h" || fail "the header does not say CUDA"
  grep -q "kernels for $ARCH" "$LIB/moepp_layer.h" || fail "the header does not name $ARCH"
  if [ "$ARCH" = emu ]; then # the emulator's kernel objects, carried whole (no path into a cache folder)
    [ "$(strings "$LIB/libmoepp_layer.so.1" | grep -c '^MOEPPC-CUDAEMU-2$')" -gt 0 ] || fail "no embedded emulator kernels"
    ! strings "$LIB/libmoepp_layer.so.1" | grep -q '^MOEPPC-CUDAEMU-1$' || fail "an emulator kernel by path, not embedded"
    "$MOEPPC" emit "$SPEC" --emit cuda --target emu -o "$LIB/.cuda" 2> /dev/null; [ $? -eq 2 ] ||
      fail "--emit cuda --target emu is not a usage error"
  else
    strings "$LIB/libmoepp_layer.so.1" | grep -q "^\.target $ARCH" || fail "no PTX for $ARCH in the library"
  fi
  strings "$LIB/libmoepp_layer.so.1" | grep -q "^moeppc_cu_gemm_up_.*_wt$" || fail "no grouped GEMM over a weight table"
else
  grep -q "^#define MOEPP_LAYER_BACKEND MOEPP_BACKEND_CPU" "$LIB/moepp_layer.h" || fail "the header does not say CPU"
fi
echo "emit --emit lib${ARCH:+ --target $ARCH}: $(wc -l < "$LIB/.declared") ABI functions exported by both libraries, nothing else; header C89/ASCII; pkg-config ok"
