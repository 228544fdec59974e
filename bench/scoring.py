#!/usr/bin/env python3
"""scoring.py [--smoke] [--spec SPEC] [--contexts C] [--context-len L] [--continuations K]
[--continuation-len M] [--batch B] [--reps R]: a scoring workload shaped as lm-evaluation-harness's
loglikelihood tasks (multiple choice: each context sent with each of its continuations, "echo" and
"logprobs": 1, "max_tokens": 1, a context's requests together) through `moeppc run --serve`, random
weights, timed with and without --no-prefix-reuse: how much of the prompts the caches served, and the
prompt tokens scored a second. MOEPPC (default build/moeppc) is the compiler. Prints a table (median of
R runs each, the two interleaved); exits non-zero if an answer is missing or the two runs' log-
probabilities differ by more than 1e-3."""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--smoke", action="store_true")
ap.add_argument("--spec", default=os.path.join(root, "specs/moepp-0.6b.yaml"))
ap.add_argument("--contexts", type=int, default=8)
ap.add_argument("--context-len", type=int, default=200)
ap.add_argument("--continuations", type=int, default=4)
ap.add_argument("--continuation-len", type=int, default=5)
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--reps", type=int, default=3)
a = ap.parse_args()
if a.smoke:
    a.spec, a.contexts, a.context_len, a.reps = os.path.join(root, "specs/tiny/tiny-moepp.yaml"), 3, 24, 1
moeppc = os.environ.get("MOEPPC", os.path.join(root, "build/moeppc"))

rng = random.Random(1)
reqs = []
for c in range(a.contexts):
    ctx = [rng.randrange(3, 250) for _ in range(a.context_len)]
    for j in range(a.continuations):
        cont = [rng.randrange(3, 250) for _ in range(a.continuation_len)]
        reqs.append({"id": "c%d.%d" % (c, j), "ids": ctx + cont, "max_tokens": 1, "logprobs": 1, "echo": True})
text = "".join(json.dumps(r) + "\n" for r in reqs)
prompt_tokens = sum(len(r["ids"]) for r in reqs)


def run(extra):
    t = time.time()
    out = subprocess.run([moeppc, "run", a.spec, "--random-weights", "1", "--serve", "--batch", str(a.batch)] + extra,
                         input=text, capture_output=True, text=True)
    dt = time.time() - t
    if out.returncode != 0:
        sys.exit("scoring: %s failed: %s" % (extra, out.stderr))
    ans = {x["id"]: x for x in map(json.loads, out.stdout.splitlines())}
    if sorted(ans) != sorted(r["id"] for r in reqs):
        sys.exit("scoring: %s: answers missing" % extra)
    serve_s = float(out.stderr.split(" generated in ")[1].split()[0])  # the serving loop's (no load, no JIT)
    return dt, serve_s, ans


times = {"reuse": [], "whole": []}
answers = {}
for _ in range(a.reps):
    for name, extra in (("reuse", []), ("whole", ["--no-prefix-reuse"])):
        dt, serve_s, answers[name] = run(extra)
        times[name].append(serve_s)
for r in reqs:
    x, y = answers["reuse"][r["id"]]["prompt_logprobs"], answers["whole"][r["id"]]["prompt_logprobs"]
    if any((p is None) != (q is None) or (p is not None and abs(p - q) > 1e-3) for p, q in zip(x["token_logprobs"], y["token_logprobs"])):
        sys.exit("scoring: %s: the log-probabilities differ with and without the caches" % r["id"])
print("%s: %d contexts of %d tokens x %d continuations of %d, --batch %d, median of %d" % (
    os.path.basename(a.spec), a.contexts, a.context_len, a.continuations, a.continuation_len, a.batch, a.reps))
print("| prompts | cached tokens | serving time | prompt tokens scored/s |")
print("|---|---|---|---|")
for name in ("reuse", "whole"):
    cached = sum(x["cached_tokens"] for x in answers[name].values())
    t = statistics.median(times[name])
    print("| %s | %d of %d | %.2f s | %.0f |" % ("from the caches" if name == "reuse" else "whole (--no-prefix-reuse)",
                                               cached, prompt_tokens, t, prompt_tokens / t))
