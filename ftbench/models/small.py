"""Small ResNets for the embedded benchmark, partitioned the way the surgical paper partitions
ResNet-26: block 1 = stem convolution + first stage, block k = stage k, last = classifier."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
import torch.nn.functional as F

from ftbench.models.base import MODELS, BlockModel, ModelEntry, PiecewiseForward


class BasicBlock(nn.Module):
    """Pre-activation-free ResNet basic block (conv-BN-ReLU-conv-BN + shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(PiecewiseForward, BlockModel):
    """Stem + three stages + linear head; sized for 8×8 digits (16/32/64 channels)."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())
        self.stage1 = BasicBlock(w1, w1, 1)
        self.stage2 = BasicBlock(w1, w2, 2)
        self.stage3 = BasicBlock(w2, w3, 2)
        self.head = nn.Linear(w3, num_classes)

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict(
            [("1", [self.stem, self.stage1]), ("2", [self.stage2]), ("3", [self.stage3]), ("last", [self.head])]
        )

    def residual_units(self) -> list[tuple[str, str]]:
        return [("stage1", "1"), ("stage2", "2"), ("stage3", "3")]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return x.mean(dim=(2, 3))

    def _pieces(self) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        # The ops of forward(), one piece per block, in order (the pooling ends block 3).
        return [("1", lambda h: self.stage1(self.stem(h))), ("2", lambda h: self.stage2(h)),
                ("3", lambda h: self.stage3(h).mean(dim=(2, 3))), ("last", lambda h: self.head(h))]



MODELS.register("digits-resnet")(
    ModelEntry(
        build=lambda cin, n: SmallResNet(cin, n),
        block_names=("1", "2", "3", "last"),
        help="ResNet with 3 stages (16/32/64 ch) for 8x8 images; blocks 1 (stem+stage1), 2, 3, last",
    )
)
