"""The CIFAR networks of the papers, which are not timm models, with named blocks.

* **CIFAR ResNet-26** (``resnet26-cifar``; He et al. 2016, the surgical paper's CIFAR network) and
  **WideResNet-28-10** (``wrn-28-10``; Zagoruyko & Komodakis 2016, as in RobustBench/TRADES copies):
  1 = stem convolution + stage 1, 2 = stage 2, 3 = stage 3 (+ WRN's final BatchNorm), ``last`` = the
  linear classifier ``head``.

Both are built under :data:`ftbench.models.base.BUILD_SEED` and train from scratch on the source split
by default (no hub weights); ``--weights PATH`` loads a state dict in this layout or the original
one (``fc`` for the classifier), see :mod:`ftbench.models.weights`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ftbench.models.base import (
    BUILD_SEED,
    MODELS,
    BlockModel,
    ModelEntry,
    PiecewiseForward,
)


class _CifarBasicBlock(nn.Module):
    """He et al.'s basic block (conv-BN-ReLU-conv-BN + shortcut, ReLU), 1×1 conv + BN projection."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _CifarNet(PiecewiseForward, BlockModel):
    """Shared by the CIFAR networks: three stages, a stem, pieces for the prefix fast path."""

    stages: tuple[str, str, str] = ("layer1", "layer2", "layer3")

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _tail(self, h: torch.Tensor) -> torch.Tensor:  # after the last stage: to pooled features
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)

    def _pieces(self) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        s1, s2, s3 = (getattr(self, s) for s in self.stages)
        return [("1", lambda x: s1(self._stem(x))), ("2", lambda h: s2(h)), ("3", lambda h: self._tail(s3(h))),
                ("last", lambda h: self.head(h))]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for _, piece in self._pieces()[:-1]:
            x = piece(x)
        return x

    def residual_units(self) -> list[tuple[str, str]]:
        return [(f"{path}.{i}", str(k + 1)) for k, s in enumerate(self.stages)
                for path in [s if isinstance(getattr(self, s), nn.Sequential) else f"{s}.layer"]
                for i in range(len(self.get_submodule(path)))]

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Published checkpoints call the classifier ``fc``; here it is ``head``."""
        return {("head." + k[3:]) if k.startswith("fc.") else k: v for k, v in sd.items()}

    def first_conv(self) -> str | None:
        return "conv1.weight"


class CifarResNet(_CifarNet):
    """He et al. (2016, §4.2) CIFAR ResNet of depth 6n+2 (ResNet-26: n = 4).

    A 3×3 convolution (16·width channels) + BN + ReLU, three stages of n basic blocks with 16, 32,
    64 (× width) channels (stride 2 entering stages 2 and 3, with a 1×1 convolution + BN projection
    shortcut where the shape changes), global average pooling and a linear classifier.
    Blocks: 1 = stem + stage 1, 2 = stage 2, 3 = stage 3, last = classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int = 26, width: int = 1) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 26, ...), got {depth}")
        n = (depth - 2) // 6
        w = [16 * width, 32 * width, 64 * width]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BUILD_SEED)
            self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w[0])
            cin = w[0]
            for k, c in enumerate(w):
                layers = []
                for i in range(n):
                    layers.append(_CifarBasicBlock(cin, c, 2 if (k > 0 and i == 0) else 1))
                    cin = c
                setattr(self, f"layer{k + 1}", nn.Sequential(*layers))
            self.head = nn.Linear(cin, num_classes)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict([("1", [self.conv1, self.bn1, self.layer1]), ("2", [self.layer2]), ("3", [self.layer3]),
                            ("last", [self.head])])


class _WideBlock(nn.Module):
    """Zagoruyko & Komodakis' pre-activation block (BN-ReLU-conv-BN-ReLU-conv + shortcut).

    Parameter names follow the widely used reference implementation (xternalz/WideResNet-pytorch,
    as in RobustBench): ``bn1, conv1, bn2, conv2, convShortcut``. Where the width changes, the
    pre-activation is shared by the residual branch and the 1×1 projection shortcut.
    """

    def __init__(self, cin: int, cout: int, stride: int, drop: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop > 0:
            out = F.dropout(out, p=self.drop, training=self.training)
        out = self.conv2(out)
        return (x if self.convShortcut is None else self.convShortcut(pre)) + out


class _WideStage(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, drop: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[_WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(_CifarNet):
    """WRN-depth-k (Zagoruyko & Komodakis, 2016) for 32×32 images; WRN-28-10 has 36.5M parameters.

    A 3×3 convolution to 16 channels, three stages of (depth−4)/6 pre-activation blocks with 16k,
    32k, 64k channels (stride 2 entering stages 2 and 3), BN + ReLU, global average pooling and a
    linear classifier. Blocks: 1 = stem convolution + stage 1, 2 = stage 2, 3 = stage 3 + the final
    BN, last = classifier. Key layout of the reference implementation (``conv1``, ``block1.layer.0.bn1``,
    …, ``bn1``, ``fc``), so its checkpoints load with ``--weights``.
    """

    stages = ("block1", "block2", "block3")

    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, widen: int = 10, drop: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BUILD_SEED)
            self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
            self.block1 = _WideStage(n, w[0], w[1], 1, drop)
            self.block2 = _WideStage(n, w[1], w[2], 2, drop)
            self.block3 = _WideStage(n, w[2], w[3], 2, drop)
            self.bn1 = nn.BatchNorm2d(w[3])
            self.head = nn.Linear(w[3], num_classes)
            for m in self.modules():  # the reference initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        return super()._tail(F.relu(self.bn1(h)))

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict([("1", [self.conv1, self.block1]), ("2", [self.block2]), ("3", [self.block3, self.bn1]),
                            ("last", [self.head])])

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # TRADES-style copies also hold an unused ``sub_block1``, which the forward pass never runs.
        return super().adapt_state_dict({k: v for k, v in sd.items() if not k.startswith("sub_block1.")})


MODELS.register("resnet26-cifar")(ModelEntry(
    build=lambda cin, n: CifarResNet(cin, n, depth=26, width=1),
    block_names=("1", "2", "3", "last"),
    help="CIFAR ResNet-26 (He et al. 2016: 3 stages x 4 basic blocks, 16/32/64 ch; block 1 = stem + stage 1)",
    native=(3, 10),
))
MODELS.register("wrn-28-10")(ModelEntry(
    build=lambda cin, n: WideResNet(cin, n, depth=28, widen=10),
    block_names=("1", "2", "3", "last"),
    help="WideResNet-28-10 for CIFAR (Zagoruyko & Komodakis 2016; block 1 = stem + stage 1, block 3 ends with the final BN)",
    native=(3, 10),
))
