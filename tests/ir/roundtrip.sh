#!/bin/sh
# roundtrip.sh MOEPPC SPEC WORKDIR: lowering → print → parse → print must be byte-identical.
set -eu
moeppc=$1 spec=$2 work=$3
mkdir -p "$work"
"$moeppc" compile "$spec" -O0 -o "$work/a.ir"
"$moeppc" compile --ir "$work/a.ir" -O0 -o "$work/b.ir"
"$moeppc" compile --ir "$work/b.ir" -O0 -o "$work/c.ir"
cmp "$work/a.ir" "$work/b.ir" || { diff -u "$work/a.ir" "$work/b.ir" | head -40; exit 1; }
cmp "$work/b.ir" "$work/c.ir"
