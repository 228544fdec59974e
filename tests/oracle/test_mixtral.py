#!/usr/bin/python3
"""test_mixtral.py MOEPPC WORKDIR [cuda]

A Mixtral model from its Hugging Face files: `moeppc import-hf` of a MixtralForCausalLM config.json, then
`moeppc run` on a sharded checkpoint under Mixtral's tensor names (block_sparse_moe.gate,
experts.E.w1/w2/w3), against a float64 NumPy forward written from transformers' modeling_mixtral.py
(not from SEMANTICS.md, nor the oracle's): RMSNorm, rotate-half RoPE, grouped-query causal attention,
softmax over all experts then the top k renormalised, w2(silu(w1 x) * w3 x). f32 on the interpreter and
the CPU backend (tolerance 1e-4), bf16 on the CPU backend (2e-2), SEMANTICS.md §4; with "cuda" also both
on `--device cuda` (the emulator in the test suite: w1 and w3 uploaded from where they are in the files
as the two halves of one up projection). Then configs and checkpoints that must be refused, each with
its message and no logits written.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle  # noqa: E402  (its safetensors writer only)

MOEPPC, WORK = sys.argv[1], sys.argv[2]
CUDA = sys.argv[3:] == ["cuda"]
IDS = [3, 17, 42, 99, 128, 200, 255, 0, 64, 7, 31, 5]

# rope_theta and rms_norm_eps left out: Mixtral's defaults (1e6, 1e-5) must be the ones used.
CONFIG = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 256, "hidden_size": 64,
    "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 64, "sliding_window": 32,
    "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float32", "eos_token_id": 2,
    "bos_token_id": 1, "rope_scaling": None, "router_aux_loss_coef": 0.02, "output_router_logits": False,
    "attention_dropout": 0.0, "router_jitter_noise": 0.0,
}
THETA, EPS = 1e6, 1e-5

failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


def weights(c, seed):
    rng = np.random.default_rng(seed)
    D, I, H, Hk, E = (c[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                     "num_key_value_heads", "num_local_experts"))
    hd = D // H

    def mat(r, k):
        return rng.standard_normal((r, k)) / np.sqrt(k)

    W = {"model.embed_tokens.weight": rng.standard_normal((c["vocab_size"], D)),
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(D), "lm_head.weight": mat(c["vocab_size"], D)}
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        W[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(D)
        W[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(D)
        W[p + "self_attn.q_proj.weight"] = mat(H * hd, D)
        W[p + "self_attn.k_proj.weight"] = mat(Hk * hd, D)
        W[p + "self_attn.v_proj.weight"] = mat(Hk * hd, D)
        W[p + "self_attn.o_proj.weight"] = mat(D, H * hd)
        W[p + "block_sparse_moe.gate.weight"] = mat(E, D)
        for e in range(E):
            x = p + "block_sparse_moe.experts.%d." % e
            W[x + "w1.weight"], W[x + "w3.weight"], W[x + "w2.weight"] = mat(I, D), mat(I, D), mat(D, I)
    return W


# ---- the reference: modeling_mixtral.py's forward, in float64 --------------------------------------
def rms(x, w):
    return w * (x / np.sqrt(np.mean(x * x, -1, keepdims=True) + EPS))


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], -1)


def forward(c, W, ids, swap_w1_w3=False):
    D, H, Hk, k = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["num_experts_per_tok"]
    hd, T = D // H, len(ids)
    inv = 1.0 / THETA ** (np.arange(0, hd, 2) / hd)
    ang = np.outer(np.arange(T), inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    x = W["model.embed_tokens.weight"][ids]
    margins = []
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rms(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(T, H, hd).transpose(1, 0, 2)
        kk = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(T, Hk, hd).transpose(1, 0, 2)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(T, Hk, hd).transpose(1, 0, 2)
        q, kk = q * cos + rotate_half(q) * sin, kk * cos + rotate_half(kk) * sin
        kk, v = np.repeat(kk, H // Hk, 0), np.repeat(v, H // Hk, 0)  # repeat_kv
        s = q @ kk.transpose(0, 2, 1) / np.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(T, H * hd)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        logits = h @ W[p + "block_sparse_moe.gate.weight"].T
        prob = np.exp(logits - logits.max(-1, keepdims=True))
        prob /= prob.sum(-1, keepdims=True)
        y = np.zeros_like(h)
        for t in range(T):
            order = np.argsort(-prob[t])
            margins.append(prob[t, order[k - 1]] - prob[t, order[k]])
            top = order[:k]
            wts = prob[t, top] / prob[t, top].sum()
            for e, g in zip(top, wts):
                xe = p + "block_sparse_moe.experts.%d." % e
                w1, w3 = W[xe + "w1.weight"], W[xe + "w3.weight"]
                if swap_w1_w3:
                    w1, w3 = w3, w1
                a1, a3 = w1 @ h[t], w3 @ h[t]
                y[t] += g * (W[xe + "w2.weight"] @ (a1 / (1 + np.exp(-a1)) * a3))
        x = x + y
    x = rms(x, W["model.norm.weight"])
    return x @ W["lm_head.weight"].T, min(margins)


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ---- files ------------------------------------------------------------------------------------------
def write_checkpoint(d, W, dtype, config):
    """Two shards, tensors alternating between them, so an expert's w1 and w3 lie in different files."""
    os.makedirs(d, exist_ok=True)
    names = sorted(W)
    shards = {"model-00001-of-00002.safetensors": names[0::2], "model-00002-of-00002.safetensors": names[1::2]}
    wmap = {}
    for f, ns in shards.items():
        oracle.write_safetensors(os.path.join(d, f), {n: W[n] for n in ns}, dtype)
        wmap.update({n: f for n in ns})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wmap}, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f)


def moeppc(*args):
    r = subprocess.run([MOEPPC] + list(args), capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


def run(spec, d, out, *extra):
    if os.path.exists(out):
        os.remove(out)
    return moeppc("run", spec, "--weights", d, "--ids", " ".join(map(str, IDS)), "--logits-out", out, *extra)


def logits(path):
    return np.fromfile(path, dtype="<f4").astype(np.float64).reshape(len(IDS), -1)


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    W = weights(CONFIG, seed=7)
    ref, margin = forward(CONFIG, W, IDS)
    # a routing decision within this of a tie could flip on rounding alone (SEMANTICS.md §4)
    check(margin > 1e-3, "no near-tie in the reference's routing (smallest k-th/k+1-th gap %.3g)" % margin)
    swapped, _ = forward(CONFIG, W, IDS, swap_w1_w3=True)
    check(rel_err(swapped, ref) > 1e-2, "the reference tells w1 from w3 (%.3g apart)" % rel_err(swapped, ref))

    cuda = ("cuda",) if CUDA else ()
    for dtype, torch_dtype, tol, backends in (("F32", "float32", 1e-4, ("interp", "cpu") + cuda),
                                              ("BF16", "bfloat16", 2e-2, ("cpu",) + cuda)):
        d = os.path.join(WORK, dtype.lower())
        config = dict(CONFIG, torch_dtype=torch_dtype)
        write_checkpoint(d, W, dtype, config)
        spec = os.path.join(d, "spec.yaml")
        rc, out = moeppc("import-hf", os.path.join(d, "config.json"), "-o", spec)
        check(rc == 0, "%s: import-hf of the Mixtral config" % dtype)
        check("config.json: warning: sliding_window 32 is shorter than max_position_embeddings 64" in out,
              "%s: import-hf warns of the sliding window" % dtype)
        text = open(spec).read() if rc == 0 else ""
        for want in ("max_positions: 32", "rope_theta: 1000000", "norm_eps: 1.0e-5", "kv_heads: 2",
                     "ffn: 4", "zero: 0", "gating: topk_softmax", "residual: false", "layers: 1",
                     "input_scaling: false", "top_k: 2"):
            check(want in text, "%s: the imported spec says '%s'" % (dtype, want))
        for b in backends:
            o = os.path.join(d, b + ".bin")
            rc, out = run(spec, d, o, *(("--device", "cuda") if b == "cuda" else ("--backend", b)))
            check(rc == 0, "%s %s: moeppc run on the Mixtral checkpoint%s" % (dtype, b, "" if rc == 0 else ": " + out))
            if rc == 0:
                e = rel_err(logits(o), ref)
                check(e <= tol, "%s %s: logits within %g of the reference (%.3g)" % (dtype, b, tol, e))
                check(rel_err(logits(o), swapped) > tol, "%s %s: and not those of w1 and w3 swapped" % (dtype, b))

    # ---- --panel-cache: each expert's w1 and w3 (two parts, in two shards) packed into the cache, then
    # mapped from it: the CPU backend's logits bit for bit ------------------------------------------------
    for dtype in ("f32", "bf16"):
        d = os.path.join(WORK, dtype)
        want = os.path.join(d, "cpu.bin")
        for k, said in ((1, r" 0 steps' panels mapped \(0\.0 MB\), [1-9][0-9]* packed and kept"),
                        (2, r" [1-9][0-9]* steps' panels mapped .*, 0 packed and kept")):
            o = os.path.join(d, "panels%d.bin" % k)
            rc, out = run(os.path.join(d, "spec.yaml"), d, o, "--backend", "cpu",
                          "--panel-cache", os.path.join(d, "panels"))
            same = rc == 0 and os.path.exists(want) and open(o, "rb").read() == open(want, "rb").read()
            ok = same and re.search(said, out) is not None
            check(ok, "%s --panel-cache, run %d: the CPU backend's logits, panels %s%s" % (
                dtype, k, "kept" if k == 1 else "mapped", "" if ok else ": " + out.strip()[-300:]))

    # ---- the model directory itself as SPEC: its config.json, its checkpoint as the weights -------------
    d = os.path.join(WORK, "f32")
    want = open(os.path.join(d, "cpu.bin"), "rb").read() if os.path.exists(os.path.join(d, "cpu.bin")) else None
    o = os.path.join(WORK, "dir.bin")
    rc, out = moeppc("run", d, "--backend", "cpu", "--ids", " ".join(map(str, IDS)), "--logits-out", o)
    check(rc == 0 and "weights: " + d in out and open(o, "rb").read() == want,
          "moeppc run DIR (no --weights): the same logits as the imported spec's")
    for target in (d, os.path.join(d, "config.json")):
        rc, out = moeppc("check", target)
        check(rc == 0 and out.startswith("spec f32: vanilla MoE, f32") and "8 FFN" not in out and "4 = 4 FFN" in out,
              "moeppc check %s" % os.path.relpath(target, WORK))
    exe = os.path.join(WORK, "mixtral-exe")
    rc, out = moeppc("build", d, "-o", exe)
    check(rc == 0, "moeppc build DIR" + ("" if rc == 0 else ": " + out))
    if rc == 0:
        if os.path.exists(o):
            os.remove(o)
        r = subprocess.run([exe, "--weights", d, "--ids", " ".join(map(str, IDS)), "--logits-out", o],
                           capture_output=True, text=True, timeout=300)
        check(r.returncode == 0 and open(o, "rb").read() == want, "its executable: the same logits")
    empty = os.path.join(WORK, "empty-dir")
    os.makedirs(empty, exist_ok=True)
    rc, out = moeppc("run", empty, "--random-weights", "1", "--ids", "1")
    check(rc == 1 and "%s/config.json: error: the directory given as the model holds no config.json" % empty in out,
          "a directory without config.json refused (rc %d)" % rc)

    # ---- checkpoints the loader refuses: a message naming the tensor, no logits ----------------------
    d0 = os.path.join(WORK, "f32")
    spec = os.path.join(d0, "spec.yaml")
    x = "model.layers.1.block_sparse_moe.experts.2."
    bad = [
        ("no w3", lambda w: w.pop(x + "w3.weight"),
         "tensor '%sw1.weight': expected its expert's w3 (the up projection) beside it, found none" % x),
        ("no w1", lambda w: w.pop(x + "w1.weight"),
         "tensor '%sw3.weight': expected its expert's w1 (the gate projection) beside it, found none" % x),
        ("w1 and w3 of different shapes", lambda w: w.__setitem__(x + "w3.weight", w[x + "w3.weight"][:40]),
         "expected two matrices of one type and shape"),
        ("an unknown expert tensor", lambda w: w.__setitem__(x + "w4.weight", w[x + "w2.weight"]),
         "tensor '%sw4.weight': not a Mixtral MoE tensor" % x),
        ("a layer number spelled otherwise",
         lambda w: w.__setitem__("model.layers.01.block_sparse_moe.gate.weight", w.pop("model.layers.1.block_sparse_moe.gate.weight")),
         "tensor 'model.layers.01.block_sparse_moe.gate.weight': not a Mixtral MoE tensor"),
        ("both layouts of one router",
         lambda w: w.__setitem__("model.layers.0.mlp.moe.gate.wg.weight", w["model.layers.0.block_sparse_moe.gate.weight"]),
         "tensor 'model.layers.0.mlp.moe.gate.wg.weight': expected one entry, found it twice"),
        ("an expert fewer than the config's", lambda w: [w.pop(x + n) for n in ("w1.weight", "w2.weight", "w3.weight")],
         "missing tensor model.layers.1.mlp.moe.experts.experts.2.up_proj.weight (Mixtral's %sw1.weight over "
         "w3.weight)" % x),
        ("a w2 of another shape", lambda w: w.__setitem__(x + "w2.weight", w[x + "w2.weight"][:, :40]),
         "model.layers.1.mlp.moe.experts.experts.2.down_proj.weight (Mixtral's %sw2.weight): expected f32 [64, 48], "
         "found f32 [64, 40]" % x),
    ]
    for what, mutate, msg in bad:
        w = dict(W)
        mutate(w)
        d = os.path.join(WORK, "bad")
        shutil.rmtree(d, ignore_errors=True)
        write_checkpoint(d, w, "F32", CONFIG)
        o = os.path.join(d, "out.bin")
        rc, out = run(spec, d, o, "--backend", "interp")
        check(rc != 0 and msg in out and not os.path.exists(o),
              "refused: %s%s" % (what, "" if rc != 0 and msg in out else " (rc %d: %s)" % (rc, out.strip())))

    # ---- configs import-hf refuses --------------------------------------------------------------------
    bad_configs = [
        ("another model type", dict(CONFIG, model_type="qwen2_moe"),
         "model_type: expected \"moe++\" (MoE++) or \"mixtral\" (a vanilla MoE), found the string \"qwen2_moe\""),
        ("a head_dim of its own", dict(CONFIG, head_dim=32),
         "head_dim (32) is not hidden_size / num_attention_heads (64 / 4)"),
        ("more picks than experts", dict(CONFIG, num_experts_per_tok=5),
         "num_experts_per_tok (5) exceeds num_local_experts (4)"),
        ("RoPE scaling", dict(CONFIG, rope_scaling={"type": "linear", "factor": 2.0}),
         "rope_scaling: expected null (RoPE scaling is not supported)"),
        ("no intermediate_size", {k: v for k, v in CONFIG.items() if k != "intermediate_size"},
         "missing required key 'intermediate_size'"),
    ]
    for what, config, msg in bad_configs:
        c = os.path.join(WORK, "bad-config.json")
        with open(c, "w") as f:
            json.dump(config, f)
        o = os.path.join(WORK, "bad-config.yaml")
        rc, out = moeppc("import-hf", c, "-o", o)
        check(rc != 0 and msg in out and not os.path.exists(o),
              "import-hf refuses %s%s" % (what, "" if rc != 0 and msg in out else " (rc %d: %s)" % (rc, out.strip())))

    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
