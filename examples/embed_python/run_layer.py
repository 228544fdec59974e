#!/usr/bin/env python3
"""run_layer.py — the Python twin of examples/embed_c: one MoE layer of a library written by
`moeppc emit SPEC --emit lib -o LIB`, through the ctypes binding (moepp_layer.py), on NumPy arrays.

    python3 run_layer.py LIB DATA [--threads N] [--mutate none|weight|residual]
    python3 run_layer.py LIB DATA --cuda [--host-weights] [--in-place] [--mutate ...]

DATA as for embed_c: w.safetensors (the checkpoint), case.txt, x.f32, residual_in.f32 and the
reference interpreter's y.f32, residual_out.f32, ids.i32. Loads layer L's tensors by name, runs the
layer, and compares with the reference (max |a - b| / max |b| <= 1e-4 for f32 weights, 2e-2 for
bf16/f16; routing picks equal, or flipped on a near-tie within that tolerance, whose tokens are left
out of the comparison of y). --mutate weight negates every down-projection,
--mutate residual drops residual_in: both must fail. Exit 0: match, 1: mismatch, 2: usage.

--cuda: LIB is a CUDA build (emit --target sm_XX, or emu with MOEPPC_CUDA_DRIVER naming moeppc's CUDA
emulator), and, as examples/embed_c built with -DEMBED_CUDA does, the weights, inputs, outputs and
workspace are device memory (the driver API through ctypes: moepp_layer.CudaDriver), forward runs on
a stream of its own, and the results are copied back after the stream is synchronised.
--host-weights gives the weights as NumPy arrays (the library uploads them) instead of device memory
used in place; --in-place runs y = x and residual_out = residual_in. Exit 77: no usable GPU.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moepp_layer  # noqa: E402

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}  # bf16 as its raw bits


def read_safetensors(path):
    """{name: array} of a .safetensors file (NumPy views of one read)."""
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        dt = np.dtype(DTYPES[e["dtype"]])
        out[name] = np.frombuffer(blob, dt, (b - a) // dt.itemsize, 8 + n + a).reshape(e["shape"])
    return out


def rel_err(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-300))


NO_DEVICE = 11  # MOEPP_ERR_NO_DEVICE


def run_cuda(gpu, lib, L, tensors, x, r_in, a):
    """The layer on the GPU: device weights (or host ones, --host-weights), device activations (in
    place: y = x, residual_out = residual_in), a device workspace, a stream of its own. y,
    residual_out and the routing statistics, copied back after the stream is synchronised."""
    T, E = x.shape[0], lib.info["n_experts"]
    owned = []  # device memory to free at the end

    def dev(arr):
        d = gpu.to_device(arr)
        owned.append(d)
        return d

    def empty(shape):
        d = gpu.empty(shape)
        owned.append(d)
        return d
    w = tensors if a.host_weights else {name: dev(t) for name, t in tensors.items()}
    stream = gpu.stream()
    layer = None
    try:
        layer = moepp_layer.Layer(lib, L, w, max_tokens=T, device=gpu)
        dx, dr = dev(x), (dev(r_in) if r_in is not None else None)
        if a.in_place:
            dy, dz = dx, (dr if dr is not None else empty((T, E)))
        else:
            dy, dz = empty(x.shape), empty((T, E))
        layer.forward_async(dx, dr, dy, dz, stream)
        gpu.synchronize(stream)
        return dy.numpy(), dz.numpy(), layer.route_stats()
    finally:
        if layer is not None:
            layer.close()
        for d in owned:
            d.free()
        gpu.destroy_stream(stream)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lib")
    ap.add_argument("data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mutate", choices=("none", "weight", "residual"), default="none")
    ap.add_argument("--cuda", action="store_true", help="device memory, a stream: a CUDA build of the library")
    ap.add_argument("--host-weights", action="store_true", help="--cuda: weights uploaded by the library")
    ap.add_argument("--in-place", action="store_true", help="--cuda: y = x, residual_out = residual_in")
    a = ap.parse_args()
    case = dict(line.split() for line in open(os.path.join(a.data, "case.txt")))
    L, T, with_residual = int(case["layer"]), int(case["tokens"]), case["residual"] == "1"
    lib = moepp_layer.Library(os.path.join(a.lib, "libmoepp_layer.so"))
    info = lib.info
    if a.cuda != (info["backend"] == moepp_layer.BACKEND_CUDA):
        print(f"run_layer: the library is a {'CUDA' if info['backend'] else 'CPU'} build: "
              f"{'give' if info['backend'] else 'drop'} --cuda", file=sys.stderr)
        return 2
    gpu = None
    if a.cuda:
        try:
            gpu = moepp_layer.CudaDriver()
        except moepp_layer.NoDevice as e:
            print(f"run_layer: skipped: no usable GPU: {e}")
            return 77
    print(f"library: one MoE layer of {info['spec_name']} (D {info['hidden']}, {info['n_experts']} experts, "
          f"top-{info['top_k']}, {info['isa']} kernels, ABI {info['abi_version']})")
    ckpt = read_safetensors(os.path.join(a.data, "w.safetensors"))
    tensors = {}
    for name, _, _, required in lib.tensor_info(L):
        if name not in ckpt:
            if required:
                print(f"run_layer: {name} is not in the checkpoint", file=sys.stderr)
            continue
        t = ckpt[name]
        if a.mutate == "weight" and "down_proj" in name:  # negated (bf16: its sign bit flipped)
            t = t ^ np.uint16(0x8000) if t.dtype == np.uint16 else -t
        tensors[name] = t
    D, E, k = info["hidden"], info["n_experts"], info["top_k"]
    load = lambda f, dt, shape: np.fromfile(os.path.join(a.data, f), dt).reshape(shape)  # noqa: E731
    x = load("x.f32", np.float32, (T, D))
    r_in = load("residual_in.f32", np.float32, (T, E)) if with_residual and a.mutate != "residual" else None
    y_ref, r_ref = load("y.f32", np.float32, (T, D)), load("residual_out.f32", np.float32, (T, E))
    ids_ref = load("ids.i32", np.int32, (T, k))
    try:
        if gpu is None:
            layer = moepp_layer.Layer(lib, L, tensors, n_threads=a.threads, max_tokens=T)
            y, r_out = layer.forward(x, r_in)
            st = layer.route_stats()
            layer.close()
        else:
            y, r_out, st = run_cuda(gpu, lib, L, tensors, x, r_in, a)
    except moepp_layer.MoeppError as e:
        print(f"run_layer: {e}", file=sys.stderr)
        return 77 if e.status == NO_DEVICE else 1
    if gpu is not None:
        gpu.close()
    tol = 1e-4 if info["weight_dtype"] == moepp_layer.DTYPE_F32 else 2e-2
    ids = st["ids"]
    t_idx, j_idx = np.nonzero(ids != ids_ref)  # picks that differ: a near-tie if their logits are close
    za, zb = r_ref[t_idx, ids[t_idx, j_idx]], r_ref[t_idx, ids_ref[t_idx, j_idx]]
    close = np.abs(za - zb) <= tol * np.maximum(1.0, np.abs(zb))
    wrong = set(t_idx[~close].tolist())
    tied = set(t_idx[close].tolist()) - wrong
    keep = np.array([t not in tied for t in range(T)])
    e_y, e_r = rel_err(y[keep], y_ref[keep]), rel_err(r_out, r_ref)
    where = (", on the GPU" + (", in place" if a.in_place else "") + (", host weights" if a.host_weights else "")
             if a.cuda else f", {a.threads} threads")
    print(f"layer {L}, {T} tokens{', residual_in given' if r_in is not None else ''}{where}: "
          f"y max rel err {e_y:.3g}, residual_out {e_r:.3g} (tolerance {tol:g}); picks: {st['picks_ffn']} FFN, "
          f"{st['picks_const']} constant, {st['picks_copy']} copy, {st['picks_zero']} zero; tokens routed "
          f"otherwise: {len(tied)} on a near-tie (y not compared), {len(wrong)} not")
    ok = e_y <= tol and e_r <= tol and not wrong and 4 * len(tied) <= T
    print("MATCH: the library computes what moeppc's interpreter computes" if ok
          else "MISMATCH: the library's output differs from the reference")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
