"""Model zoo. Every model exposes ``features(x) -> h`` (penultimate, after the final pooling)
and ``head`` (the last ``nn.Linear``: logits = head(h) = W h + b), so scores can use closed forms
on (h, W, b). ``forward(x) = head(features(x))``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class OODModel(nn.Module):
    """Base class: a feature extractor followed by a linear head."""

    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (W, b) of the last linear layer, detached."""
        return self.head.weight.detach(), self.head.bias.detach()


class SmallCNN(OODModel):
    """The demo profile's CNN: two conv+BN+ReLU blocks, global average pooling, linear head.
    Small enough to train on scikit-learn's 8x8 digits on a CPU in seconds."""

    def __init__(self, num_classes: int = 5, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18Cifar(OODModel):
    """ResNet-18, CIFAR variant (3x3 stem, stride 1, no max-pool), D = 512 (as in OpenOOD's
    ResNet18_32x32 and the KNN / ReAct CIFAR experiments)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.head = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class WideBasic(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(OODModel):
    """WRN-depth-k (Zagoruyko & Komodakis); WRN-28-10 is GRODIN's CIFAR-10 model."""

    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for i, stride in enumerate([1, 2, 2]):
            for j in range(n):
                blocks.append(WideBasic(in_planes, widths[i + 1], stride if j == 0 else 1, dropout))
                in_planes = widths[i + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.head = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class TorchvisionResNet50(OODModel):
    """torchvision ResNet-50 with ``fc`` renamed to ``head``. Weights come from a local file
    (``weights_path``), never from the network."""

    def __init__(self, num_classes: int = 1000, weights_path: str | None = None):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
        if weights_path is not None:
            from ood_core.checkpoint import load_state_dict_file

            net.load_state_dict(load_state_dict_file(Path(weights_path)))
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


MODELS: dict[str, Callable[..., OODModel]] = {
    "small_cnn": SmallCNN,
    "resnet18_cifar": ResNet18Cifar,
    "wrn28_10": lambda num_classes=10, **kw: WideResNet(28, 10, num_classes, **kw),
    "resnet50_tv": TorchvisionResNet50,
}


def build_model(name: str, **kwargs) -> OODModel:
    """Build a model by registry name (see ``MODELS``)."""
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
