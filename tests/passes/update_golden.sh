#!/bin/sh
# update_golden.sh MOEPPC: regenerate the per-pass golden IR (review the diff in git before committing).
# Stage N's input is stage N-1's golden file; stage 1's is the dense form in tests/ir/golden/.
set -eu
moeppc=$1
here=$(cd "$(dirname "$0")" && pwd)
for spec in $(cat "$here/specs.txt"); do
    "$moeppc" compile "$here/../../specs/tiny/$spec.yaml" -O0 -o "$here/../ir/golden/$spec.ir"
    prev="$here/../ir/golden/$spec.ir"
    while read -r dir pass; do
        mkdir -p "$here/golden/$dir"
        "$moeppc" compile --ir "$prev" --pass "$pass" -o "$here/golden/$dir/$spec.ir"
        prev="$here/golden/$dir/$spec.ir"
    done < "$here/stages.txt"
done
