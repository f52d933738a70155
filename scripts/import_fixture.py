"""Writes PyTorch checkpoints of CIFAR ResNets as RepDistiller/mdistiller define them, for kdlab's
`kdlab import` test, with their logits on fixed inputs.

    python scripts/import_fixture.py OUT_DIR [IMAGES.npy]

In OUT_DIR:

  r20.pth           resnet20 (3x32x32, 100 classes): torch.save(model.state_dict())
  r20_wrapped.pth   the same as RepDistiller saves it: {"epoch", "model": state_dict, "accuracy", "optimizer"}
  r20_inputs.npy    (8, 3·32·32) float32 inputs (flattened (8, 3, 32, 32)), and r20_logits.npy the model's (8, 100) logits
  r8_dp.pth         resnet8 for 1x28x28 and 10 classes, saved from nn.DataParallel inside
                    {"state_dict": ...} (keys "module.…")
  r8_logits.npy     its logits on IMAGES.npy ((N, 1, 28, 28) raw pixels 0..255) normalised with
                    Fashion-MNIST's profile, when IMAGES.npy is given
"""
import sys

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from torchscript_teacher import randomise_bn  # this directory is on the path


class BasicBlock(nn.Module):
    """RepDistiller's models/resnet.py BasicBlock (without its is_last pre-activation output)."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """RepDistiller's CIFAR ResNet; global average pooling (AvgPool2d(8) on 32x32 inputs is the same)."""

    def __init__(self, depth, filters, classes, in_channels=3):
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = filters[0]
        self.conv1 = nn.Conv2d(in_channels, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.layer1 = self._make_layer(filters[1], n)
        self.layer2 = self._make_layer(filters[2], n, 2)
        self.layer3 = self._make_layer(filters[3], n, 2)
        self.fc = nn.Linear(filters[3], classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    r20 = ResNet(20, [16, 16, 32, 64], 100)
    randomise_bn(r20)
    r20.eval()
    torch.save(r20.state_dict(), f"{out}/r20.pth")
    opt = torch.optim.SGD(r20.parameters(), lr=0.05, momentum=0.9)
    torch.save({"epoch": 240, "model": r20.state_dict(), "accuracy": 69.1, "optimizer": opt.state_dict()},
               f"{out}/r20_wrapped.pth")
    x = torch.randn(8, 3, 32, 32)
    np.save(f"{out}/r20_inputs.npy", x.reshape(8, -1).numpy())
    with torch.no_grad():
        np.save(f"{out}/r20_logits.npy", r20(x).numpy())

    r8 = ResNet(8, [16, 16, 32, 64], 10, in_channels=1)
    randomise_bn(r8)
    r8.eval()
    torch.save({"state_dict": nn.DataParallel(r8).state_dict(), "epoch": 1}, f"{out}/r8_dp.pth")
    if len(sys.argv) > 2:
        pixels = torch.from_numpy(np.load(sys.argv[2]).astype(np.float32)) / 255.0
        xs = (pixels - torch.tensor(0.2860)) / torch.tensor(0.3530)
        with torch.no_grad():
            np.save(f"{out}/r8_logits.npy", r8(xs).numpy())


if __name__ == "__main__":
    main()
