#!/usr/bin/python3
"""fake_moeppc.py: stands in for the moeppc binary to test run_oracle_test.sh and compare.py without it.
  fake_moeppc.py init-weights SPEC --seed N -o FILE      (make_weights.py's distribution)
  fake_moeppc.py run SPEC --weights FILE --ids IDS --logits-out OUT [--routes-out R]
'run' is the oracle itself (unmutated), rounded to float32; routes are written without the margin
column, as moeppc writes them."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_weights  # noqa: E402
import oracle  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["init-weights", "run"])
    ap.add_argument("spec")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o")
    ap.add_argument("--weights")
    ap.add_argument("--ids")
    ap.add_argument("--logits-out")
    ap.add_argument("--routes-out")
    a = ap.parse_args()
    spec = oracle.load_spec(a.spec)
    if a.cmd == "init-weights":
        W = make_weights.random_weights(spec, a.seed)
        oracle.write_safetensors(a.o, W, {"f32": "F32", "bf16": "BF16", "f16": "F16"}[spec.dtype])
        return 0
    routes = []
    logits = oracle.forward(spec, oracle.read_weights(a.weights), oracle.parse_ids(a.ids), routes)
    logits.astype("<f4").tofile(a.logits_out)
    if a.routes_out:
        with open(a.routes_out, "w") as f:
            for (l, t, ids, w, _) in routes:
                f.write("%d %d %s %s\n" % (l, t, " ".join(map(str, ids)), " ".join("%.9g" % v for v in w)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
