#!/bin/sh
# test_limits.sh MOEPPC WORKDIR: inputs that ask for more than the machine has are refused early, each
# with one message and exit status 1, and nothing is allocated for them: a spec with a tensor beyond
# 2^38 elements (hidden 10^7), one beyond the memory (hidden 65536; MOEPPC_MEM_LIMIT_MB plays a
# machine of 1000 MB), activations beyond the memory, random weights that do not fit beside the CPU
# backend's packed copy, a safetensors header length of gigabytes, a
# token list longer than max_positions, a file that never ends, an output that cannot be written.
# (Nesting and node limits of YAML: tests/frontend/errors/nested-too-deep and frontend_unit; sizes of
# IR values: tests/ir/errors.)
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

# hidden 10^7: a q_proj of 10^14 elements; refused by the spec checks themselves
sed 's/hidden: 64/hidden: 10000000/' "$tiny" >"$work/huge.yaml"
for cmd in check compile; do
    expect 1 "huge.yaml:6:11: error: tensor model.layers.0.self_attn.q_proj.weight [10000000, 10000000] exceeds 2^38 elements" \
        "$moeppc" $cmd "$work/huge.yaml"
done
# hidden 65536: a valid spec (128 GiB of weights) on a machine of 1000 MB
sed 's/hidden: 64/hidden: 65536/' "$tiny" >"$work/big.yaml"
"$moeppc" check "$work/big.yaml" >/dev/null || { echo "FAIL: check refuses a valid (if big) spec"; failed=1; }
"$moeppc" compile "$work/big.yaml" --stats >/dev/null || { echo "FAIL: compile refuses a valid spec"; failed=1; }
export MOEPPC_MEM_LIMIT_MB=1000
expect 1 "random weights need 137812.5 MB, more than the 838.9 MB allowed" \
    "$moeppc" init-weights "$work/big.yaml" --seed 1 -o "$work/w.safetensors"
[ -e "$work/w.safetensors" ] && { echo "FAIL: init-weights left a file behind"; failed=1; }
# the CPU backend makes each random tensor as it packs it: what it keeps is counted (the panel cache
# named); the interpreter keeps every tensor: the whole set is
expect 1 "the CPU backend's packed weights and KV caches and the weights it reads in place (137.95 GB) do not fit the \
1.05 GB of memory available; use a smaller spec (or a panel cache: --panel-cache DIR)" \
    "$moeppc" run "$work/big.yaml" --random-weights 1 --ids "1 2"
expect 1 "random weights need 137812.5 MB" \
    "$moeppc" run "$work/big.yaml" --random-weights 1 --ids "1 2" --backend interp
expect 1 "random weights need 68973.5 MB" "$moeppc" bench "$work/big.yaml" --layer --tokens 1
expect 1 "error: not enough memory: linear 65536x65536 (1 groups) at T = 1 needs 34.36 GB, and 1.05 GB is available" \
    "$moeppc" tune "$work/big.yaml" --tokens 1 -o "$work/db.yaml"
unset MOEPPC_MEM_LIMIT_MB

ids=$(seq -s ' ' 1 64)
MOEPPC_MEM_LIMIT_MB=1 expect 1 "error: not enough memory: the interpreter needs 1.3 MB for 64 tokens" \
    "$moeppc" run "$tiny" --random-weights 1 --ids "$ids" --backend interp
MOEPPC_MEM_LIMIT_MB=6 expect 1 "error: not enough memory: 4096 tokens need an activation arena of 5.8 MB" \
    "$moeppc" bench "$tiny" --experts --tokens 4096
# random weights that fit alone, not beside the CPU backend's packed copy and the weights it reads in
# place (those it packs leave once packed): said before they are made; with 20 MB more, they run
MOEPPC_MEM_LIMIT_MB=1280 expect 1 \
    "KV caches and the weights it reads in place (1.22 GB) do not fit the 1.34 GB of memory available" \
    "$moeppc" run "$src/specs/moepp-0.6b.yaml" --random-weights 1 --ids "1 2"
MOEPPC_MEM_LIMIT_MB=1300 "$moeppc" run "$src/specs/moepp-0.6b.yaml" --random-weights 1 --ids "1 2" --top 0 \
    >/dev/null 2>"$work/err" || { echo "FAIL: the 0.6B's random weights in 1300 MB:"; head -3 "$work/err"; failed=1; }
# bench --model on the same rule: a line that says so, not a model killed for memory
MOEPPC_MEM_LIMIT_MB=1280 "$moeppc" bench "$src/specs/moepp-0.6b.yaml" --model --tokens 1 --reps 1 >"$work/out" &&
    grep -q "^model  skipped: 1.06 GB of random weights reserved .*, 1.22 GB of panels" "$work/out" ||
    { echo "FAIL: bench --model in 1280 MB:"; tail -2 "$work/out"; failed=1; }

# a header length of 3 GB in a 10-byte file: refused before anything is read or allocated
printf '\000\136\320\262\000\000\000\000{}' >"$work/huge-header.safetensors"
expect 1 "header length 3000000000 is larger than the 100000000-byte limit" \
    "$moeppc" run "$tiny" --weights "$work/huge-header.safetensors" --ids "1"

# 60000 tokens (the most one argument can hold is 128 KiB): refused at the 65th
expect 1 "error: --ids: more than max_positions (64) tokens" \
    "$moeppc" run "$tiny" --random-weights 1 --ids "$(yes 1 | head -n 60000 | tr '\n' ' ')"
expect 1 "/dev/zero: error: cannot read the spec: File too large" "$moeppc" check /dev/zero

# an output that cannot be written is said before the work whose result it would hold, not after it:
# tune's (a 60 s budget; tiny-moepp's configurations all take about 5 s, so a limit of 3 s), build's
# compile (its own message, not the linker's), run's model (nothing on stdout)
expect 1 "moeppc tune: error: cannot write '$work/no-such-dir/db.yaml': No such file or directory" \
    timeout 3 "$moeppc" tune "$tiny" --budget 60 -o "$work/no-such-dir/db.yaml"
expect 1 "moeppc build: error: cannot write '$work/no-such-dir/m': No such file or directory" \
    "$moeppc" build "$tiny" -o "$work/no-such-dir/m"
for opt in --logits-out --routes-out; do
    expect 1 "moeppc run: error: cannot write '$work': Is a directory" \
        "$moeppc" run "$tiny" --random-weights 1 --ids "1 2" $opt "$work"
    [ -s "$work/out" ] && { echo "FAIL: run $opt to a directory ran the model first"; failed=1; }
done
ls "$work" | grep -q '\.tmp' && { echo "FAIL: a temporary file left in $work"; failed=1; }
exit $failed
