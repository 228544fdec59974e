#!/usr/bin/python3
"""compare.py A.bin B.bin --vocab V --tol TOL [--routes-a R1 --routes-b R2] [--near-tie X] [--show N]

Compares two raw little-endian float32 logits files [T, V] (A = implementation under test,
B = reference, normally the oracle).

  rel_err = max_{t,v} |a - b| / max_{t,v} |b|

i.e. the worst absolute error relative to the largest reference logit magnitude (one scale for the whole
array, so logits near 0 do not blow up the ratio). Exit 0 iff rel_err <= tol and every value in both files
is finite and the sizes match; 1 otherwise (2 for usage / file errors).

Routes: with --routes-a and --routes-b (lines "layer token id0..id{k-1} w0..w{k-1} [margin]"), the
picked expert sets are compared per (layer, token), order within the k picks ignored. The margin column
(the oracle's relative gap between the k-th and (k+1)-th routing score) is taken from whichever file has
it (B preferred). A differing pick with margin < near-tie (default max(1e-4, tol)) is reported as a
near-tie flip (not a failure by itself; the logits decide); with a larger margin it is a real routing bug
and the comparison fails.
"""
import argparse
import sys

import numpy as np


def load(path, vocab):
    a = np.fromfile(path, dtype="<f4")
    if vocab <= 0 or a.size % vocab:
        raise ValueError("%s: %d floats is not a multiple of vocab %d" % (path, a.size, vocab))
    return a.reshape(-1, vocab).astype(np.float64)


def load_routes(path):
    """{(layer, token): (sorted ids, weights, margin or None)}"""
    out = {}
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            fs = line.split()
            if not fs:
                continue
            if len(fs) < 4:
                raise ValueError("%s:%d: too few fields" % (path, ln))
            rest = fs[2:]
            margin = None
            if len(rest) % 2 == 1:
                margin = float(rest[-1])
                rest = rest[:-1]
            k = len(rest) // 2
            ids = [int(v) for v in rest[:k]]
            w = [float(v) for v in rest[k:]]
            out[(int(fs[0]), int(fs[1]))] = (sorted(ids), w, margin)
    return out


def compare_routes(ra, rb, near_tie):
    """Returns (number of real routing bugs, number of near-tie flips)."""
    real = ties = 0
    keys_a, keys_b = set(ra), set(rb)
    if keys_a != keys_b:
        missing = sorted(keys_b - keys_a)[:5]
        extra = sorted(keys_a - keys_b)[:5]
        print("routes: (layer, token) sets differ; missing in A %s, extra in A %s" % (missing, extra))
        real += 1
    for key in sorted(keys_a & keys_b):
        ida, _, ma = ra[key]
        idb, _, mb = rb[key]
        if ida == idb:
            continue
        margin = mb if mb is not None else ma
        if margin is not None and margin < near_tie:
            ties += 1
            label = "near-tie flip"
        else:
            real += 1
            label = "REAL ROUTING BUG"
        if real + ties <= 12:
            print("routes: layer %d token %d: A picks %s, B picks %s, margin %s: %s"
                  % (key[0], key[1], ida, idb, "?" if margin is None else "%.3g" % margin, label))
    return real, ties


def main(argv=None):
    ap = argparse.ArgumentParser(description="compare two float32 logits files")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--tol", type=float, required=True)
    ap.add_argument("--routes-a")
    ap.add_argument("--routes-b")
    ap.add_argument("--near-tie", type=float)
    ap.add_argument("--show", type=int, default=5)
    args = ap.parse_args(argv)
    try:
        a = load(args.a, args.vocab)
        b = load(args.b, args.vocab)
    except (OSError, ValueError) as e:
        print("compare: %s" % e)
        return 2
    ok = True
    if a.shape != b.shape:
        print("compare: shape mismatch: A %s, B %s" % (a.shape, b.shape))
        return 1
    for name, arr in (("A", a), ("B", b)):
        bad = ~np.isfinite(arr)
        if bad.any():
            t, v = np.argwhere(bad)[0]
            print("compare: %s has %d non-finite values (first at token %d vocab %d: %r)"
                  % (name, int(bad.sum()), t, v, arr[t, v]))
            ok = False
    if not ok:
        return 1
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_ref = float(np.abs(b).max()) if b.size else 0.0
    if max_ref > 0:
        rel = max_abs / max_ref
    else:
        rel = 0.0 if max_abs == 0 else float("inf")
    print("max_abs_err=%.6g max_ref=%.6g rel_err=%.6g tol=%.3g" % (max_abs, max_ref, rel, args.tol))
    if diff.size and args.show > 0:
        worst = np.argsort(-diff, axis=None, kind="stable")[:args.show]
        for flat in worst:
            t, v = divmod(int(flat), args.vocab)
            print("  token %d vocab %d: a=%.9g b=%.9g |a-b|=%.3g" % (t, v, a[t, v], b[t, v], diff[t, v]))
        row = diff.max(axis=1)
        print("  per-token max |a-b|: " + " ".join("%.2g" % v for v in row))
    if rel > args.tol:
        ok = False
    if args.routes_a or args.routes_b:
        if not (args.routes_a and args.routes_b):
            print("compare: --routes-a and --routes-b go together")
            return 2
        try:
            ra, rb = load_routes(args.routes_a), load_routes(args.routes_b)
        except (OSError, ValueError) as e:
            print("compare: %s" % e)
            return 2
        near = args.near_tie if args.near_tie is not None else max(1e-4, args.tol)
        real, ties = compare_routes(ra, rb, near)
        margins = [m for (_, _, m) in rb.values() if m is not None]
        print("routes: %d entries, %d real differences, %d near-tie flips%s"
              % (len(rb), real, ties, ", min oracle margin %.3g" % min(margins) if margins else ""))
        if real:
            ok = False
        if ties and rel > args.tol:
            print("compare: the logits differ and routing flipped on a near-tie: choose another seed or ids")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
