#!/usr/bin/env python3
"""Dead ReLU units of kdlab MLP checkpoints: the share of hidden units that output 0 for every one
of the first N Fashion-MNIST training images (a unit that is never active gets no gradient again, so
a student whose units have all died is stuck at chance). Independent of kdlab: it reads the
safetensors file and the IDX images with numpy alone.

    python3 scripts/dead_units.py --images ../shared/data/fashion-mnist/train-images-idx3-ubyte.gz \
        RUN_DIR/last.safetensors RUN_DIR/checkpoints/epoch-0010.safetensors ...
"""
import argparse
import gzip
import json
import struct

import numpy as np

MEAN, STD = 0.2860, 0.3530  # kdlab's Fashion-MNIST profile


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        if v["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {v['dtype']}, expected F32")
        a, b = v["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(v["shape"])
    return out


def read_images(path, n):
    with gzip.open(path, "rb") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051:
            raise SystemExit(f"{path}: not an IDX image file (magic {magic})")
        n = min(n, count)
        x = np.frombuffer(f.read(n * rows * cols), dtype=np.uint8).reshape(n, rows * cols)
    return ((x.astype(np.float32) / 255.0) - MEAN) / STD


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("checkpoints", nargs="+")
    a = ap.parse_args()
    x = read_images(a.images, a.n)
    for path in a.checkpoints:
        w = read_safetensors(path)
        h, i, report = x, 0, []
        while f"model.hidden{i}.weight" in w:
            h = np.maximum(h @ w[f"model.hidden{i}.weight"].T + w[f"model.hidden{i}.bias"], 0.0)
            dead = int((h.max(axis=0) <= 0.0).sum())
            report.append(f"hidden{i}: {dead}/{h.shape[1]} dead")
            i += 1
        if i == 0:
            raise SystemExit(f"{path}: no model.hidden0 layer (this script reads kdlab MLPs only)")
        print(f"{path}: " + ", ".join(report))


if __name__ == "__main__":
    main()
