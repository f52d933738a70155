#!/usr/bin/env python3
"""PyTorch's training step split into the parts `kdlab bench --json` reports as `phases`:
forward and loss, backward, optimiser (zero_grad + SGD step), medians in seconds, on the CPU.

  python3 scripts/step_phases.py --model cnn_w4 --input 1x28x28 --classes 10 [--channels-last]

The architectures come from ../shared/bench/pytorch_ref.py (--reference), so both sides time the
same network with the same SGD (momentum 0.9, weight decay 5e-4, lr 0.05) at batch 128. Prints
one JSON line.
"""
import argparse
import importlib.util
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--input", default="3x32x32")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--reference", default=os.path.join(here, "..", "..", "shared", "bench", "pytorch_ref.py"))
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("pytorch_ref", a.reference)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    cin, h, w = map(int, a.input.split("x"))
    model = ref.build(a.model, cin, h, a.classes).to(memory_format=fmt).train()
    x = torch.randn(a.batch, cin, h, w).contiguous(memory_format=fmt)
    y = torch.randint(0, a.classes, (a.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    phases = {"forward": [], "backward": [], "optimizer": []}
    total = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        t_zero = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        t_fwd = time.perf_counter()
        loss.backward()
        t_bwd = time.perf_counter()
        opt.step()
        t_end = time.perf_counter()
        loss.item()
        if i >= a.warmup:
            phases["forward"].append(t_fwd - t_zero)
            phases["backward"].append(t_bwd - t_fwd)
            phases["optimizer"].append(t_end - t_bwd + t_zero - t0)
            total.append(time.perf_counter() - t0)
    med = statistics.median(total)
    print(json.dumps({
        "framework": "pytorch-" + torch.__version__, "model": a.model, "input": a.input, "batch": a.batch,
        "channels_last": a.channels_last, "img_per_s": a.batch / med, "median_step_s": med,
        "phases": {k: statistics.median(v) for k, v in phases.items()},
    }))


if __name__ == "__main__":
    main()
