#!/usr/bin/python3
"""make_weights.py SPEC.yaml OUT.safetensors [--seed N] [--embed-std S]

Random weights for a spec, with every tensor of SEMANTICS.md §6, in the spec's dtype. For debugging the
oracle without moeppc (moeppc init-weights has its own distribution). Matrices ~ N(0, 1/fan_in),
norm weights 1 + N(0, 0.1^2), embeddings and constant vectors ~ N(0, embed_std^2)."""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle  # noqa: E402


def spec_tensors(spec):
    """[(name, shape)] in SEMANTICS.md §6 order."""
    D, E, I, hd = spec.D, spec.E, spec.I, spec.hd
    t = [("model.embed_tokens.weight", (spec.V, D))]
    for l in range(spec.L):
        p = "model.layers.%d." % l
        t += [(p + "input_layernorm.weight", (D,)),
              (p + "self_attn.q_proj.weight", (spec.H * hd, D)),
              (p + "self_attn.k_proj.weight", (spec.Hk * hd, D)),
              (p + "self_attn.v_proj.weight", (spec.Hk * hd, D)),
              (p + "self_attn.o_proj.weight", (D, spec.H * hd)),
              (p + "post_attention_layernorm.weight", (D,))]
        if spec.is_moe(l):
            g = p + "mlp.moe.gate."
            if spec.router_layers == 2:
                t += [(g + "wg.0.weight", (8 * E, D)), (g + "wg.2.weight", (E, 8 * E))]
            else:
                t += [(g + "wg.weight", (E, D))]
            if spec.residual:
                t += [(g + "gate_map.weight", (E, E))]
            x = p + "mlp.moe.experts.experts."
            for e in range(spec.n_ffn):
                t += [(x + "%d.up_proj.weight" % e, (2 * I, D)), (x + "%d.down_proj.weight" % e, (D, I))]
            for c in range(spec.n_ffn, spec.n_ffn + spec.n_const):
                t += [(x + "%d.constant" % c, (D,)), (x + "%d.wg.weight" % c, (2, D))]
        else:
            Id = spec.I_dense
            t += [(p + "mlp.gate_proj.weight", (Id, D)), (p + "mlp.up_proj.weight", (Id, D)),
                  (p + "mlp.down_proj.weight", (D, Id))]
    t += [("model.norm.weight", (D,))]
    if not spec.tied:
        t += [("lm_head.weight", (spec.V, D))]
    return t


def random_weights(spec, seed=1, embed_std=1.0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in spec_tensors(spec):
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == "model.embed_tokens.weight" or name.endswith(".constant"):
            a = embed_std * rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[1])
        out[name] = a
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--embed-std", type=float, default=1.0)
    a = ap.parse_args()
    spec = oracle.load_spec(a.spec)
    W = random_weights(spec, a.seed, a.embed_std)
    oracle.write_safetensors(a.out, W, {"f32": "F32", "bf16": "BF16", "f16": "F16"}[spec.dtype])
    return 0


if __name__ == "__main__":
    sys.exit(main())
