#!/bin/sh
# roundtrip_opt.sh MOEPPC SPEC WORKDIR: the optimised, planned IR prints, parses (and re-verifies,
# memory plan included) and prints identically.
set -eu
moeppc=$1 spec=$2 work=$3
mkdir -p "$work"
"$moeppc" compile "$spec" -o "$work/opt.ir"
"$moeppc" compile --ir "$work/opt.ir" -O0 -o "$work/again.ir"
cmp "$work/opt.ir" "$work/again.ir" || { diff -u "$work/opt.ir" "$work/again.ir" | head -40; exit 1; }
