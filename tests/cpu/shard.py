#!/usr/bin/env python3
"""shard.py IN.safetensors OUTDIR --shards N: split a checkpoint the way Hugging Face stores large
models: model-0000k-of-0000N.safetensors files plus model.safetensors.index.json. Tensor bytes are
copied unchanged (bf16 stays bf16); tensors are dealt to shards in file order."""
import argparse, json, os, struct


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("outdir")
    ap.add_argument("--shards", type=int, default=2)
    a = ap.parse_args()
    blob = open(a.src, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    names = [k for k in header if k != "__metadata__"]
    names.sort(key=lambda k: header[k]["data_offsets"][0])
    per = (len(names) + a.shards - 1) // a.shards
    os.makedirs(a.outdir, exist_ok=True)
    weight_map = {}
    for s in range(a.shards):
        fname = "model-%05d-of-%05d.safetensors" % (s + 1, a.shards)
        part, chunks, off = {"__metadata__": {"format": "pt"}}, [], 0
        for k in names[s * per:(s + 1) * per]:
            b, e = header[k]["data_offsets"]
            part[k] = {"dtype": header[k]["dtype"], "shape": header[k]["shape"], "data_offsets": [off, off + e - b]}
            chunks.append(blob[base + b:base + e])
            off += e - b
            weight_map[k] = fname
        h = json.dumps(part).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        with open(os.path.join(a.outdir, fname), "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))
    with open(os.path.join(a.outdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": len(blob) - base}, "weight_map": weight_map}, f, indent=1)


if __name__ == "__main__":
    main()
