"""PyTorch's antialiased bilinear resize of crops of one image, the reference for kdlab's
resampling (tests/image_stream.rs).

    python scripts/resize_reference.py IMAGE.npy CASES.json OUT_DIR

IMAGE.npy: (H, W, C) float32 pixel values. CASES.json: a list of {"window": [y, x, h, w],
"full": [H', W'], "origin": [oy, ox], "out": [oh, ow]}: the window is resized to H'xW' with
torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False) and the
oh x ow block at the origin kept. Writes OUT_DIR/case{i}.npy, (C, oh, ow) float32.
"""
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

image = torch.from_numpy(np.load(sys.argv[1])).permute(2, 0, 1)[None].double()
for i, case in enumerate(json.load(open(sys.argv[2]))):
    y, x, h, w = case["window"]
    full = F.interpolate(image[:, :, y:y + h, x:x + w], size=tuple(case["full"]), mode="bilinear",
                         antialias=True, align_corners=False)
    oy, ox = case["origin"]
    oh, ow = case["out"]
    np.save(f"{sys.argv[3]}/case{i}.npy", full[0, :, oy:oy + oh, ox:ox + ow].float().numpy())
