#!/bin/sh
# run_golden.sh EXPECTED_STATUS EXPECTED_STDERR_FILE COMMAND...
# Runs COMMAND in the current directory; passes when its exit status and its stderr match exactly.
set -u
want_rc=$1
want_err=$2
shift 2
got_err=$(mktemp) || exit 2
"$@" >/dev/null 2>"$got_err"
rc=$?
status=0
if [ "$rc" -ne "$want_rc" ]; then
    echo "exit status $rc, expected $want_rc: $*"
    status=1
fi
if ! diff -u "$want_err" "$got_err"; then
    echo "stderr differs from $want_err (diff above: - expected, + got)"
    status=1
fi
rm -f "$got_err"
exit $status
