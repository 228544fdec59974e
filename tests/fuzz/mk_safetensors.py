"""mk_safetensors.py SAFETENSORS_DIR INDEX_DIR: hand-made seeds for the two checkpoint targets.

Single files: the layouts a reader must accept (metadata, a 0-d scalar, an empty tensor, a header
not padded to 8 bytes so the data is misaligned) and a few it must refuse. Indexes: weight maps over
the shards fuzz_safetensors_index.c writes (model-0000{1,2}-of-00002.safetensors share lm_head.weight;
broken.safetensors; subdir.safetensors is a directory)."""
import json
import os
import struct
import sys


def st(entries, data, pad=True, meta=None):
    hdr = dict(entries)
    if meta is not None:
        hdr = {"__metadata__": meta, **hdr}
    text = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


def f32e(off):
    """A 2×2 f32 entry at byte offset off."""
    return {"dtype": "F32", "shape": [2, 2], "data_offsets": [off, off + 16]}


def main():
    sdir, idir = sys.argv[1], sys.argv[2]
    two = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
           "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}
    seeds = {
        "meta.safetensors": st(two, f32(1, 2, 3, 4) + b"\x80\x3f" * 3, meta={"format": "pt"}),
        "scalar.safetensors": st({"s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}, f32(7)),
        "empty-tensor.safetensors": st({"e": {"dtype": "F16", "shape": [0, 5], "data_offsets": [0, 0]},
                                        "x": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}, b"\0\x3c\0\x40"),
        "misaligned.safetensors": st(two, f32(1, 2, 3, 4) + b"\x80\x3f" * 3, pad=False),
        "four-dims.safetensors": st({"t": {"dtype": "BF16", "shape": [1, 2, 1, 2], "data_offsets": [0, 8]}}, b"\1" * 8),
        "no-tensors.safetensors": st({}, b""),
        "bad-overlap.safetensors": st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                       "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, f32(1, 2, 3)),
        "bad-past-end.safetensors": st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, f32(1)),
        "bad-dtype.safetensors": st({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),
        # Mixtral's MoE names, mapped by the loader (w1 over w3 into one up_proj)
        "mixtral.safetensors": st({"model.layers.0.block_sparse_moe.gate.weight": f32e(0),
                                   "model.layers.0.block_sparse_moe.experts.0.w1.weight": f32e(16),
                                   "model.layers.0.block_sparse_moe.experts.0.w3.weight": f32e(32),
                                   "model.layers.0.block_sparse_moe.experts.0.w2.weight": f32e(48)},
                                  f32(*range(16))),
        "bad-mixtral-no-w3.safetensors": st({"model.layers.0.block_sparse_moe.experts.0.w1.weight": f32e(0)},
                                            f32(1, 2, 3, 4)),
        "bad-header-length.safetensors": struct.pack("<Q", 1 << 40) + b"{}",
        "bad-json.safetensors": struct.pack("<Q", 6) + b'{"a":[' + b"\0" * 4,
    }
    for name, blob in seeds.items():
        with open(os.path.join(sdir, name), "wb") as f:
            f.write(blob)

    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    maps = {
        "good.json": {"metadata": {"total_size": 38},
                      "weight_map": {"model.embed_tokens.weight": s1, "model.norm.weight": s1,
                                     "lm_head.weight": s2, "model.layers.0.mlp.gate.weight": s2, "empty": s2}},
        "first-copy.json": {"weight_map": {"lm_head.weight": s1, "model.layers.0.mlp.gate.weight": s2}},
        "one-shard.json": {"weight_map": {"model.norm.weight": s1}},
        "bad-missing-tensor.json": {"weight_map": {"nope": s1}},
        "bad-missing-shard.json": {"weight_map": {"a": "model-00003-of-00003.safetensors"}},
        "bad-broken-shard.json": {"weight_map": {"a": "broken.safetensors"}},
        "bad-directory.json": {"weight_map": {"a": "subdir.safetensors"}},
        "bad-path.json": {"weight_map": {"a": "../" + s1}},
        "bad-not-object.json": {"weight_map": [s1]},
    }
    for name, obj in maps.items():
        with open(os.path.join(idir, name), "w") as f:
            json.dump(obj, f, indent=2)


if __name__ == "__main__":
    main()
