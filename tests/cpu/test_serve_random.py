#!/usr/bin/env python3
"""test_serve_random.py MOEPPC SOURCE_DIR [ROUNDS [DEVICE]]: `moeppc run --serve` on random request
streams against each request's whole sequence run alone (DEVICE: cpu, the default, or cuda).

Each round draws 24 requests -- prompts that share prefixes (so that sequences are reused and forked),
next turns ("continue") of earlier requests, greedy or drawn with a seed, a few cancels of waiting
ones -- and runs them with --batch 1 to 4 and prompt chunks of 3 to 64 tokens, read from a file (so
the run is the same every time). The scheduler may start them in any order; what must hold: every
request is answered once; a cancelled one with nothing; a "continue" refused only when its sequence
is no longer held (its turn was continued, or its sequence taken by another request: the message
says so); and every other answer's ids are what `moeppc run --ids WHOLE --generate N` gives alone, with
the request's parameters, WHOLE being the conversation up to it (earlier turns' prompts and answers,
then its prompt) -- and its cached_tokens at most the tokens before its prompt's last. First,
"logprobs" (and "echo"'s prompt log-probabilities) against the log-softmax of the logits of a run of
the whole sequence."""
import atexit
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import numpy as np

MOEPPC, SRC = sys.argv[1], sys.argv[2]
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 6
DEVICE = sys.argv[4] if len(sys.argv) > 4 else "cpu"
work = tempfile.mkdtemp()
atexit.register(shutil.rmtree, work, ignore_errors=True)  # nothing left outside the build
spec = os.path.join(work, "long.yaml")
with open(os.path.join(SRC, "specs/tiny/tiny-moepp.yaml")) as f:
    text = f.read()
with open(spec, "w") as f:  # room for conversations of several turns
    f.write(text.replace("max_positions: 64", "max_positions: 512"))
BASE = ["run", spec, "--random-weights", "1", "--device", DEVICE, "--ignore-eos"]
REF = ["run", spec, "--random-weights", "1", "--backend", "interp"]  # the reference logits: the interpreter's


def alone(todo):
    """{(ids, max_tokens, seed or None): the tokens generated} for each sequence alone: one `moeppc run
    --prompts` (one line after the other, each a new sequence run whole) for each parameter set."""
    got, groups = {}, {}
    for key in todo:
        groups.setdefault(key[1:], []).append(key)
    for (n, seed), keys in groups.items():
        if n == 0:
            got.update((k, []) for k in keys)
            continue
        cmd = [MOEPPC] + BASE + ["--generate", str(n), "--quiet", "--no-prefix-reuse", "--prompts", "-"]
        if seed is not None:
            cmd += ["--temperature", "0.9", "--seed", str(seed)]
        out = subprocess.run(cmd, input="".join(" ".join(map(str, k[0])) + "\n" for k in keys), capture_output=True, text=True)
        rows = out.stdout.split("\n")
        if out.returncode != 0 or len(rows) != len(keys) + 1:
            sys.exit("serve_random: %s failed: %s" % (cmd, out.stderr))
        got.update((k, [int(t) for t in row.split()]) for k, row in zip(keys, rows))
    return got


def draw(rng):
    prefixes = [[rng.randrange(1, 250) for _ in range(rng.choice([8, 12, 20]))] for _ in range(3)]
    reqs = []
    for k in range(24):
        r = {"id": "r%d" % k, "max_tokens": rng.choice([0, 1, 3, 6])}
        if reqs and rng.random() < 0.3:  # a next turn of an earlier request
            r["continue"] = rng.choice(reqs)["id"]
            r["ids"] = [rng.randrange(1, 250) for _ in range(rng.randint(1, 4))]
        else:
            head = rng.choice(prefixes)[: rng.randint(1, 20)] if rng.random() < 0.7 else []
            r["ids"] = head + [rng.randrange(1, 250) for _ in range(rng.randint(0 if head else 1, 6))]
        if rng.random() < 0.3:
            r["temperature"], r["seed"] = 0.9, rng.choice([7, 11])
        if rng.random() < 0.4:  # scored as lm-evaluation-harness scores: from the caches where they hold it
            r["echo"], r["logprobs"] = True, rng.choice([1, 3])
        reqs.append(r)
    lines = [json.dumps(r) for r in reqs]
    cancels = rng.sample(range(1, 24), 2)  # cancel a request soon after it is sent (it is waiting)
    for k in sorted(cancels, reverse=True):
        lines.insert(k + 1, json.dumps({"cancel": reqs[k]["id"]}))
    return reqs, lines, {reqs[k]["id"] for k in cancels}


def log_softmax_of(whole):
    """Row p: the log-softmax of the logits at position p of the sequence `whole` run alone (its last
    token not run) on the interpreter."""
    f = os.path.join(work, "logits.f32")
    subprocess.run([MOEPPC] + REF + ["--ids", " ".join(map(str, whole[:-1])), "--logits-out", f], capture_output=True, check=True)
    z = np.fromfile(f, dtype="<f4").astype(np.float64).reshape(len(whole) - 1, -1)
    return z - (z.max(axis=1, keepdims=True) + np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)))


def same_logprobs(lp, tokens, ref, k):
    """Whether a "logprobs" object of tokens[j] (null where ref[j] is None) is ref's."""
    got, top = lp["token_logprobs"], lp["top_logprobs"]
    if len(got) != len(tokens) or len(top) != len(tokens):
        return False
    for j, (t, r) in enumerate(zip(tokens, ref)):
        if r is None:
            if got[j] is not None or top[j] is not None:
                return False
        elif got[j] is None or abs(got[j] - r[t]) > 2e-4 or len(top[j]) != k or not (
                np.allclose([lp for _, lp in top[j]], np.sort(r)[::-1][:k], atol=2e-4) and
                np.allclose([lp for _, lp in top[j]], [r[i] for i, _ in top[j]], atol=2e-4)):
            return False
    return True


# "logprobs": 5 (greedy, and drawn, beside each other with --batch 2, streamed): each generated
# token's log-probability and the 5 likeliest are the log-softmax of the logits that `moeppc run --ids`
# computes over the whole sequence (--logits-out, on the interpreter), within f32's tolerance
reqs = [{"id": "g", "ids": [5, 9, 2, 77, 31], "max_tokens": 6, "logprobs": 5, "stream": True},
        {"id": "d", "ids": [8, 1, 40], "max_tokens": 6, "logprobs": 5, "temperature": 0.9, "seed": 3}]
out = subprocess.run([MOEPPC] + BASE + ["--serve", "--batch", "2"], input="".join(json.dumps(r) + "\n" for r in reqs),
                     capture_output=True, text=True, check=True).stdout
lines = [json.loads(l) for l in out.splitlines()]
for r in reqs:
    a = next(l for l in lines if l["id"] == r["id"] and "ids" in l)
    ok = same_logprobs(a["logprobs"], a["ids"], log_softmax_of(r["ids"] + a["ids"])[len(r["ids"]) - 1:], 5)
    if r.get("stream"):
        ev = [l for l in lines if l["id"] == r["id"] and "token" in l]
        ok = ok and [e["logprob"] for e in ev] == a["logprobs"]["token_logprobs"] and [e["top_logprobs"] for e in ev] == a["logprobs"]["top_logprobs"]
    if not ok:
        sys.exit("serve_random: logprobs of %s: %s" % (r, a["logprobs"]))

# "echo" with "logprobs": 3: every prompt token's log-probability (null for a new sequence's first),
# in prompt chunks of 3 beside a decoding sequence, of a new sequence and of a next turn (whose first
# token's comes from the row of the token generated last); such a prompt starts from the caches only
# where its tokens' log-probabilities are kept with them: "r" (e's prompt, then t's without e's
# generated tokens) takes e's first 9 positions (tokens 1 .. 9's from e's rows), while an echo without
# logprobs takes all
# (e and t streamed: the prompt's line comes first, then the tokens')
reqs = [{"id": "d", "ids": [8, 1, 40], "max_tokens": 12},
        {"id": "e", "ids": [5, 9, 2, 77, 31, 6, 6, 3, 250, 17], "max_tokens": 2, "logprobs": 3, "echo": True, "stream": True},
        {"id": "t", "continue": "e", "ids": [12, 13, 14, 15], "max_tokens": 0, "logprobs": 3, "echo": True, "stream": True},
        {"id": "r", "ids": [5, 9, 2, 77, 31, 6, 6, 3, 250, 17, 12, 13, 14, 15, 9], "max_tokens": 1, "logprobs": 3, "echo": True},
        {"id": "u", "ids": [5, 9, 2, 77, 31, 6, 6, 3, 250, 17, 12, 13, 14, 15, 9, 8], "max_tokens": 1, "echo": True}]
out = subprocess.run([MOEPPC] + BASE + ["--serve", "--batch", "2", "--chunk", "3"],
                     input="".join(json.dumps(r) + "\n" for r in reqs), capture_output=True, text=True, check=True).stdout
got = {a["id"]: a for a in map(json.loads, out.splitlines())}  # (an id's answer is its last line)
e, t, r, u = got["e"], got["t"], got["r"], got["u"]
for k in ("e", "t"):  # streamed: the prompt's line first, its fields the answer's, then a line a token
    mine = [a for a in map(json.loads, out.splitlines()) if a["id"] == k]
    want = {"id": k, "prompt_ids": got[k]["prompt_ids"], "prompt_logprobs": got[k]["prompt_logprobs"]}
    if mine[0] != want or [a.get("token") for a in mine[1:-1]] != got[k]["ids"]:
        sys.exit("serve_random: echo of %s streamed: %s" % (k, mine))
whole = reqs[1]["ids"] + e["ids"] + reqs[2]["ids"]
ref = log_softmax_of(whole + [0])
n_e = len(reqs[1]["ids"])
checks = [("e", e["prompt_ids"] == reqs[1]["ids"] and "prompt_text" not in e and
           same_logprobs(e["prompt_logprobs"], reqs[1]["ids"], [None] + list(ref[:n_e - 1]), 3) and
           same_logprobs(e["logprobs"], e["ids"], ref[n_e - 1:n_e + 1], 3)),
          ("t", t["prompt_ids"] == reqs[2]["ids"] and t["ids"] == [] and t["cached_tokens"] == 0 and
           same_logprobs(t["prompt_logprobs"], reqs[2]["ids"], ref[n_e + 1:n_e + 5], 3)),
          ("r", r["cached_tokens"] == 9 and same_logprobs(r["prompt_logprobs"], reqs[3]["ids"],
                                                          [None] + list(log_softmax_of(reqs[3]["ids"] + r["ids"])[:14]), 3)),
          ("u", u["cached_tokens"] == 15 and u["prompt_ids"] == reqs[4]["ids"] and "prompt_logprobs" not in u)]
bad = [k for k, ok in checks if not ok]
if bad:
    sys.exit("serve_random: echo of %s: %s" % (bad, [got[k] for k in bad]))

# lm-evaluation-harness's loglikelihood requests: one context, four continuations, sent together. The
# first runs whole; the others wait for it (it will hold their context's log-probabilities), then the
# second takes its sequence's first 19 positions and the third and fourth fork them (row 19 gives the
# first continuation token's: it runs), every prompt token's log-probability as the whole sequence's
ctx = [17, 4, 203, 88, 9, 9, 140, 61, 2, 230, 45, 7, 99, 12, 180, 33, 5, 71, 150, 26]
reqs = [{"id": "c%d" % i, "ids": ctx + cont, "max_tokens": 1, "logprobs": 1, "echo": True}
        for i, cont in enumerate([[40], [41, 42], [43, 44, 45], [46]])]
out = subprocess.run([MOEPPC] + BASE + ["--serve", "--batch", "4", "--chunk", "8"],
                     input="".join(json.dumps(r) + "\n" for r in reqs), capture_output=True, text=True, check=True).stdout
got = {a["id"]: a for a in map(json.loads, out.splitlines())}
for r in reqs:
    a, ref = got[r["id"]], log_softmax_of(r["ids"] + got[r["id"]]["ids"] + [0])
    if not (a["cached_tokens"] == (0 if r is reqs[0] else 19) and
            same_logprobs(a["prompt_logprobs"], r["ids"], [None] + list(ref[:len(r["ids"]) - 1]), 1) and
            same_logprobs(a["logprobs"], a["ids"], ref[len(r["ids"]) - 1:], 1)):
        sys.exit("serve_random: a context's continuations scored: %s: %s" % (r["id"], a))
# Two contexts' continuations on two sequences: when the second context's first request ends, the
# first context's sequence is still decoding; the first context's second request waits for it rather
# than copy its context over the second's, which the request after it starts from (both: 19)
ctx2 = [60, 61, 3, 3, 90, 14, 200, 8, 77, 5, 31, 120, 6, 49, 18, 2, 240, 11, 65, 97]
reqs = [{"id": "i%d" % i, "ids": c + [40 + i], "max_tokens": n, "logprobs": 1, "echo": True}
        for i, (c, n) in enumerate([(ctx, 6), (ctx2, 1), (ctx, 1), (ctx2, 1)])]
out = subprocess.run([MOEPPC] + BASE + ["--serve", "--batch", "2", "--chunk", "8"],
                     input="".join(json.dumps(r) + "\n" for r in reqs), capture_output=True, text=True, check=True).stdout
got = {a["id"]: a for a in map(json.loads, out.splitlines())}
for r in reqs:
    a, ref = got[r["id"]], log_softmax_of(r["ids"] + got[r["id"]]["ids"] + [0])
    if not (a["cached_tokens"] == (0 if r in reqs[:2] else 19) and
            same_logprobs(a["prompt_logprobs"], r["ids"], [None] + list(ref[:len(r["ids"]) - 1]), 1)):
        sys.exit("serve_random: two contexts' continuations: %s: %s" % (r["id"], a))
# ... and on one sequence: a request without "echo" keeps the context's 20 positions and runs the rest;
# the log-probabilities of the first's continuation are no longer the sequence's (the third, scored
# again, takes 19 positions, not 22); its next turn's first token's comes from its last row, run again
# (no token was generated after it)
reqs = [{"id": "s0", "ids": ctx + [40, 41, 42], "max_tokens": 0, "logprobs": 1, "echo": True},
        {"id": "s1", "ids": ctx + [50, 51, 52], "max_tokens": 0},
        {"id": "s2", "ids": ctx + [50, 51, 52, 53], "max_tokens": 0, "logprobs": 2, "echo": True},
        {"id": "s3", "continue": "s2", "ids": [7, 8], "max_tokens": 0, "logprobs": 2, "echo": True}]
out = subprocess.run([MOEPPC] + BASE + ["--serve"], input="".join(json.dumps(r) + "\n" for r in reqs),
                     capture_output=True, text=True, check=True).stdout
got = {a["id"]: a for a in map(json.loads, out.splitlines())}
ref = log_softmax_of(reqs[2]["ids"] + reqs[3]["ids"])
if [got[r["id"]]["cached_tokens"] for r in reqs] != [0, 20, 19, 0] or not same_logprobs(
        got["s2"]["prompt_logprobs"], reqs[2]["ids"], [None] + list(ref[:23]), 2) or not same_logprobs(
        got["s3"]["prompt_logprobs"], reqs[3]["ids"], ref[23:], 2):
    sys.exit("serve_random: a context scored, then run on: %s" % [got[r["id"]] for r in reqs])
# ... and a conversation scored turn by turn: the tokens generated after a scored prompt and the next
# turn's scored prompt keep theirs with the sequence, so that the whole conversation scored again takes
# all its positions but the last from the caches (15 of 16; 7, its first prompt's, without that)
p = subprocess.Popen([MOEPPC] + BASE + ["--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
A, B = [21, 3, 77, 140, 9, 250, 64, 18], [33, 7, 101]
got = {}
for r in ({"id": "a", "ids": A, "max_tokens": 3, "logprobs": 2, "echo": True},
          {"id": "b", "continue": "a", "ids": B, "max_tokens": 2, "logprobs": 2, "echo": True}):
    p.stdin.write(json.dumps(r) + "\n")
    p.stdin.flush()
    got[r["id"]] = json.loads(p.stdout.readline())
whole = A + got["a"]["ids"] + B + got["b"]["ids"] + [5]
p.stdin.write(json.dumps({"id": "w", "ids": whole, "max_tokens": 1, "logprobs": 2, "echo": True}) + "\n")
p.stdin.close()
w = json.loads(p.stdout.readline())
p.wait()
ref = log_softmax_of(whole + w["ids"])
if w["cached_tokens"] != len(whole) - 2 or not same_logprobs(w["prompt_logprobs"], whole, [None] + list(ref[:len(whole) - 1]), 2) \
        or not same_logprobs(got["b"]["logprobs"], got["b"]["ids"], ref[len(whole) - 4:len(whole) - 2], 2):
    sys.exit("serve_random: a conversation scored turn by turn, then whole: %s" % [got["a"], got["b"], w])

checked = refused = cancelled = scored = scored_cached = 0
for rnd in range(ROUNDS):
    rng = random.Random(rnd)
    reqs, lines, cancel_ids = draw(rng)
    batch, chunk = rng.randint(1, 4), rng.choice([3, 5, 64])
    path = os.path.join(work, "r%d.jsonl" % rnd)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    cmd = [MOEPPC] + BASE + ["--serve", "--batch", str(batch)] + (["--chunk", str(chunk)] if batch > 1 else [])
    with open(path) as f:
        out = subprocess.run(cmd, stdin=f, capture_output=True, text=True)
    what = "round %d (%s < %s)" % (rnd, " ".join(cmd[1:]), path)
    answers = {}
    for line in out.stdout.splitlines():
        a = json.loads(line)
        if a["id"] in answers:
            sys.exit("serve_random: %s: %s answered twice" % (what, a["id"]))
        answers[a["id"]] = a
    if sorted(answers) != sorted(r["id"] for r in reqs):
        sys.exit("serve_random: %s: answered %s" % (what, sorted(answers)))
    whole, seqs = {}, {}  # id -> the conversation's tokens after its answer, and before it
    # (a request's turn comes after the one it continues in the file: resolved in file order)
    for r in reqs:
        a, rid = answers[r["id"]], r["id"]
        if rid in cancel_ids:  # (read before anything starts: it was waiting)
            if a.get("finish_reason") != "cancelled" or a["ids"] != [] or a["prompt_tokens"] != len(r["ids"]):
                sys.exit("serve_random: %s: cancelled %s answered %s" % (what, rid, a))
            cancelled += 1
            continue
        if "error" in a:
            if "continue" not in r or "no sequence held now ends with request" not in a["error"]:
                sys.exit("serve_random: %s: %s refused: %s" % (what, rid, a["error"]))
            refused += 1
            continue
        if a.get("finish_reason") == "cancelled":
            sys.exit("serve_random: %s: %s cancelled, not asked" % (what, rid))
        before = whole.get(r.get("continue"), None) if "continue" in r else []
        if before is None:
            sys.exit("serve_random: %s: %s continued %s, which has no sequence" % (what, rid, r["continue"]))
        seqs[rid] = before + r["ids"]
        whole[rid] = seqs[rid] + a["ids"]
    byid = {r["id"]: r for r in reqs}
    key = {rid: (tuple(seq), byid[rid]["max_tokens"], byid[rid].get("seed")) for rid, seq in seqs.items()}
    want = alone(set(key.values()))
    for rid, seq in seqs.items():
        a = answers[rid]
        if a["ids"] != want[key[rid]] or a["prompt_tokens"] != len(byid[rid]["ids"]) or a["cached_tokens"] > len(seq) - 1:
            sys.exit("serve_random: %s: %s (%s) answered %s; alone %s" % (what, rid, byid[rid], a, want[key[rid]]))
        checked += 1
        if "logprobs" in byid[rid]:  # its prompt's and its generated tokens' against the whole sequence's logits
            k, n0, ref = byid[rid]["logprobs"], len(seq) - len(byid[rid]["ids"]), log_softmax_of(whole[rid] + [0])
            if not (same_logprobs(a["prompt_logprobs"], byid[rid]["ids"], [ref[p - 1] if p else None for p in range(n0, len(seq))], k)
                    and same_logprobs(a["logprobs"], a["ids"], ref[len(seq) - 1:], k)):
                sys.exit("serve_random: %s: %s (%s): logprobs %s" % (what, rid, byid[rid], a))
            scored += 1
            scored_cached += a["cached_tokens"] > 0
    if out.returncode != (1 if any("error" in a for a in answers.values()) else 0):
        sys.exit("serve_random: %s: exit %d\n%s" % (what, out.returncode, out.stderr))
if ROUNDS and not scored_cached:
    sys.exit("serve_random: no \"echo\" with \"logprobs\" started from the caches")
print("serve_random: logprobs and echo's prompt logprobs as the logits' log-softmax; %d rounds: %d answers as alone (%d scored, "
      "%d of them from the caches), %d cancelled, %d next turns refused (sequence gone)" % (ROUNDS, checked, scored, scored_cached, cancelled, refused))
