#!/usr/bin/python3
"""mutation_table.py SPECDIR [--seed N]: for every oracle mutation, the relative change it causes on the
logits of its tiny spec (weights from make_weights.py, 10 tokens). A development aid: shows that each
mutation is observable at the 1e-5 tolerance of the expect-fail tests. Also runs every spec in SPECDIR
once unmutated and reports the smallest routing margin."""
import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_weights  # noqa: E402
import oracle  # noqa: E402

IDS = [3, 17, 42, 99, 128, 200, 255, 0, 64, 7]


def run(spec_path, W, mutation, ids):
    oracle.Mut.name = mutation
    try:
        spec = oracle.load_spec(spec_path)
        routes = []
        return oracle.forward(spec, W, ids, routes), routes
    finally:
        oracle.Mut.name = None


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("specdir")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    cache = {}

    def weights(name):
        if name not in cache:
            path = os.path.join(a.specdir, name + ".yaml")
            spec = oracle.load_spec(path)
            # round-trip through the stored dtype, as a checkpoint would
            W = make_weights.random_weights(spec, a.seed)
            tmp = "/tmp/mt_%d_%s.safetensors" % (os.getpid(), name)
            oracle.write_safetensors(tmp, W, {"f32": "F32", "bf16": "BF16", "f16": "F16"}[spec.dtype])
            cache[name] = (path, oracle.read_weights(tmp))
            os.unlink(tmp)
        return cache[name]

    print("%-18s %-8s %-10s %s" % ("spec", "finite", "min margin", "picks"))
    for path in sorted(glob.glob(os.path.join(a.specdir, "*.yaml"))):
        name = os.path.basename(path)[:-5]
        _, W = weights(name)
        lg, routes = run(path, W, None, IDS)
        margins = [m for (_, _, _, _, m) in routes]
        picks = {}
        for (_, _, ids, _, _) in routes:
            for e in ids:
                picks[e] = picks.get(e, 0) + 1
        print("%-18s %-8s %-10.3g %s" % (name, bool(np.all(np.isfinite(lg))), min(margins),
                                         " ".join("%d:%d" % kv for kv in sorted(picks.items()))))
    print()
    print("%-24s %-16s %s" % ("mutation", "spec", "rel change"))
    bad = 0
    for mname, (sname, _) in oracle.MUTATIONS.items():
        path, W = weights(sname)
        ref, _ = run(path, W, None, IDS)
        got, _ = run(path, W, mname, IDS)
        r = rel(got, ref)
        flag = "" if r > 1e-3 else "   <-- weak"
        bad += r <= 1e-5
        print("%-24s %-16s %.3g%s" % (mname, sname, r, flag))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
