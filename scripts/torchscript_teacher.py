"""Writes small TorchScript teachers and their PyTorch logits, for kdlab's TorchScript-teacher test.

    python scripts/torchscript_teacher.py OUT_DIR IMAGES.npy

IMAGES.npy holds (N, 1, 28, 28) raw pixel values 0..255 (any float or integer dtype). In OUT_DIR:

  traced.pt       a small CNN for 1x28x28 inputs and 10 classes, exported with torch.jit.trace
  scripted.pt     the same network and weights, exported with torch.jit.script
  classes7.pt     the same network with 7 outputs (a teacher for another data set)
  rgb.pt          a CNN for 3-channel inputs
  logits_profile.npy  traced.pt's logits (float32) on the images normalised with Fashion-MNIST's
                      profile (kdlab's default): (x/255 - 0.2860) / 0.3530
  logits_half.npy     the same with mean 0.5 and std 0.5 (what --teacher-mean 0.5 --teacher-std 0.5 asks)
"""
import sys

import numpy as np
import torch
from torch import nn


def cnn(in_channels: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    )


def randomise_bn(m: nn.Module) -> None:
    """Running statistics and affine parameters away from their defaults, so eval mode matters."""
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.running_mean.uniform_(-0.5, 0.5)
            b.running_var.uniform_(0.5, 2.0)
            b.weight.data.uniform_(0.5, 1.5)
            b.bias.data.uniform_(-0.2, 0.2)


def main() -> None:
    out, images = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    net = cnn(1, 10)
    randomise_bn(net)
    net.eval()
    example = torch.zeros(2, 1, 28, 28)
    torch.jit.trace(net, example).save(f"{out}/traced.pt")
    torch.jit.script(net).save(f"{out}/scripted.pt")
    other = cnn(1, 7).eval()
    torch.jit.trace(other, example).save(f"{out}/classes7.pt")
    rgb = cnn(3, 10).eval()
    torch.jit.trace(rgb, torch.zeros(2, 3, 28, 28)).save(f"{out}/rgb.pt")

    pixels = torch.from_numpy(np.load(images).astype(np.float32)) / 255.0
    with torch.no_grad():
        for name, mean, std in [("profile", 0.2860, 0.3530), ("half", 0.5, 0.5)]:
            x = (pixels - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(std, dtype=torch.float32)
            np.save(f"{out}/logits_{name}.npy", net(x).numpy().astype(np.float32))


if __name__ == "__main__":
    main()
