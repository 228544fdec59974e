#!/bin/sh
# run_import.sh MOEPPC CONFIG.json EXPECTED.err|- OUTDIR
# With "-": the import must succeed and its output must pass `moeppc check`.
# Otherwise: exit status 1, stderr exactly EXPECTED.err, and no output file (nor its .tmp) left behind.
set -u
moeppc=$1 config=$2 want=$3 outdir=$4
out=$outdir/$(basename "$config" .json).yaml
rm -f "$out" "$out.tmp"
if [ "$want" = "-" ]; then
    "$moeppc" import-hf "$config" -o "$out" || { echo "import failed"; exit 1; }
    "$moeppc" check "$out" >/dev/null || { echo "imported spec does not check"; exit 1; }
    exit 0
fi
sh "$(dirname "$0")/../run_golden.sh" 1 "$want" "$moeppc" import-hf "$config" -o "$out" || exit 1
if [ -e "$out" ] || [ -e "$out.tmp" ]; then
    echo "a failed import left $out or $out.tmp behind"
    exit 1
fi
