#!/usr/bin/env bash
# test_text.sh MOEPPC PYTHON SRC: text in and out on the command line against the sentencepiece
# library: `moeppc tokenize` (ids, pieces, decoding) and `moeppc run --prompt/--tokenizer/--prompts`
# (the prompt's ids, the generated text streamed, text prompt lines), with models that library trains
# here; and their refusals (a broken model or one of a kind it does not read, a tokenizer larger than the vocabulary, a bad
# escape, a bad id).
set -uo pipefail
M=$1 PY=$2 SRC=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
fail() { echo "FAILED: $*"; status=1; }

"$PY" "$SRC/tests/runtime/tokenizer_cases.py" "$tmp/tok" >/dev/null || { echo "cannot train the models"; exit 1; }
TK=$tmp/tok/llama.model
sed "s/vocab: 256/vocab: 512/" "$SRC/specs/tiny/tiny-moepp.yaml" > "$tmp/t512.yaml" # the tokenizer's 400 pieces fit

# --- moeppc tokenize against sentencepiece: ids (with and without BOS), pieces, decoding ----------
printf 'Hello world, this is a test.\n  two  spaces\tand a tab\ncafé 日本語 😀\n\nbad \xff\xfe bytes\nnul\000byte\n' > "$tmp/lines.txt"
"$PY" - "$TK" "$tmp/lines.txt" "$tmp" <<'PYEOF' || fail "cannot compute sentencepiece's answers"
import sys, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
lines = open(sys.argv[2], "rb").read().split(b"\n")[:-1]
def esc(b):
    out = ""
    for c in b:
        out += {0x5c: "\\\\", 0x0a: "\\n", 0x09: "\\t", 0x0d: "\\r"}.get(c) or (f"\\x{c:02x}" if c < 0x20 or c == 0x7f else chr(c))
    return out.encode("latin-1").decode("utf-8", "surrogateescape")
with open(sys.argv[3] + "/want_ids", "w") as f, open(sys.argv[3] + "/want_nobos", "w") as g, \
     open(sys.argv[3] + "/want_pieces", "w", encoding="utf-8", errors="surrogateescape") as h:
    for l in lines:
        ids = sp.encode(l)
        f.write(" ".join(map(str, [sp.bos_id()] + ids)) + "\n")
        g.write(" ".join(map(str, ids)) + "\n")
        h.write(" ".join(esc(sp.id_to_piece(i).encode()) for i in [sp.bos_id()] + ids) + "\n")
# decoding: ids of every kind, byte pieces that make and break characters
seqs = [[1, 343, 75], [0xE6 + 3, 0x97 + 3, 0xA5 + 3, 300], [0xE6 + 3, 0x97 + 3], [2, 13 + 3, 10 + 3, 250], [0, 5, 399]]
with open(sys.argv[3] + "/dec_in", "w") as f, open(sys.argv[3] + "/want_dec", "w", encoding="utf-8", errors="surrogateescape") as g:
    for s in seqs:
        f.write(",".join(map(str, s)) + "\n")
        g.write(esc(sp.decode(s).encode("utf-8", "surrogateescape")) + "\n")
PYEOF
"$M" tokenize "$TK" --file "$tmp/lines.txt" > "$tmp/got_ids" || fail "tokenize --file exited $?"
cmp -s "$tmp/got_ids" "$tmp/want_ids" || { fail "tokenize's ids differ from sentencepiece's"; diff "$tmp/got_ids" "$tmp/want_ids" | head; }
"$M" tokenize "$TK" --no-bos --file - < "$tmp/lines.txt" > "$tmp/got_nobos" || fail "tokenize --no-bos exited $?"
cmp -s "$tmp/got_nobos" "$tmp/want_nobos" || fail "tokenize --no-bos differs from sentencepiece's"
"$M" tokenize "$TK" --pieces --file "$tmp/lines.txt" > "$tmp/got_pieces" || fail "tokenize --pieces exited $?"
cmp -s "$tmp/got_pieces" "$tmp/want_pieces" || { fail "tokenize --pieces differs"; diff "$tmp/got_pieces" "$tmp/want_pieces" | head; }
"$M" tokenize "$TK" --decode --escape --file "$tmp/dec_in" > "$tmp/got_dec" || fail "tokenize --decode exited $?"
cmp -s "$tmp/got_dec" "$tmp/want_dec" || { fail "tokenize --decode differs"; diff "$tmp/got_dec" "$tmp/want_dec" | head; }
[ "$("$M" tokenize "$TK" "Hello world" "x")" = "$("$M" tokenize "$TK" --file <(printf 'Hello world\nx\n'))" ] ||
  fail "TEXT arguments differ from --file lines"

# --- refusals ---------------------------------------------------------------------------------------
expect() { # expect RC PATTERN CMD...: exit status RC and PATTERN in stderr
  local rc=$1 pat=$2; shift 2
  "$@" > "$tmp/out" 2> "$tmp/err"; local got=$?
  [ $got = "$rc" ] && grep -q -- "$pat" "$tmp/err" || { fail "$* -> exit $got (want $rc, '$pat'): $(head -c 300 "$tmp/err")"; }
}
head -c 3000 "$TK" > "$tmp/cut.model"
expect 1 "cut.model: error: byte [0-9]*: .*past the end" "$M" tokenize "$tmp/cut.model" hi
"$PY" -c "
import sentencepiece as spm
spm.SentencePieceTrainer.train(input='$tmp/tok/corpus.txt', model_prefix='$tmp/chr', vocab_size=300, model_type='char', minloglevel=2)" ||
  fail "cannot train a char model"
expect 1 "chr.model: error: a SentencePiece char model: moeppc reads BPE models" "$M" tokenize "$tmp/chr.model" hi
expect 1 "no such file\|No such file" "$M" tokenize "$tmp/none.model" hi
expect 1 "argument 1: token 2 is 400, outside the vocabulary \[0, 400)" "$M" tokenize "$TK" --decode "1 400"
expect 1 "argument 1: '1x' (token 1) is not a token id" "$M" tokenize "$TK" --decode "1x 2"
printf '1 2\nx\n3\n' | "$M" tokenize "$TK" --decode --file - > "$tmp/out" 2> "$tmp/err"
[ $? = 1 ] && [ "$(sed -n 2p "$tmp/out")" = "" ] && [ "$(wc -l < "$tmp/out")" = 3 ] && grep -q "line 2: 'x'" "$tmp/err" ||
  fail "a bad --decode line: not answered by an empty line and named"
expect 2 "missing TEXT" "$M" tokenize "$TK"
expect 2 "pieces" "$M" tokenize "$TK" --decode --pieces 1

R=("$M" run "$tmp/t512.yaml" --random-weights 5 --backend interp)
expect 1 "--prompt: text needs a tokenizer" "${R[@]}" --prompt hi
expect 1 "400 pieces, more than the model's vocabulary of 256" "$M" run "$SRC/specs/tiny/tiny-moepp.yaml" --random-weights 1 --tokenizer "$TK" --prompt hi
expect 2 "no-bos applies to text" "${R[@]}" --ids 1 --no-bos
expect 2 "special applies to text" "${R[@]}" --ids 1 --special
expect 2 "a request's \"special\"" "$M" run "$tmp/t512.yaml" --random-weights 5 --tokenizer "$TK" --serve --special
expect 2 "give one of --ids, --prompt and --prompts" "${R[@]}" --ids 1 --prompt hi
expect 1 "--prompt: 0 tokens" "${R[@]}" --tokenizer "$TK" --prompt "" --no-bos
expect 1 "--prompt: .*not a tokenizer.model\|cut.model: error" "${R[@]}" --tokenizer "$tmp/cut.model" --prompt hi

# --- run --prompt: the prompt's ids are sentencepiece's, the streamed text its decoding ----------------
P="The city, the university: café"
"${R[@]}" --tokenizer "$TK" --prompt "$P" --generate 40 --temperature 1.5 --seed 3 --ignore-eos > "$tmp/run.out" ||
  fail "run --prompt exited $?"
"${R[@]}" --tokenizer "$TK" --prompt "$P" --generate 40 --temperature 1.5 --seed 3 --ignore-eos --quiet > "$tmp/quiet.out" ||
  fail "run --prompt --quiet exited $?"
"$PY" - "$TK" "$P" "$tmp/run.out" "$tmp/quiet.out" <<'PYEOF' || fail "run --prompt: ids or text differ from sentencepiece's"
import re, sys, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
out = open(sys.argv[3], "rb").read()
prompt = [int(x) for x in re.search(rb"\n prompt ids:([ 0-9]*)\n", out).group(1).split()]
want = [sp.bos_id()] + sp.encode(sys.argv[2])
assert prompt == want, f"prompt ids {prompt}, sentencepiece's {want}"
gen = [int(x) for x in re.search(rb"\n generated ids:([ 0-9]*)\n", out).group(1).split()]
assert len(gen) == 40, gen
known = [i for i in prompt + gen if i < sp.get_piece_size()]  # ids past the pieces decode as nothing
text = sp.decode(known).encode("utf-8", "surrogateescape")[len(sp.decode(prompt).encode()):]
streamed = out[out.index(b" text: ") + 7:out.index(b"\n generated ids:")]
assert streamed == text, f"streamed {streamed!r}, sentencepiece's {text!r}"
q = open(sys.argv[4], "rb").read()
esc = text.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\t", b"\\t").replace(b"\r", b"\\r")
esc = re.sub(rb"[\x00-\x1f\x7f]", lambda m: b"\\x%02x" % m.group(0)[0], esc)
want_q = esc + b"\n"
assert q == want_q, f"--quiet printed {q!r}, expected {want_q!r}"
print(f"prompt {len(prompt)} ids, {len(gen)} generated, {len(text)} bytes of text: as sentencepiece has them")
PYEOF

# --- --special: a chat template's text, its <s> and </s> those tokens, no BOS added (run and tokenize) ---
S="<s>[INST] the city [/INST] one</s>[INST] two [/INST]"
"${R[@]}" --tokenizer "$TK" --prompt "$S" --special > "$tmp/special.out" || fail "run --prompt --special exited $?"
"$M" tokenize "$TK" --special "$S" > "$tmp/special.tok" || fail "tokenize --special exited $?"
"$PY" - "$TK" "$S" "$tmp/special.out" "$tmp/special.tok" <<'PYEOF' || fail "--special: ids differ from sentencepiece's, part by part"
import re, sys, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
want = [sp.bos_id()] + sp.encode("[INST] the city [/INST] one") + [sp.eos_id()] + sp.encode("[INST] two [/INST]")
got = [int(x) for x in re.search(rb"\n prompt ids:([ 0-9]*)\n", open(sys.argv[3], "rb").read()).group(1).split()]
tok = [int(x) for x in open(sys.argv[4]).read().split()]
assert got == want and tok == want, f"run {got}, tokenize {tok}, sentencepiece's by parts {want}"
PYEOF

# --- the tokenizer beside --weights; --prompts lines of text ------------------------------------------
mkdir "$tmp/ckpt"
"$M" init-weights "$tmp/t512.yaml" --seed 5 -o "$tmp/ckpt/model.safetensors" >/dev/null && cp "$TK" "$tmp/ckpt/tokenizer.model"
a=$("$M" run "$tmp/t512.yaml" --weights "$tmp/ckpt" --backend interp --prompt "the city" --generate 6 --quiet) || fail "the tokenizer beside --weights: exit $?"
b=$("$M" run "$tmp/t512.yaml" --weights "$tmp/ckpt/model.safetensors" --backend interp --tokenizer "$TK" --prompt "the city" --generate 6 --quiet)
[ -n "$a" ] && [ "$a" = "$b" ] || fail "the tokenizer beside --weights prints '$a', --tokenizer '$b'"
printf 'the city\n# a comment\n\nnew\\nline\\t\\r \\x41\\\\\nbad \\q escape\n+ and more\n' > "$tmp/prompts.txt"
"${R[@]}" --tokenizer "$TK" --prompts "$tmp/prompts.txt" --generate 5 --quiet > "$tmp/p.out" 2> "$tmp/p.err"
[ $? = 1 ] || fail "--prompts with a bad escape: exit status not 1"
grep -q -- "--prompts line 5, column 5: '\\\\q' is not an escape" "$tmp/p.err" || fail "bad escape message: $(cat "$tmp/p.err")"
[ "$(wc -l < "$tmp/p.out")" = 4 ] && [ "$(sed -n 3p "$tmp/p.out")" = "" ] || fail "--prompts --quiet: not a line per prompt line: $(cat -A "$tmp/p.out")"
for k in 1 2; do
  text=$(printf '%b' "$(sed -n "$([ $k = 1 ] && echo 1 || echo 4)p" "$tmp/prompts.txt")")
  one=$("${R[@]}" --tokenizer "$TK" --prompt "$text" --generate 5 --quiet)
  [ "$one" = "$(sed -n ${k}p "$tmp/p.out")" ] || fail "--prompts line $k prints '$(sed -n ${k}p "$tmp/p.out")', --prompt '$one'"
done
# --batch 2 (the CPU backend): the same text answers, and the same report, line for line
"$M" run "$tmp/t512.yaml" --random-weights 5 --tokenizer "$TK" --prompts "$tmp/prompts.txt" --generate 5 --quiet > "$tmp/c1.out" 2>/dev/null
"$M" run "$tmp/t512.yaml" --random-weights 5 --tokenizer "$TK" --prompts "$tmp/prompts.txt" --generate 5 --quiet --batch 2 > "$tmp/c2.out" 2>/dev/null
[ -s "$tmp/c1.out" ] && cmp -s "$tmp/c1.out" "$tmp/c2.out" || fail "--quiet text with --batch 2: '$(cat -A "$tmp/c2.out")', one by one '$(cat -A "$tmp/c1.out")'"
"$M" run "$tmp/t512.yaml" --random-weights 5 --tokenizer "$TK" --prompts "$tmp/prompts.txt" --generate 5 > "$tmp/v1.out" 2>/dev/null
"$M" run "$tmp/t512.yaml" --random-weights 5 --tokenizer "$TK" --prompts "$tmp/prompts.txt" --generate 5 --batch 2 > "$tmp/v2.out" 2>/dev/null
diff <(grep -v -e "^ran " -e "^ decode:" -e "^ batch:" -e "^$" "$tmp/v1.out") <(grep -v -e "^ran " -e "^ decode:" -e "^ batch:" -e "^$" "$tmp/v2.out") >/dev/null ||
  fail "text with --batch 2 reports otherwise than one by one"
# +@N on lines of text: line 3 continues line 1's sequence with the text after the number, as a + line
# right after line 1 does
printf 'the city\nnew\\nline\n+@1 and more\n' > "$tmp/at.txt" && printf 'the city\n+ and more\n' > "$tmp/plus.txt"
at=$("$M" run "$tmp/t512.yaml" --random-weights 5 --tokenizer "$TK" --prompts "$tmp/at.txt" --generate 5 --quiet --batch 2 | sed -n 3p)
plus=$("$M" run "$tmp/t512.yaml" --random-weights 5 --tokenizer "$TK" --prompts "$tmp/plus.txt" --generate 5 --quiet | sed -n 2p)
[ -n "$plus" ] && [ "$at" = "$plus" ] || fail "+@1 and more: '$at', + and more after line 1: '$plus'"
"${R[@]}" --tokenizer "$TK" --prompts "$tmp/prompts.txt" --generate 5 > "$tmp/pv.out" 2>/dev/null
"$PY" - "$TK" "$tmp/pv.out" <<'PYEOF' || fail "--prompts: a + line's ids are not its text's, without BOS"
import re, sys, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
ids = re.findall(rb"\n prompt ids:([ 0-9]*)\n", open(sys.argv[2], "rb").read())
want = [[1] + sp.encode("the city"), [1] + sp.encode(b"new\nline\t\r A\\"), sp.encode(" and more")]
assert [[int(x) for x in i.split()] for i in ids] == want, (ids, want)
PYEOF
# --serve with text: "prompt" encoded as --prompt encodes it (the same ids generated), the answer's
# "text" what sentencepiece decodes after the prompt, the streamed pieces joined the same text; a
# "continue" turn of text " and more" (no BOS), as a + line after the first
C=("$M" run "$tmp/t512.yaml" --random-weights 5 --tokenizer "$TK")
printf '%s\n' '{"id": 1, "prompt": "the city", "max_tokens": 6, "stream": true}' '{"id": 2, "continue": 1, "prompt": " and more", "max_tokens": 3}' |
  "${C[@]}" --serve > "$tmp/serve.out" || fail "--serve with text: exit $?"
"${C[@]}" --prompt "the city" --generate 6 > "$tmp/serve1.txt" && printf 'the city\n+ and more\n' |
  "${C[@]}" --prompts - --generate 6 > "$tmp/serve2.txt" || fail "--prompt/--prompts for --serve's reference"
"$PY" - "$TK" "$tmp/serve.out" "$tmp/serve1.txt" "$tmp/serve2.txt" <<'PYEOF' || fail "--serve with text"
import json, re, sys
import sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
lines = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
final = {l["id"]: l for l in lines if "finish_reason" in l}
ids = lambda f: [[int(x) for x in g.split()] for g in re.findall(r"\n generated ids:([ 0-9]*)", open(f).read())]
gen = ids(sys.argv[3])
assert final[1]["ids"] == gen[0], (final[1], gen)
prompt = [1] + sp.encode("the city")
known = [i for i in prompt + gen[0] if i < sp.get_piece_size()]  # ids past the pieces decode as nothing
text = sp.decode(known).encode("utf-8", "surrogateescape")[len(sp.decode(prompt).encode()):].decode("utf-8", "replace")
assert final[1]["text"] == text, (final[1]["text"], text)
streamed = "".join(l.get("text", "") for l in lines if l["id"] == 1 and "finish_reason" not in l)
assert streamed == text and [l["token"] for l in lines if "token" in l] == gen[0], (streamed, text)
gen2 = ids(sys.argv[4])
assert final[2]["ids"] == gen2[1][:3] and final[2]["prompt_tokens"] == len(sp.encode(" and more")), (final[2], gen2)
print(f"--serve with text: 6 + 3 tokens, the text as sentencepiece decodes it, streamed the same")
PYEOF
# --serve "stop" strings: a run of 16 tokens, then the same request with a stop string taken from
# the middle of its text (and one that never comes): the text ends where it first begins, the ids
# at the token that completed it, finish_reason "stop"; streamed, the pieces join to that text (the
# bytes that could begin a stop string held back until the next token says)
"$PY" - "${C[@]}" <<'PYEOF' || fail "--serve with stop strings"
import json, subprocess, sys
def serve(stop=None):
    req = {"prompt": "the city", "max_tokens": 16, "stream": True}
    if stop is not None:
        req["stop"] = stop
    out = subprocess.run(sys.argv[1:] + ["--serve", "--ignore-eos"], input=json.dumps(req) + "\n", capture_output=True,
                         text=True, check=True).stdout
    lines = [json.loads(l) for l in out.splitlines()]
    return lines[-1], [l for l in lines[:-1]]
full, events = serve()
whole = full["text"]
assert len(full["ids"]) == 16 and len(whole) >= 8, full
cum, sofar = [], ""
for e in events:
    sofar += e.get("text", "")
    if "token" in e:
        cum.append(sofar)
checked = 0
for at in (len(whole) // 3, len(whole) // 2, len(whole) - 2):
    s = whole[at:at + 2]
    i = whole.find(s)
    k = next(k for k, c in enumerate(cum) if s in c) + 1  # the token whose text completed it
    for stop in ([s], [s, "\u0001never"], ["\u0001never", s]):
        got, ev = serve(stop)
        streamed = "".join(e.get("text", "") for e in ev)
        assert (got["text"], got["ids"], got["finish_reason"]) == (whole[:i], full["ids"][:k], "stop"), (s, got, whole, cum)
        assert streamed == whole[:i], (s, streamed, whole[:i])
        checked += 1
got, ev = serve(["\u0001never"])
assert (got["text"], got["ids"], got["finish_reason"]) == (whole, full["ids"], "length"), got
assert "".join(e.get("text", "") for e in ev) == whole
print(f"--serve stop strings: {checked} stops in a text of {len(whole)} characters where they first begin; one that never comes")
PYEOF
# --serve "echo" with "logprobs" and a tokenizer: the prompt's ids and text as sentencepiece encodes
# and decodes them, and every token's piece (the chosen's and the likeliest's, streamed too) its
# id_to_piece (null past the tokenizer's 400 pieces: the model's vocabulary is 512)
"$PY" - "$TK" "${C[@]}" <<'PYEOF' || fail "--serve echo with text"
import json, subprocess, sys
import sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
req = {"prompt": "the city, café", "max_tokens": 5, "logprobs": 4, "echo": True, "stream": True}
out = subprocess.run(sys.argv[2:] + ["--serve", "--ignore-eos"], input=json.dumps(req) + "\n", capture_output=True,
                     text=True, check=True).stdout
lines = [json.loads(l) for l in out.splitlines()]
a, events = lines[-1], lines[:-1]
piece = lambda i: sp.id_to_piece(i) if i < sp.get_piece_size() else None
prompt = [1] + sp.encode(req["prompt"])
assert a["prompt_ids"] == prompt and a["prompt_text"] == sp.decode(prompt), a
for lp, ids in ((a["prompt_logprobs"], prompt), (a["logprobs"], a["ids"])):
    assert lp["tokens"] == [piece(i) for i in ids], (lp, ids)
    tops = [t for t in lp["top_logprobs"] if t is not None]
    assert tops and all(len(t) == 4 and all(e[2] == piece(e[0]) for e in t) for t in tops), lp
assert a["prompt_logprobs"]["token_logprobs"][0] is None and None not in a["prompt_logprobs"]["token_logprobs"][1:]
ev = [e for e in events if "token" in e]
assert [e["piece"] for e in ev] == a["logprobs"]["tokens"] and [e["top_logprobs"] for e in ev] == a["logprobs"]["top_logprobs"], ev
print(f"--serve echo: {len(prompt)} prompt tokens and 5 generated, their pieces as sentencepiece's")
PYEOF
# --serve with NUL bytes: <0x00> pieces in a prompt (echoed) and in the generated text (random weights 45
# generate it fifth after 1 5 9) are characters of the text, written \u0000 (cJSON's strings end at a
# NUL: they had cut the text there); ids past the pieces decode as a control piece does (nothing,
# ending a byte run); a request that puts a NUL in a string is refused, naming its column, under its id
"$PY" - "$TK" "$M" run "$tmp/t512.yaml" --random-weights 45 --tokenizer "$TK" <<'PYEOF' || fail "--serve with NUL bytes"
import json, subprocess, sys
import sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
reqs = [{"id": "g", "ids": [1, 5, 9], "max_tokens": 12, "stream": True},
        {"id": "e", "ids": [1, 3, 0x4D + 3, 3, 3, 300], "max_tokens": 1, "echo": True}]  # (300: a word piece)
raw = "".join(json.dumps(r) + "\n" for r in reqs) + '{"id": "n", "ids": [1], "stop": ["a\\u0000"]}\n'
p = subprocess.run(sys.argv[2:] + ["--serve", "--ignore-eos"], input=raw, capture_output=True, text=True)
assert p.returncode == 1, p  # (a refused request makes the exit status 1)
lines = [json.loads(l) for l in p.stdout.splitlines()]
final = {l["id"]: l for l in lines if "finish_reason" in l or "error" in l}
n = sp.get_piece_size()
dec = lambda ids: sp.decode([i if i < n else 1 for i in ids])  # past the pieces: as <s>
g = final["g"]
assert 3 in g["ids"], g  # the model's tokens do not depend on the tokenizer
assert g["text"] == dec([1, 5, 9] + g["ids"])[len(dec([1, 5, 9])):] and "\0" in g["text"], (g["text"], dec(g["ids"]))
assert "".join(l.get("text", "") for l in lines if l["id"] == "g" and "token" in l) == g["text"]
assert final["e"]["prompt_text"] == dec(reqs[1]["ids"]) == "\0M\0\0" + sp.decode([300]), final["e"]
assert "column 36" in final["n"]["error"] and "NUL" in final["n"]["error"], final  # (under its id)
print("--serve with NUL bytes: %d of them in the generated text, 3 in the echoed prompt; a NUL in a request refused"
      % g["text"].count("\0"))
PYEOF
exit $status
