#!/bin/bash
# test_prompts.sh MOEPPC [DEVICE]: `moeppc run --prompts F` runs each line of F as a new sequence on the
# model loaded once, and prints for each what `--ids LINE` prints alone (predictions, routing,
# generated tokens): a long prompt, then a short one over its stale cache positions, then the long one
# again; blank and # lines skipped; a bad line named by its number, the rest still run, exit 1; a
# line starting with + continues the sequence; --quiet prints a line of generated ids a line.
# DEVICE: cpu (default) or cuda (with MOEPPC_CUDA_DRIVER: the emulator, from CTest).
set -u
MOEPPC=$1 DEVICE=${2:-cpu}
SPEC=$(cd "$(dirname "$0")" && pwd)/../../specs/tiny/tiny-moepp.yaml
WORK=$(mktemp -d) && trap 'rm -rf "$WORK"' EXIT
LONG="3 17 42 99 128 200 255 0 64 7" SHORT="5 6"
printf '%s\n\n# a comment\n%s\n1 2 999\n%s\n4 5\001\n' "$LONG" "$SHORT" "$LONG" >"$WORK/prompts"
OPTS=(--random-weights 1 --device "$DEVICE" --generate 5 --route-stats --top 3)
# what a run prints of one prompt, without the timings
block() { grep -v -e "^moeppc run:" -e "^ran " -e "^ decode:" -e "^== prompt" -e "^$"; }
"$MOEPPC" run "$SPEC" "${OPTS[@]}" --prompts "$WORK/prompts" >"$WORK/all.txt" 2>"$WORK/err.txt"
rc=$?
[ $rc -eq 1 ] || { echo "a bad line: exit $rc, want 1"; cat "$WORK/err.txt"; exit 1; }
grep -q "error: --prompts line 5: token 3 is 999, outside the vocabulary" "$WORK/err.txt" &&
  grep -qF "error: --prompts line 7: '5\x01' (token 2) is not a token id" "$WORK/err.txt" ||
  { echo "the bad line is not named:"; cat "$WORK/err.txt"; exit 1; }
[ "$(grep -c "^== prompt" "$WORK/all.txt")" -eq 3 ] || { echo "not 3 prompts run:"; cat "$WORK/all.txt"; exit 1; }
for k in 1 2 3; do
  ids=$([ $k -eq 2 ] && echo "$SHORT" || echo "$LONG")
  "$MOEPPC" run "$SPEC" "${OPTS[@]}" --ids "$ids" | block >"$WORK/alone$k.txt" || { echo "--ids '$ids' failed"; exit 1; }
  awk -v k=$k '/^== prompt /{n++} n==k' "$WORK/all.txt" | block >"$WORK/in$k.txt"
  grep -q "generated" "$WORK/in$k.txt" || { echo "prompt $k: nothing generated"; cat "$WORK/all.txt"; exit 1; }
  diff "$WORK/alone$k.txt" "$WORK/in$k.txt" || { echo "prompt $k ('$ids') differs from its run alone"; exit 1; }
done
printf '%s\n' "$SHORT" | "$MOEPPC" run "$SPEC" "${OPTS[@]}" --prompts - | block | diff "$WORK/alone2.txt" - ||
  { echo "--prompts - (standard input) differs"; exit 1; }
# + continues the sequence before it (prompt and generated tokens in the caches): what it generates is
# what the whole sequence generates alone; --quiet answers each line with one line of ids (an empty
# one for a bad line: + first, a continuation past max_positions)
Q=(--random-weights 1 --device "$DEVICE" --generate 4 --quiet)
LONG60=$(seq -s " " 1 60)
printf '+ 1 2\n%s\n+ %s\n# comment\n+ %s\n%s\n' "$LONG" "$SHORT" "$LONG60" "$SHORT" >"$WORK/conv"
"$MOEPPC" run "$SPEC" "${Q[@]}" --prompts "$WORK/conv" >"$WORK/conv.txt" 2>"$WORK/conv.err"
rc=$?
[ $rc -eq 1 ] || { echo "conversation: exit $rc, want 1"; cat "$WORK/conv.err"; exit 1; }
grep -q "line 1: + continues a sequence, and none has run before it" "$WORK/conv.err" &&
  grep -q "exceed max_positions (64)" "$WORK/conv.err" || { echo "the bad lines are not named:"; cat "$WORK/conv.err"; exit 1; }
mapfile -t out <"$WORK/conv.txt"
[ ${#out[@]} -eq 5 ] && [ -z "${out[0]}" ] && [ -z "${out[3]}" ] || { echo "not a line a prompt:"; cat "$WORK/conv.txt"; exit 1; }
alone() { "$MOEPPC" run "$SPEC" "${Q[@]}" --ids "$1"; }
[ "${out[1]}" = "$(alone "$LONG")" ] || { echo "prompt: '${out[1]}', alone '$(alone "$LONG")'"; exit 1; }
# --quiet and --top 0 read the last position's logits only (the CPU backend computes no other row):
# the same tokens as the full table's run
full=$(grep "^ generated" "$WORK/alone1.txt" | sed 's/.*: //' | cut -d' ' -f1-4)
top0=$("$MOEPPC" run "$SPEC" --random-weights 1 --device "$DEVICE" --generate 4 --top 0 --ids "$LONG" | grep "^ generated" | sed 's/.*: //')
[ "$full" = "$(alone "$LONG")" ] && [ "$full" = "$top0" ] ||
  { echo "last row only: --quiet '$(alone "$LONG")', --top 0 '$top0', the full run '$full'"; exit 1; }
whole="$LONG ${out[1]} $SHORT"
[ "${out[2]}" = "$(alone "$whole")" ] || { echo "+ $SHORT: '${out[2]}', the sequence '$whole' alone: '$(alone "$whole")'"; exit 1; }
[ "${out[4]}" = "$(alone "$SHORT")" ] || { echo "a new prompt after a conversation: '${out[4]}'"; exit 1; }
# --perplexity: a new line of one token is refused (nothing to predict), a + line of one is not (the
# turn before predicts it): its NLL is the one the whole sequence's run alone gives at that position
P=(--random-weights 1 --device "$DEVICE" --generate 3 --top 0 --perplexity)
printf '%s\n+ 9\n7\n' "$SHORT" >"$WORK/ppl1"
"$MOEPPC" run "$SPEC" "${P[@]}" --prompts "$WORK/ppl1" >"$WORK/ppl1.txt" 2>"$WORK/ppl1.err"
[ $? -eq 1 ] && grep -q "line 3: one token, and --perplexity needs a next one to predict" "$WORK/ppl1.err" ||
  { echo "--perplexity, a line of one token: not refused"; cat "$WORK/ppl1.err"; exit 1; }
grep -q "^== prompt 2 (line 2): 1 token, continuing the sequence before it$" "$WORK/ppl1.txt" ||
  { echo "--perplexity, + 9: no header of 1 token"; cat "$WORK/ppl1.txt"; exit 1; }
gen=$(awk '/^== prompt 1 /{n=1} n && /^ generated:/ { sub(/.*: /, ""); print; exit }' "$WORK/ppl1.txt")
nll() { awk -v p="$1" '$1 == p && $3 == "NLL" { print $4 }'; }
at=$(( $(wc -w <<<"$SHORT $gen") - 1 )) # the answer's last token, which predicts the + line's 9
turn=$(awk '/^== prompt 2 /{n=1} n' "$WORK/ppl1.txt" | nll $at)
whole=$("$MOEPPC" run "$SPEC" "${P[@]}" --ids "$SHORT $gen 9" | nll $at)
[ -n "$turn" ] && awk -v a="$turn" -v b="$whole" 'BEGIN { exit !(a - b < 2e-3 && b - a < 2e-3) }' ||
  { echo "--perplexity, + 9 after '$SHORT' ('$gen'): NLL '$turn' at position $at, alone '$whole'"; cat "$WORK/ppl1.txt"; exit 1; }
# a line too long to be a prompt (2 MB of "1 ") is refused without being kept; the next one runs
{ head -c 2000000 /dev/zero | tr '\0' '1'; printf '\n%s\n' "$SHORT"; } >"$WORK/long"
"$MOEPPC" run "$SPEC" "${Q[@]}" --prompts "$WORK/long" >"$WORK/long.txt" 2>"$WORK/long.err"
[ $? -eq 1 ] && grep -q "line 1: longer than" "$WORK/long.err" && [ "$(sed -n 2p "$WORK/long.txt")" = "$(alone "$SHORT")" ] ||
  { echo "a 2 MB line:"; cat "$WORK/long.err" "$WORK/long.txt"; exit 1; }
# a NUL byte in a line of ids is named, not taken for its end
printf '1 2\0003\n4 5\n' | "$MOEPPC" run "$SPEC" "${Q[@]}" --prompts - >"$WORK/nul.txt" 2>"$WORK/nul.err"
[ $? -eq 1 ] && grep -q "line 1, column 4: a NUL byte" "$WORK/nul.err" && [ -z "$(sed -n 1p "$WORK/nul.txt")" ] &&
  [ "$(sed -n 2p "$WORK/nul.txt")" = "$(alone "4 5")" ] || { echo "a NUL byte:"; cat "$WORK/nul.err" "$WORK/nul.txt"; exit 1; }
# without --batch, +@N continues the sequence when line N is its latest turn; another line is named
printf '%s\n+@1 7\n+@2 8\n+@1 9\n' "$SHORT" | "$MOEPPC" run "$SPEC" "${Q[@]}" --prompts - >"$WORK/at1.txt" 2>"$WORK/at1.err"
rc=$? a1=$(alone "$SHORT")
a2=$(alone "$SHORT $a1 7")
[ $rc -eq 1 ] && [ "$(cat "$WORK/at1.txt")" = "$(printf '%s\n%s\n%s\n\n' "$a1" "$a2" "$(alone "$SHORT $a1 7 $a2 8")")" ] &&
  grep -q "line 4: +@1: no sequence held now ends with line 1's turn (only the latest sequence is held without --batch N" "$WORK/at1.err" ||
  { echo "+@N one line after the other: exit $rc"; cat "$WORK/at1.txt" "$WORK/at1.err"; exit 1; }
# a new line whose first tokens the caches hold (the sequence before it) runs only the rest where
# only its last logits are read: the same answers as alone; whole with --no-prefix-reuse, --top 1 or
# --route-stats
printf '%s\n%s 1 2\n%s\n' "$LONG" "$LONG" "$LONG" >"$WORK/reuse"
"$MOEPPC" run "$SPEC" "${Q[@]}" --prompts "$WORK/reuse" >"$WORK/reuse.txt" &&
  [ "$(cat "$WORK/reuse.txt")" = "$(printf '%s\n%s\n%s' "$(alone "$LONG")" "$(alone "$LONG 1 2")" "$(alone "$LONG")")" ] ||
  { echo "prefix reuse: other answers than alone:"; cat "$WORK/reuse.txt"; exit 1; }
ran() { "$MOEPPC" run "$SPEC" --random-weights 1 --device "$DEVICE" --generate 4 --prompts "$WORK/reuse" "$@" | grep "^ran " |
          sed 's/^ran \([0-9]*\) tokens\?.*in the caches$/\1 after reuse/; s/^ran \([0-9]*\) tokens\?.*/\1/' |
          paste -sd,; }
r0=$(ran --top 0) r1=$(ran --top 0 --no-prefix-reuse) r2=$(ran --top 1) r3=$(ran --top 0 --route-stats)
[ "$r0" = "10,2 after reuse,1 after reuse" ] && [ "$r1" = "10,12,10" ] && [ "$r2" = "$r1" ] && [ "$r3" = "$r1" ] ||
  { echo "prefix reuse: tokens run '$r0', --no-prefix-reuse '$r1', --top 1 '$r2', --route-stats '$r3'"; exit 1; }
"$MOEPPC" run "$SPEC" "${Q[@]}" --ids 1 --no-prefix-reuse >/dev/null 2>&1
[ $? -eq 2 ] || { echo "--no-prefix-reuse without --prompts: not a usage error"; exit 1; }
{
  # --batch 3: up to 3 sequences decoded together (a step one row of each, and prompt chunks) print
  # what the lines print one after the other, in their order: greedy and drawn, bad lines, + turns
  # (which wait for the sequence they continue), a stop token, prompts in chunks of 3 and 4 tokens
  # (predictions, perplexity and routing gathered over the steps); and the steps carried several
  # decoding sequences
  printf '%s\n%s\n+ 9 9\n1 2 999\n4 5 6 7\n\n+ 8 8 8\n%s\n1 2 3\n+ 4\n7 7\n' "$LONG" "$SHORT" "$LONG60" >"$WORK/batch"
  # (--chunk 3 and 4: prompts run a few tokens a step, beside the decoding sequences' rows)
  for S in "--quiet" "--top 2 --route-stats --temperature 0.8 --top-p 0.9 --seed 3" "--quiet --stop 102 --temperature 1.5" \
           "--quiet|--chunk 3" "--top 2 --route-stats --perplexity|--chunk 4"; do
    read -ra X <<<"${S%%|*}"; read -ra C <<<"$([ "${S#*|}" != "$S" ] && echo "${S#*|}")"
    B=(--random-weights 1 --device "$DEVICE" --generate 6 "${X[@]}" --prompts "$WORK/batch")
    "$MOEPPC" run "$SPEC" "${B[@]}" >"$WORK/one.txt" 2>"$WORK/one.err"; rc1=$?
    "$MOEPPC" run "$SPEC" "${B[@]}" --batch 3 "${C[@]}" >"$WORK/three.txt" 2>"$WORK/three.err"; rc3=$?
    [ $rc1 -eq 1 ] && [ $rc3 -eq 1 ] && diff "$WORK/one.err" "$WORK/three.err" >/dev/null ||
      { echo "--batch 3 ($S): exit $rc3, one by one $rc1"; cat "$WORK/three.err"; exit 1; }
    diff <(block <"$WORK/one.txt") <(block <"$WORK/three.txt" | grep -v "^ batch:") ||
      { echo "--batch 3 ($S) prints otherwise than one line after the other"; exit 1; }
  done
  avg=$("$MOEPPC" run "$SPEC" --random-weights 1 --device "$DEVICE" --generate 6 --top 0 --prompts "$WORK/batch" --batch 3 2>/dev/null |
        sed -n 's/.*steps, \([0-9.]*\) decoding sequences.*/\1/p')
  awk -v a="$avg" 'BEGIN { exit !(a >= 1.5) }' || { echo "--batch 3: decode steps of '$avg' sequences on average"; exit 1; }
  steps() { "$MOEPPC" run "$SPEC" --random-weights 1 --device "$DEVICE" --generate 6 --top 0 --prompts "$WORK/batch" --batch 3 "$@" \
              2>/dev/null | sed -n 's/.* \([0-9]*\) steps, .*/\1/p'; }
  s256=$(steps) s3=$(steps --chunk 3)
  [ -n "$s3" ] && [ "$s3" -gt "$s256" ] || { echo "--chunk 3: $s3 steps, not more than the default's $s256"; exit 1; }
  "$MOEPPC" run "$SPEC" --random-weights 1 --generate 2 --chunk 3 --prompts "$WORK/batch" >/dev/null 2>&1
  [ $? -eq 2 ] || { echo "--chunk without --batch: not a usage error"; exit 1; }
  # --unordered: each answer as its sequence ends, after its line number and a tab: by number, what
  # one line after the other answers (a bad line too); a short line that stops at its first token is
  # answered before the long one above it, still decoding
  U=(--random-weights 1 --device "$DEVICE" --generate 6 --quiet --prompts "$WORK/batch")
  "$MOEPPC" run "$SPEC" "${U[@]}" 2>/dev/null | paste <(awk '{ sub(/^[ \t,]+/, "") } $0 != "" && !/^#/ { print NR }' "$WORK/batch") - >"$WORK/one.txt"
  "$MOEPPC" run "$SPEC" "${U[@]}" --batch 3 --chunk 4 --unordered 2>/dev/null | sort -s -n -k1,1 >"$WORK/three.txt"
  diff "$WORK/one.txt" "$WORK/three.txt" || { echo "--unordered: other answers than one by one's"; exit 1; }
  first=$(alone "$SHORT" | cut -d" " -f1)
  got=$(printf '%s\n%s\n' "$LONG60" "$SHORT" | "$MOEPPC" run "$SPEC" "${Q[@]}" --stop "$first" --prompts - --batch 2 --chunk 8 --unordered)
  [ "$got" = "$(printf '2\t%s\n1\t%s' "$first" "$(alone "$LONG60")")" ] ||
    { echo "--unordered: '$got', not the short line first"; exit 1; }
  "$MOEPPC" run "$SPEC" "${U[@]}" --unordered >/dev/null 2>&1
  [ $? -eq 2 ] || { echo "--unordered without --batch: not a usage error"; exit 1; }
  # +@N continues line N's sequence, to its latest turn, while one of the --batch sequences holds it:
  # two conversations interleaved, each turn what its whole sequence generates alone; a line
  # continued since, a line not before it: named (exit 1), the rest still run
  a1=$(alone "$SHORT") b1=$(alone "$LONG")
  a3=$(alone "$SHORT $a1 7") b4=$(alone "$LONG $b1 8")
  printf '%s\n%s\n+@1 7\n+@2 8\n+@3 9\n+@1 5\n+@9 1\n' "$SHORT" "$LONG" |
    "$MOEPPC" run "$SPEC" "${Q[@]}" --prompts - --batch 2 >"$WORK/at.txt" 2>"$WORK/at.err"
  rc=$?
  [ $rc -eq 1 ] && [ "$(cat "$WORK/at.txt")" = "$(printf '%s\n%s\n%s\n%s\n%s\n\n' "$a1" "$b1" "$a3" "$b4" "$(alone "$SHORT $a1 7 $a3 9")")" ] &&
    grep -q "line 6: +@1: no sequence held now ends with line 1's turn" "$WORK/at.err" &&
    grep -q "line 7, column 2: +@N continues the sequence of an earlier line N (1 to 6)" "$WORK/at.err" ||
    { echo "+@N with --batch 2: exit $rc"; cat "$WORK/at.txt" "$WORK/at.err"; exit 1; }
  # a new line takes the done sequence whose caches hold most of it (here not the one idle longest),
  # and runs only the rest
  printf '%s\n%s\n%s 1 2\n' "$SHORT" "$LONG" "$LONG" >"$WORK/reuse2"
  "$MOEPPC" run "$SPEC" --random-weights 1 --device "$DEVICE" --generate 4 --top 0 --prompts "$WORK/reuse2" --batch 2 >"$WORK/r2.txt" &&
    grep -q "^ran 2 tokens.*; the 10 before them were in the caches" "$WORK/r2.txt" &&
    [ "$("$MOEPPC" run "$SPEC" "${Q[@]}" --prompts "$WORK/reuse2" --batch 2 | tail -1)" = "$(alone "$LONG 1 2")" ] ||
    { echo "prefix reuse with --batch 2:"; cat "$WORK/r2.txt"; exit 1; }
  # lines that start together with a shared prefix: the second waits for the first's prompt, then
  # its caches' first positions are copied (a fork) and only the rest runs; answers as alone
  printf '%s\n%s 1 2\n%s 3\n' "$LONG" "$LONG" "$LONG" >"$WORK/fork"
  "$MOEPPC" run "$SPEC" --random-weights 1 --device "$DEVICE" --generate 4 --top 0 --prompts "$WORK/fork" --batch 3 >"$WORK/f.txt" &&
    [ "$(grep -c "^ran [12] tokens\?.*; the 10 before them were in the caches" "$WORK/f.txt")" -eq 2 ] &&
    [ "$("$MOEPPC" run "$SPEC" "${Q[@]}" --prompts "$WORK/fork" --batch 3)" = "$(printf '%s\n%s\n%s' "$(alone "$LONG")" "$(alone "$LONG 1 2")" "$(alone "$LONG 3")")" ] ||
    { echo "a fork of a shared prefix with --batch 3:"; cat "$WORK/f.txt"; exit 1; }
  # --serve: JSON requests, JSON answers as each ends (tagged by id), each what --ids gives with the
  # request's parameters: a stream of its tokens; "continue"; drawn with a seed; a stop token; no
  # tokens asked; a shared prefix forked (cached_tokens); bad requests answered with an error
  js() { echo "[$(echo "$1" | tr ' ' ',')]"; }
  a1=$(alone "$SHORT") b1=$(alone "$LONG")
  d1=$("$MOEPPC" run "$SPEC" --random-weights 1 --device "$DEVICE" --generate 6 --quiet --temperature 0.8 --seed 3 --ignore-eos --ids "$LONG")
  first=${a1%% *}
  { echo '{"id": "a", "ids": '"$(js "$SHORT")"'}'
    echo '{"id": "b", "ids": '"$(js "$LONG")"', "stream": true}'
    echo '{"id": "c", "continue": "a", "ids": [7]}'
    echo '{"id": 4, "ids": '"$(js "$LONG")"', "max_tokens": 6, "temperature": 0.8, "seed": 3, "stop": []}'
    echo '{"id": "e", "ids": '"$(js "$SHORT")"', "stop": ['"$first"']}'
    echo '{"id": "f", "ids": [1, 2], "max_tokens": 0}'
    echo '{"id": "g", "ids": '"$(js "$LONG 1 2")"'}'
    echo 'not json'
    echo '{"id": "h", "ids": [1], "max_token": 3}'
    echo '{"id": "i", "continue": "zz", "ids": [1]}'
    echo '{"id": "j", "ids": [1], "top_p": 2}'
    echo '{"id": "k", "ids": []}'
    echo '{"id": "l", "ids": '"$(js "$SHORT")"', "max_tokens": 1, "stop": ['"$first"']}'
    printf '{"id": "m\xff", "ids": [1]}\n' # not UTF-8 (its id had been echoed so: no JSON answer; now its line's number)
    echo '{"id": "n", "ids": [1], "stop": ["x\u0000"]}'; } >"$WORK/serve.jsonl" # (cJSON's strings end at a NUL)
  "$MOEPPC" run "$SPEC" --random-weights 1 --device "$DEVICE" --generate 4 --serve --batch 3 <"$WORK/serve.jsonl" >"$WORK/serve.out" 2>"$WORK/serve.err"
  rc=$?
  want=("{\"id\":\"a\",\"ids\":$(js "$a1"),\"finish_reason\":\"length\",\"prompt_tokens\":2,\"cached_tokens\":0}"
        "{\"id\":\"b\",\"ids\":$(js "$b1"),\"finish_reason\":\"length\",\"prompt_tokens\":10,\"cached_tokens\":0}"
        "{\"id\":\"c\",\"ids\":$(js "$(alone "$SHORT $a1 7")"),\"finish_reason\":\"length\",\"prompt_tokens\":1,\"cached_tokens\":0}"
        "{\"id\":4,\"ids\":$(js "$d1"),\"finish_reason\":\"length\",\"prompt_tokens\":10,\"cached_tokens\":9}"
        "{\"id\":\"e\",\"ids\":[$first],\"finish_reason\":\"stop\",\"prompt_tokens\":2,\"cached_tokens\":0}"
        "{\"id\":\"f\",\"ids\":[],\"finish_reason\":\"length\",\"prompt_tokens\":2,\"cached_tokens\":0}"
        "{\"id\":\"g\",\"ids\":$(js "$(alone "$LONG 1 2")"),\"finish_reason\":\"length\",\"prompt_tokens\":12,\"cached_tokens\":10}"
        '{"id":8,"error":"--serve line 8: column 1: not JSON"}'
        '{"id":"h","error":"--serve line 9: unknown field \"max_token\""}'
        '{"id":"k","error":"--serve line 12: \"ids\": no tokens"}'
        '{"id":14,"error":"--serve line 14: column 10: a byte that is not UTF-8 (JSON text is UTF-8)"}'
        '{"id":"n","error":"--serve line 15: column 36: a string with a NUL character (\\u0000), which moeppc does not take"}')
  for w in "${want[@]}"; do grep -qFx -- "$w" "$WORK/serve.out" || { echo "--serve: no answer '$w' in:"; cat "$WORK/serve.out" "$WORK/serve.err"; exit 1; }; done
  # a stop token as the last token asked for still ends it as "stop" ("length" until 2026-12-06)
  grep -q '^{"id":"l","ids":\['"$first"'\],"finish_reason":"stop"' "$WORK/serve.out" ||
    { echo "--serve: a stop token as the last one is not finish_reason \"stop\":"; grep '"l"' "$WORK/serve.out"; exit 1; }
  [ $rc -eq 1 ] && [ "$(wc -l <"$WORK/serve.out")" -eq $((15 + 4)) ] && grep -q '^{"id":"i","error":"--serve line 10: \\"continue\\": no sequence held' "$WORK/serve.out" &&
    grep -q '^{"id":"j","error":"--serve line 11: .*top' "$WORK/serve.out" &&
    [ "$(grep '^{"id":"b","token"' "$WORK/serve.out" | sed 's/.*"token":\([0-9]*\)}/\1/' | paste -sd' ')" = "$b1" ] &&
    [ "$(grep -n '"id":"b"' "$WORK/serve.out" | tail -1 | cut -d: -f2-)" = "${want[1]}" ] ||
    { echo "--serve: exit $rc, or the stream, the count or the errors are off:"; cat "$WORK/serve.out"; exit 1; }
  for bad in "--ids 1" "--quiet" "--backend interp"; do
    "$MOEPPC" run "$SPEC" --random-weights 1 --serve $bad </dev/null >/dev/null 2>&1
    [ $? -eq 2 ] || { echo "--serve $bad: not a usage error"; exit 1; }
  done
  # without --batch: one sequence (on the GPU, that one's caches were never set up for a run by
  # sequences: a crash until 2026-12-02)
  [ "$(head -1 "$WORK/serve.jsonl" | "$MOEPPC" run "$SPEC" --random-weights 1 --device "$DEVICE" --generate 4 --serve 2>/dev/null)" = "${want[0]}" ] ||
    { echo "--serve without --batch: not the answer of --batch 3"; exit 1; }
  # a request that waits (here for the sequence it continues) lets those after it start: f is
  # answered before a, and c (a's next turn) last
  printf '%s\n' '{"id": "a", "ids": '"$(js "$LONG")"', "max_tokens": 8}' '{"id": "c", "continue": "a", "ids": [7]}' \
    '{"id": "f", "ids": '"$(js "$SHORT")"'}' >"$WORK/wait.jsonl"
  order=$("$MOEPPC" run "$SPEC" --random-weights 1 --device "$DEVICE" --generate 4 --serve --batch 2 <"$WORK/wait.jsonl" 2>/dev/null | cut -d, -f1 | paste -sd' ')
  [ "$order" = '{"id":"f" {"id":"a" {"id":"c"' ] || { echo "--serve: a waiting request held up the next: answers '$order'"; exit 1; }
  # {"cancel": ID}: a request still waiting ends at once with nothing, answered before the one running
  # ahead of it; "continue" cannot name it; an id none has is said on standard error; a cancel is alone
  # (and stop strings need a tokenizer)
  { echo '{"id": "a", "ids": '"$(js "$LONG")"'}'
    echo '{"id": "b", "ids": '"$(js "$SHORT")"'}'
    echo '{"cancel": "b"}'
    echo '{"cancel": "zz"}'
    echo '{"cancel": ["b"]}'
    echo '{"cancel": "a", "ids": [1]}'
    echo '{"id": "c", "continue": "b", "ids": [1]}'
    echo '{"id": "s", "ids": [1], "stop": ["x"]}'; } >"$WORK/cancel.jsonl"
  "$MOEPPC" run "$SPEC" --random-weights 1 --device "$DEVICE" --generate 4 --serve <"$WORK/cancel.jsonl" >"$WORK/cancel.out" 2>"$WORK/cancel.err"
  rc=$?
  [ $rc -eq 1 ] && [ "$(sed -n 1p "$WORK/cancel.out")" = '{"id":"b","ids":[],"finish_reason":"cancelled","prompt_tokens":2,"cached_tokens":0}' ] &&
    [ "$(sed -n '$p' "$WORK/cancel.out")" = "${want[1]/\"b\"/\"a\"}" ] && [ "$(wc -l <"$WORK/cancel.out")" -eq 6 ] &&
    grep -qF '{"id":"s","error":"--serve line 8: \"stop\": strings end the text, and there is no tokenizer' "$WORK/cancel.out" &&
    grep -qF '{"id":5,"error":"--serve line 5: \"cancel\": expected the id of a request"}' "$WORK/cancel.out" &&
    grep -qF '{"id":6,"error":"--serve line 6: a cancel is {\"cancel\": ID} alone"}' "$WORK/cancel.out" &&
    grep -qF '{"id":"c","error":"--serve line 7: \"continue\": no sequence held now ends with request \"b\"' "$WORK/cancel.out" &&
    grep -qF 'line 4: cancel "zz": no request of that id is waiting or running' "$WORK/cancel.err" ||
    { echo "--serve cancel of a waiting request: exit $rc"; cat "$WORK/cancel.out" "$WORK/cancel.err"; exit 1; }
  # cancelling running requests, on a pipe (caches of 8192 positions: time to cancel in): a decoding
  # one ends with the tokens it has streamed, and "continue" goes on from them as the whole sequence
  # alone; one running its prompt (started once the bad line sent after it is answered) ends with
  # none (asked to echo its prompt with logprobs: all null), and the positions it ran are in its
  # caches for the same prompt sent again
  sed 's/max_positions: 64/max_positions: 8192/' "$SPEC" >"$WORK/long.yaml"
  L=(--random-weights 1 --device "$DEVICE" --ignore-eos)
  coproc P { timeout 120 "$MOEPPC" run "$WORK/long.yaml" "${L[@]}" --serve --batch 2 --chunk 64 2>/dev/null; }
  echo '{"id": "d", "ids": '"$(js "$LONG")"', "max_tokens": 4000, "stream": true}' >&"${P[1]}"
  toks=""
  read -r -t 60 ln <&"${P[0]}" && echo '{"cancel": "d"}' >&"${P[1]}"
  while [[ $ln == '{"id":"d","token":'* ]]; do toks="$toks ${ln//[^0-9]/}" && read -r -t 60 ln <&"${P[0]}" || break; done
  dids=$(echo "$ln" | sed -n 's/^{"id":"d","ids":\[\([0-9,]*\)\],"finish_reason":"cancelled","prompt_tokens":10,"cached_tokens":0}$/\1/p' | tr , ' ')
  n=$(echo "$dids" | wc -w)
  [ "$n" -ge 1 ] && [ "$n" -lt 4000 ] && [ "${toks# }" = "$dids" ] ||
    { echo "--serve cancel of a decoding request: '$ln' after the tokens '$toks'"; exit 1; }
  echo '{"id": "e", "continue": "d", "ids": [7], "max_tokens": 3}' >&"${P[1]}" && read -r -t 60 ln <&"${P[0]}"
  e1=$("$MOEPPC" run "$WORK/long.yaml" "${L[@]}" --generate 3 --quiet --ids "$LONG $dids 7")
  [ "$ln" = "{\"id\":\"e\",\"ids\":$(js "$e1"),\"finish_reason\":\"length\",\"prompt_tokens\":1,\"cached_tokens\":0}" ] ||
    { echo "--serve continuing a cancelled request: '$ln', want the ids '$e1'"; exit 1; }
  if [ "$DEVICE" = cpu ]; then # (the emulator would take minutes over 3900 positions)
    # r decodes beside, its streamed tokens a step each: one after the bad line's answer comes from a
    # step that ran p's first 64 positions; p is then cancelled (again, with another prompt, should
    # all 61 steps of its prompt have run first); r is cancelled once q's answer is in, before the
    # reference run (r would decode freely while it starts: a fast step finishes 8000 tokens)
    upto() { while read -r -t 60 ln <&"${P[0]}"; do [[ $ln == $1 ]] && return 0; done; return 1; }
    echo '{"id": "r", "ids": [1, 2, 3], "max_tokens": 8000, "stream": true}' >&"${P[1]}"
    # (r decoding first: read with p's line, r's 3-token prompt shared p's first step, p ran 61
    # positions in it, and a CI run saw 253 cached, not a multiple of 64)
    upto '{"id":"r","token"*' || { echo "--serve: r streamed nothing"; exit 1; }
    for try in 1 2 3; do
      long=$(seq 3900 | awk -v t=$try '{ printf "%s%d", (NR > 1 ? " " : ""), ($1 * 7 + t) % 250 + 1 }')
      printf '%s\nx\n' '{"id": "p", "ids": '"$(js "$long")"', "max_tokens": 2, "logprobs": 1, "echo": true}' >&"${P[1]}"
      upto '*"error"*' && upto '{"id":"r","token"*' && echo '{"cancel": "p"}' >&"${P[1]}" && upto '{"id":"p"*'
      [[ $ln == *cancelled* ]] && break
    done
    pa=$ln
    echo '{"id": "q", "ids": '"$(js "$long 5")"', "max_tokens": 2}' >&"${P[1]}" && upto '{"id":"q"*'
    qa=$ln
    echo '{"cancel": "r"}' >&"${P[1]}" && upto '{"id":"r","ids"*' && [[ $ln == *'"finish_reason":"cancelled"'* ]] ||
      { echo "--serve: r not cancelled: '${ln:0:300}'"; exit 1; }
    ln=$qa
    k=$(echo "$ln" | sed -n 's/.*"cached_tokens":\([0-9]*\)}$/\1/p')
    plp=${pa#*'"prompt_logprobs":'} # (echo: the prompt; its log-probabilities all null, its rows cut short)
    [[ $pa == '{"id":"p","ids":[],"finish_reason":"cancelled","prompt_tokens":3900,"cached_tokens":0,"logprobs":{"token_logprobs":[],"top_logprobs":[]},"prompt_ids":'"$(js "$long")"',"prompt_logprobs":'* ]] &&
      [ "$plp" = "{\"token_logprobs\":[$(seq 3900 | sed 's/.*/null/' | paste -sd,)],\"top_logprobs\":[$(seq 3900 | sed 's/.*/null/' | paste -sd,)]}}" ] &&
      [ "${k:-0}" -gt 0 ] && [ "$k" -lt 3900 ] && [ $((k % 64)) -eq 0 ] &&
      [ "$ln" = "{\"id\":\"q\",\"ids\":$(js "$("$MOEPPC" run "$WORK/long.yaml" "${L[@]}" --generate 2 --quiet --ids "$long 5")"),\"finish_reason\":\"length\",\"prompt_tokens\":3901,\"cached_tokens\":$k}" ] ||
      { echo "--serve cancel of a request in its prompt: '$pa', then the prompt again: '$ln'"; exit 1; }
  fi
  exec {P[1]}>&-; wait
  # a new line takes the sequence idle longest: on a pipe, the short turn +@2 ends before the long
  # +@1 (20 tokens, in chunks of 4), so line 5 takes line 3's sequence and line 4's is still held
  coproc P { timeout 60 "$MOEPPC" run "$SPEC" "${Q[@]}" --prompts - --batch 2 --chunk 4 --unordered; }
  printf '%s\n%s\n' "$SHORT" "$LONG" >&"${P[1]}"; read -r -t 30 _ <&"${P[0]}"; read -r -t 30 _ <&"${P[0]}"
  printf '+@2 7\n+@1 %s %s\n' "$LONG" "$LONG" >&"${P[1]}"; read -r -t 30 r1 <&"${P[0]}"; read -r -t 30 r2 <&"${P[0]}"
  printf '%s\n+@4 9\n' "$SHORT" >&"${P[1]}"; read -r -t 30 r3 <&"${P[0]}"; read -r -t 30 r4 <&"${P[0]}"
  exec {P[1]}>&-; wait
  a4=$(alone "$SHORT $a1 $LONG $LONG")
  [ "$r1" = "$(printf '3\t%s' "$(alone "$LONG $b1 7")")" ] && [ "$r2" = "$(printf '4\t%s' "$a4")" ] &&
    [ "$(printf '%s\n%s\n' "$r3" "$r4" | sort -n)" = "$(printf '5\t%s\n6\t%s' "$a1" "$(alone "$SHORT $a1 $LONG $LONG $a4 9")")" ] ||
    { echo "+@N on a pipe with --batch 2 --unordered: '$r1', '$r2', '$r3', '$r4'"; exit 1; }
  # a pipe answered a line at a time: the next line comes only after the answer (no waiting for it)
  coproc P { timeout 60 "$MOEPPC" run "$SPEC" "${Q[@]}" --prompts - --batch 4; }
  echo "$SHORT" >&"${P[1]}"; read -r -t 30 a1 <&"${P[0]}"
  echo "+ 7" >&"${P[1]}"; read -r -t 30 a2 <&"${P[0]}"
  exec {P[1]}>&-; wait
  [ "$a1" = "$(alone "$SHORT")" ] && [ "$a2" = "$(alone "$SHORT $a1 7")" ] ||
    { echo "--batch 4 on a pipe a line at a time: '$a1', '$a2'"; exit 1; }
  # --max-positions 20: caches of 20 positions; a 10-token prompt generates 11 tokens of 15 (its
  # last one at position 20 is not fed), the same with --batch; more than the spec's 64 refused
  M=(--random-weights 1 --device "$DEVICE" --generate 15 --ignore-eos --quiet --max-positions 20 --prompts -)
  one=$(printf '%s\n%s\n' "$LONG" "$SHORT" | "$MOEPPC" run "$SPEC" "${M[@]}")
  two=$(printf '%s\n%s\n' "$LONG" "$SHORT" | "$MOEPPC" run "$SPEC" "${M[@]}" --batch 2)
  [ "$one" = "$two" ] && [ "$(echo "$one" | head -1 | wc -w)" -eq 11 ] ||
    { echo "--max-positions 20: '$one' one by one, '$two' with --batch 2"; exit 1; }
  "$MOEPPC" run "$SPEC" --random-weights 1 --ids 1 --max-positions 65 >/dev/null 2>&1
  [ $? -eq 2 ] || { echo "--max-positions 65 (past the spec's 64): not a usage error"; exit 1; }
  "$MOEPPC" run "$SPEC" --random-weights 1 --generate 2 --batch 2 --backend interp --prompts "$WORK/batch" >/dev/null 2>&1
  [ $? -eq 2 ] || { echo "--batch 2 --backend interp: not a usage error"; exit 1; }
  "$MOEPPC" run "$SPEC" --random-weights 1 --generate 2 --batch 2 --ids 1 >/dev/null 2>&1
  [ $? -eq 2 ] || { echo "--batch 2 --ids: not a usage error"; exit 1; }
}
echo "--prompts on $DEVICE: 3 prompts as alone, the bad line named, standard input read; + continues as the whole alone; --batch as one by one"
