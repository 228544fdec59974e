#!/usr/bin/env python3
"""lm_eval_check.py MOEPPC SOURCE_DIR: lm-evaluation-harness's own API client (LocalCompletionsAPI, the
`local-completions` model) scoring loglikelihood requests through moeppc_http.py in front of `moeppc
run --serve --batch 2` on the tiny spec, in batches of 2 prompts; each (log-likelihood, is_greedy)
against the log-softmax of the logits `moeppc run --logits-out` computes for the whole sequence.

Needs lm-eval (and numpy) importable, e.g. a virtual environment:
    python3 -m venv /tmp/lmv && /tmp/lmv/bin/pip install --no-deps lm-eval && \\
        /tmp/lmv/bin/pip install numpy aiohttp tenacity requests tqdm jinja2 pyyaml
    /tmp/lmv/bin/python examples/serve_http/lm_eval_check.py build/moeppc .
The requests are given as token ids (tokenized_requests), so no Hugging Face tokenizer is needed."""
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from lm_eval.models.openai_completions import LocalCompletionsAPI

MOEPPC, SRC = sys.argv[1], sys.argv[2]
RUN = ["run", os.path.join(SRC, "specs/tiny/tiny-moepp.yaml"), "--random-weights", "1"]
logits = os.path.join(tempfile.mkdtemp(), "logits.f32")


def log_softmax(whole):
    subprocess.run([MOEPPC] + RUN + ["--ids", " ".join(map(str, whole[:-1])), "--logits-out", logits],
                   check=True, capture_output=True)
    z = np.fromfile(logits, dtype="<f4").astype(np.float64).reshape(len(whole) - 1, -1)
    return z - (z.max(1, keepdims=True) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)))


ctx = [1, 5, 9, 2]
greedy = subprocess.run([MOEPPC] + RUN + ["--ids", " ".join(map(str, ctx)), "--generate", "2", "--quiet", "--ignore-eos"],
                        check=True, capture_output=True, text=True).stdout.split()
pairs = [(ctx, [77, 31]), ([1, 8, 1, 40, 3, 3], [12]), ([1, 200, 100], [50, 60, 70]), (ctx, [4]),
         (ctx, [int(t) for t in greedy])]  # the last: the greedy continuation (is_greedy true)
server = subprocess.Popen([sys.executable, os.path.join(SRC, "examples/serve_http/moeppc_http.py"), "--port", "0", "--",
                           MOEPPC] + RUN + ["--batch", "2"], stdout=subprocess.PIPE, text=True)
try:
    port = int(re.search(r":(\d+)$", server.stdout.readline().strip()).group(1))
    lm = LocalCompletionsAPI(base_url="http://127.0.0.1:%d/v1/completions" % port, model="tiny", tokenizer_backend=None,
                             batch_size=2)
    lm.tokenizer, lm.tokenized_requests = object(), True  # (only asserted present: the requests are ids)
    got = lm._loglikelihood_tokens([(("c%d" % k, "x"), c, t) for k, (c, t) in enumerate(pairs)])
finally:
    server.terminate()
    server.wait()
bad = 0
for (c, t), (ll, is_greedy) in zip(pairs, got):
    rows = log_softmax(c + t)[len(c) - 1:]
    want = sum(rows[j][x] for j, x in enumerate(t))
    want_greedy = all(rows[j].argmax() == x for j, x in enumerate(t))
    ok = abs(ll - want) < 1e-3 and is_greedy == want_greedy
    bad += not ok
    print("%-22s %-14s lm-eval %.6f %-5s  logits %.6f %-5s %s" % (c, t, ll, is_greedy, want, want_greedy, "" if ok else "WRONG"))
print("lm_eval_check: %d of %d as the logits say" % (len(pairs) - bad, len(pairs)))
sys.exit(1 if bad or not any(g for _, g in got) else 0)
