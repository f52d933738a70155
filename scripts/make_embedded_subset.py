#!/usr/bin/env python3
"""Makes kdlab's embedded Fashion-MNIST subset (assets/fashion-mnist-mini/) from the full data set.

Deterministic, standard library only: the first 1,000 training images of each class (10,000 in
all) and the first 200 test images of each class (2,000), in their original order, written as
gzipped IDX files with a zero timestamp so that the bytes (and their sha256, listed in the README)
are the same on every machine.

    python3 scripts/make_embedded_subset.py ../shared/data/fashion-mnist assets/fashion-mnist-mini
"""
import gzip
import hashlib
import io
import os
import struct
import sys

TRAIN_PER_CLASS, TEST_PER_CLASS = 1000, 200


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, kind, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and kind == 0x08, f"{path}: not an unsigned-byte IDX file"
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return dims, data[4 + 4 * ndim :]


def write_idx_gz(path, dims, payload):
    raw = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(">" + "I" * len(dims), *dims) + payload
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def subset(src, out, prefix, per_class):
    dims, images = read_idx(os.path.join(src, f"{prefix}-images-idx3-ubyte.gz"))
    _, labels = read_idx(os.path.join(src, f"{prefix}-labels-idx1-ubyte.gz"))
    n, h, w = dims
    taken, keep = [0] * 10, []
    for i, y in enumerate(labels):
        if taken[y] < per_class:
            taken[y] += 1
            keep.append(i)
    assert taken == [per_class] * 10, f"{prefix}: not enough samples per class: {taken}"
    img = b"".join(images[i * h * w : (i + 1) * h * w] for i in keep)
    lab = bytes(labels[i] for i in keep)
    for name, d, payload in [
        (f"{prefix}-images-idx3-ubyte.gz", (len(keep), h, w), img),
        (f"{prefix}-labels-idx1-ubyte.gz", (len(keep),), lab),
    ]:
        print(write_idx_gz(os.path.join(out, name), d, payload), name)


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    subset(src, out, "train", TRAIN_PER_CLASS)
    subset(src, out, "t10k", TEST_PER_CLASS)


if __name__ == "__main__":
    main()
