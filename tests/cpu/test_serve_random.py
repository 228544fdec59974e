#!/usr/bin/env python3
"""test_serve_random.py MOEPPC SOURCE_DIR [ROUNDS]: `moeppc run --serve` on random request streams
against each request's whole sequence run alone.

Each round draws 24 requests -- prompts that share prefixes (so that sequences are reused and forked),
next turns ("continue") of earlier requests, greedy or drawn with a seed, a few cancels of waiting
ones -- and runs them with --batch 1 to 4 and prompt chunks of 3 to 64 tokens, read from a file (so
the run is the same every time). The scheduler may start them in any order; what must hold: every
request is answered once; a cancelled one with nothing; a "continue" refused only when its sequence
is no longer held (its turn was continued, or its sequence taken by another request: the message
says so); and every other answer's ids are what `moeppc run --ids WHOLE --generate N` gives alone, with
the request's parameters, WHOLE being the conversation up to it (earlier turns' prompts and answers,
then its prompt) -- and its cached_tokens at most the tokens before its prompt's last. First,
"logprobs" against the log-softmax of the logits of a run of the whole sequence."""
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np

MOEPPC, SRC = sys.argv[1], sys.argv[2]
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 6
work = tempfile.mkdtemp()
spec = os.path.join(work, "long.yaml")
with open(os.path.join(SRC, "specs/tiny/tiny-moepp.yaml")) as f:
    text = f.read()
with open(spec, "w") as f:  # room for conversations of several turns
    f.write(text.replace("max_positions: 64", "max_positions: 512"))
BASE = ["run", spec, "--random-weights", "1", "--ignore-eos"]


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
        reqs.append(r)
    lines = [json.dumps(r) for r in reqs]
    cancels = rng.sample(range(1, 24), 2)  # cancel a request soon after it is sent (it is waiting)
    for k in sorted(cancels, reverse=True):
        lines.insert(k + 1, json.dumps({"cancel": reqs[k]["id"]}))
    return reqs, lines, {reqs[k]["id"] for k in cancels}


# "logprobs": 5 (greedy, and drawn, beside each other with --batch 2, streamed): each generated
# token's log-probability and the 5 likeliest are the log-softmax of the logits that `moeppc run --ids`
# computes over the whole sequence (--logits-out), within f32's tolerance
reqs = [{"id": "g", "ids": [5, 9, 2, 77, 31], "max_tokens": 6, "logprobs": 5, "stream": True},
        {"id": "d", "ids": [8, 1, 40], "max_tokens": 6, "logprobs": 5, "temperature": 0.9, "seed": 3}]
out = subprocess.run([MOEPPC] + BASE + ["--serve", "--batch", "2"], input="".join(json.dumps(r) + "\n" for r in reqs),
                     capture_output=True, text=True, check=True).stdout
lines = [json.loads(l) for l in out.splitlines()]
for r in reqs:
    a = next(l for l in lines if l["id"] == r["id"] and "ids" in l)
    whole = r["ids"] + a["ids"]
    f = os.path.join(work, "logits.f32")
    subprocess.run([MOEPPC] + BASE[:-1] + ["--ids", " ".join(map(str, whole[:-1])), "--logits-out", f], capture_output=True, check=True)
    z = np.fromfile(f, dtype="<f4").astype(np.float64).reshape(len(whole) - 1, -1)[len(r["ids"]) - 1:]
    ref = z - (z.max(axis=1, keepdims=True) + np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)))
    got, top = np.array(a["logprobs"]["token_logprobs"]), a["logprobs"]["top_logprobs"]
    want = ref[np.arange(len(a["ids"])), a["ids"]]
    ok = len(got) == len(a["ids"]) and np.allclose(got, want, atol=2e-4) and all(
        len(t) == 5 and np.allclose([lp for _, lp in t], np.sort(ref[j])[::-1][:5], atol=2e-4) and
        np.allclose([lp for _, lp in t], [ref[j][i] for i, _ in t], atol=2e-4) for j, t in enumerate(top))
    if r.get("stream"):
        ev = [l for l in lines if l["id"] == r["id"] and "token" in l]
        ok = ok and [e["logprob"] for e in ev] == a["logprobs"]["token_logprobs"] and [e["top_logprobs"] for e in ev] == top
    if not ok:
        sys.exit("serve_random: logprobs of %s: %s; want %s" % (r, a["logprobs"], want))

checked = refused = cancelled = 0
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
    if out.returncode != (1 if any("error" in a for a in answers.values()) else 0):
        sys.exit("serve_random: %s: exit %d\n%s" % (what, out.returncode, out.stderr))
print("serve_random: logprobs as the logits' log-softmax; %d rounds: %d answers as alone, %d cancelled, %d next turns "
      "refused (sequence gone)" % (ROUNDS, checked, cancelled, refused))
