"""A model's input transform: how the images its weights were pretrained on were resized, cropped and
normalised (open_clip's preprocess config for the ``clip-*`` towers, timm's ``pretrained_cfg`` for hub
weights), applied to a benchmark's images on the device (issue 22 §2; docs/models.md#input-transforms).

A benchmark's photographs (files of any size: ImageNet and its OOD sets, the WILDS datasets) are
resized and cropped by the model's transform instead of the benchmark's own, once, as they are
decoded (:func:`photo_transform`, set for the length of a run by :func:`model_transform`). Images
a benchmark holds at a fixed size (CIFAR's 32 px, ImageNet-C's 224 px crops) reach the model as
they are and the model applies its transform to each batch (:func:`adapt`): back to the uint8
pixels they were, the same resize and crop, the model's mean and standard deviation.

Resizing is PIL's (what the releases feed their models): two separable, antialiased passes, width
then height, each rounded to uint8 as PIL rounds (:func:`pil_resize`; within one grey level of
``PIL.Image.resize``, tested). PIL's bicubic kernel has a = −0.5; torch's plain bicubic on floats
(a = −0.75, no rounding) is not it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

INTERPOLATIONS = ("bilinear", "bicubic")
CROP_MODES = ("center", "squash")


def pil_resize(x: torch.Tensor, size: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """``x`` (uint8, or floats on the 0–255 scale; …×C×H×W) resized to ``size`` (H, W) as PIL resizes
    a uint8 image: width first, then height, each pass antialiased (PIL's support scaling, which also
    makes torch's bicubic use PIL's a = −0.5) and rounded and clamped to 0–255. Returns uint8."""
    shape = x.shape
    y = x.reshape(-1, *shape[-3:]).float()
    h, w = size
    if y.shape[-1] != w:
        y = torch.nn.functional.interpolate(y, size=(y.shape[-2], w), mode=interpolation, antialias=True,
                                            align_corners=False).round_().clamp_(0, 255)
    if y.shape[-2] != h:
        y = torch.nn.functional.interpolate(y, size=(h, y.shape[-1]), mode=interpolation, antialias=True,
                                            align_corners=False).round_().clamp_(0, 255)
    return y.to(torch.uint8).reshape(*shape[:-2], h, w)


@dataclass(frozen=True)
class InputTransform:
    """A model's evaluation transform (picklable: DataLoader workers call it on each decoded image).

    ``crop_mode="center"`` (timm's and open_clip's ``shortest``): the shorter side resized to
    ``floor(size / crop_pct)`` (the other in proportion), then the central ``size`` crop;
    ``"squash"``: each side resized to ``floor(size / crop_pct)``, aspect ratio not kept, then the
    central crop. Then ``mean``/``std`` normalise ``[0, 1]`` pixels."""

    size: tuple[int, int]  # H, W the model takes
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_mode: str = "center"
    source: str = ""  # where it was read: "open_clip ViT-B-16 'openai'", "timm resnet50.tv_in1k pretrained_cfg"

    def scale_size(self, h: int, w: int) -> tuple[int, int]:
        """H, W an ``h``×``w`` image is resized to before the crop (timm's ``transforms_imagenet_eval``
        arithmetic; torchvision's ``Resize(int)`` for the shorter side)."""
        sh, sw = (math.floor(s / self.crop_pct) for s in self.size)
        if self.crop_mode == "squash":
            return sh, sw
        if sh != sw:  # a non-square target: timm's ResizeKeepRatio
            r = max(sh / h, sw / w)
            return round(h * r), round(w * r)
        if h <= w:
            return sh, int(sh * w / h)
        return int(sh * h / w), sh

    def geometry(self, img: torch.Tensor) -> torch.Tensor:
        """The resize and centre crop of uint8 …×C×H×W images of one size (torchvision's center_crop)."""
        h, w = img.shape[-2:]
        rh, rw = self.scale_size(h, w)
        if (rh, rw) != (h, w):
            img = pil_resize(img, (rh, rw), self.interpolation)
        th, tw = self.size
        if (rh, rw) != (th, tw):
            top, left = int(round((rh - th) / 2.0)), int(round((rw - tw) / 2.0))
            img = img[..., top:top + th, left:left + tw]
        return img

    __call__ = geometry  # a StreamSplit's per-image transform (uint8 C×H×W -> uint8 C×h×w)

    def key(self) -> str:
        """What identifies it in a run id and a result row: every number of the transform."""
        return (f"{self.size[0]}x{self.size[1]} {self.crop_mode} crop_pct={self.crop_pct:g} {self.interpolation} "
                f"mean={','.join(format(v, '.8g') for v in self.mean)} std={','.join(format(v, '.8g') for v in self.std)}")

    def describe(self) -> list[str]:
        """Lines for ``ftbench list models NAME``."""
        sh, sw = (math.floor(s / self.crop_pct) for s in self.size)
        how = (f"shorter side to {sh} px ({self.interpolation}, as PIL), centre crop {self.size[0]}x{self.size[1]}"
               if self.crop_mode == "center" else
               f"squash to {sh}x{sw} ({self.interpolation}, as PIL), centre crop {self.size[0]}x{self.size[1]}")
        return [f"input transform ({self.source}):" if self.source else "input transform:",
                f"  resize: {how}",
                f"  crop_pct: {self.crop_pct:g}   interpolation: {self.interpolation}   crop_mode: {self.crop_mode}",
                f"  input_size: 3x{self.size[0]}x{self.size[1]}",
                f"  mean: {', '.join(format(v, '.8g') for v in self.mean)}",
                f"  std: {', '.join(format(v, '.8g') for v in self.std)}"]


# The model's transform for the benchmark splits built while a run loads its task (runner.load).
_MODEL: ContextVar[InputTransform | None] = ContextVar("ftbench_model_transform", default=None)


@contextmanager
def model_transform(transform: InputTransform | None) -> Iterator[None]:
    """Within this block, :func:`photo_transform` gives ``transform`` (None: the benchmarks' own)."""
    token = _MODEL.set(transform)
    try:
        yield
    finally:
        _MODEL.reset(token)


def photo_transform(own: Any) -> Any:
    """The resize/crop of a benchmark's photographs: the run's model's (:func:`model_transform`), else
    the benchmark's ``own``."""
    t = _MODEL.get()
    return own if t is None else t


def adapt(x: torch.Tensor, t: InputTransform, mean: Sequence[float] | None, std: Sequence[float] | None,
          scale: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
    """A batch ``x`` normalised by a benchmark's ``mean``/``std`` as model transform ``t`` gives it to
    the model: an image of ``t``'s size only re-normalised (``x·scale + shift``, the exact affine map
    from the benchmark's statistics to ``t``'s; None: they are the same); one of another size first
    taken back to its uint8 pixels, resized and cropped by ``t`` (:meth:`InputTransform.geometry`) and
    normalised with ``t``'s statistics."""
    c = x.shape[-3]
    if tuple(x.shape[-2:]) == t.size or mean is None or std is None or not len(mean) == len(t.mean) == c:
        if scale is not None and shift is not None:
            x = torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))
        if tuple(x.shape[-2:]) != t.size:  # no statistics to undo (a grey image on an RGB tower): resize as is
            x = torch.nn.functional.interpolate(x, size=t.size, mode=t.interpolation, align_corners=False)
        return x
    dev = x.device
    bm = torch.tensor(mean, device=dev, dtype=torch.float32).view(1, -1, 1, 1)
    bs = torch.tensor(std, device=dev, dtype=torch.float32).view(1, -1, 1, 1)
    px = (x.float() * bs + bm).mul_(255).round_().clamp_(0, 255)
    img = t.geometry(px.to(torch.uint8)).float().div_(255)
    m = torch.tensor(t.mean, device=dev, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(t.std, device=dev, dtype=torch.float32).view(1, -1, 1, 1)
    return img.sub_(m).div_(s).to(x.dtype)
