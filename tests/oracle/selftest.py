#!/usr/bin/python3
"""selftest.py: checks the oracle's pieces against hand-computed values (no moeppc needed)."""
import atexit
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle  # noqa: E402
from oracle import Spec  # noqa: E402

FAILS = []


def check(name, cond, detail=""):
    print("%s %s%s" % ("ok  " if cond else "FAIL", name, (": " + detail) if detail and not cond else ""))
    if not cond:
        FAILS.append(name)


def close(a, b, tol=1e-12):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= tol * (1 + np.abs(b))))


def tiny_spec(**kw):
    d = {"model": {"vocab": 16, "hidden": 8, "layers": 1, "heads": 2},
         "moe": {"top_k": 2, "experts": {"ffn": 1, "constant": 1, "copy": 1, "zero": 2}, "intermediate": 4,
                 "router": {"layers": 1}}}
    for k, v in kw.items():
        sect, key = k.split("__")
        if sect == "router":
            d["moe"]["router"][key] = v
        elif sect == "experts":
            d["moe"]["experts"][key] = v
        else:
            d[sect][key] = v
    return Spec(d)


def test_defaults():
    s = tiny_spec()
    check("spec defaults", s.Hk == 2 and s.theta == 10000.0 and s.eps == 1e-6 and s.max_pos == 4096
          and s.dtype == "f32" and not s.tied and s.every == 1 and s.I_dense == 0
          and s.gating == "softmax_topk" and not s.logits_norm and s.logits_norm_std == 1.0 and s.residual
          and s.input_scaling and s.E == 5 and s.input_scale() == 2.0)
    check("expert kinds in index order", [s.kind(e) for e in range(5)] == ["ffn", "const", "copy", "zero", "zero"])
    check("topk_softmax forces scale 1", tiny_spec(router__gating="topk_softmax").input_scale() == 1.0)
    check("input_scaling off -> scale 1", tiny_spec(moe__input_scaling=False).input_scale() == 1.0)
    s4 = Spec({"model": {"vocab": 4, "hidden": 4, "layers": 4, "heads": 1},
               "moe": {"top_k": 1, "every": 2, "experts": {"ffn": 2}, "intermediate": 2}})
    check("every=2: layers 1, 3 are MoE", [s4.is_moe(l) for l in range(4)] == [False, True, False, True])


def test_rmsnorm():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    w = np.array([1.0, 1.0, 2.0, 1.0])
    # mean(x^2) = 30/4 = 7.5
    got = oracle.rmsnorm(x, w, 0.5)
    want = np.array([[1, 2, 6, 4]]) / math.sqrt(8.0)
    check("rmsnorm", close(got, want), "%s vs %s" % (got, want))


def test_rope():
    z = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 4)
    got = oracle.rope(z, np.array([1]), 10000.0)[0, 0]
    # hd = 4: f0 = 1, f1 = 10000^(-1/2) = 0.01; pairs (z0, z2) and (z1, z3)
    c0, s0, c1, s1 = math.cos(1), math.sin(1), math.cos(0.01), math.sin(0.01)
    want = [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1]
    check("rope half-split at pos 1", close(got, want), "%s vs %s" % (got, want))
    check("rope identity at pos 0", close(oracle.rope(z, np.array([0]), 10000.0), z))
    z2 = np.array([0.5, -1.0]).reshape(1, 1, 2)
    got = oracle.rope(z2, np.array([3]), 500.0)[0, 0]
    check("rope hd=2 at pos 3", close(got, [0.5 * math.cos(3) + 1.0 * math.sin(3),
                                              -1.0 * math.cos(3) + 0.5 * math.sin(3)]))
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((1, 1, 8)), rng.standard_normal((1, 1, 8))
    dots = [float(np.sum(oracle.rope(q, np.array([p + 5]), 100.0) * oracle.rope(k, np.array([p]), 100.0)))
            for p in (0, 7, 100)]
    check("rope: q.k depends only on the position difference", close(dots, [dots[0]] * 3, 1e-10))


def test_attention():
    rng = np.random.default_rng(1)
    T, D, H, Hk = 5, 8, 4, 2
    Wq, Wk, Wv, Wo = (rng.standard_normal((D, D)), rng.standard_normal((4, D)),
                      rng.standard_normal((4, D)), rng.standard_normal((D, D)))
    x = rng.standard_normal((T, D))
    full = oracle.attention(x, Wq, Wk, Wv, Wo, H, Hk, 10000.0, np.arange(T))
    pre = oracle.attention(x[:3], Wq, Wk, Wv, Wo, H, Hk, 10000.0, np.arange(3))
    check("attention is causal", close(full[:3], pre, 1e-10))
    one = oracle.attention(x[:1], Wq, Wk, Wv, Wo, H, Hk, 10000.0, np.arange(1))
    v = x[:1] @ Wv.T                                        # [1, 4]: kv head 0 = v[0:2], 1 = v[2:4]
    concat = np.concatenate([v[:, 0:2], v[:, 0:2], v[:, 2:4], v[:, 2:4]], axis=1)   # heads 0,1 -> kv 0
    check("attention T=1 with GQA group h/(H/Hk)", close(one, concat @ Wo.T, 1e-10))
    # hand-computed 2-token, 1-head, hd=2 case at positions (0, 1), theta large -> f0 = 1
    Wq1 = np.eye(2)
    xs = np.array([[1.0, 0.0], [0.0, 1.0]])
    o = oracle.attention(xs, Wq1, Wq1, Wq1, Wq1, 1, 1, 10000.0, np.arange(2))
    # pos 1 rotates (0,1) by angle 1: (-sin1, cos1); q1.k0 = -sin1, q1.k1 = 1; scale 1/sqrt(2)
    k1 = np.array([-math.sin(1), math.cos(1)])
    a = np.exp(np.array([-math.sin(1), 1.0]) / math.sqrt(2))
    a /= a.sum()
    want1 = a[0] * xs[0] + a[1] * xs[1]
    check("attention hand case", close(o[0], xs[0]) and close(o[1], want1), "%s vs %s (%s)" % (o[1], want1, k1))


def test_softmax_topk():
    s = tiny_spec()                                         # E=5, zero experts 3, 4
    zero_ids = np.arange(3, 5)
    z = np.array([[0.1, 2.0, -1.0, 3.0, 0.0]])             # picks 3 (zero) then 1
    ids, w, p = oracle.gate_softmax_topk(z, 2, zero_ids)
    check("softmax_topk picks by p", list(ids[0]) == [3, 1])
    check("zero pick -> other pick gets weight exactly 1", w[0, 0] == 0.0 and w[0, 1] == 1.0, str(w))
    z = np.array([[0.0, 0.0, 0.0, 5.0, 4.0]])               # both picks are zero experts
    ids, w, _ = oracle.gate_softmax_topk(z, 2, zero_ids)
    check("all-zero picks -> weights 0, no NaN", list(ids[0]) == [3, 4] and np.all(w == 0.0), str(w))
    z = np.array([[1.0, 0.5, 0.0, -1.0, -2.0]])
    ids, w, p = oracle.gate_softmax_topk(z, 2, zero_ids)
    pe = np.exp(z[0]) / np.exp(z[0]).sum()
    check("renormalised over the k picks", close(w[0], pe[:2] / pe[:2].sum()))
    # a layer whose every pick is a zero expert outputs exactly 0
    D = s.D
    lw = {"gate.wg": np.zeros((5, D))}
    lw["gate.wg"][3, :] = 1.0
    lw["gate.wg"][4, :] = 0.5
    x = np.ones((2, D))
    y, r, ids, w, m = oracle.moe_layer(x, lw, s, None)
    check("all-zero picks -> layer output 0", np.all(y == 0.0) and np.all(np.isfinite(y)))
    check("first MoE layer: r_next = z", close(r, x @ lw["gate.wg"].T))


def test_tie_order():
    z = np.array([[1.0, 3.0, 3.0, 0.0, 3.0]])
    check("topk ties -> lower index first", list(oracle.topk_stable(z, 2)[0]) == [1, 2])
    ids, w, _ = oracle.gate_softmax_topk(z, 3, np.array([], dtype=int))
    check("softmax_topk ties -> lower index first", list(ids[0]) == [1, 2, 4])
    ids, w, _ = oracle.gate_topk_softmax(np.array([[2.0, 2.0, 2.0]]), 2)
    check("topk_softmax ties -> lower index first", list(ids[0]) == [0, 1] and close(w[0], [0.5, 0.5]))
    check("margin inf when k == E", math.isinf(oracle.margin_of(np.array([[1.0, 2.0]]), 2)[0]))
    check("margin relative gap", close(oracle.margin_of(np.array([[1.0, 4.0, 2.0]]), 1), [0.5]))


def test_topk_softmax():
    z = np.array([[0.5, 2.0, -1.0, 1.0, 3.0]])               # expert 4 would be a zero expert: no masking
    ids, w, _ = oracle.gate_topk_softmax(z, 2)
    e = np.exp([3.0, 2.0])
    check("topk_softmax: softmax over the k logits, no masking", list(ids[0]) == [4, 1] and close(w[0], e / e.sum()))


def test_logits_norm():
    z = np.array([[1.0, 2.0, 3.0, 4.0]])
    std = math.sqrt(5.0 / 3.0)                                  # sum of squared deviations 5, n-1 = 3
    check("logits norm std ddof=1", close(oracle.logits_normalise(z, 2.0), z / (std / 2.0)))
    flat = np.array([[0.5, 0.5, 0.5], [1.0, -2.0, 4.0]])  # a row without spread is left as it is
    check("logits norm without spread", close(oracle.logits_normalise(flat, 2.0)[0], flat[0])
          and close(oracle.logits_normalise(flat, 2.0)[1], flat[1] / (np.std(flat[1], ddof=1) / 2.0)))
    check("logits norm of one expert", close(oracle.logits_normalise(np.array([[3.0]]), 2.0), np.array([[3.0]])))
    s = tiny_spec(router__logits_norm=True, router__logits_norm_std=2.0, experts__zero=0,
                  experts__copy=0, experts__constant=0, experts__ffn=4)
    rng = np.random.default_rng(3)
    lw = {"gate.wg": rng.standard_normal((4, s.D)), "gate.gate_map": rng.standard_normal((4, 4))}
    for e in range(4):
        lw["experts.%d.up_proj" % e] = rng.standard_normal((8, s.D))
        lw["experts.%d.down_proj" % e] = rng.standard_normal((s.D, 4))
    x, r0 = rng.standard_normal((3, s.D)), rng.standard_normal((3, 4))
    _, r, _, _, _ = oracle.moe_layer(x, lw, s, r0)
    check("r_next = z + Wg.r, before normalisation", close(r, x @ lw["gate.wg"].T + r0 @ lw["gate.gate_map"].T))


def test_experts():
    s = tiny_spec()
    D = s.D
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, D))
    u = 2.0 * x
    Wc = rng.standard_normal((2, D))
    v = rng.standard_normal(D)
    lw = {"experts.1.wg": Wc, "experts.1.constant": v}
    l0, l1 = float(Wc[0] @ u[0]), float(Wc[1] @ u[0])
    a0 = 1.0 / (1.0 + math.exp(l1 - l0))
    check("constant expert: alpha from u", close(oracle.expert_apply(s, lw, 1, u, x), a0 * u + (1 - a0) * v))
    check("copy expert returns u", close(oracle.expert_apply(s, lw, 2, u, x), u))
    check("zero expert returns 0", np.all(oracle.expert_apply(s, lw, 4, u, x) == 0.0))
    Wu = rng.standard_normal((8, D))
    Wd = rng.standard_normal((D, 4))
    lw = {"experts.0.up_proj": Wu, "experts.0.down_proj": Wd}
    a, b = Wu[:4] @ u[0], Wu[4:] @ u[0]
    want = Wd @ (a / (1 + np.exp(-a)) * b)
    check("FFN expert: silu(rows 0..I) * rows I..2I", close(oracle.expert_apply(s, lw, 0, u, x)[0], want, 1e-10))
    check("silu(0)=0, silu(1)", oracle.silu(0.0) == 0.0 and close(oracle.silu(1.0), 1 / (1 + math.exp(-1))))


def test_safetensors():
    d = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    # hand-built file: BF16 1.5 = 0x3FC0, -2.25 = 0xC010; F16 1.5 = 0x3E00, -2.25 = 0xC080;
    # a __metadata__ entry, tensors stored out of order, header padded with spaces
    data = struct.pack("<2H", 0x3E00, 0xC080) + struct.pack("<2f", 0.25, -8.0) + struct.pack("<2H", 0x3FC0, 0xC010)
    hdr = {"__metadata__": {"format": "pt"},
           "b": {"dtype": "BF16", "shape": [2, 1], "data_offsets": [12, 16]},
           "h": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
           "f": {"dtype": "F32", "shape": [1, 2], "data_offsets": [4, 12]}}
    hb = json.dumps(hdr).encode() + b"   "
    p = os.path.join(d, "hand.safetensors")
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + data)
    W = oracle.read_weights(p)
    check("safetensors hand file: names", sorted(W) == ["b", "f", "h"])
    check("safetensors BF16", W["b"].shape == (2, 1) and close(W["b"].ravel(), [1.5, -2.25], 0))
    check("safetensors F16", close(W["h"], [1.5, -2.25], 0))
    check("safetensors F32", W["f"].shape == (1, 2) and close(W["f"].ravel(), [0.25, -8.0], 0))
    rng = np.random.default_rng(7)
    T = {"x": rng.standard_normal((3, 5)), "y": rng.standard_normal(7)}
    for dt, tol in (("F32", 1e-7), ("BF16", 2 ** -8), ("F16", 2 ** -10)):
        q = os.path.join(d, dt + ".safetensors")
        oracle.write_safetensors(q, T, dt)
        R = oracle.read_weights(q)
        ok = all(R[k].shape == T[k].shape and np.all(np.abs(R[k] - T[k]) <= tol * np.abs(T[k]) + 1e-30) for k in T)
        check("safetensors round trip %s" % dt, ok)
    exact = {"e": np.array([1.0, -0.5, 3.0, 2.0 ** -20])}
    q = os.path.join(d, "bfexact.safetensors")
    oracle.write_safetensors(q, exact, "BF16")
    check("safetensors BF16 exact values", close(oracle.read_weights(q)["e"], exact["e"], 0))


def test_forward():
    """Whole model on a tiny random spec: finite, causal (prefix logits unchanged)."""
    import make_weights
    s = Spec({"model": {"vocab": 32, "hidden": 16, "layers": 3, "heads": 4, "kv_heads": 2},
              "moe": {"top_k": 2, "every": 1, "experts": {"ffn": 2, "constant": 1, "copy": 1, "zero": 1},
                      "intermediate": 8}})
    W = make_weights.random_weights(s, 3)
    ids = [1, 5, 9, 30, 0, 7]
    full = oracle.forward(s, W, ids)
    pre = oracle.forward(s, W, ids[:3])
    check("forward finite, shape [T, V]", full.shape == (6, 32) and np.all(np.isfinite(full)))
    check("forward causal", close(full[:3], pre, 1e-10))


def test_sampling():
    """sampling.py (the next-token choice runtime.h documents) on hand cases."""
    import sampling
    r = sampling.SplitMix64(0)
    check("splitmix64 seed 0", r.uniform() == (0xE220A8397B1DCDAF >> 11) / 2.0 ** 53)
    row = np.array([1.0, 3.0, 3.0, -2.0])
    tok, m = sampling.choose(row, [], sampling.Params(), None)
    check("greedy: the lower id of equal maxima, margin 0", tok == 1 and m == 0.0)
    tok, m = sampling.choose(row, [1, 1], sampling.Params(penalty=2.0), None)
    check("penalty once: 3 / 2 < 3", tok == 2 and close(m, 0.75 / 2))
    tok, m = sampling.choose(row, [3], sampling.Params(penalty=2.0), None)
    check("penalty on a negative logit multiplies", tok == 1 and m == 0.0)
    # presence and frequency: over the generation's tokens only (seen[start:]), presence once,
    # frequency a time each: 1 chosen twice 3 - 0.5 - 2 * 0.25 = 2, 2 (the prompt's) stays 3
    tok, m = sampling.choose(row, [2, 1, 1], sampling.Params(presence=0.5, frequency=0.25), None, 1)
    check("presence and frequency over the generated tokens", tok == 2 and close(m, 0.5))
    tok, _ = sampling.choose(row, [2, 1, 1], sampling.Params(presence=1.0), None, 0)
    check("... the prompt's counted when it is the generation's (3 - 1 both: the lower id)", tok == 1)
    tok, _ = sampling.choose(row, [2, 1, 1], sampling.Params(presence=0.5), None)
    check("... none before the generation's first", tok == 1)
    tok, m = sampling.choose(row, [], sampling.Params(bias={1: -100.0, 0: 1.5}), None)
    check("logit bias: 1 banned, 0 raised to 2.5 < 3", tok == 2 and close(m, 0.25))
    tok, _ = sampling.choose(row, [0], sampling.Params(bias={0: 2.5}, penalty=2.0), None)
    check("logit bias before the repetition penalty: (1 + 2.5) / 2 < 3", tok == 1)
    p = sampling.Params(temperature=1.0, seed=5)
    u = sampling.SplitMix64(5).uniform()
    w = np.exp(row - 3.0)
    cum = np.cumsum(w / w.sum())
    tok, m = sampling.choose(row, [], p, sampling.SplitMix64(5))
    check("draw: the first id whose cumulative probability passes u", tok == int(np.argmax(cum > u)))
    check("draw margin positive and finite", 0 < m < math.inf, str(m))
    tok, _ = sampling.choose(np.array([0.0, 1.0, 5.0, 2.0]), [], sampling.Params(1.0, top_k=1), sampling.SplitMix64(1))
    check("top-k 1 draws the largest", tok == 2)
    # top-p: probabilities 0.5, 0.3, 0.15, 0.05 -> 0.75 keeps the first two (0.5 < 0.75 <= 0.8)
    lg = np.log([0.5, 0.3, 0.15, 0.05])
    drawn = {sampling.choose(lg, [], sampling.Params(1.0, top_p=0.75, seed=s), sampling.SplitMix64(s))[0]
             for s in range(200)}
    check("top-p 0.75 keeps two", drawn == {0, 1}, str(drawn))
    # a u next to a cumulative boundary has a small margin
    g = sampling.SplitMix64(3)
    u = g.uniform()
    near = np.log([u, 1 - u])  # the boundary at u itself
    _, m = sampling.choose(near, [], sampling.Params(1.0, seed=3), sampling.SplitMix64(3))
    check("u on a boundary: margin ~0", m < 1e-9, str(m))


def test_serve_text():
    """serve_text.unfinished (how many of a byte run's last bytes wait for the rest of a UTF-8
    sequence) on hand cases."""
    from serve_text import unfinished
    cases = [([], 0), ([0x41], 0), ([0xe6], 1), ([0xe6, 0x97], 2), ([0xe6, 0x97, 0xa5], 0), ([0x97], 0),
             ([0xe6, 0x41], 0), ([0x41, 0xf0, 0x9f, 0x98], 3), ([0xf0, 0x8f], 0), ([0xed, 0xa0], 0),
             ([0xe0, 0x80], 0), ([0xc0], 0), ([0xc2], 1), ([0xf5], 0), ([0xe6, 0xe6], 1), ([0xe6, 0x97, 0xe6], 1), ([0xe6, 0x97, 0x41], 0)]
    for run, want in cases:
        check("unfinished(%s)" % [hex(b) for b in run], unfinished(run) == want, str(unfinished(run)))


def test_render_chat():
    """serve_text.render_chat: each template's text for a conversation, written out by hand as its
    model's card gives it (Zephyr's block lines gone by trim_blocks and lstrip_blocks), and a refusal."""
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return
    from serve_text import render_chat
    cases = [("mistral", [("user", "hi"), ("assistant", "yo"), ("user", "ok")],
              "<s>[INST] hi [/INST]yo</s>[INST] ok [/INST]"),
             ("llama2", [("system", "be"), ("user", " hi "), ("assistant", "yo"), ("user", "ok")],
              "<s>[INST] <<SYS>>\nbe\n<</SYS>>\n\n hi [/INST] yo </s><s>[INST] ok [/INST]"),
             ("zephyr", [("system", "be"), ("user", "hi")], "<|system|>\nbe</s>\n<|user|>\nhi</s>\n<|assistant|>\n"),
             ("tojson", [("system", " be "), ("user", 'q"\u00e9')],
              '<s>system "be"</s>\n<s>user "q\\"\u00e9"</s>\n<s>assistant 1:')]
    for name, msgs, want in cases:
        got = render_chat(name, [{"role": r, "content": c} for r, c in msgs], "<s>", "</s>")
        check("render_chat(%s)" % name, got == want, repr(got))
    try:
        render_chat("mistral", [{"role": "assistant", "content": "x"}], "<s>", "</s>")
        check("render_chat refuses an assistant first", False, "rendered")
    except ValueError as e:
        check("render_chat's reason", "must alternate" in str(e), str(e))


def test_escapes():
    """serve_text.escape_answer on a hand case, and escape_line's lines read back by the README's
    escapes (\\n \\t \\r \\\\ \\xHH) into their text, a first "+", "#" or "@" never left as it is."""
    import random
    from serve_text import escape_answer, escape_line
    got = escape_answer("a\\b\n\t\r\x00\x1f\x7f\u00e9 ")
    check("escape_answer", got == "a\\\\b\\n\\t\\r\\x00\\x1f\\x7f\u00e9 ", repr(got))
    names = {"n": b"\n", "t": b"\t", "r": b"\r", "\\": b"\\"}
    rng, bad = random.Random(5), []
    for k in range(40):  # (the escapes each character gets are drawn)
        t = "+#@"[k % 3] + "a\\n\t\r\n\x00\u00e9\u4e2d\U0001f642 \\x41"
        line = escape_line(rng, t).encode("utf-8")
        back = re.sub(rb"\\(x[0-9a-f]{2}|[ntr\\])", lambda m: names.get(m.group(1).decode(), None) or
                      bytes([int(m.group(1)[1:], 16)]), line)
        if back != t.encode("utf-8") or line.startswith((b"+", b"#", b"@")) or b"\n" in line or b"\r" in line:
            bad.append(line)
    check("escape_line, 40 draws", not bad, repr(bad[:2]))


def test_flipped_rows():
    """compare.py --flipped-rows on two runs of one MoE layer: a token whose picks differ between weights
    equal to 6 digits is left out of the logits (its row wrong), one whose differ by 0.2 fails, as do
    more than 1 % left out and routes of two layers."""
    import contextlib
    import io
    import compare
    d = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, d, ignore_errors=True)

    def files(rows_a, rows_b, T=100, bad_row=None):
        b = np.arange(T * 4, dtype="<f4").reshape(T, 4) / 100
        a = b.copy()
        if bad_row is not None:
            a[bad_row] += 1
        for name, arr, rows in (("a", a, rows_a), ("b", b, rows_b)):
            arr.tofile(os.path.join(d, name + ".bin"))
            with open(os.path.join(d, name + ".routes"), "w") as f:
                for t in range(T):
                    f.write(rows.get(t, "0 %d 1 2 0.6 0.4" % t) + "\n")
        return [os.path.join(d, "a.bin"), os.path.join(d, "b.bin"), "--vocab", "4", "--tol", "2e-2", "--routes-a",
                os.path.join(d, "a.routes"), "--routes-b", os.path.join(d, "b.routes"), "--show", "0"]

    def rc(argv):
        with contextlib.redirect_stdout(io.StringIO()):
            return compare.main(argv)
    near = files({10: "0 10 2 3 0.571709 0.428291"}, {10: "0 10 2 13 0.571712 0.428288"}, bad_row=10)
    check("flipped-rows: a near-equal flip left out", rc(near + ["--flipped-rows", "0.01"]) == 0)
    check("flipped-rows: without it, the same fails", rc(near) == 1)
    far = files({10: "0 10 2 3 0.8 0.2"}, {10: "0 10 2 13 0.6 0.4"}, bad_row=10)
    check("flipped-rows: weights 0.2 apart fail", rc(far + ["--flipped-rows", "0.01"]) == 1)
    many = files({t: "0 %d 2 3 0.5 0.5" % t for t in (3, 4)}, {t: "0 %d 2 13 0.5 0.5" % t for t in (3, 4)})
    check("flipped-rows: 2 of 100 left out is too many", rc(many + ["--flipped-rows", "0.01"]) == 1)
    two = files({1: "1 1 1 2 0.6 0.4"}, {})
    check("flipped-rows: two layers refused", rc(two + ["--flipped-rows", "0.01"]) == 2)


def main():
    for name, fn in sorted(globals().items()):
        if name.startswith("test_"):
            fn()
    print("%d failures" % len(FAILS))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
