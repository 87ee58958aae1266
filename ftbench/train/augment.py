"""Training augmentation on the device, batched: a RandomResizedCrop per image (and a horizontal flip),
drawn for the whole batch at once and applied with one ``grid_sample`` — no per-image Python.

The two recipes the papers' releases train with (``--augment``):

- ``crop``: RandomResizedCrop(scale 0.9–1.0, ratio 3/4–4/3, bicubic), CLIP's training transform
  (``clip.py`` ``_transform(is_train=True)`` in wise-ft), which FLYP's and AutoFT's releases use;
- ``crop-flip``: RandomResizedCrop(scale 0.08–1.0, ratio 3/4–4/3, bilinear) + RandomHorizontalFlip,
  LP-FT's training transform for Living-17/Entity-30 (``configs/adaptation/datasets_living17.yaml``).

The crop box follows torchvision's ``RandomResizedCrop.get_params``: up to 10 draws of an area
fraction (uniform in ``scale``) and a log-uniform aspect ratio, the first draw that fits the image
taken, else the central crop of the largest allowed aspect ratio. The boxes are drawn on the CPU
from a generator seeded by the run seed and the step, so a resumed run draws what it would have.

Differences from the releases (docs/methods.md): the crop is taken from the benchmark's image at
the model's input size (decoded once) and resized back to that size, where the releases crop the
full-resolution photo and resize it down; torch's bicubic kernel is a = −0.75 where PIL's is −0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params


@dataclass(frozen=True)
class Crop:
    """A RandomResizedCrop recipe (and whether to flip half the images horizontally)."""

    scale: tuple[float, float]
    ratio: tuple[float, float]
    mode: str  # grid_sample's interpolation
    flip: bool
    help: str


AUGMENTS: dict[str, Crop] = {
    "crop": Crop((0.9, 1.0), (3 / 4, 4 / 3), "bicubic", False,
                 "RandomResizedCrop(scale 0.9-1, bicubic): CLIP's training transform (wise-ft, FLYP, AutoFT)"),
    "crop-flip": Crop((0.08, 1.0), (3 / 4, 4 / 3), "bilinear", True,
                      "RandomResizedCrop(scale 0.08-1, bilinear) + horizontal flip: LP-FT's (Living-17, Entity-30)"),
}


def crop_boxes(n: int, h: int, w: int, crop: Crop, generator: torch.Generator) -> torch.Tensor:
    """(n, 4) float boxes ``(top, left, height, width)`` in pixels, as torchvision's get_params draws them."""
    area = h * w
    frac = torch.empty(n, ATTEMPTS).uniform_(*crop.scale, generator=generator)
    log_r = torch.empty(n, ATTEMPTS).uniform_(math.log(crop.ratio[0]), math.log(crop.ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    cw = torch.round(torch.sqrt(area * frac * aspect))
    ch = torch.round(torch.sqrt(area * frac / aspect))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    u = torch.rand(n, ATTEMPTS, 2, generator=generator)
    top = torch.floor(u[..., 0] * (h - ch + 1))
    left = torch.floor(u[..., 1] * (w - cw + 1))
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    # The fallback: the central crop, clamped to the ratio range (torchvision's get_params).
    in_ratio = w / h
    if in_ratio < crop.ratio[0]:
        fw, fh = w, round(w / crop.ratio[0])
    elif in_ratio > crop.ratio[1]:
        fh, fw = h, round(h * crop.ratio[1])
    else:
        fw, fh = w, h
    fallback = torch.tensor([(h - fh) // 2, (w - fw) // 2, fh, fw], dtype=torch.float32)
    pick = first.clamp(min=0)
    rows = torch.arange(n)
    boxes = torch.stack([top[rows, pick], left[rows, pick], ch[rows, pick], cw[rows, pick]], dim=1)
    return torch.where((first >= 0)[:, None], boxes, fallback)


def apply_boxes(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) cropped to its box and resized back to H×W (flipped where
    ``flips``), in one ``affine_grid`` + ``grid_sample`` (align_corners=False: pixel edges map to ±1)."""
    n, _, h, w = x.shape
    b = boxes.to(device=x.device, dtype=torch.float32)
    top, left, ch, cw = b.unbind(1)
    sx, sy = cw / w, ch / h
    cx, cy = (2 * left + cw) / w - 1, (2 * top + ch) / h - 1
    if flips is not None:
        sx = torch.where(flips.to(x.device), -sx, sx)
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(x.float(), grid.to(x.device), mode=mode, padding_mode="border", align_corners=False)
    return out.to(x.dtype)


class Augment:
    """``augment(x, t)``: the batch of step ``t`` (0-based) with recipe ``name`` applied, drawn from a
    generator seeded by ``seed`` and ``t`` (the same draws whether or not the run was resumed)."""

    def __init__(self, name: str, seed: int) -> None:
        self.crop = AUGMENTS[name]
        self.seed = seed

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + t) % 2**63)
        n, _, h, w = x.shape
        boxes = crop_boxes(n, h, w, self.crop, g)
        flips = torch.rand(n, generator=g) < 0.5 if self.crop.flip else None
        return apply_boxes(x, boxes, flips, self.crop.mode)
