#!/usr/bin/python3
"""oracle.py — independent float64 NumPy reference for MoE++ models (written from SEMANTICS.md only).

Usage:
  oracle.py SPEC.yaml WEIGHTS.safetensors --ids "1 5 9" --logits-out OUT.bin
            [--routes-out ROUTES.txt] [--mutate NAME] [--list-mutations]

Computes the model of SEMANTICS.md §1-§5 in float64 at positions 0..T-1 and writes the logits as raw
little-endian float32 [T, V], row-major. Weights of any stored dtype (F32/BF16/F16) are upcast to
float64; activations are never rounded to bf16/f16 (compare those models with tolerance 2e-2).

Routes file: one line per (MoE layer, token), layers by their global index, tokens by position:
  "layer token id0 .. id{k-1} w0 .. w{k-1} margin"
ids in top-k order (score descending, ties -> lower expert index first), w the final gate weights,
margin = (s_k - s_{k+1}) / max_j |s_j|: the gap between the k-th and (k+1)-th largest routing score
(s = p for softmax_topk, s = z (after optional logits normalisation) for topk_softmax), relative to the
largest score magnitude of that token; "inf" when k == E.

--mutate NAME computes a deliberately wrong variant (one detail flipped); see MUTATIONS below.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

# ----------------------------------------------------------------------------------------------------
# Mutations: name -> (tiny spec that makes it observable, description). Used by the CTests
# (tests/oracle/CMakeLists.txt registers one expect-fail test per entry) and the README.
MUTATIONS = {
    "no_input_scaling":        ("tiny-moepp",      "experts get u = x instead of u = k*x"),
    "input_scaling_in_router": ("tiny-moepp",      "router sees u = k*x instead of x"),
    "const_alpha_from_x":      ("tiny-moepp",      "constant expert's alpha = softmax(Wc.x), not Wc.u"),
    "const_alpha_swapped":     ("tiny-moepp",      "constant expert returns a1*u + a0*v"),
    "no_gating_residual":      ("tiny-moepp",      "router never adds Wg.r"),
    "residual_reset_at_dense": ("tiny-every2",     "gating residual dropped at a dense layer"),
    "residual_after_norm":     ("tiny-logitsnorm", "r_next taken after logits normalisation"),
    "no_zero_mask":            ("tiny-moepp",      "zero-expert picks keep their weight"),
    "no_renormalise":          ("tiny-moepp",      "weights are the raw top-k p, not renormalised over the k"),
    "zero_mask_last_only":     ("tiny-zeros",      "only expert E-1 is masked, not all zero experts"),
    "router_no_tanh":          ("tiny-moepp",      "two-layer router without the tanh"),
    "rope_interleaved":        ("tiny-moepp",      "RoPE pairs (2i, 2i+1) instead of (i, i+hd/2)"),
    "rope_base_wrong":         ("tiny-moepp",      "RoPE base 2*theta"),
    "no_causal_mask":          ("tiny-moepp",      "attention sees future tokens"),
    "attn_scale_hd":           ("tiny-moepp",      "attention scale 1/hd instead of 1/sqrt(hd)"),
    "gqa_wrong_group":         ("tiny-gqa",        "query head h uses kv head h % Hk, not h / (H/Hk)"),
    "logits_norm_no_bessel":   ("tiny-logitsnorm", "logits-norm std with ddof=0"),
    "mixtral_with_scaling":    ("tiny-mixtral",    "input scaling s = k also under topk_softmax"),
    "swiglu_swapped":          ("tiny-moepp",      "FFN expert: silu on b (rows I..2I) instead of a"),
    "dense_swiglu_swapped":    ("tiny-every2",     "dense MLP: silu on up_proj instead of gate_proj"),
    "copy_unscaled":           ("tiny-moepp",      "copy expert returns x instead of u = k*x"),
    "wrong_final_norm":        ("tiny-tied",       "final RMSNorm weight ignored (w_final = 1)"),
}


class Mut:
    """The active mutation (None = the correct model)."""
    name = None


def mut(name):
    return Mut.name == name


# ----------------------------------------------------------------------------------------------------
# Spec

DEFAULTS_MODEL = {"rope_theta": 10000.0, "norm_eps": 1e-6, "max_positions": 4096, "dtype": "f32",
                  "tie_embeddings": False}
DEFAULTS_MOE = {"every": 1, "dense_intermediate": 0}
DEFAULTS_EXPERTS = {"constant": 0, "copy": 0, "zero": 0}
DEFAULTS_ROUTER = {"layers": 2, "gating": "softmax_topk", "logits_norm": False, "logits_norm_std": 1.0,
                   "residual": True}


class Spec:
    def __init__(self, d):
        m = d["model"]
        moe = d["moe"]
        ex = moe["experts"]
        ro = moe.get("router") or {}
        g = lambda dct, key, defaults: dct[key] if key in dct and dct[key] is not None else defaults[key]
        self.name = d.get("name", "?")
        self.V = int(m["vocab"])
        self.D = int(m["hidden"])
        self.L = int(m["layers"])
        self.H = int(m["heads"])
        self.Hk = int(m["kv_heads"]) if m.get("kv_heads") is not None else self.H
        self.theta = float(g(m, "rope_theta", DEFAULTS_MODEL))
        self.eps = float(g(m, "norm_eps", DEFAULTS_MODEL))
        self.max_pos = int(g(m, "max_positions", DEFAULTS_MODEL))
        self.dtype = str(g(m, "dtype", DEFAULTS_MODEL))
        self.tied = bool(g(m, "tie_embeddings", DEFAULTS_MODEL))
        self.every = int(g(moe, "every", DEFAULTS_MOE))
        self.I_dense = int(g(moe, "dense_intermediate", DEFAULTS_MOE))
        self.k = int(moe["top_k"])
        self.n_ffn = int(ex["ffn"])
        self.n_const = int(g(ex, "constant", DEFAULTS_EXPERTS))
        self.n_copy = int(g(ex, "copy", DEFAULTS_EXPERTS))
        self.n_zero = int(g(ex, "zero", DEFAULTS_EXPERTS))
        self.E = self.n_ffn + self.n_const + self.n_copy + self.n_zero
        self.I = int(moe["intermediate"])
        self.router_layers = int(g(ro, "layers", DEFAULTS_ROUTER))
        self.gating = str(g(ro, "gating", DEFAULTS_ROUTER))
        self.logits_norm = bool(g(ro, "logits_norm", DEFAULTS_ROUTER))
        self.logits_norm_std = float(g(ro, "logits_norm_std", DEFAULTS_ROUTER))
        self.residual = bool(g(ro, "residual", DEFAULTS_ROUTER))
        self.input_scaling = bool(moe["input_scaling"]) if moe.get("input_scaling") is not None else True
        assert self.D % self.H == 0 and self.H % self.Hk == 0
        self.hd = self.D // self.H
        assert self.hd % 2 == 0
        assert self.dtype in ("f32", "bf16", "f16"), self.dtype
        assert self.gating in ("softmax_topk", "topk_softmax"), self.gating
        assert self.router_layers in (1, 2)
        assert 1 <= self.k <= self.E

    def is_moe(self, l):
        return (l + 1) % self.every == 0

    def kind(self, e):
        """Expert kind by index: FFN [0,Nf), constant, copy, zero last."""
        if e < self.n_ffn:
            return "ffn"
        if e < self.n_ffn + self.n_const:
            return "const"
        if e < self.n_ffn + self.n_const + self.n_copy:
            return "copy"
        return "zero"

    def input_scale(self):
        if self.gating == "softmax_topk" and self.input_scaling:
            s = float(self.k)
        else:
            s = 1.0
        if mut("no_input_scaling"):
            s = 1.0
        if mut("mixtral_with_scaling") and self.gating == "topk_softmax":
            s = float(self.k)
        return s


def load_spec(path):
    import yaml
    with open(path) as f:
        return Spec(yaml.safe_load(f))


# ----------------------------------------------------------------------------------------------------
# Safetensors

ST_DTYPES = {"F32": ("<f4", 4), "BF16": ("<u2", 2), "F16": ("<f2", 2), "F64": ("<f8", 8)}


def decode_tensor(raw, dtype, shape):
    npd, size = ST_DTYPES[dtype]
    n = int(np.prod(shape)) if len(shape) else 1
    if len(raw) != n * size:
        raise ValueError("tensor byte size %d != %d for shape %s %s" % (len(raw), n * size, shape, dtype))
    a = np.frombuffer(raw, dtype=npd)
    if dtype == "BF16":
        a = (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float64).reshape(shape)


def read_safetensors_file(path):
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError("%s: too short" % path)
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError("%s: header length %d beyond file" % (path, n))
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        if not (0 <= b <= e <= len(blob) - base):
            raise ValueError("%s: %s offsets out of range" % (path, name))
        out[name] = decode_tensor(blob[base + b:base + e], info["dtype"], tuple(info["shape"]))
    return out


def read_weights(path):
    """A .safetensors file, a model.safetensors.index.json, or a directory with either."""
    if os.path.isdir(path):
        single = os.path.join(path, "model.safetensors")
        path = single if os.path.exists(single) else os.path.join(path, "model.safetensors.index.json")
    if path.endswith(".json"):
        with open(path) as f:
            idx = json.load(f)
        out = {}
        for shard in sorted(set(idx["weight_map"].values())):
            out.update(read_safetensors_file(os.path.join(os.path.dirname(path), shard)))
        return out
    return read_safetensors_file(path)


def write_safetensors(path, tensors, dtype="F32"):
    """Write {name: float array} in dtype F32/BF16/F16 (bf16: round to nearest even)."""
    header, chunks, off = {}, [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name], dtype=np.float64)
        if dtype == "F32":
            raw = a.astype("<f4").tobytes()
        elif dtype == "F16":
            raw = a.astype("<f2").tobytes()
        elif dtype == "BF16":
            u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
            u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
            raw = u.astype("<u2").tobytes()
        else:
            raise ValueError(dtype)
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


# ----------------------------------------------------------------------------------------------------
# Building blocks (x @ W.T for W stored [out, in])

def linear(x, W):
    return x @ W.T


def rmsnorm(x, w, eps):
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return w * (x / np.sqrt(ms + eps))


def softmax(z, axis=-1):
    m = np.max(z, axis=axis, keepdims=True)
    e = np.exp(z - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def silu(a):
    return a / (1.0 + np.exp(-a))


def rope(x, pos, theta):
    """x [T, n_heads, hd]; half-split (rotate_half) convention: pair (i, i + hd/2), f_i = theta^(-2i/hd)."""
    hd = x.shape[-1]
    half = hd // 2
    if mut("rope_base_wrong"):
        theta = 2.0 * theta
    i = np.arange(half, dtype=np.float64)
    f = theta ** (-2.0 * i / hd)
    ang = pos.astype(np.float64)[:, None] * f[None, :]            # [T, half]
    c = np.cos(ang)[:, None, :]
    s = np.sin(ang)[:, None, :]
    if mut("rope_interleaved"):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x1 * c - x2 * s
        out[..., 1::2] = x2 * c + x1 * s
        return out
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def attention(x, Wq, Wk, Wv, Wo, H, Hk, theta, pos):
    T, D = x.shape
    hd = Wq.shape[0] // H
    q = linear(x, Wq).reshape(T, H, hd)
    k = linear(x, Wk).reshape(T, Hk, hd)
    v = linear(x, Wv).reshape(T, Hk, hd)
    q = rope(q, pos, theta)
    k = rope(k, pos, theta)
    group = H // Hk
    scale = 1.0 / hd if mut("attn_scale_hd") else 1.0 / math.sqrt(hd)
    causal = np.tril(np.ones((T, T), dtype=bool))
    out = np.zeros((T, H, hd))
    for h in range(H):
        kvh = h % Hk if mut("gqa_wrong_group") else h // group
        sc = (q[:, h, :] @ k[:, kvh, :].T) * scale                     # [T, T]
        if not mut("no_causal_mask"):
            sc = np.where(causal, sc, -np.inf)
        out[:, h, :] = softmax(sc, axis=-1) @ v[:, kvh, :]
    return linear(out.reshape(T, H * hd), Wo)


def dense_mlp(x, Wgate, Wup, Wdown):
    g, u = linear(x, Wgate), linear(x, Wup)
    if mut("dense_swiglu_swapped"):
        g, u = u, g
    return linear(silu(g) * u, Wdown)


# ----------------------------------------------------------------------------------------------------
# MoE++ layer

def router_logits(x, lw, spec, r):
    """z = W2·tanh(W1·x) (or W·x), plus Wg·r when a previous MoE layer exists and residual is on.
    Returns (z, r_next) with r_next = z after the residual add (before any normalisation)."""
    if spec.router_layers == 2:
        hdn = linear(x, lw["gate.wg.0"])
        if not mut("router_no_tanh"):
            hdn = np.tanh(hdn)
        z = linear(hdn, lw["gate.wg.2"])
    else:
        z = linear(x, lw["gate.wg"])
    if r is not None and spec.residual and not mut("no_gating_residual"):
        z = z + linear(r, lw["gate.gate_map"])
    r_next = z
    return z, r_next


def logits_normalise(z, target_std):
    """z / (std(z)/target), std over the E entries with Bessel's correction (ddof = 1). A row without
    spread (E = 1, or every entry equal), where PyTorch's std is NaN or 0 and the division NaN or inf,
    is left as it is: SEMANTICS.md is silent there and asks for no NaN elsewhere; moeppc does so."""
    ddof = 0 if mut("logits_norm_no_bessel") else 1
    E = z.shape[-1]
    if E <= ddof:
        return z
    std = np.std(z, axis=-1, ddof=ddof, keepdims=True)
    return np.where(std > 0, z / (np.where(std > 0, std, 1.0) / target_std), z)


def topk_stable(s, k):
    """Indices of the k largest entries per row, descending; ties -> lower index first."""
    return np.argsort(-s, axis=-1, kind="stable")[..., :k]


def margin_of(s, k):
    """(k-th largest - (k+1)-th largest) / max|s|, per row; inf if k == E."""
    E = s.shape[-1]
    if k >= E:
        return np.full(s.shape[0], np.inf)
    srt = -np.sort(-s, axis=-1)
    scale = np.maximum(np.max(np.abs(s), axis=-1), 1e-300)
    return (srt[:, k - 1] - srt[:, k]) / scale


def gate_softmax_topk(z, k, zero_ids):
    """p = softmax(z); top-k of p; zero-expert picks get weight 0; renormalise (0/0 -> 0)."""
    p = softmax(z, axis=-1)
    ids = topk_stable(p, k)
    w = np.take_along_axis(p, ids, axis=-1)
    is_zero = np.isin(ids, zero_ids)
    # (renormalising before masking is the same model as no_zero_mask: Zero(u) = 0)
    if not mut("no_zero_mask"):
        w = np.where(is_zero, 0.0, w)
    if mut("no_renormalise"):
        return ids, w, p
    tot = np.sum(w, axis=-1, keepdims=True)
    safe = np.where(tot > 0.0, tot, 1.0)
    w = np.where(tot > 0.0, w / safe, 0.0)
    return ids, w, p


def gate_topk_softmax(z, k):
    """Mixtral style: top-k of z, softmax over the k scores; no zero masking."""
    ids = topk_stable(z, k)
    s = np.take_along_axis(z, ids, axis=-1)
    return ids, softmax(s, axis=-1), z


def expert_apply(spec, lw, e, u, x):
    kind = spec.kind(e)
    if kind == "ffn":
        I = spec.I
        ab = linear(u, lw["experts.%d.up_proj" % e])
        a, b = ab[..., :I], ab[..., I:]
        if mut("swiglu_swapped"):
            a, b = b, a
        return linear(silu(a) * b, lw["experts.%d.down_proj" % e])
    if kind == "const":
        src = x if mut("const_alpha_from_x") else u
        alpha = softmax(linear(src, lw["experts.%d.wg" % e]), axis=-1)
        v = lw["experts.%d.constant" % e]
        if mut("const_alpha_swapped"):
            return alpha[..., 1:2] * u + alpha[..., 0:1] * v
        return alpha[..., 0:1] * u + alpha[..., 1:2] * v
    if kind == "copy":
        return x.copy() if mut("copy_unscaled") else u.copy()
    return np.zeros_like(u)


def moe_layer(x, lw, spec, r):
    """x [T, D] (already post-attention normalised). Returns (y, r_next, ids, w, margin)."""
    T, D = x.shape
    s = spec.input_scale()
    u = s * x
    router_in = u if mut("input_scaling_in_router") else x
    z, r_next = router_logits(router_in, lw, spec, r)
    z_raw = z
    if spec.logits_norm:
        z = logits_normalise(z, spec.logits_norm_std)
    if mut("residual_after_norm"):
        r_next = z
    if spec.gating == "softmax_topk":
        E = spec.E
        if mut("zero_mask_last_only"):
            zero_ids = np.array([E - 1]) if spec.n_zero > 0 else np.array([], dtype=int)
        else:
            zero_ids = np.arange(E - spec.n_zero, E)
        ids, w, score = gate_softmax_topk(z, spec.k, zero_ids)
    else:
        ids, w, score = gate_topk_softmax(z, spec.k)
    margin = margin_of(score, spec.k)
    if spec.logits_norm:  # the norm scales a row by 1/std: a small gap in z can be a large one in p (with
        margin = np.minimum(margin, margin_of(z_raw, spec.k))  # E = 2 every p gap is the same), not in z
        if spec.E == 2 and spec.k == 2:  # both picked, but which is first still flips both weights (z = ±c)
            margin = np.minimum(margin, margin_of(z_raw, 1))
    y = np.zeros((T, D))
    for t in range(T):
        for j in range(spec.k):
            e = int(ids[t, j])
            y[t] += w[t, j] * expert_apply(spec, lw, e, u[t:t + 1], x[t:t + 1])[0]
    return y, r_next, ids, w, margin


# ----------------------------------------------------------------------------------------------------
# Decoder

def layer_weights(W, l, spec):
    p = "model.layers.%d." % l
    lw = {k[len(p):]: v for k, v in W.items() if k.startswith(p)}
    out = {}
    for key, val in lw.items():
        key = key[:-len(".weight")] if key.endswith(".weight") else key
        key = key.replace("mlp.moe.experts.experts.", "experts.").replace("mlp.moe.gate.", "gate.")
        out[key] = val
    return out


def forward(spec, W, ids, routes=None):
    ids = np.asarray(ids, dtype=np.int64)
    T = len(ids)
    if T > spec.max_pos:
        raise ValueError("%d tokens > max_positions %d" % (T, spec.max_pos))
    if np.any(ids < 0) or np.any(ids >= spec.V):
        raise ValueError("token id out of range [0, %d)" % spec.V)
    pos = np.arange(T)
    x = W["model.embed_tokens.weight"][ids]
    r = None
    for l in range(spec.L):
        lw = layer_weights(W, l, spec)
        a = rmsnorm(x, lw["input_layernorm"], spec.eps)
        h = x + attention(a, lw["self_attn.q_proj"], lw["self_attn.k_proj"], lw["self_attn.v_proj"],
                          lw["self_attn.o_proj"], spec.H, spec.Hk, spec.theta, pos)
        m = rmsnorm(h, lw["post_attention_layernorm"], spec.eps)
        if spec.is_moe(l):
            y, r, rid, rw, margin = moe_layer(m, lw, spec, r)
            if routes is not None:
                for t in range(T):
                    routes.append((l, t, [int(e) for e in rid[t]], [float(v) for v in rw[t]],
                                   float(margin[t])))
        else:
            y = dense_mlp(m, lw["mlp.gate_proj"], lw["mlp.up_proj"], lw["mlp.down_proj"])
            if mut("residual_reset_at_dense"):
                r = None
        x = h + y
    wf = W["model.norm.weight"]
    if mut("wrong_final_norm"):
        wf = np.ones_like(wf)
    xf = rmsnorm(x, wf, spec.eps)
    head = W["model.embed_tokens.weight"] if spec.tied else W["lm_head.weight"]
    return linear(xf, head)


def format_route(rt):
    l, t, ids, w, margin = rt
    ms = "inf" if math.isinf(margin) else "%.9g" % margin
    return "%d %d %s %s %s" % (l, t, " ".join(str(e) for e in ids), " ".join("%.9g" % v for v in w), ms)


def parse_ids(s):
    return [int(v) for v in s.replace(",", " ").split()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec", nargs="?")
    ap.add_argument("weights", nargs="?")
    ap.add_argument("--ids")
    ap.add_argument("--logits-out")
    ap.add_argument("--routes-out")
    ap.add_argument("--mutate", choices=sorted(MUTATIONS))
    ap.add_argument("--list-mutations", action="store_true")
    a = ap.parse_args(argv)
    if a.list_mutations:
        for name, (sp, desc) in MUTATIONS.items():
            print("%-24s %-16s %s" % (name, sp, desc))
        return 0
    if not (a.spec and a.weights and a.ids is not None and a.logits_out):
        ap.error("SPEC, WEIGHTS, --ids and --logits-out are required")
    Mut.name = a.mutate
    spec = load_spec(a.spec)
    W = read_weights(a.weights)
    routes = []
    logits = forward(spec, W, parse_ids(a.ids), routes)
    logits.astype("<f4").tofile(a.logits_out)
    if a.routes_out:
        with open(a.routes_out, "w") as f:
            for rt in routes:
                f.write(format_route(rt) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
