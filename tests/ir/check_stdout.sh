#!/bin/sh
# check_stdout.sh EXPECTED_FILE COMMAND...: passes when COMMAND exits 0 and prints exactly EXPECTED_FILE.
# Set UPDATE_GOLDEN=1 to rewrite the expected file instead (then review the diff in git).
set -u
want=$1
shift
got=$(mktemp) || exit 2
"$@" >"$got"
rc=$?
if [ "$rc" -ne 0 ]; then echo "exit status $rc: $*"; rm -f "$got"; exit 1; fi
if [ "${UPDATE_GOLDEN:-0}" = 1 ]; then cp "$got" "$want"; rm -f "$got"; exit 0; fi
if ! diff -u "$want" "$got" | head -60; then :; fi
cmp -s "$want" "$got"
status=$?
rm -f "$got"
exit $status
