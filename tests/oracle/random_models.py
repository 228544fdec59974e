#!/usr/bin/python3
"""random_models.py MOEPPC [--seeds A:B,N,...] [--paths P,...] [--emu-driver LIB] [--work DIR] [--budget S]

Differential testing on random models: each seed draws a valid spec from every knob of specs/README.md
(odd sizes included: head dims 2 to 128, hidden sizes and intermediates that are no multiple of a
vector, vocabularies of 17 to 1100, prompts of 1 to 200 tokens, 0 to 9 FFN experts beside any mix of
constant, copy and zero experts, top-k up to E, 1 to 4 layers with dense ones between, f32, bf16 and
f16, tied embeddings, both gatings, the logits norm, with and without the gating residual and input
scaling), a random prompt (one in 16 of 241 to 700 tokens: many key blocks, long caches) and how to
decode it (greedy, or drawn at a temperature with top-k and top-p from a seed; a repetition penalty,
OpenAI's presence and frequency penalties and logit biases; a stop token; --max-positions ending the generation: class
Decode, a kept spec's '# decode:' line),
writes moeppc's seeded random weights, and runs the prompt and the decoding through each path:

  interp      moeppc run --backend interp (the reference interpreter)
  cpu         moeppc run --backend cpu (the LLVM kernels; AVX-512 where the CPU has it)
  cpu-avx2    the same with MOEPPC_ISA=avx2;   cpu-sse: MOEPPC_ISA=sse;  cpu-t3: on 3 threads
  interp-f32  the interpreter in f32 arithmetic (--precision f32);  interp-O0: on the IR as lowered,
              before the passes (-O0)
  build       the executable `moeppc build SPEC` writes (its kernels compiled ahead of time);
              build-serve: its --serve, as cpu-serve
  cpu-tuned   cpu with the database `moeppc tune` writes for the model in 2 s (the tiles, unrolls,
              blockings and key blocks that won there, per token bucket: other kernels than the rule's)
  emu         moeppc run --device cuda on the CUDA emulator (--emu-driver: libmoeppc_cudaemu.so): the
              kernels GPUs other than sm_90 run;  emu-sm90: an sm_90 GPU's defaults (wgmma, W by the
              TMA, programmatic launches, with the emulator's hazard poisoning);  emu-ws: warp-
              specialised persistent GEMMs;  emu-base: device-check's A/B baselines;  emu-reverse:
              a block's threads in reverse order
  cpu-batch   --prompts through --batch 3 --chunk 7 (prompts in chunks beside decoding rows; each
              seed draws other --batch and --chunk, --unordered, --no-prefix-reuse, --perplexity):
              the prompt, its first half (already in the caches), the prompt and one token more (its
              prefix reused) and a + line (the next turn of the one before, where the caches have
              room), each line's tokens against the oracle's (with --perplexity each position's
              NLL against the oracle's log-softmax, within 2 tol of the largest logit, and the
              line's perplexity against them); in a third of the seeds the lines are text (a
              tokenizer of their own: tabs, carriage returns, NUL and other control characters,
              special pieces' text, é 中 🙂, backslashes, written with the escapes of README's *Decoding*;
              --special and --no-bos drawn), their ids sentencepiece's (with --perplexity the
              rows' tokens against them) and, with --quiet, each answer's escaped text against
              the text of the oracle's tokens;  emu-batch: the same on the emulator
  cpu-serve   --serve --batch 3: JSON requests, all echoed with "logprobs": the prompt; a next turn
              ("continue": its ids after the first's tokens; not with --max-positions); the
              prompt's first half (its start in the caches; streamed): each one's tokens,
              finish_reason and prompt_tokens, and its own and its prompt's log-probabilities
              (and top tokens') against the oracle's log-softmax (within 2 tol of the largest
              logit), a stream's events against its answer; in most seeds with a tokenizer trained
              here (serve_text.py: six SentencePiece models of 24 to 340 pieces, byte fallback in
              three) each answer's text and prompt_text against sentencepiece's decoding, and in
              some "stop" strings from the oracle's text and the prompt's: the tokens and text
              they end (serve_text.Text.stop);  emu-serve, gpu-serve: the same on the GPU
  cpu-http    examples/serve_http/moeppc_http.py in front of moeppc run --batch 3 (the seed's tokenizer):
              /v1/completions of the prompt and its first half in one request ("echo", "logprobs":
              3), and of the prompt streamed: each choice's token_ids, finish_reason, text (the
              prompt's, then the answer's, cut by stop strings), tokens' strings, log-probabilities,
              top log-probabilities' best and text_offset against the oracle, the usage, and the
              stream's chunks joined against the first choice; in half the seeds with a tokenizer
              /v1/chat/completions of random messages through one of four chat templates
              (serve_text.CHAT_TEMPLATES; rendered and tokenized as transformers and Hugging Face's
              tokenizers do), streamed and not, and the conversation's next turn;  emu-http: the
              same on the emulator
  lib         the embedding library (emit --emit lib) through examples/embed_c against the
              interpreter's layer (tests/embed/test_example.sh; --embed-ref: embed_layer_ref);
              lib-emu: its CUDA build (--target emu) through embed_python --cuda on the emulator
  gpu         moeppc run --device cuda on the machine's GPU;  gpu-batch: as cpu-batch

against the float64 oracle (oracle.py, written from SEMANTICS.md alone): the prompt's logits within
SEMANTICS.md 4's tolerances (f32 1e-4, bf16 and f16 2e-2, relative to the largest logit), the same
routing picks, and the same tokens for --generate steps (decode on the KV caches), chosen from the
oracle's logits as runtime.h says (sampling.py, with the same seed). A routing pick the oracle decides
by less than the tolerance (a near tie) makes what follows it inconclusive, not a failure: the logits
are then compared only up to it, the tokens only before it; so does a token whose choice survives
less change of the logits than the path may have (token_delta: 8 times what its prompt's logits
measured, between 1/20 of the tolerance and the tolerance).

A failure prints the seed, the path and the difference, and keeps its spec, weights and command in
WORK/seed-N (the rest is removed); `--seeds N:N+1 --keep` runs one seed again. Exit 0 if every run
passed or was inconclusive, 1 if one failed, 2 on a usage or setup error.
"""
import argparse
import copy
import http.client
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402
import oracle  # noqa: E402
import sampling  # noqa: E402
import serve_text  # noqa: E402

PATHS = {
    "interp": (["--backend", "interp"], {}),
    "cpu": (["--backend", "cpu", "--threads", "2"], {}),
    "cpu-avx2": (["--backend", "cpu", "--threads", "2"], {"MOEPPC_ISA": "avx2"}),
    "cpu-sse": (["--backend", "cpu", "--threads", "1"], {"MOEPPC_ISA": "sse"}),
    "cpu-t3": (["--backend", "cpu", "--threads", "3"], {}),
    "build": ([], {}),
    "build-serve": (["--serve", "--batch", "3"], {}),
    "cpu-tuned": (["--backend", "cpu", "--threads", "2"], {}),
    "cpu-panels": (["--backend", "cpu", "--threads", "2"], {}),  # --panel-cache: packed into it, then mapped
    "interp-f32": (["--backend", "interp", "--precision", "f32"], {}),
    "interp-O0": (["--backend", "interp", "-O0"], {}),
    "emu": (["--device", "cuda"], {}),
    "emu-sm90": (["--device", "cuda"], {"MOEPPC_CUDA_TMA": "1", "MOEPPC_CUDA_PDL": "1",
                                        "MOEPPC_CUDAEMU_PDL_HAZARDS": "1"}),
    "emu-ws": (["--device", "cuda"], {"MOEPPC_CUDA_TMA": "1", "MOEPPC_CUDA_WS": "1"}),
    "emu-base": (["--device", "cuda"], {"MOEPPC_CUDA_FUSE": "0", "MOEPPC_CUDA_ASYNC_GEMM": "0",
                                        "MOEPPC_CUDA_DECODE_GEMV": "0", "MOEPPC_CUDA_ATTN_SPLIT": "0",
                                        "MOEPPC_CUDA_ATTN_TC": "0", "MOEPPC_CUDA_ROUTE_SPLIT": "0"}),
    "emu-reverse": (["--device", "cuda"], {"MOEPPC_CUDAEMU_ORDER": "reverse"}),
    "cpu-batch": (["--backend", "cpu", "--threads", "2"], {}),  # and Decode.batch_flags
    "emu-batch": (["--device", "cuda"], {}),
    "cpu-serve": (["--backend", "cpu", "--threads", "2", "--serve", "--batch", "3"], {}),
    "emu-serve": (["--device", "cuda", "--serve", "--batch", "3"], {}),
    "lib": ([], {}),
    "lib-emu": ([], {}),
    "gpu": (["--device", "cuda"], {}),
    "gpu-batch": (["--device", "cuda"], {}),
    "gpu-serve": (["--device", "cuda", "--serve", "--batch", "3"], {}),
    "cpu-http": (["--backend", "cpu", "--threads", "2", "--batch", "3"], {}),  # behind moeppc_http.py
    "emu-http": (["--device", "cuda", "--batch", "3"], {}),
}
LOGPROBS = 3  # the serve paths' "logprobs": K
GENERATE = 6


def draw_spec(rng, seed):
    """A valid spec (specs/README.md's rules) as YAML text, and the prompt's ids."""
    large = rng.random() < 0.2  # several tiles, key blocks and panels a kernel
    heads = rng.choice([1, 1, 2, 3, 4, 6])
    kv_heads = rng.choice([d for d in range(1, heads + 1) if heads % d == 0])
    hd = rng.choice([2, 4, 6, 8, 10, 16, 18, 20, 24, 32, 34, 40] + ([64, 66, 96, 128] if large else []))
    layers = rng.randint(1, 4)
    every = rng.choice([1, 1, 1, 2, 3]) if layers > 1 else 1
    every = min(every, layers)
    kinds = [rng.choice([0, 1, 2, 3, 4, 5, 8, 9]), rng.choice([0, 0, 1, 2, 3]), rng.choice([0, 0, 1, 2]),
             rng.choice([0, 0, 1, 3])]
    if sum(kinds) == 0:
        kinds[0] = 1
    E = sum(kinds)
    gating = rng.choice(["softmax_topk", "softmax_topk", "topk_softmax"])
    dtype = rng.choice(["f32", "f32", "bf16", "f16"])
    if heads * hd < 16:  # a 16-bit model this narrow rounds past 2e-2 of the oracle, the interpreter too
        dtype = "f32"
    T = rng.choice([1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 24, 33] + ([63, 64, 65, 100, 129, 200] if large else []))
    vocab = rng.randint(17, 1100 if large else 300)
    m = {
        "vocab": vocab, "hidden": heads * hd, "layers": layers, "heads": heads, "kv_heads": kv_heads,
        "rope_theta": rng.choice([10000.0, 500.0, 1.0e6]), "norm_eps": rng.choice([1.0e-6, 1.0e-5]),
        "max_positions": T + 1 + GENERATE + rng.randint(0, 40), "dtype": dtype,
        "tie_embeddings": rng.random() < 0.25,
    }
    moe = {
        "every": every, "dense_intermediate": rng.randint(1, 300 if large else 70) if every > 1 else 0,
        "top_k": rng.randint(1, min(E, 4)), "intermediate": rng.randint(1, 300 if large else 70),
    }
    router = {
        "layers": rng.choice([1, 2]), "gating": gating, "logits_norm": rng.random() < 0.25,
        "logits_norm_std": rng.choice([1.0, 2.0, 0.5]), "residual": rng.random() < 0.7,
    }
    lines = ["# random_models.py seed %d" % seed, "format: 1", "name: random-%d" % seed, "model:"]
    lines += ["  %s: %s" % (k, fmt(v)) for k, v in m.items()]
    lines += ["moe:"] + ["  %s: %s" % (k, fmt(v)) for k, v in moe.items()]
    lines += ["  experts:"] + ["    %s: %d" % (k, n) for k, n in zip(("ffn", "constant", "copy", "zero"), kinds)]
    lines += ["  router:"] + ["    %s: %s" % (k, fmt(v)) for k, v in router.items()]
    lines += ["  input_scaling: %s" % fmt(rng.random() < 0.8)]
    ids = [rng.randrange(vocab) for _ in range(T)]
    if rng.random() < 0.06:  # a long context: attention over many key blocks, caches of hundreds of rows
        ids += [rng.randrange(vocab) for _ in range(rng.randint(241, 700) - T)]
        m["max_positions"] += len(ids) - T
        lines[4:4 + len(m)] = ["  %s: %s" % (k, fmt(v)) for k, v in m.items()]
    lines[1:1] = ["# seed: %d" % seed, "# ids: %s" % " ".join(map(str, ids))]  # one_regression's
    return "\n".join(lines) + "\n", ids


BATCH_DEFAULTS = {"batch": 3, "chunk": 7, "unordered": 0, "no_reuse": 0, "ppl": 0}


class Decode:
    """How a seed decodes: sampling.Params, a stop token (the oracle's token number stop_at, which
    ends the generation after it: stop_extra one more id beside it) and --max-positions (the prompt's
    length + 1 + maxpos_extra: the caches end the generation; None: the spec's); and how the -batch
    paths run their lines (--batch, --chunk (0: none), --unordered, --no-prefix-reuse, --perplexity)."""

    def __init__(self, params=None, stop_at=None, stop_extra=None, maxpos_extra=None):
        self.params = params or sampling.Params()
        self.stop_at, self.stop_extra, self.maxpos_extra = stop_at, stop_extra, maxpos_extra
        self.stop = []  # the stop ids, once the oracle's tokens are known (resolve_stop)
        self.batch = dict(BATCH_DEFAULTS)
        self.tok = None  # the serve paths' tokenizer (serve_text.TOKENIZERS), or None
        self.stop_str = None  # (where, length, another from the prompt): a "stop" string from the text
        self.stop_strings = []  # ... once the oracle's tokens are known (resolve_stop_strings)
        self.special = None  # the ids of a fourth request (its text's cases: NUL, control ids, byte runs)
        self.chat = None  # the HTTP paths' chat request: (serve_text.CHAT_TEMPLATES' name, its messages' seed)
        self.lines = None  # the -batch paths' prompts as text lines: (their texts' seed, --special, --no-bos,
        # the tokenizer)

    @staticmethod
    def draw(rng, vocab):
        p = sampling.Params()
        if rng.random() < 0.45:
            p.temperature = rng.choice([0.3, 0.6, 0.9, 1.0, 1.3, 2.0])
            p.top_k = rng.choice([0, 0, 0, 1, 2, 5, 20])
            p.top_p = rng.choice([1.0, 1.0, 0.5, 0.8, 0.95])
            p.seed = rng.choice([rng.randrange(1 << 53), rng.randrange(1 << 64)])  # above 2^53: not in JSON
        if rng.random() < 0.3:
            p.penalty = rng.choice([0.7, 1.2, 1.5, 3.0])
        d = Decode(p)
        if rng.random() < 0.2:
            d.stop_at = rng.randrange(GENERATE)
            d.stop_extra = rng.randrange(vocab) if rng.random() < 0.5 else None
        if rng.random() < 0.12:
            d.maxpos_extra = rng.randrange(GENERATE - 1)
        if rng.random() < 0.25:  # (drawn last: the draws before it as they were)
            p.presence = rng.choice([0.0, -0.5, 0.7, 2.0])
            p.frequency = rng.choice([0.0, 0.4, -1.0, 1.5])
        if rng.random() < 0.2:  # logit biases: a token banned, one favoured
            p.bias = {rng.randrange(vocab): rng.choice([-100.0, 3.0, -2.5]) for _ in range(rng.choice([1, 2, 3]))}
        return d

    def draw_batch(self, rng):
        """The -batch paths' options: one line after the other, or up to 2, 3 or 5 at once in chunks
        of 1 to 16 prompt tokens a step (or the default 256), answers as they end or not, prefixes
        reused or not, each line's NLLs printed (--perplexity) or not."""
        b = rng.choice([1, 2, 3, 3, 5])
        self.batch = {"batch": b, "chunk": rng.choice([0, 1, 2, 7, 16]) if b > 1 else 0,
                      "unordered": int(b > 1 and rng.random() < 0.3), "no_reuse": int(rng.random() < 0.2)}
        self.batch["ppl"] = int(rng.random() < 0.35)  # drawn last: the draws before it as they were

    def draw_text(self, rng, vocab):
        """The serve paths' tokenizer (one of those no larger than the vocabulary, or none) and "stop"
        strings: one from the oracle's answer to the prompt (where, as a fraction of its text, and how
        many characters), and perhaps one from the prompt's text, which only the answer's can end."""
        fit = [name for name, (size, _) in serve_text.TOKENIZERS.items() if size <= vocab]
        if fit and rng.random() < 0.6:
            self.tok = rng.choice(fit)
            if rng.random() < 0.5:
                self.stop_str = (round(rng.random(), 4), rng.choice([1, 1, 2, 3]), int(rng.random() < 0.3))
            if rng.random() < 0.5:  # a prompt of the ids whose text is a case of its own (byte fallback's
                # layout: <unk>, <s>, </s>, then the bytes, <0x00> at 3; the last id past most pieces)
                pool = [0, 1, 2, 3, 3, 0xe6 + 3, 0x97 + 3, 0xa5 + 3, 0xf0 + 3, 0x9f + 3, 0xc3 + 3, 0x5c + 3, vocab - 1]
                self.special = [rng.choice([i for i in pool if i < vocab]) for _ in range(rng.randint(2, 8))]

    def draw_chat(self, rng):
        """With a tokenizer, in half the seeds a chat request for the HTTP paths: a template and the
        seed of its messages (serve_text.draw_messages)."""
        if self.tok and rng.random() < 0.5:
            self.chat = (rng.choice(sorted(serve_text.CHAT_TEMPLATES)), rng.randrange(1 << 30))

    def draw_lines(self, rng, vocab):
        """In a third of the seeds (with the spec's max_positions) the -batch paths' prompts as text
        lines: the seed of their texts, --special in three in ten, --no-bos in one in four, and a
        tokenizer no larger than the vocabulary (those that keep whitespace as it is, where a tab is
        not a space, three times as likely)."""
        fit = [name for name, (size, kw) in serve_text.TOKENIZERS.items() if size <= vocab
               for _ in range(3 if kw.get("normalization_rule_name") == "identity" else 1)]
        if fit and self.maxpos_extra is None and rng.random() < 0.35:
            self.lines = (rng.randrange(1 << 30), int(rng.random() < 0.3), int(rng.random() < 0.25), rng.choice(fit))

    def resolve_stop_strings(self, text, ids, gen):
        """The "stop" strings from the texts of the oracle's answer to the prompt ids and of the prompt:
        runs of characters without U+FFFD (the mark of bytes no character has)."""
        def clean_run(t, at, length):
            for i in list(range(at, len(t))) + list(range(0, at)):
                if len(t[i:i + length]) == length and "\ufffd" not in t[i:i + length]:
                    return t[i:i + length]
            return None
        if self.stop_str is None:
            return
        where, length, from_prompt = self.stop_str
        answer = text.answer(ids, gen) or ""
        found = [clean_run(answer, int(where * len(answer)), length)]
        if from_prompt:
            prompt = text.decode(ids)
            found.append(clean_run(prompt, len(prompt) // 2, 2))
        self.stop_strings = [s for s in found if s]

    def batch_flags(self):
        b = self.batch
        return (["--batch", str(b["batch"])] + (["--chunk", str(b["chunk"])] if b["chunk"] else [])
                + (["--unordered"] if b["unordered"] else []) + (["--no-prefix-reuse"] if b["no_reuse"] else []))

    @staticmethod
    def parse(line):
        """A kept spec's '# decode: temperature=0.9 top_k=5 top_p=0.8 penalty=1.2 presence=0.7 frequency=-1.0
        bias=13:-100.0,2:3.0 seed=7 stop_at=2 stop_extra=9 maxpos_extra=1 batch=2 chunk=1 unordered=1
        no_reuse=1 ppl=1 tok=bpe100 stop_str=0.25,2,1 special=3,1,236 chat=zephyr,77 lines=5,1,0,bpe24' (any of
        them)."""
        d = Decode()
        for item in line.split():
            k, _, v = item.partition("=")
            if k in ("temperature", "top_p", "penalty", "presence", "frequency"):
                setattr(d.params, k, float(v))
            elif k == "bias":
                d.params.bias = {int(t): float(b) for t, b in (kv.split(":") for kv in v.split(","))}
            elif k in ("top_k", "seed"):
                setattr(d.params, k, int(v))
            elif k in ("stop_at", "stop_extra", "maxpos_extra"):
                setattr(d, k, int(v))
            elif k in BATCH_DEFAULTS:
                d.batch[k] = int(v)
            elif k == "tok" and v in serve_text.TOKENIZERS:
                d.tok = v
            elif k == "special":
                d.special = [int(x) for x in v.split(",")]
            elif k == "chat" and v.split(",")[0] in serve_text.CHAT_TEMPLATES:
                d.chat = (v.split(",")[0], int(v.split(",")[1]))
            elif k == "lines" and v.split(",")[-1] in serve_text.TOKENIZERS:
                d.lines = tuple(int(x) for x in v.split(",")[:3]) + (v.split(",")[-1],)
            elif k == "stop_str":
                where, length, from_prompt = v.split(",")
                d.stop_str = (float(where), int(length), int(from_prompt))
            else:
                raise ValueError("# decode: unknown %r" % k)
        return d

    def describe(self):
        p = self.params
        out = []
        if p.temperature > 0:
            out.append("temperature=%r top_k=%d top_p=%r seed=%d" % (p.temperature, p.top_k, p.top_p, p.seed))
        if p.penalty != 1:
            out.append("penalty=%r" % p.penalty)
        out += ["%s=%r" % (k, getattr(p, k)) for k in ("presence", "frequency") if getattr(p, k)]
        if p.bias:
            out.append("bias=" + ",".join("%d:%r" % kv for kv in sorted(p.bias.items())))
        for k in ("stop_at", "stop_extra", "maxpos_extra"):
            if getattr(self, k) is not None:
                out.append("%s=%d" % (k, getattr(self, k)))
        out += ["%s=%d" % (k, v) for k, v in self.batch.items() if v != BATCH_DEFAULTS[k]]
        if self.tok:
            out.append("tok=%s" % self.tok)
        if self.stop_str:
            out.append("stop_str=%r,%d,%d" % self.stop_str)
        if self.special:
            out.append("special=%s" % ",".join(map(str, self.special)))
        if self.chat:
            out.append("chat=%s,%d" % self.chat)
        if self.lines:
            out.append("lines=%d,%d,%d,%s" % self.lines)
        return " ".join(out) or "greedy"

    def max_positions(self, T):
        return None if self.maxpos_extra is None else T + 1 + self.maxpos_extra

    def resolve_stop(self, gen):
        """The stop ids from the oracle's tokens of the first prompt."""
        if self.stop_at is not None and self.stop_at < len(gen):
            self.stop = [gen[self.stop_at]] + ([self.stop_extra] if self.stop_extra is not None else [])

    def flags(self, T):
        f = self.params.flags()
        if self.stop:
            f += ["--stop", " ".join(map(str, self.stop))]
        if self.maxpos_extra is not None:
            f += ["--max-positions", str(self.max_positions(T))]
        return f


def fmt(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):  # 1.0e-05, not 1e-05: YAML 1.1 (PyYAML) reads a float only with its dot
        r = repr(v)
        return r.replace("e", ".0e") if "e" in r and "." not in r else r
    return str(v)


def parse_spec(text):
    """A spec as the generator writes it (nested "key: value" lines, two spaces a level) as a dict:
    PyYAML where there is one, else this (a GPU machine may lack it)."""
    try:
        import yaml
        return yaml.safe_load(text)
    except ImportError:
        pass
    root = {}
    stack = [(-1, root)]  # (indent, mapping) of the open keys
    for line in text.splitlines():
        body = line.split("#", 1)[0].rstrip()
        if not body.strip():
            continue
        depth = len(body) - len(body.lstrip())
        key, _, val = body.strip().partition(":")
        while stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1]
        val = val.strip()
        if not val:
            parent[key] = {}
            stack.append((depth, parent[key]))
        elif val in ("true", "false"):
            parent[key] = val == "true"
        else:
            try:
                parent[key] = int(val)
            except ValueError:
                try:
                    parent[key] = float(val)
                except ValueError:
                    parent[key] = val
    return root


def oracle_case(spec, W, ids, generate, tol, dec, mp):
    """The oracle on a prompt decoded as dec says (the tokens sampling.choose picks, each with its
    margin: how far the logits could move before it picks another; up to dec's stop ids and mp, the
    KV caches' length, which ends them too; None: the spec's), its logits over prompt + tokens, the
    routes, and the first position whose routing it decides by a near tie (a flip there changes the
    logits from that row on; None: none)."""
    gen, margins = [], []
    rng = sampling.SplitMix64(dec.params.seed)
    mp = spec.max_pos if mp is None else mp
    for _ in range(min(generate, mp - len(ids) + 1)):
        tok, margin = sampling.choose(oracle.forward(spec, W, ids + gen)[-1], ids + gen, dec.params, rng, len(ids))
        gen.append(tok)
        margins.append(margin)
        if tok in dec.stop:
            break
    routes = []
    logits = oracle.forward(spec, W, (ids + gen)[:len(ids) + len(gen) - 1], routes)  # the last token unfed
    near = max(1e-4, tol)
    route_tie = min([t for (_, t, _, _, margin) in routes if margin < near], default=None)
    return {"gen": gen, "margins": margins, "logits": logits, "routes": routes, "route_tie": route_tie}


def stop_after(case, stop):
    """case with its tokens ended after the first of the stop ids."""
    for g, tok in enumerate(case["gen"]):
        if tok in stop:
            case["gen"], case["margins"] = case["gen"][:g + 1], case["margins"][:g + 1]
            break
    return case


def invoke(args, name, spec_path, work, tail, stdin=None):
    """moeppc run SPEC (or the executable moeppc build wrote: path build) on path name with the
    arguments tail (and stdin as its input): (the command, its standard output or None, an error or
    None)."""
    flags, env_extra = PATHS[name]
    env = dict(os.environ, **env_extra)
    if name.startswith("emu"):
        env["MOEPPC_CUDA_DRIVER"] = args.emu_driver
    head = [args.moeppc, "run", spec_path]
    if name == "cpu-tuned":
        db = os.path.join(work, "tuning.yaml")
        if not os.path.exists(db):
            p = subprocess.run([args.moeppc, "tune", spec_path, "--tokens", "1,8,32,128", "--budget", "2", "-o", db],
                               capture_output=True, text=True)
            if p.returncode != 0:
                return head, None, "moeppc tune: exit %d: %s" % (p.returncode, p.stderr.strip()[-600:])
        flags = flags + ["--tuning", db]
    if name == "cpu-panels":
        flags = flags + ["--panel-cache", os.path.join(work, "panels")]
    if name.startswith("build"):
        head = [os.path.join(work, "model")]
        if not os.path.exists(head[0]):
            p = subprocess.run([args.moeppc, "build", spec_path, "-o", head[0]], capture_output=True, text=True)
            if p.returncode != 0:
                return head, None, "moeppc build: exit %d: %s" % (p.returncode, p.stderr.strip()[-600:])
    cmd = head + tail + flags
    try:
        p = subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return cmd, None, "timed out after %d s" % args.timeout
    if p.returncode != 0:
        return cmd, None, "exit %d: %s" % (p.returncode, (p.stderr or p.stdout).strip()[-600:])
    return cmd, p.stdout, None


def run_path(args, name, spec_path, w_path, ids, dec, work):
    """The prompt and --generate: the generated tokens (logits and routes in WORK/NAME.bin, .routes).
    cpu-panels runs twice: its weights packed into the panel cache, then mapped from it, each file
    checked against its checksums first (--panel-cache-verify: the same logits bit for bit, and
    `moeppc panel-cache --verify` finds every file ok)."""
    out = os.path.join(work, name)
    for run in range(2 if name == "cpu-panels" else 1):
        bin_path = out + (".packed.bin" if run == 0 and name == "cpu-panels" else ".bin")
        cmd, text, err = invoke(args, name, spec_path, work, [
            "--weights", w_path, "--ids", " ".join(map(str, ids)), "--logits-out", bin_path,
            "--routes-out", out + ".routes", "--generate", str(GENERATE), "--ignore-eos", "--quiet"]
            + dec.flags(len(ids)) + (["--panel-cache-verify"] if run == 1 else []))
        if err:
            return cmd, None, err
    if name == "cpu-panels":
        kept = [f for f in os.listdir(os.path.join(work, "panels")) if f.startswith("panels-")]
        with open(out + ".bin", "rb") as a, open(out + ".packed.bin", "rb") as b:
            if not kept or a.read() != b.read():
                return cmd, None, ("no panel file kept" if not kept else
                                   "logits from the mapped panels differ from those of the packed ones")
        p = subprocess.run([args.moeppc, "panel-cache", os.path.join(work, "panels"), "--verify"],
                           capture_output=True, text=True)
        if p.returncode != 0 or " ok, verified" not in p.stdout or "damaged" in p.stderr:
            return cmd, None, "moeppc panel-cache --verify: exit %d: %s" % (p.returncode, (p.stderr or p.stdout)[-400:])
    try:
        return cmd, [int(v) for v in text.split()], None
    except ValueError:
        return cmd, None, "unreadable tokens: %r" % text[-200:]


def check_tokens(gen, case, T, delta):
    """gen against the oracle's tokens after a prompt of T tokens (None: the same). A difference at a
    token the oracle picks by a margin below delta (logit units), or after a routing near tie, is
    inconclusive."""
    o_gen, route_tie = case["gen"], case["route_tie"]
    for g, (x, y) in enumerate(zip(gen, o_gen)):
        if x != y:
            pos = T - 1 + g  # the row that predicted it
            if route_tie is not None and route_tie <= pos:
                return "inconclusive: token %d (%d, the oracle %d) after a routing near tie at position %d" % (
                    g, x, y, route_tie)
            if case["margins"][g] < delta:
                return "inconclusive: token %d (%d, the oracle %d) picked by a margin of %.3g < %.3g" % (
                    g, x, y, case["margins"][g], delta)
            return "generated %s, the oracle %s (first difference: token %d, margin %.3g, delta %.3g)" % (
                gen, o_gen, g, case["margins"][g], delta)
    if len(gen) != len(o_gen):
        return "%d tokens generated, not %d: %s, the oracle %s" % (len(gen), len(o_gen), gen, o_gen)
    return None


def check_text(got, case, seq, delta, text):
    """A --quiet answer's text (escaped) against the text of the oracle's tokens after seq; where they
    differ, inconclusive if the oracle picked one of its tokens by a margin below delta or after a
    routing near tie (another token was as right)."""
    want = text.answer(seq, case["gen"])
    if want is None or got == serve_text.escape_answer(want):
        return None  # (None: no rule says what the answer's text is)
    last = len(seq) - 2 + len(case["gen"])  # the row that predicted the last token
    if case["route_tie"] is not None and case["route_tie"] <= last:
        return "inconclusive: answered %r, the oracle %r after a routing near tie" % (got, want)
    if min(case["margins"], default=math.inf) < delta:
        return "inconclusive: answered %r, the oracle %r (%s) with a margin of %.3g < %.3g" % (
            got, want, case["gen"], min(case["margins"]), delta)
    return "answered %r, the oracle %r (its tokens %s)" % (got, serve_text.escape_answer(want), case["gen"])


def token_delta(measured, scale, tol):
    """How far a path's logits may be from the oracle's where it decodes (logit units): eight times
    what its prompt's rows measured, at least tol / 20 of the largest logit, at most tol of it."""
    return min(tol * scale, max(8 * measured, tol * scale / 20))


def other_delta(deltas, case, T, tol):
    """The token_delta of a path without the prompt's logits (--batch, --serve): the largest of the
    paths before it, else tol of the largest logit."""
    return max(deltas) if deltas else tol * float(np.abs(case["logits"][:T]).max())


def check_path(spec, ids, name, work, gen, case, tol):
    """What is wrong with a path's outputs (None: nothing; 'inconclusive: ...' for a near tie), and
    its token_delta."""
    T = len(ids)
    route_tie = case["route_tie"]
    a = compare.load(os.path.join(work, name + ".bin"), spec.V)
    if a.shape != (T, spec.V):
        return "logits of shape %s, not %s" % (a.shape, (T, spec.V)), None
    if not np.isfinite(a).all():
        return "non-finite logits", None
    upto = T if route_tie is None else min(T, route_tie)  # the rows before a routing near tie
    b = case["logits"][:T]
    scale = float(np.abs(b).max())
    diff = float(np.abs(a[:upto] - b[:upto]).max()) if upto else 0.0
    if diff > tol * scale:
        return "logits rel. error %.3g > %.3g (rows 0..%d)" % (diff / scale, tol, upto - 1), None
    delta = token_delta(diff, scale, tol)
    mine = compare.load_routes(os.path.join(work, name + ".routes"))
    for (l, t, rid, _, margin) in case["routes"]:
        if t >= upto:
            continue
        got = mine.get((l, t))
        if got is None:
            return "no route for layer %d token %d" % (l, t), delta
        if got[0] != sorted(rid):
            why = "layer %d token %d picks %s, the oracle %s (margin %.3g)" % (l, t, got[0], sorted(rid), margin)
            return why, delta
    return check_tokens(gen, case, T, delta), delta


def batch_prompts(spec, ids, mp):
    """--batch's lines, (continues the line before, ids): the prompt, its first half (all of it in the
    caches after the first line), the prompt and one token more (the first line's prefix and one
    token to run) and, where the caches have room (and no --max-positions), a + line: two tokens
    after the third line's answer, in its sequence (a conversation's next turn)."""
    lines = [(False, list(ids)), (False, list(ids[:max(1, len(ids) // 2)])),
             (False, list(ids) + [(ids[-1] * 7 + 3) % spec.V])]
    if mp is None and len(ids) + 1 + 2 * GENERATE + 2 <= spec.max_pos:
        lines.append((True, [(ids[0] * 3 + 1) % spec.V, (ids[-1] * 5 + 2) % spec.V]))
    return lines


def text_prompts(spec, dec, text):
    """--batch's lines as text (dec.lines), (continues the line before, ids, the line): a text, its
    first half, the text and a word more and, where the caches have room, a + line; each line's ids
    as Hugging Face's LlamaTokenizer encodes its text (the beginning-of-sequence id first unless
    --no-bos or a + line) or, with --special, as a chat template's text (encode_special). None where
    the lines do not fit in the caches."""
    seed, special, no_bos, _ = dec.lines
    rng = random.Random(seed)
    first = serve_text.draw_line(rng)
    texts = [(False, first), (False, first[:max(1, len(first) // 2)]),
             (False, first + serve_text.draw_line(rng)), (True, serve_text.draw_line(rng))]
    bos = text.sp.bos_id()
    out, total = [], 0
    for plus, t in texts:
        raw = t.encode("utf-8")
        ids = (serve_text.encode_special(text.sp, text.specials(), raw) if special else
               ([bos] if bos >= 0 and not no_bos and not plus else []) + text.sp.encode(t))
        total = (total + GENERATE if plus else 0) + len(ids)
        if not ids or total + GENERATE + 2 > spec.max_pos:
            if plus:
                break  # no room for the next turn
            return None
        out.append((plus, ids, ("+" if plus else "") + serve_text.escape_line(rng, t)))
    return out


def run_lib(args, name, spec_path, work):
    """Paths lib, lib-emu: the embedding library (moeppc emit --emit lib; lib-emu: its CUDA build for
    the emulator) through examples/embed_c (embed_python --cuda) against the interpreter's layer
    (tests/embed/test_example.sh: two layers, several token and thread counts; not its mutants, which
    a layer that picks no FFN expert cannot show). The command and an error or None."""
    lib = os.path.join(work, name)
    env = dict(os.environ, EMBED_MUTANTS="0")
    target, kind = ([], "c") if name == "lib" else (["--target", "emu"], "cuda-python")
    if name == "lib-emu":
        env["MOEPPC_CUDA_DRIVER"] = args.emu_driver
    cmd = [args.moeppc, "emit", spec_path, "--emit", "lib", "-o", lib] + target
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    if p.returncode != 0:
        return cmd, "moeppc emit: exit %d: %s" % (p.returncode, p.stderr.strip()[-600:])
    cmd = ["bash", os.path.join(HERE, "..", "embed", "test_example.sh"), kind, args.moeppc, args.embed_ref, lib,
           spec_path, lib + "-run"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    if p.returncode != 0:
        return cmd, "exit %d: %s" % (p.returncode, (p.stdout + p.stderr).strip()[-600:])
    return cmd, None


def run_batch(args, name, spec_path, w_path, prompts, dec, work):
    """--prompts through --batch: each line's generated tokens (text lines (text_prompts), with --quiet:
    the escaped text of each answer) and, with the seed's ppl (where every line that starts a sequence
    has a next token to predict), its NLLs [(position, token, NLL)] and perplexity (None without); or
    an error."""
    pf = os.path.join(work, name + ".prompts")
    lines = len(prompts[0]) == 3
    with open(pf, "w") as f:
        f.write("".join((p[2] if lines else ("+" if p[0] else "") + " ".join(map(str, p[1]))) + "\n" for p in prompts))
    ppl = dec.batch["ppl"] and all(p[0] or len(p[1]) >= 2 for p in prompts)
    tok = ["--tokenizer", args.tokenizers[dec.lines[3]]] + (["--special"] if dec.lines[1] else []) + (
        ["--no-bos"] if dec.lines[2] else []) if lines else []
    cmd, text, err = invoke(args, name, spec_path, work, [
        "--weights", w_path, "--prompts", pf, "--generate", str(GENERATE), "--ignore-eos"] + tok
        + (["--perplexity", "--top", "0"] if ppl else ["--quiet"]) + dec.flags(len(prompts[0][1])) + dec.batch_flags())
    if err:
        return cmd, None, None, err
    if ppl:
        return (cmd,) + parse_perplexity(text, len(prompts))
    out = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    if len(out) != len(prompts):
        return cmd, None, None, "%d answers to %d prompts: %r" % (len(out), len(prompts), text[-300:])
    answer = (lambda a: a) if lines else (lambda a: [int(v) for v in a.split()])
    try:
        if not dec.batch["unordered"]:
            return cmd, [answer(ln) for ln in out], None, None
        by_line = {}  # --unordered --quiet: "N<tab>tokens" (or text) as each line ends
        for ln in out:
            n, _, a = ln.partition("\t")
            by_line[int(n)] = answer(a)
        if sorted(by_line) != list(range(1, len(prompts) + 1)):
            return cmd, None, None, "--unordered answered lines %s" % sorted(by_line)
        return cmd, [by_line[i + 1] for i in range(len(prompts))], None, None
    except ValueError:
        return cmd, None, None, "unreadable tokens: %r" % text[-300:]


def parse_perplexity(text, n):
    """--prompts' report with --perplexity --top 0 (a section a line, "== prompt K (line N)...", in
    the order lines end under --unordered): each line's generated tokens, its NLLs [(position, token,
    NLL or None)] and perplexity; or an error."""
    gens, nlls, ppls = {}, {}, {}
    line = None
    for ln in text.splitlines():
        m = re.match(r"== prompt \d+ \(line (\d+)\)", ln)
        if m:
            line = int(m.group(1))
            nlls[line] = []
            continue
        m = re.match(r" +(\d+) +(\d+)  (?: +NLL (-?[0-9.]+))?$", ln)
        if m and line is not None:
            nlls[line].append((int(m.group(1)), int(m.group(2)), m.group(3) and float(m.group(3))))
        elif ln.startswith(" perplexity ") and line is not None:
            ppls[line] = float(ln.split()[1])
        elif re.match(r" generated(?: \([^)]*\))?:", ln) and line is not None:  # (the drawing's settings)
            gens[line] = [int(v) for v in ln.split("):" if "):" in ln else ":", 1)[1].split()]
        elif ln.startswith(" generated ids:") and line is not None:  # with a tokenizer (its text a line before)
            gens[line] = [int(v) for v in ln.split(":", 1)[1].split()]
    if sorted(gens) != list(range(1, n + 1)) or sorted(nlls) != sorted(gens):
        return None, None, "--perplexity: tokens of lines %s, NLLs of %s: %r" % (sorted(gens), sorted(nlls),
                                                                                 text[-300:])
    return [gens[i] for i in range(1, n + 1)], [(nlls[i], ppls.get(i)) for i in range(1, n + 1)], None


def check_nlls(nlls, ppl, case, seq, first, tol):
    """A line's --perplexity report against the oracle's case of its sequence seq (a + line's begins
    with the turns before; its report from position first on): each position's token and the NLL of
    the next (the last's none), within 2 tol of the largest logit (rows from a routing near tie on
    not compared), and the perplexity their mean gives."""
    want = list(range(first, len(seq)))
    if [p for p, _, _ in nlls] != want:
        return "--perplexity: positions %s, not %d..%d" % ([p for p, _, _ in nlls], first, len(seq) - 1)
    lsm = log_softmax(case["logits"])
    scale = float(np.abs(case["logits"][:len(seq)]).max())
    upto = len(seq) if case["route_tie"] is None else case["route_tie"]
    for p, tok, nll in nlls:
        if tok != seq[p] or (nll is None) != (p == len(seq) - 1):
            return "--perplexity: position %d: token %d, NLL %s (the sequence's token %d)" % (p, tok, nll, seq[p])
        if nll is not None and p < upto and abs(nll + lsm[p, seq[p + 1]]) > 2 * tol * scale + 1e-4:
            return "--perplexity: position %d: NLL %.4f, the oracle %.6f" % (p, nll, -lsm[p, seq[p + 1]])
    got = [nll for _, _, nll in nlls if nll is not None]
    if ppl is None or abs(math.log(ppl) - sum(got) / len(got)) > 1e-4 + 1e-5 * abs(math.log(ppl)):
        return "--perplexity: perplexity %s, the NLLs' mean %.6f" % (ppl, sum(got) / len(got))
    return None


def serve_requests(spec, ids, dec):
    """--serve's requests: the prompt, a next turn after its tokens (where the caches have room for
    it; not with --max-positions), the prompt's first half and, with a tokenizer, perhaps a prompt of
    ids whose text is a case of its own (dec.special); each echoed with "logprobs" and dec's
    choices."""
    common = {"max_tokens": GENERATE, "logprobs": LOGPROBS, "echo": True, "stop": dec.stop + dec.stop_strings}
    p = dec.params
    if p.seed < 1 << 53:  # else the command line's options (the defaults) alone
        if p.temperature > 0:
            common.update(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, seed=p.seed)
        if p.penalty != 1:
            common["repetition_penalty"] = p.penalty
        common.update({k + "_penalty": getattr(p, k) for k in ("presence", "frequency") if getattr(p, k)})
        if p.bias:
            common["logit_bias"] = {str(t): b for t, b in p.bias.items()}
    reqs = [dict(common, id="a", ids=list(ids))]
    if dec.maxpos_extra is None and len(ids) + GENERATE + 2 <= spec.max_pos:
        turn = [(ids[0] * 5 + 1) % spec.V, (ids[-1] * 3 + 2) % spec.V]
        reqs.append(dict(common, id="b", ids=turn, **{"continue": "a"}))
    reqs.append(dict(common, id="c", ids=list(ids[:max(1, len(ids) // 2)]), stream=True))
    if dec.special and dec.tok:
        reqs.append(dict(common, id="d", ids=dec.special[:len(ids)], stream=True))
    return reqs


def run_serve(args, name, spec_path, w_path, reqs, dec, work):
    """The requests through --serve (with the seed's tokenizer, if any): the answers by id (or an
    error)."""
    tok = ["--tokenizer", args.tokenizers[dec.tok]] if dec.tok and args.tokenizers else []
    cmd, out, err = invoke(args, name, spec_path, work, ["--weights", w_path, "--generate", str(GENERATE),
                                                         "--ignore-eos"] + tok + dec.flags(len(reqs[0]["ids"])),
                           stdin="".join(json.dumps(r) + "\n" for r in reqs))
    if err:
        return cmd, None, err
    answers, streamed, texts = {}, {}, {}  # the final answers; a "stream" request's token events, its text
    try:
        for a in map(json.loads, out.splitlines()):
            if "ids" in a or "error" in a:
                answers[a["id"]] = a
                continue
            if "token" in a:
                streamed.setdefault(a["id"], []).append((a["token"], a["logprob"]))
            texts[a["id"]] = texts.get(a["id"], "") + a.get("text", "")
    except (ValueError, KeyError) as e:
        return cmd, None, "unreadable answers (%s): %r" % (e, out[-300:])
    for r in reqs:
        a = answers.get(r["id"])
        if not r.get("stream") or not a or "ids" not in a:
            continue
        if streamed.get(r["id"], []) != list(zip(a["ids"], a["logprobs"]["token_logprobs"])):
            return cmd, None, "request %s: streamed %s, answered %s" % (r["id"], streamed.get(r["id"]), a["ids"])
        if tok and texts.get(r["id"], "") != a["text"]:
            return cmd, None, "request %s: streamed the text %r, answered %r" % (r["id"], texts.get(r["id"]), a["text"])
    return cmd, answers, None


def expected_answer(case, ctx, stop, text, strings):
    """What an answer after ctx must be: the oracle's case with its tokens cut where a "stop" string
    ends them, its finish_reason, and with a tokenizer (text) its text and each token's text_offset
    (None where no rule gives them); or an "inconclusive: ..." string."""
    want_text, offsets, by_string = None, None, False
    if text:
        cut = text.stop(ctx, case["gen"], strings) if strings else (None, None)
        if cut is None:
            return "inconclusive: no rule for the text after its prompt"
        if cut[0] is not None:  # a "stop" string ends it
            case = dict(case, gen=case["gen"][:cut[0]], margins=case["margins"][:cut[0]])
            want_text, by_string = cut[1], True
        else:
            want_text = text.answer(ctx, case["gen"])
        held = [text.answer(ctx, case["gen"][:g], held=True) for g in range(len(case["gen"]))]
        if want_text is not None and None not in held:  # where each token's text begins, the text's end at most
            offsets = [min(len(t), len(want_text)) for t in held]
    gen = case["gen"]
    why = "stop" if by_string or (gen and gen[-1] in stop) else "length" if len(gen) == GENERATE else "max_positions"
    return case, why, want_text, offsets


FRONT = os.path.join(HERE, "..", "..", "examples", "serve_http", "moeppc_http.py")


def http_n(dec):
    """The HTTP path's "n": 2 choices a prompt (drawn with seeds "seed" and "seed" + 1, the second
    forking the first's caches) where the oracle knows their seeds (greedy, or a seed JSON holds), else 1."""
    return 2 if dec.params.temperature == 0 or dec.params.seed < (1 << 53) - 1 else 1


def chat_case(dec, text, spec, mp, work):
    """The HTTP paths' chat request, where the seed draws one and the tokenizer and jinja2 are here:
    {"messages", "config" (a tokenizer_config.json with the template, for the front), "ids" (the
    template's text as Hugging Face tokenizes it) or "refused" (the template's reason), "wire" (the
    messages as sent: some contents as lists of text parts), "limit" ("max_tokens" or
    "max_completion_tokens"; None where the caches end the answer within GENERATE tokens: the front's
    default, until their end; with len(ids) + GENERATE == room they would let one token more), "next"
    (a function of the answer's content: the next turn's messages and ids, or None)};
    None where there is none, or the text would not leave the caches room."""
    if not (dec.chat and text and serve_text.chat_available()):
        return None
    name, seed = dec.chat
    msgs = serve_text.draw_messages(random.Random(seed), name)
    bos, eos = (text.sp.id_to_piece(i) if i >= 0 else x for i, x in ((text.sp.bos_id(), "<s>"),
                                                                      (text.sp.eos_id(), "</s>")))
    room = mp or spec.max_pos

    def ids_of(messages):  # (the ids, or None where the template refuses them: its reason)
        try:
            rendered = serve_text.render_chat(name, messages, bos, eos)
        except ValueError as e:
            return None, str(e)
        return serve_text.encode_special(text.sp, text.specials(), rendered.encode()), None

    rng = random.Random(seed + 1)
    halves = lambda t: [{"type": "text", "text": t[:len(t) // 2]}, {"type": "text", "text": t[len(t) // 2:]}]
    chat = {"messages": msgs, "config": os.path.join(work, "tokenizer_config.json"),
            "wire": [m if rng.random() < 0.7 else dict(m, content=halves(m["content"])) for m in msgs],
            "limit": rng.choice(["max_tokens", "max_completion_tokens"])}
    user = serve_text.draw_messages(rng, "mistral")[-1]

    def next_turn(content):
        more = msgs + [{"role": "assistant", "content": content}, user]
        ids, _ = ids_of(more)
        return (more, ids) if ids and len(ids) < room - 1 and len(ids) + GENERATE < room else None

    chat["next"] = next_turn
    with open(chat["config"], "w") as f:
        json.dump({"chat_template": serve_text.CHAT_TEMPLATES[name][1], "bos_token": bos, "eos_token": eos}, f)
    chat["ids"], chat["refused"] = ids_of(msgs)
    if chat["refused"]:
        return chat
    if len(chat["ids"]) + GENERATE > room:  # (the caches' end: room - len + 1 tokens, the last one unfed)
        chat["limit"] = None
    return chat if 0 < len(chat["ids"]) < room - 1 else None


def post(host, port, path, body, timeout):
    """A request to the front: (status, its JSON answer, or a stream's events without [DONE], or the
    text of an error); raise ValueError on a stream without its [DONE]."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    raw = r.read().decode()
    conn.close()
    if r.status != 200:
        return r.status, raw
    if not body.get("stream"):
        return r.status, json.loads(raw)
    events = [ln[6:] for ln in raw.split("\n") if ln.startswith("data: ")]
    if events[-1:] != ["[DONE]"]:
        raise ValueError("a stream without its [DONE]: %r" % raw[-300:])
    return r.status, [json.loads(e) for e in events[:-1]]


def run_http(args, name, spec_path, w_path, ids, dec, work, chat=None):
    """Path cpu-http: examples/serve_http/moeppc_http.py in front of moeppc run (the seed's tokenizer,
    its decoding), asked for the completions of the prompt and its first half in one request ("n"
    of each: http_n; "echo", "logprobs": 3) and for the prompt again streamed; with chat (chat_case)
    for the chat completion of its messages ("n" as above, "logprobs", "top_logprobs": 3), for the
    same streamed with the usage, and where it fits for the next turn after the first choice's
    content. The command, (the answers, the streamed chunks, and with chat the chat's (status,
    answer) and (status, chunks), and the next turn's (status, answer) and ids), or an error."""
    tok = ["--tokenizer", args.tokenizers[dec.tok]] if dec.tok and args.tokenizers else []
    flags, env_extra = PATHS[name]
    cmd = [sys.executable, FRONT, "--port", "0"] + (["--chat-template", chat["config"]] if chat else []) + [
        "--", args.moeppc, "run", spec_path, "--weights", w_path, "--generate", str(GENERATE), "--ignore-eos"] + \
        tok + dec.flags(len(ids)) + flags
    env = dict(os.environ, **env_extra)
    if name.startswith("emu"):
        env["MOEPPC_CUDA_DRIVER"] = args.emu_driver
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on http://([0-9.]+):(\d+)", line)
        if not m:
            return cmd, None, "the front did not start: %r %s" % (line, proc.stderr.read()[-600:])
        where = (m.group(1), int(m.group(2)))
        body = {"max_tokens": GENERATE}
        if dec.stop or dec.stop_strings:
            body["stop"] = dec.stop + dec.stop_strings
        p = dec.params
        if p.seed < 1 << 53:  # (as serve_requests: else the command line's options alone)
            if p.temperature > 0:
                body.update(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, seed=p.seed)
            if p.penalty != 1:
                body["repetition_penalty"] = p.penalty
            body.update({k + "_penalty": getattr(p, k) for k in ("presence", "frequency") if getattr(p, k)})
            if p.bias:
                body["logit_bias"] = {str(t): b for t, b in p.bias.items()}
        got = []
        for b in (dict(body, prompt=[list(ids), list(ids[:max(1, len(ids) // 2)])], n=http_n(dec)),
                  dict(body, prompt=list(ids), stream=True)):
            status, answer = post(*where, "/v1/completions", dict(b, logprobs=LOGPROBS, echo=True), args.timeout)
            if status != 200:
                return cmd, None, "HTTP %d: %s" % (status, answer[-600:])
            got.append(answer)
        if chat:
            limit = body.pop("max_tokens")
            body.update({"messages": chat["wire"], "logprobs": True, "top_logprobs": LOGPROBS},
                        **({chat["limit"]: limit} if chat["limit"] else {}))
            for b in (dict(body, n=http_n(dec)), dict(body, stream=True, stream_options={"include_usage": True})):
                got.append(post(*where, "/v1/chat/completions", b, args.timeout))
            turn = got[-2][0] == 200 and chat["next"](min(got[-2][1]["choices"], key=lambda c: c["index"])
                                                      ["message"]["content"])
            if turn:  # (within max_tokens: its ids and GENERATE fit)
                got += [post(*where, "/v1/chat/completions", dict(body, messages=turn[0], n=1), args.timeout), turn[1]]
        return cmd, got, None
    except (OSError, ValueError, KeyError) as e:
        return cmd, None, "the front: %s" % e
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def check_http(ids, got, oracle_for, dec, delta, tol, text=None, strings=()):
    """The front's answers (run_http) against the oracle: each choice's tokens, finish_reason, text
    (the prompt as its ids decode, then the answer's), its tokens' strings, log-probabilities (the
    prompt's first null) and offsets, the usage; the stream's chunks joined against the first
    choice; or what is wrong."""
    answer, chunks = got[:2]
    n, stop, drawn = http_n(dec), dec.stop, dec.params.temperature > 0
    prompts = [list(ids), list(ids[:max(1, len(ids) // 2)])]
    choices = sorted(answer["choices"], key=lambda c: c["index"])
    if len(choices) != 2 * n:
        return "%d choices for 2 prompts, %d each" % (len(choices), n)
    made = 0
    for c, p, j in zip(choices, [p for p in prompts for _ in range(n)], list(range(n)) * 2):
        case = oracle_for(p, dec.params.seed + j if drawn and j else None)  # (choice j: the seed + j)
        want = expected_answer(case, p, stop, text, strings)
        if isinstance(want, str):
            return "choice %d: %s" % (c["index"], want)
        case, why, want_text, answer_offs = want
        if not text:
            want_text = ""  # (the front's text without a tokenizer)
        err = check_tokens(c["token_ids"], case, len(p), delta)
        if err:
            return "choice %d: %s" % (c["index"], err)
        gen = case["gen"]
        made += len(gen)
        echoed = text.decode(p) if text else ""
        if c["finish_reason"] != why or (want_text is not None and c["text"] != echoed + want_text):
            return "choice %d: finish_reason %r, text %r; not %r, %r" % (
                c["index"], c["finish_reason"], c["text"], why, None if want_text is None else echoed + want_text)
        seq = p + gen
        piece = (lambda i: text.sp.id_to_piece(i).replace("\u2581", " ") if i < text.n else "token_id:%d" % i) \
            if text else (lambda i: "token_id:%d" % i)
        lp = c["logprobs"]
        if lp["tokens"] != [piece(i) for i in seq]:
            return "choice %d: tokens %s, not %s" % (c["index"], lp["tokens"], [piece(i) for i in seq])
        lsm = log_softmax(case["logits"])
        scale = float(np.abs(case["logits"][:len(p)]).max())
        upto = len(case["logits"]) if case["route_tie"] is None else case["route_tie"]
        for t, (x, top) in enumerate(zip(lp["token_logprobs"], lp["top_logprobs"])):
            if t == 0 or t - 1 >= upto:
                if t == 0 and (x is not None or top is not None):
                    return "choice %d: the first token's log-probability %r" % (c["index"], x)
                continue
            best = float(lsm[t - 1].max())
            if abs(x - lsm[t - 1, seq[t]]) > 2 * tol * scale or len(top) > LOGPROBS or \
                    abs(max(top.values()) - best) > 2 * tol * scale:
                return "choice %d: token %d: log-probability %r, top %r; the oracle %.6g, best %.6g" % (
                    c["index"], t, x, top, lsm[t - 1, seq[t]], best)
        if text:
            offs = text.offsets(p) + ([len(echoed) + o for o in answer_offs] if answer_offs is not None
                                      else lp["text_offset"][len(p):])
        else:
            offs = list(np.cumsum([0] + [len(s) for s in lp["tokens"]])[:-1])
        if lp["text_offset"] != offs:
            return "choice %d: text_offset %s, not %s" % (c["index"], lp["text_offset"], offs)
    u = answer["usage"]  # (each prompt's tokens once, its n choices' all)
    if (u["prompt_tokens"], u["completion_tokens"]) != (len(prompts[0]) + len(prompts[1]), made):
        return "usage %s: not %d prompt tokens, %d made" % (u, len(prompts[0]) + len(prompts[1]), made)
    streamed = [ch for k in chunks for ch in k["choices"]]
    joined = "".join(ch["text"] for ch in streamed)
    toks = [t for ch in streamed for t in ch["token_ids"]]
    if toks != choices[0]["token_ids"] or joined != choices[0]["text"] or \
            streamed[-1]["finish_reason"] != choices[0]["finish_reason"]:
        return "the stream: tokens %s, text %r, finish %r; answered %s, %r, %r" % (
            toks, joined, streamed[-1]["finish_reason"], choices[0]["token_ids"], choices[0]["text"],
            choices[0]["finish_reason"])
    lps = [ch["logprobs"] for ch in streamed if ch["logprobs"]]  # the prompt's chunk's, then a token's each
    whole = choices[0]["logprobs"]
    for k in ("tokens", "text_offset", "token_logprobs"):
        got = [v for lp in lps for v in lp[k]]
        if k == "text_offset" and text:  # a stream's are into the text as generated, the answer's cut where
            got = [min(v, len(choices[0]["text"])) for v in got]  # a stop string begins
        if k == "token_logprobs":
            near = len(got) == len(whole[k]) and all((x is None) == (y is None) and (
                x is None or abs(x - y) <= 1e-6 + tol * abs(y)) for x, y in zip(got, whole[k]))
        if (got != whole[k]) if k != "token_logprobs" else not near:
            return "the stream's logprobs %s: %s; answered %s" % (k, got, whole[k])
    return None


def check_chat_answer(ids, answer, n, oracle_for, dec, delta, tol, text, strings):
    """A chat completion's choices after the template's ids against the oracle's: each one's tokens (by
    their strings and bytes in "logprobs"), log-probabilities and likeliest, content, finish_reason,
    and the usage; or what is wrong."""
    drawn = dec.params.temperature > 0
    choices = sorted(answer["choices"], key=lambda c: c["index"])
    if len(choices) != n:
        return "%d choices, not %d" % (len(choices), n)
    entry_ids = {}  # a token's (string, bytes) in "logprobs": its ids
    for i in range(len(oracle_for(ids)["logits"][0])):
        entry_ids.setdefault(repr(text.chat_entry(i)), []).append(i)
    made = 0
    for j, c in enumerate(choices):
        case = oracle_for(ids, dec.params.seed + j if drawn and j else None)
        want = expected_answer(case, ids, dec.stop, text, strings)
        if isinstance(want, str):
            return "choice %d: %s" % (j, want)
        case, why, want_text, _ = want
        entries = (c["logprobs"] or {}).get("content") or []
        gen = []  # the tokens the entries name: the oracle's where it is one of them
        for g, e in enumerate(entries):
            names = entry_ids.get(repr((e["token"], e["bytes"])), [-1])
            gen.append(case["gen"][g] if g < len(case["gen"]) and case["gen"][g] in names else names[0])
        err = check_tokens(gen, case, len(ids), delta)
        if err:
            return "choice %d: %s" % (j, err)
        made += len(gen)
        why = "length" if why == "max_positions" else why
        if c["finish_reason"] != why or c["message"] != {"role": "assistant", "content": c["message"]["content"]} or \
                (want_text is not None and c["message"]["content"] != want_text):
            return "choice %d: finish_reason %r, message %r; not %r, %r (tokens %s)" % (
                j, c["finish_reason"], c["message"], why, want_text, gen)
        lsm = log_softmax(case["logits"])
        scale = float(np.abs(case["logits"][:len(ids)]).max())
        upto = len(case["logits"]) if case["route_tie"] is None else case["route_tie"]
        for g, e in enumerate(entries):
            row = len(ids) - 1 + g
            if row >= upto:
                break
            tops = [(t, [i for i in entry_ids.get(repr((t["token"], t["bytes"])), [])
                         if abs(t["logprob"] - lsm[row, i]) <= 2 * tol * scale]) for t in e["top_logprobs"]]
            if abs(e["logprob"] - lsm[row, gen[g]]) > 2 * tol * scale or len(tops) != LOGPROBS or \
                    not all(named for _, named in tops) or \
                    abs(max(t["logprob"] for t, _ in tops) - lsm[row].max()) > 2 * tol * scale:
                return "choice %d: token %d (%d): logprob %r, top %r; the oracle %.6g, best %.6g" % (
                    j, g, gen[g], e["logprob"], e["top_logprobs"], lsm[row, gen[g]], lsm[row].max())
    u = answer["usage"]
    if (u["prompt_tokens"], u["completion_tokens"]) != (len(ids), made) or \
            not 0 <= u["prompt_tokens_details"]["cached_tokens"] <= len(ids) * n:
        return "usage %s: not %d prompt tokens, %d made" % (u, len(ids), made)
    return None


def check_chat(chat, got, oracle_for, dec, delta, tol, text, strings=()):
    """The front's chat answers (run_http's last ones) against the oracle's: where the template refuses
    the messages, 400 with its reason; else the answer (check_chat_answer), the stream's role,
    deltas, logprobs and usage against its first choice, and the next turn's answer (the first
    choice's content as the assistant's message, then the user's), whose template's text tokenizes
    to other ids than the first's prompt and answer, so that the caches hold only a prefix of it; or
    what is wrong."""
    (status, answer), (s_status, chunks) = got[:2]
    if chat["refused"]:
        for st, a in got:
            if st != 400 or chat["refused"] not in a:
                return "chat: the template refuses the messages (%s); answered %d %s" % (chat["refused"], st, a[-300:])
        return None
    if status != 200 or s_status != 200:
        return "chat: HTTP %d, %d: %s" % (status, s_status, (answer if status != 200 else chunks)[-600:])
    err = check_chat_answer(chat["ids"], answer, http_n(dec), oracle_for, dec, delta, tol, text, strings)
    if err:
        return "chat " + err
    first = min(answer["choices"], key=lambda c: c["index"])
    if not chunks or chunks[0]["choices"] != [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                               "logprobs": None, "finish_reason": None}]:
        return "chat stream: its first chunk %s, not the role's" % (chunks[:1],)
    body = [ch for k in chunks[1:-1] for ch in k["choices"]]
    content = "".join(ch["delta"].get("content", "") for ch in body)
    entries = [e for ch in body for e in (ch["logprobs"] or {}).get("content", [])]
    whole = first["logprobs"]["content"]
    same = len(entries) == len(whole) and all(
        (a["token"], a["bytes"]) == (b["token"], b["bytes"]) and abs(a["logprob"] - b["logprob"]) <= 1e-6 + tol * abs(
            b["logprob"]) for a, b in zip(entries, whole))
    if content != first["message"]["content"] or body[-1]["finish_reason"] != first["finish_reason"] or not same:
        return "chat stream: content %r, finish %r, logprobs %s; answered %r, %r, %s" % (
            content, body[-1]["finish_reason"], entries, first["message"]["content"], first["finish_reason"], whole)
    su = chunks[-1].get("usage") or {}
    if chunks[-1]["choices"] != [] or (su.get("prompt_tokens"), su.get("completion_tokens")) != (
            len(chat["ids"]), len(whole)) or not 0 <= su["prompt_tokens_details"]["cached_tokens"] <= len(chat["ids"]):
        return "chat stream: its last chunk %s, not the usage of %d prompt tokens, %d made" % (
            chunks[-1], len(chat["ids"]), len(whole))
    if len(got) > 2:  # the next turn
        (status, answer), next_ids = got[2], got[3]
        if status != 200:
            return "chat's next turn: HTTP %d: %s" % (status, answer[-600:])
        err = check_chat_answer(next_ids, answer, 1, oracle_for, dec, delta, tol, text, strings)
        if err:
            return "chat's next turn " + err
    return None


def log_softmax(rows):
    m = rows.max(axis=1, keepdims=True)
    return rows - m - np.log(np.exp(rows - m).sum(axis=1, keepdims=True))


def check_logprobs(got, lsm, rows, toks, upto, tol_abs):
    """A "logprobs" object: got's token_logprobs[i] the log-probability of toks[i] at row rows[i] (None:
    null) and top_logprobs[i] K of the likeliest there, against the oracle's lsm; rows from upto on
    (after a routing near tie) not compared."""
    tl, tt = got["token_logprobs"], got["top_logprobs"]
    if len(tl) != len(toks) or len(tt) != len(toks):
        return "%d and %d log-probabilities for %d tokens" % (len(tl), len(tt), len(toks))
    for i, (r, tok) in enumerate(zip(rows, toks)):
        if r is None or r >= upto:
            if r is None and (tl[i] is not None or tt[i] is not None):
                return "token %d: a log-probability where none is (%r)" % (i, tl[i])
            continue
        if abs(tl[i] - lsm[r, tok]) > tol_abs:
            return "token %d (%d): log-probability %.6g, the oracle %.6g" % (i, tok, tl[i], lsm[r, tok])
        kth = np.sort(lsm[r])[-LOGPROBS]
        if len(tt[i]) != LOGPROBS:
            return "token %d: %d top log-probabilities, not %d" % (i, len(tt[i]), LOGPROBS)
        for tid, lp in (e[:2] for e in tt[i]):
            if abs(lp - lsm[r, tid]) > tol_abs or lsm[r, tid] < kth - 2 * tol_abs:
                return "token %d: top token %d at %.6g, the oracle %.6g (its %d-th best %.6g)" % (
                    i, tid, lp, lsm[r, tid], LOGPROBS, kth)
    return None


def check_serve(reqs, answers, oracle_for, stop, delta, tol, text=None, strings=()):
    """Each answer's tokens, echoed prompt and log-probabilities against the oracle's case of its
    sequence (oracle_for; a "continue" request's starts with a's prompt and answer), and with a
    tokenizer (text: a serve_text.Text) its text and the prompt's and where the "stop" strings end
    it; or what is wrong."""
    for r in reqs:
        a = answers.get(r["id"])
        if a is None or "error" in a:
            return "request %s: %s" % (r["id"], a and a["error"])
        before = reqs[0]["ids"] + answers["a"]["ids"] if "continue" in r else []
        case = oracle_for(before + r["ids"])
        T = len(before) + len(r["ids"])
        want = expected_answer(case, before + r["ids"], stop, text, strings)
        if isinstance(want, str):
            return "request %s: %s" % (r["id"], want)
        case, why, want_text, answer_offs = want
        err = check_tokens(a["ids"], case, T, delta)
        if err:
            return "request %s: %s" % (r["id"], err)
        gen = case["gen"]
        if text and (a.get("text") != want_text or a.get("prompt_text") != text.decode(r["ids"])):
            return "request %s: text %r, prompt_text %r; not %r, %r (tokens %s, stop strings %s)" % (
                r["id"], a.get("text"), a.get("prompt_text"), want_text, text.decode(r["ids"]), gen, strings)
        if text and want_text is not None:  # where each token's text begins
            for what, got, want in (("prompt", a["prompt_logprobs"].get("text_offset"), text.offsets(r["ids"])),
                                    ("answer", a["logprobs"].get("text_offset"), answer_offs)):
                if want is not None and got != want:
                    return "request %s: the %s's text_offset %s, not %s" % (r["id"], what, got, want)
        if a["finish_reason"] != why or a["prompt_tokens"] != len(r["ids"]):
            return "request %s: finish_reason %r, prompt_tokens %d; not %r, %d (%s)" % (
                r["id"], a["finish_reason"], a["prompt_tokens"], why, len(r["ids"]), gen)
        if a.get("prompt_ids") != r["ids"]:
            return "request %s: prompt_ids %s" % (r["id"], a.get("prompt_ids"))
        lsm = log_softmax(case["logits"])
        scale = float(np.abs(case["logits"][:T]).max())
        upto = len(case["logits"]) if case["route_tie"] is None else case["route_tie"]
        first = len(before)
        rows = [t - 1 if t > 0 else None for t in range(first, T)]
        err = check_logprobs(a["prompt_logprobs"], lsm, rows, r["ids"], upto, 2 * tol * scale)
        if err is None:
            rows = [T - 1 + g for g in range(len(a["ids"]))]
            err = check_logprobs(a["logprobs"], lsm, rows, a["ids"], upto, 2 * tol * scale)
        if err:
            return "request %s: %s" % (r["id"], err)
    return None


def one_seed(args, seed):
    text, ids = draw_spec(random.Random(seed), seed)
    dec = Decode.draw(random.Random(seed * 7919 + 1), parse_spec(text)["model"]["vocab"])
    dec.draw_batch(random.Random(seed * 7919 + 2))
    dec.draw_text(random.Random(seed * 7919 + 3), parse_spec(text)["model"]["vocab"])
    dec.draw_chat(random.Random(seed * 7919 + 4))
    dec.draw_lines(random.Random(seed * 7919 + 5), parse_spec(text)["model"]["vocab"])
    if dec.chat and dec.chat[1] % 3:  # room in the caches for a template's text (in a third of them, as it falls)
        text = re.sub(r"(?m)^(  max_positions: )(\d+)$", lambda m: m.group(1) + str(int(m.group(2)) + 64), text)
    if dec.describe() != "greedy":
        text = text.replace("\n", "\n# decode: %s\n" % dec.describe(), 1)
    return one_model(args, "seed %d" % seed, "seed-%d" % seed, text, ids, seed, dec)


def one_regression(args, path):
    """A spec kept from a failure (tests/oracle/random-regressions): its weights' seed and prompt in
    '# seed: N' and '# ids: ...' lines."""
    with open(path) as f:
        text = f.read()
    seed, ids, dec = 0, None, Decode()
    for line in text.splitlines():
        if line.startswith("# seed:"):
            seed = int(line.split(":", 1)[1])
        elif line.startswith("# ids:"):
            ids = oracle.parse_ids(line.split(":", 1)[1])
        elif line.startswith("# decode:"):
            dec = Decode.parse(line.split(":", 1)[1])
    if not ids:
        print("%s: no '# ids:' line" % path)
        return 1
    name = os.path.splitext(os.path.basename(path))[0]
    return one_model(args, name, name, text, ids, seed, dec)


def one_model(args, label, folder, text, ids, seed, dec):
    """0 passed, 1 failed, 2 inconclusive on some path."""
    work = os.path.join(args.work, folder)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    spec_path, w_path = os.path.join(work, "spec.yaml"), os.path.join(work, "w.safetensors")
    with open(spec_path, "w") as f:
        f.write(text)
    p = subprocess.run([args.moeppc, "init-weights", spec_path, "--seed", str(seed), "-o", w_path],
                       capture_output=True, text=True)
    if p.returncode != 0:
        print("%s: FAILED: init-weights: %s" % (label, p.stderr.strip()[-600:]))
        return 1
    spec = oracle.Spec(parse_spec(text))
    W = oracle.read_weights(w_path)
    tol = 1e-4 if spec.dtype == "f32" else 2e-2
    mp = dec.max_positions(len(ids))  # for every --batch line too
    case = oracle_case(spec, W, ids, GENERATE, tol, dec, mp)
    dec.resolve_stop(case["gen"])
    stop_after(case, dec.stop)
    text = serve_text.Text(args.tokenizers[dec.tok]) if dec.tok and args.tokenizers else None
    if text:
        dec.resolve_stop_strings(text, ids, case["gen"])
    cases = {tuple(ids): case}

    def oracle_for(seq, seed=None):
        """The oracle's case of a sequence (its tokens, the prompt's and earlier turns'; drawn with
        another seed), once a model."""
        key = tuple(seq) if seed is None else (tuple(seq), seed)
        if key not in cases:
            d = dec
            if seed is not None:
                d = copy.copy(dec)
                d.params = copy.copy(dec.params)
                d.params.seed = seed
            cases[key] = stop_after(oracle_case(spec, W, list(seq), GENERATE, tol, d, mp), dec.stop)
        return cases[key]

    if not np.isfinite(case["logits"]).all():
        print("%s: FAILED: the oracle's logits are not finite (%s)" % (label, spec_path))
        return 1
    verdict = 0
    deltas = []  # token_delta of each path that wrote logits (the batch paths' is the largest)
    desc = "%s D%d H%d/%d L%d every%d E%d+%d+%d+%d k%d I%d V%d T%d %s, %s" % (
        spec.dtype, spec.D, spec.H, spec.Hk, spec.L, spec.every, spec.n_ffn, spec.n_const, spec.n_copy,
        spec.n_zero, spec.k, spec.I, spec.V, len(ids), spec.gating, dec.describe())
    for name in args.paths:
        if name.startswith("lib"):
            cmd, err = run_lib(args, name, spec_path, work)
        elif name.endswith("-http"):
            chat = chat_case(dec, text, spec, mp, work)
            cmd, got, err = run_http(args, name, spec_path, w_path, ids, dec, work, chat)
            delta = other_delta(deltas, case, len(ids), tol)
            if err is None:
                err = check_http(ids, got, oracle_for, dec, delta, tol, text, dec.stop_strings)
            if err is None and chat:
                err = check_chat(chat, got[2:], oracle_for, dec, delta, tol, text, dec.stop_strings)
        elif name.endswith("-serve"):
            reqs = serve_requests(spec, ids, dec)
            cmd, answers, err = run_serve(args, name, spec_path, w_path, reqs, dec, work)
            if err is None:
                err = check_serve(reqs, answers, oracle_for, dec.stop, other_delta(deltas, case, len(ids), tol), tol,
                                  text, dec.stop_strings)
        elif name.endswith("-batch"):
            lines = dec.lines and args.tokenizers and serve_text.Text(args.tokenizers[dec.lines[3]])
            prompts = (lines and text_prompts(spec, dec, lines)) or batch_prompts(spec, ids, mp)
            cmd, gens, nlls, err = run_batch(args, name, spec_path, w_path, prompts, dec, work)
            delta = other_delta(deltas, case, len(ids), tol)
            seq, gen = [], []  # the line's whole sequence (a + line's starts with the line before's and its
            # answer: moeppc's tokens, or the oracle's where its answers are text) and its answer
            for i, (plus, toks) in enumerate(p[:2] for p in prompts) if err is None else []:
                first = len(seq) + max(len(gen) - 1, 0) if plus else 0  # a next turn: from its answer's last
                seq = (seq + gen if plus else []) + toks
                text_answer = isinstance(gens[i], str)
                gen = oracle_for(seq)["gen"] if text_answer else gens[i]
                err = (check_text(gens[i], oracle_for(seq), seq, delta, lines) if text_answer else
                       check_tokens(gens[i], oracle_for(seq), len(seq), delta))
                if err is None and nlls:
                    err = check_nlls(nlls[i][0], nlls[i][1], oracle_for(seq), seq, first, tol)
                if err:
                    err = "line %d: %s" % (i + 1, err)
                    break
        else:
            cmd, gen, err = run_path(args, name, spec_path, w_path, ids, dec, work)
            if err is None:
                err, delta = check_path(spec, ids, name, work, gen, case, tol)
                deltas += [delta] if delta is not None else []
        if err is None:
            continue
        if err.startswith("inconclusive") or ": inconclusive" in err:
            print("%s %s: %s: %s" % (label, name, desc, err))
            verdict = verdict or 2
            continue
        print("%s %s: FAILED: %s: %s\n  %s" % (label, name, desc, err, " ".join(cmd)))
        with open(os.path.join(work, "failed-%s.txt" % name), "w") as f:
            f.write("%s\n%s\n" % (err, " ".join(cmd)))
        verdict = 1
    if args.verbose and verdict == 0:
        print("%s: ok: %s (routing near tie: %s, smallest token margin %.3g)" % (
            label, desc, case["route_tie"], min(case["margins"], default=float("inf"))))
    if verdict != 1 and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return verdict


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("moeppc")
    ap.add_argument("--seeds", default="0:20", help="A:B (seeds A to B - 1) or N, comma-separated")
    ap.add_argument("--paths", default="interp,cpu", help="comma-separated: " + ", ".join(PATHS))
    ap.add_argument("--regressions", help="a folder of kept specs (one_regression) to run first")
    ap.add_argument("--embed-ref", help="tests/embed's embed_layer_ref (path lib)")
    ap.add_argument("--emu-driver", help="the CUDA emulator's library (path emu)")
    ap.add_argument("--work", default="random-models-work")
    ap.add_argument("--budget", type=float, default=0, help="stop starting seeds after S seconds (0: none)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds a run may take")
    ap.add_argument("--keep", action="store_true", help="keep every seed's files")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    seeds = []
    try:
        for item in args.seeds.split(","):
            a, _, b = item.partition(":")
            seeds += range(int(a), int(b)) if b else [int(a)]
    except ValueError:
        ap.error("--seeds: A:B (seeds A to B - 1) or N, comma-separated")
    args.paths = [p for p in args.paths.split(",") if p]
    bad = [p for p in args.paths if p not in PATHS]
    if bad or not args.paths:
        ap.error("unknown path %s (paths: %s)" % (", ".join(bad), ", ".join(PATHS)))
    if any(p.startswith("lib") for p in args.paths) and not (args.embed_ref and os.path.exists(args.embed_ref)):
        ap.error("path lib needs --embed-ref EXE (tests/embed's embed_layer_ref)")
    on_emu = any(p.startswith("emu") or p == "lib-emu" for p in args.paths)
    if on_emu and not (args.emu_driver and os.path.exists(args.emu_driver)):
        ap.error("path emu needs --emu-driver LIB (libmoeppc_cudaemu.so)")
    os.makedirs(args.work, exist_ok=True)
    texts = any(p.endswith(("-serve", "-http", "-batch")) for p in args.paths)
    args.tokenizers = serve_text.train(os.path.join(args.work, "tokenizers")) if texts and serve_text.available() \
        else None  # (without the sentencepiece library these paths run without a tokenizer, on ids)
    start = time.time()
    counts = [0, 0, 0]
    kept = sorted(os.path.join(args.regressions, f) for f in os.listdir(args.regressions)
                  if f.endswith(".yaml")) if args.regressions else []
    for item in kept + seeds:
        if args.budget and time.time() - start > args.budget:
            print("budget of %g s spent after %d models" % (args.budget, sum(counts)))
            break
        counts[one_regression(args, item) if isinstance(item, str) else one_seed(args, item)] += 1
    print("random models: %d passed, %d failed, %d inconclusive (near ties), paths %s, %.0f s"
          % (counts[0], counts[1], counts[2], ",".join(args.paths), time.time() - start))
    return 1 if counts[1] else 0


if __name__ == "__main__":
    sys.exit(main())
