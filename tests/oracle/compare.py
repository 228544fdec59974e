#!/usr/bin/python3
"""compare.py A.bin B.bin --vocab V --tol TOL [--routes-a R1 --routes-b R2] [--near-tie X] [--flipped-rows W]
                  [--show N]

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

--flipped-rows W (a model of one MoE layer, e.g. `moeppc bench`'s cut of a spec, two runs of moeppc, whose
routes have no margins): a token whose picks differ only between weights within W of each other (paired by
rank: the gates were near-equal, and either side may settle) is left out of the logits comparison, its row
being all that follows from it; at most 1 % of the tokens may be; any other difference fails.
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
    """{(layer, token): (sorted ids, their weights in that order, margin or None)}"""
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
            picks = sorted(zip((int(v) for v in rest[:k]), (float(v) for v in rest[k:])))
            out[(int(fs[0]), int(fs[1]))] = ([i for i, _ in picks], [w for _, w in picks], margin)
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


def flipped_rows(ra, rb, within):
    """A model of one MoE layer: the tokens whose picks in A differ from B's only where the weights of
    the picks one made and the other did not are within `within` of each other, paired by rank (a
    near-tie either side may settle: only that token's row follows from it), as a set; and the number of
    tokens whose picks differ otherwise. Raises ValueError for routes of more than one layer."""
    if len({l for (l, _) in ra} | {l for (l, _) in rb}) > 1:
        raise ValueError("--flipped-rows: routes of more than one MoE layer (a flip there moves later tokens)")
    near, other = set(), 0
    for key in sorted(set(ra) & set(rb)):
        (ida, wa, _), (idb, wb, _) = ra[key], rb[key]
        if ida == idb:
            continue
        only_a = sorted((w for i, w in zip(ida, wa) if i not in idb), reverse=True)
        only_b = sorted((w for i, w in zip(idb, wb) if i not in ida), reverse=True)
        if len(only_a) == len(only_b) and all(abs(x - y) <= within for x, y in zip(only_a, only_b)):
            near.add(key[1])
        else:
            other += 1
    return near, other


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
    ap.add_argument("--flipped-rows", type=float, metavar="W",
                    help="a model of one MoE layer: tokens whose picks differ only between weights within W of "
                         "each other are left out of the logits comparison, at most 1%% of them (needs the routes)")
    args = ap.parse_args(argv)
    skip = set()
    if args.flipped_rows is not None:
        if not (args.routes_a and args.routes_b):
            print("compare: --flipped-rows needs --routes-a and --routes-b")
            return 2
        try:
            skip, other = flipped_rows(load_routes(args.routes_a), load_routes(args.routes_b), args.flipped_rows)
        except (OSError, ValueError) as e:
            print("compare: %s" % e)
            return 2
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
    rows = np.arange(a.shape[0])  # the tokens compared (all but those --flipped-rows leaves out)
    if skip:
        print("compare: %d token(s) left out, their picks flipped between near-equal weights: %s"
              % (len(skip), sorted(skip)[:12]))
        if len(skip) > max(1, len(rows) // 100):
            print("compare: more than 1%% of the %d tokens flipped" % len(rows))
            ok = False
        rows = np.array([t for t in rows if t not in skip], dtype=int)
        a, b = a[rows], b[rows]
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
            print("  token %d vocab %d: a=%.9g b=%.9g |a-b|=%.3g" % (rows[t], v, a[t, v], b[t, v], diff[t, v]))
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
        if args.flipped_rows is not None:  # (moeppc's routes have no margins: the weights decide)
            real, ties = other, len(skip)
        else:
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
