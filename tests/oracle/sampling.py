"""sampling.py — choosing the next token from a row of logits as runtime/runtime.h documents it (written
from that comment, not from sample.c), and how far the logits could move before the choice changes.

OpenAI's logit biases added first; then Hugging Face's order: each token already in the sequence
penalised once (repetition_penalty R: a positive logit divided by R, a negative one multiplied); then,
as OpenAI's API and vLLM, each token this generation has chosen (not the prompt's) less
presence_penalty once and frequency_penalty times the number of times it was chosen; then greedy
(temperature 0: the largest logit, the lowest id on ties), or softmax(logits / temperature) over the
top_k largest (0: all; ties at the cut: the lower ids), then of those renormalised the fewest most probable (ties: the lower id)
whose mass reaches top_p, renormalised again, and a draw: u = the seed's next splitmix64 value's top
53 bits / 2^53, the first candidate in ascending id order whose cumulative probability passes u.

choose() returns the token and its margin: a change of every logit by less than the margin (in logit
units) cannot choose another token — the gap to the runner-up for greedy; for a draw, the smallest of
the top-k cut's gap, and the changes of probability that move the top-p cut or a cumulative
probability past u. The draw's margins are bounds to a factor of about 2, not exact.
"""
import math

import numpy as np

M64 = (1 << 64) - 1


class SplitMix64:
    """support.h's moe_rng: rng_seed(seed), rng_uniform."""

    def __init__(self, seed):
        self.s = seed & M64

    def uniform(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z ^= z >> 31
        return (z >> 11) * (1.0 / 9007199254740992.0)


class Params:
    def __init__(self, temperature=0.0, top_k=0, top_p=1.0, penalty=1.0, seed=0, presence=0.0, frequency=0.0,
                 bias=None):
        self.temperature, self.top_k, self.top_p, self.penalty, self.seed = temperature, top_k, top_p, penalty, seed
        self.presence, self.frequency = presence, frequency
        self.bias = dict(bias or {})  # token id -> logit bias

    def flags(self):
        """moeppc run's options for these (none for plain greedy)."""
        f = []
        if self.temperature > 0:
            f += ["--temperature", repr(self.temperature), "--seed", str(self.seed)]
            if self.top_k:
                f += ["--top-k", str(self.top_k)]
            if self.top_p < 1:
                f += ["--top-p", repr(self.top_p)]
        if self.penalty != 1:
            f += ["--repetition-penalty", repr(self.penalty)]
        if self.presence:
            f += ["--presence-penalty", repr(self.presence)]
        if self.frequency:
            f += ["--frequency-penalty", repr(self.frequency)]
        if self.bias:
            f += ["--logit-bias", ",".join("%d:%r" % kv for kv in sorted(self.bias.items()))]
        return f


def penalised(row, seen, p, start):
    """row after p's biases and penalties, seen the sequence so far and seen[start:] what this
    generation chose."""
    x = np.array(row, dtype=np.float64)
    for t, b in p.bias.items():
        x[t] += b
    if p.penalty != 1 and len(seen):
        s = np.unique(np.asarray(seen, dtype=np.int64))
        x[s] = np.where(x[s] < 0, x[s] * p.penalty, x[s] / p.penalty)
    if (p.presence or p.frequency) and len(seen) > start:
        ids, counts = np.unique(np.asarray(seen[start:], dtype=np.int64), return_counts=True)
        x[ids] -= p.frequency * counts + p.presence
    return x


def _eps_to_logits(eps, temperature):
    """Probabilities from softmax(x / T) move by a relative eps at most when every x moves by less
    than T/2 · ln(1 + eps) (each ratio of two by exp(2δ/T))."""
    return temperature / 2 * math.log1p(max(eps, 0.0))


def choose(row, seen, p, rng, start=None):
    """(token, margin) for one row after seen (the generation's own from seen[start:]; None: none);
    rng (a SplitMix64) is drawn once when p.temperature > 0. (The biases and the presence and frequency
    penalties move logits by constants: the margin as without them.)"""
    x = penalised(row, seen, p, len(seen) if start is None else start)
    amp = max(p.penalty, 1 / p.penalty)  # a logit's change, after the penalty, is at most amp times it
    V = len(x)
    order = np.lexsort((np.arange(V), -x))  # largest first, the lower id on ties
    if p.temperature == 0:
        gap = x[order[0]] - x[order[1]] if V > 1 else math.inf
        return int(order[0]), gap / 2 / amp
    k = p.top_k if 0 < p.top_k < V else V
    cand = order[:k]
    margin = (x[order[k - 1]] - x[order[k]]) / 2 if k < V else math.inf
    w = np.exp((x[cand] - x[cand[0]]) / p.temperature)
    keep = w > 0
    cand, w = cand[keep], w[keep]
    eps = math.inf  # the relative change of probabilities the choice survives
    if p.top_p < 1:
        by_p = np.lexsort((cand, -w))
        cand, w = cand[by_p], w[by_p]
        c = np.cumsum(w) / w.sum()
        ahead = np.concatenate(([0.0], c[:-1]))  # each candidate's mass ahead of it
        n = int(np.count_nonzero(ahead < p.top_p))
        for j in (n - 1, n):  # the last one in and the first one out: their mass ahead against top_p
            side = min(ahead[j], 1 - ahead[j]) if 0 < j < len(c) else 0
            if side > 0:
                eps = min(eps, abs(ahead[j] - p.top_p) / (2 * side))
        if n < len(w):  # the last in and the first out trading places
            eps = min(eps, (w[n - 1] - w[n]) / w[n - 1] / 2)
        cand, w = cand[:n], w[:n]
    by_id = np.argsort(cand)
    cand, w = cand[by_id], w[by_id]
    cum = np.cumsum(w / w.sum())
    u = rng.uniform()
    tok = int(cand[min(int(np.count_nonzero(cum <= u)), len(cand) - 1)])
    for cj in cum[:-1]:
        side = min(cj, 1 - cj)
        if side > 0:
            eps = min(eps, abs(u - cj) / (2 * side))
    return tok, min(margin, _eps_to_logits(eps, p.temperature)) / amp
