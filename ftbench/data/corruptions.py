"""Image corruptions as batched torch operations (CPU or GPU), seeded and deterministic.

Definitions follow Hendrycks & Dietterich (ICLR 2019), ``make_cifar_c.py`` / ``make_imagenet_c.py``:
each corruption maps a float batch ``x`` in [0, 1] of shape (N, C, H, W) to a corrupted batch of the
same shape and range. Severity parameters come in two published sets: ``cifar`` (32 px images) and
``imagenet`` (224 px). ``inversion`` is not part of ImageNet-C; it is the input-level shift the
embedded digits benchmark adds because it is the purest case for tuning the first block
(``1 - x`` is undone exactly by negating the first convolution).

All randomness comes from the ``generator`` argument, so a corruption is a pure function of
(images, severity, seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ftbench.errors import UsageError, unknown

Corruption = Callable[[torch.Tensor, int, torch.Generator, str], torch.Tensor]
CORRUPTIONS: dict[str, Corruption] = {}

# Published severity constants, index = severity - 1.
PARAMS: dict[str, dict[str, list]] = {
    "cifar": {
        "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
        "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
        "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    },
    "imagenet": {
        "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
        "shot_noise": [60, 25, 12, 5, 3],
        "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
        "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
        "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
        "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    },
}
# Strength of the inversion blend x -> (1 - a) x + a (1 - x); severity 5 is the full negative.
INVERSION = [0.6, 0.7, 0.8, 0.9, 1.0]


def _register(name: str) -> Callable[[Corruption], Corruption]:
    def deco(fn: Corruption) -> Corruption:
        CORRUPTIONS[name] = fn
        return fn

    return deco


def _c(name: str, severity: int, scale: str):
    return PARAMS[scale][name][severity - 1]


def _randn(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # Draw on the generator's device, then move: keeps results identical across devices.
    return torch.randn(x.shape, generator=g, device=g.device, dtype=torch.float32).to(x.device)


def _rand(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape, generator=g, device=g.device, dtype=torch.float32).to(x.device)


@_register("gaussian_noise")
def gaussian_noise(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    return (x + _randn(x, g) * _c("gaussian_noise", severity, scale)).clamp(0, 1)


@_register("shot_noise")
def shot_noise(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    c = _c("shot_noise", severity, scale)
    rate = (x * c).to(g.device)
    return (torch.poisson(rate, generator=g).to(x.device) / c).clamp(0, 1)


@_register("impulse_noise")
def impulse_noise(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # skimage.util.random_noise(mode="s&p", amount=c): a fraction c of values is replaced,
    # half by 1 (salt) and half by 0 (pepper), independently per channel value.
    amount = _c("impulse_noise", severity, scale)
    u, salt = _rand(x, g), _rand(x, g) < 0.5
    hit = u < amount
    return torch.where(hit, salt.to(x.dtype), x)


def _disk(radius: float, alias_blur: float, device: torch.device) -> torch.Tensor:
    # make_imagenet_c.disk: a normalised disk, then a Gaussian blur of sigma alias_blur.
    if radius <= 8:
        size, ksize = range(-8, 9), 3
    else:
        size, ksize = range(-int(radius), int(radius) + 1), 5
    coords = torch.tensor(list(size), dtype=torch.float32, device=device)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    kernel = ((xx**2 + yy**2) <= radius**2).float()
    kernel /= kernel.sum()
    gk = _gaussian_kernel1d(alias_blur, ksize // 2, device)
    kernel = F.conv2d(kernel[None, None], gk[None, None, None, :], padding=(0, ksize // 2))
    kernel = F.conv2d(kernel, gk[None, None, :, None], padding=(ksize // 2, 0))
    return kernel[0, 0]


def _gaussian_kernel1d(sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / max(sigma, 1e-8)) ** 2)
    return k / k.sum()


def _depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    kh, kw = kernel.shape
    w = kernel.to(x.dtype).expand(c, 1, kh, kw)
    # Reflect padding where the image is large enough (cv2's default border), else replicate.
    mode = "reflect" if min(x.shape[-2:]) > max(kh, kw) // 2 else "replicate"
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=mode)
    return F.conv2d(xp, w, groups=c)


@_register("defocus_blur")
def defocus_blur(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    radius, alias = _c("defocus_blur", severity, scale)
    kernel = _disk(radius, alias, x.device)
    # Crop the all-zero border of the 17x17 support so small images can be padded.
    nz = kernel.abs().sum(0) > 0
    keep = torch.nonzero(nz).flatten()
    lo, hi = int(keep.min()), int(keep.max())
    kernel = kernel[lo : hi + 1, lo : hi + 1]
    return _depthwise(x, kernel).clamp(0, 1)


@_register("contrast")
def contrast(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    c = _c("contrast", severity, scale)
    means = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - means) * c + means).clamp(0, 1)


def _box_weights(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """PIL's BOX resampling as an (n_out, n_in) matrix (Pillow ``precompute_coeffs``).

    Each output pixel averages the input pixels whose centres fall in its box: the output pixel's
    footprint when shrinking, one input pixel wide when enlarging.
    """
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - 0.5 * fscale + 0.5), 0)
        hi = min(int(center + 0.5 * fscale + 0.5), n_in)
        for i in range(lo, hi):
            t = (i - center + 0.5) / fscale
            w[o, i] = 1.0 if -0.5 < t <= 0.5 else 0.0
        if w[o].sum() == 0:  # degenerate rounding: fall back to the nearest input pixel
            w[o, min(int(center), n_in - 1)] = 1.0
        w[o] /= w[o].sum()
    return w.to(device=device, dtype=torch.float32)


def box_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an N×C×H×W batch with PIL's BOX filter, as two batched matrix products."""
    h, w = x.shape[-2:]
    wh = _box_weights(h, size[0], x.device)
    ww = _box_weights(w, size[1], x.device)
    return torch.einsum("oh,nchw,pw->ncop", wh, x, ww)


@_register("pixelate")
def pixelate(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # make_*_c.pixelate: PIL BOX resize down to c * size, then BOX resize back up.
    c = _c("pixelate", severity, scale)
    h, w = x.shape[-2:]
    small = box_resize(x, (max(1, int(h * c)), max(1, int(w * c))))
    return box_resize(small, (h, w)).clamp(0, 1)


@_register("inversion")
def inversion(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    a = INVERSION[severity - 1]
    return (1 - a) * x + a * (1 - x)


def names() -> list[str]:
    """Names of the available corruptions."""
    return sorted(CORRUPTIONS)


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int, scale: str = "cifar") -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to a float batch in [0, 1].

    Deterministic given ``seed``: the random draws use a CPU generator, so the same seed gives the
    same corrupted images on every device.
    """
    if name not in CORRUPTIONS:
        raise unknown("corruption", name, names())
    if not (isinstance(severity, int) and 1 <= severity <= 5):
        raise UsageError(f"severity must be an integer in 1..5, got {severity!r}")
    if scale not in PARAMS:
        raise unknown("corruption scale", scale, sorted(PARAMS))
    g = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))
    out = CORRUPTIONS[name](x.float(), severity, g, scale)
    assert out.shape == x.shape and math.isfinite(float(out.sum()))
    return out
