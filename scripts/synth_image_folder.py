"""Writes a synthetic image folder with ImageNet-like files, for timing kdlab's image loader
(`kdlab bench --data DIR:transform=imagenet`): JPEGs of about 500x375 pixels (sizes vary a little,
some portrait), quality 90, with smooth shapes, edges and texture so that they compress like
photographs (tens of kB) rather than like flat colour.

    python scripts/synth_image_folder.py OUT [--train 400] [--val 100] [--classes 10] [--seed 0]

Needs Pillow and NumPy (both in the venv the Makefile creates, ~/.cache/kdlab-torch-venv).
"""
import argparse
import os

import numpy as np
from PIL import Image


def picture(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):  # a smooth background gradient per channel
        a, b, d = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * (a * xx / w + b * yy / h) + 20 * d
    for _ in range(rng.integers(4, 9)):  # ellipses with their own colour
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(h / 12, h / 3), rng.uniform(w / 12, w / 3)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img[inside] = rng.uniform(0, 255, 3)
    freq = rng.uniform(0.05, 0.3)  # a texture, and sensor-like noise
    img += 15 * np.sin(freq * xx + rng.uniform(0, 6))[..., None] * np.cos(freq * yy)[..., None]
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    total = 0
    for split, n in (("train", a.train), ("val", a.val)):
        for i in range(n):
            cls = f"class{i % a.classes:03d}"
            os.makedirs(os.path.join(a.out, split, cls), exist_ok=True)
            h, w = int(rng.integers(333, 400)), int(rng.integers(450, 520))
            if rng.uniform() < 0.2:
                h, w = w, h
            path = os.path.join(a.out, split, cls, f"{i:06d}.jpg")
            picture(rng, h, w).save(path, quality=90)
            total += os.path.getsize(path)
    print(f"wrote {a.train + a.val} JPEGs to {a.out}, {total / (a.train + a.val) / 1024:.1f} kB on average")


if __name__ == "__main__":
    main()
