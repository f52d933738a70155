"""Writes PyTorch checkpoints of the models kdlab's zoo matches — RepDistiller's / mdistiller's CIFAR
models and torchvision's ImageNet ResNets — with random weights and their logits, for the tests of
`kdlab import` and of TorchScript teachers (tests/import.rs).

    python scripts/import_fixture.py resnet OUT_DIR [IMAGES.npy]
    python scripts/import_fixture.py zoo OUT_DIR
    python scripts/import_fixture.py torchvision OUT_DIR

`resnet` writes in OUT_DIR:

  r20.pth           resnet20 (3x32x32, 100 classes): torch.save(model.state_dict())
  r20_wrapped.pth   the same as RepDistiller saves it: {"epoch", "model": state_dict, "accuracy", "optimizer"}
  r20_inputs.npy    (8, 3·32·32) float32 inputs (flattened (8, 3, 32, 32)), and r20_logits.npy the model's (8, 100) logits
  r8_dp.pth         resnet8 for 1x28x28 and 10 classes, saved from nn.DataParallel inside
                    {"state_dict": ...} (keys "module.…")
  r8_logits.npy     its logits on IMAGES.npy ((N, 1, 28, 28) raw pixels 0..255) normalised with
                    Fashion-MNIST's profile, when IMAGES.npy is given

`zoo` writes, for NAME in resnet56, wrn_40_2, vgg13, mobilenetv2_x0_5 (RepDistiller's mobile_half)
and resnet32x4 (3x32x32, 100 classes; the modules below have RepDistiller's structure and names):

  NAME.pth          torch.save(model.state_dict())
  NAME_logits.npy   (8, 100) float32 logits on cifar/test.bin, normalised with CIFAR-100's profile
                    (those inputs: cifar_inputs.npy, (8, 3·32·32) float32)
  NAME_wrapped.pth  RepDistiller's {"model": state_dict, …} (resnet56 and wrn_40_2)
  NAME.pt           torch.jit.trace export (resnet56 and wrn_40_2)
  cifar/            train.bin and test.bin: 8 random images each in CIFAR-100's binary format

`torchvision` writes torchvision.models.resnet18() and resnet50() (1000 classes) as tv_NAME.pth, and
their logits tv_NAME_logits.npy on tv_NAME_inputs.npy ((2, 3·S·S) float32, flattened (2, 3, S, S);
S = 224 for resnet18, 64 for resnet50, which any side fits: its weights do not depend on it), and
tv_NAME_logits64.npy, the same network's logits computed in float64 (to measure float32 rounding).

Weights are PyTorch's default initialisation; every BatchNorm's running statistics are those of a
batch of inputs like the test's, then perturbed, and its affine parameters random, so that eval mode
matters and the activations keep their scale through 50+ layers (the logits depend on the input).
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


class WrnBlock(nn.Module):
    """RepDistiller's models/wrn.py BasicBlock, dropout 0: pre-activation; a block that changes the
    width has a 1x1 `convShortcut`, which reads the activated input (an identity skip the raw one)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.convShortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (x if self.convShortcut is None else self.convShortcut(a))


class WrnStage(nn.Module):
    """RepDistiller's NetworkBlock: the blocks under `layer`."""

    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[WrnBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """RepDistiller's models/wrn.py WideResNet: conv1, block1..3, the final BatchNorm `bn1`, avg_pool2d(8), fc."""

    def __init__(self, depth, k, classes):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = WrnStage(n, widths[0], widths[1], 1)
        self.block2 = WrnStage(n, widths[1], widths[2], 2)
        self.block3 = WrnStage(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.avg_pool2d(F.relu(self.bn1(x)), 8)
        return self.fc(torch.flatten(x, 1))


class Vgg(nn.Module):
    """RepDistiller's models/vgg.py VGG with batch_norm: block0..4 of conv(bias)-BN-ReLU (the last ReLU of
    a block outside it), max-pools after blocks 0-2 (and 3 on 64x64 inputs), global pooling, `classifier`."""

    def __init__(self, cfg, classes):
        super().__init__()
        c = 3
        for i, widths in enumerate(cfg):
            layers = []
            for w in widths:
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
                c = w
            setattr(self, f"block{i}", nn.Sequential(*layers[:-1]))
        self.classifier = nn.Linear(512, classes)

    def forward(self, x):
        side = x.shape[2]
        for i in range(5):
            x = F.relu(getattr(self, f"block{i}")(x))
            if i < 3 or (i == 3 and side == 64):
                x = F.max_pool2d(x, 2)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


VGG13 = [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]


def conv_bn_relu(cin, cout, k, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class InvertedResidual(nn.Module):
    """RepDistiller's models/mobilenetv2.py block: `conv` = 1x1 expand (also at t = 1), 3x3 depthwise,
    1x1 linear projection, each with BN, ReLU after the first two; a skip where the shape is kept."""

    def __init__(self, cin, cout, stride, t):
        super().__init__()
        h = cin * t
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, h, 1, 1, 0, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """RepDistiller's models/mobilenetv2.py (T = 6): stride-2 stem `conv1`, `blocks` (one Sequential per
    stage), 1x1 head `conv2` to 1280, AvgPool2d(input/16, ceil_mode), `classifier.0`; channels int(c * width)."""

    STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width, classes, input_size=32):
        super().__init__()
        c = int(32 * width)
        self.conv1 = conv_bn_relu(3, c, 3, 2)
        self.blocks = nn.ModuleList()
        for t, out, n, s in self.STAGES:
            out = int(out * width)
            stage = []
            for j in range(n):
                stage.append(InvertedResidual(c, out, s if j == 0 else 1, t))
                c = out
            self.blocks.append(nn.Sequential(*stage))
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = conv_bn_relu(c, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)

    def forward(self, x):
        x = self.conv1(x)
        for b in self.blocks:
            x = b(x)
        return self.classifier(torch.flatten(self.avgpool(self.conv2(x)), 1))


def calibrate_bn(m: nn.Module, x: torch.Tensor) -> None:
    """Random BatchNorm affine parameters; running statistics those of the batch x (so activations keep
    their scale in eval mode), then perturbed (so eval and train mode differ)."""
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.weight.data.uniform_(0.5, 1.5)
            b.bias.data.uniform_(-0.2, 0.2)
            b.reset_running_stats()
            b.momentum = None  # a cumulative average: after one batch, that batch's statistics
    m.train()
    with torch.no_grad():
        m(x)
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.running_mean.add_(torch.empty_like(b.running_mean).uniform_(-0.1, 0.1))
            b.running_var.mul_(torch.empty_like(b.running_var).uniform_(0.8, 1.25))
            b.momentum = 0.1
    m.eval()


CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)  # kdlab's CIFAR-100 profile (RepDistiller's)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def write_cifar100(path, pixels, rng):
    """CIFAR-100's binary format: per image a coarse and a fine label byte, then 3·32·32 pixel bytes."""
    labels = rng.integers(0, 100, size=(len(pixels), 1), dtype=np.uint8)
    coarse = labels // 5
    records = np.concatenate([coarse, labels, pixels.reshape(len(pixels), -1)], axis=1)
    with open(path, "wb") as f:
        f.write(records.astype(np.uint8).tobytes())


def zoo(out):
    import os

    rng = np.random.default_rng(0)
    os.makedirs(f"{out}/cifar", exist_ok=True)
    train = rng.integers(0, 256, size=(8, 3, 32, 32), dtype=np.uint8)
    test = rng.integers(0, 256, size=(8, 3, 32, 32), dtype=np.uint8)
    write_cifar100(f"{out}/cifar/train.bin", train, rng)
    write_cifar100(f"{out}/cifar/test.bin", test, rng)
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(test).float() / 255.0 - mean) / std
    np.save(f"{out}/cifar_inputs.npy", x.reshape(len(x), -1).numpy())
    calibration = (torch.from_numpy(rng.integers(0, 256, size=(16, 3, 32, 32))).float() / 255.0 - mean) / std

    torch.manual_seed(0)
    models = {
        "resnet56": ResNet(56, [16, 16, 32, 64], 100),
        "wrn_40_2": WideResNet(40, 2, 100),
        "vgg13": Vgg(VGG13, 100),
        "mobilenetv2_x0_5": MobileNetV2(0.5, 100),
        "resnet32x4": ResNet(32, [32, 64, 128, 256], 100),
    }
    for name, m in models.items():
        calibrate_bn(m, calibration)
        torch.save(m.state_dict(), f"{out}/{name}.pth")
        with torch.no_grad():
            np.save(f"{out}/{name}_logits.npy", m(x).numpy().astype(np.float32))
        if name in ("resnet56", "wrn_40_2"):
            torch.save({"epoch": 240, "model": m.state_dict(), "accuracy": 73.4}, f"{out}/{name}_wrapped.pth")
            torch.jit.trace(m, x[:2]).save(f"{out}/{name}.pt")


def torchvision_resnets(out):
    import torchvision  # installed by the Makefile's `torch` target

    torch.manual_seed(0)
    for name, side in [("resnet18", 224), ("resnet50", 64)]:
        m = getattr(torchvision.models, name)(num_classes=1000)
        calibrate_bn(m, torch.randn(16, 3, side, side))
        torch.save(m.state_dict(), f"{out}/tv_{name}.pth")
        x = torch.randn(2, 3, side, side)
        np.save(f"{out}/tv_{name}_inputs.npy", x.reshape(2, -1).numpy())
        with torch.no_grad():
            np.save(f"{out}/tv_{name}_logits.npy", m(x).numpy().astype(np.float32))
            np.save(f"{out}/tv_{name}_logits64.npy", m.double()(x.double()).numpy())


def resnet(out, images=None):
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
    if images is not None:
        pixels = torch.from_numpy(np.load(images).astype(np.float32)) / 255.0
        xs = (pixels - torch.tensor(0.2860)) / torch.tensor(0.3530)
        with torch.no_grad():
            np.save(f"{out}/r8_logits.npy", r8(xs).numpy())


def main():
    mode, out, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    torch.set_num_threads(1)  # small models; the tests run beside others on few cores
    if mode == "resnet":
        resnet(out, *rest)
    elif mode == "zoo":
        zoo(out)
    elif mode == "torchvision":
        torchvision_resnets(out)
    else:
        sys.exit(f"unknown mode {mode!r}: resnet, zoo or torchvision")


if __name__ == "__main__":
    main()
