#!/bin/sh
# test_limits.sh MOEPPC WORKDIR: inputs that ask for more than the machine has are refused early, each
# with one message and exit status 1, and nothing is allocated for them: a spec whose weights need
# petabytes (hidden 10^7), activations beyond the memory (MOEPPC_MEM_LIMIT_MB plays a small machine),
# a safetensors header length of gigabytes, a token list longer than max_positions, a file that
# never ends. (Nesting and node limits of YAML: tests/frontend/errors/nested-too-deep, frontend_unit.)
set -u
moeppc=$1 work=$2
src=$(cd "$(dirname "$0")/../.." && pwd)
tiny=$src/specs/tiny/tiny-moepp.yaml
mkdir -p "$work"
failed=0

# expect STATUS 'MESSAGE' CMD...: exit status STATUS and MESSAGE in stderr
expect() {
    want=$1 msg=$2
    shift 2
    "$@" >"$work/out" 2>"$work/err"
    got=$?
    if [ "$got" -ne "$want" ] || ! grep -qF -- "$msg" "$work/err"; then
        echo "FAIL: $(echo "$*" | cut -c1-160)"
        echo "  expected exit $want and '$msg'; got exit $got:"
        sed 's/^/  | /' "$work/err" | head -5
        failed=1
    fi
}

sed 's/hidden: 64/hidden: 10000000/' "$tiny" >"$work/huge.yaml"
"$moeppc" check "$work/huge.yaml" >/dev/null || { echo "FAIL: check refuses a valid (if huge) spec"; failed=1; }
"$moeppc" compile "$work/huge.yaml" --stats >/dev/null || { echo "FAIL: compile refuses a valid spec"; failed=1; }
expect 1 "random weights need 3200057000.0 MB, more than the" "$moeppc" init-weights "$work/huge.yaml" --seed 1 -o "$work/w.safetensors"
[ -e "$work/w.safetensors" ] && { echo "FAIL: init-weights left a file behind"; failed=1; }
expect 1 "random weights need 3200057000.0 MB" "$moeppc" run "$work/huge.yaml" --random-weights 1 --ids "1 2"
expect 1 "random weights need 1600038760.0 MB" "$moeppc" bench "$work/huge.yaml" --layer --tokens 1
expect 1 "error: not enough memory: linear 10000000x10000000 (1 groups) at T = 1 needs 800000.12 GB" \
    "$moeppc" tune "$work/huge.yaml" --tokens 1 -o "$work/db.yaml"

ids=$(seq -s ' ' 1 64)
MOEPPC_MEM_LIMIT_MB=1 expect 1 "error: not enough memory: the interpreter needs 1.3 MB for 64 tokens" \
    "$moeppc" run "$tiny" --random-weights 1 --ids "$ids" --backend interp
MOEPPC_MEM_LIMIT_MB=6 expect 1 "error: not enough memory: 4096 tokens need an activation arena of 5.8 MB" \
    "$moeppc" bench "$tiny" --experts --tokens 4096

# a header length of 3 GB in a 10-byte file: refused before anything is read or allocated
printf '\000\136\320\262\000\000\000\000{}' >"$work/huge-header.safetensors"
expect 1 "header length 3000000000 is larger than the 100000000-byte limit" \
    "$moeppc" run "$tiny" --weights "$work/huge-header.safetensors" --ids "1"

# 60000 tokens (the most one argument can hold is 128 KiB): refused at the 65th
expect 1 "error: --ids: more than max_positions (64) tokens" \
    "$moeppc" run "$tiny" --random-weights 1 --ids "$(yes 1 | head -n 60000 | tr '\n' ' ')"
expect 1 "/dev/zero: error: cannot read the spec: File too large" "$moeppc" check /dev/zero
exit $failed
