"""Image corruptions as batched torch operations (CPU or GPU), seeded and deterministic.

The 15 ImageNet-C corruptions and the 4 extra ones of Hendrycks & Dietterich (ICLR 2019), following
their ``make_cifar_c.py`` / ``make_imagenet_c.py``: each maps a float batch ``x`` in [0, 1] of shape
(N, C, H, W), C = 1 or 3, to a corrupted batch of the same shape and range. Severity parameters
come in the two published sets: ``cifar`` (CIFAR-10-C, 32 px images) and ``imagenet`` (ImageNet-C,
224 px). Parameters given in pixels (blur radii, displacement sizes) are used as published whatever
the image size, so a set reproduces the reference at its own resolution.

The reference code calls OpenCV, scikit-image, ImageMagick (Wand) and Pillow on one image at a
time; here every step is a torch operation on the whole batch. Where the reference's output can be
reproduced it is (JPEG bit-exact with libjpeg-turbo, ImageMagick's motion-blur kernel, OpenCV's
Canny and chamfer distance, scikit-image's HSV and Gaussian filters); docs/benchmarks.md
("Corruptions") lists every difference, chiefly: the frost photographs are read from the
``imagecorruptions`` wheel when it is installed and replaced by a procedural texture otherwise,
intermediate uint8 roundings are not applied, and random draws come from torch.

``inversion`` is not part of ImageNet-C; it is the input-level shift the embedded digits benchmark
adds because it is the purest case for tuning the first block (``1 - x`` is undone exactly by
negating the first convolution).

All randomness comes from the ``generator`` argument (a CPU generator, so a corruption is a pure
function of (images, severity, seed) on every device).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ftbench.errors import UsageError, unknown

Corruption = Callable[[torch.Tensor, int, torch.Generator, str], torch.Tensor]
CORRUPTIONS: dict[str, Corruption] = {}

# Published severity constants, index = severity - 1, copied from make_cifar_c.py ("cifar") and
# make_imagenet_c.py ("imagenet"). Tuples keep the reference's order of fields; see each function.
PARAMS: dict[str, dict[str, list]] = {
    "cifar": {
        "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
        "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
        "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],
        "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        # np.arange(start, stop, step) of zoom factors
        "zoom_blur": [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
        "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1],
        "snow": [
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ],
        "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        "spatter": [
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ],
        "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
        "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
        "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
        "elastic_transform": [
            (32 * 0, 32 * 0, 32 * 0.08),
            (32 * 0.05, 32 * 0.2, 32 * 0.07),
            (32 * 0.08, 32 * 0.06, 32 * 0.06),
            (32 * 0.1, 32 * 0.04, 32 * 0.05),
            (32 * 0.1, 32 * 0.03, 32 * 0.03),
        ],
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
        "jpeg_compression": [80, 65, 58, 50, 40],
    },
    "imagenet": {
        "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
        "shot_noise": [60, 25, 12, 5, 3],
        "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
        "speckle_noise": [0.15, 0.2, 0.35, 0.45, 0.6],
        "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
        "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        "zoom_blur": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
        "gaussian_blur": [1, 2, 3, 4, 6],
        "snow": [
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ],
        "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        "fog": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
        "spatter": [
            (0.65, 0.3, 4, 0.69, 0.6, 0),
            (0.65, 0.3, 3, 0.68, 0.6, 0),
            (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1),
            (0.67, 0.4, 1, 0.65, 1.5, 1),
        ],
        "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
        "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
        "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
        # "244 should have been 224, but ultimately nothing is incorrect" (make_imagenet_c.py)
        "elastic_transform": [
            (244 * 2, 244 * 0.7, 244 * 0.1),
            (244 * 2, 244 * 0.08, 244 * 0.2),
            (244 * 0.05, 244 * 0.01, 244 * 0.02),
            (244 * 0.07, 244 * 0.01, 244 * 0.02),
            (244 * 0.12, 244 * 0.01, 244 * 0.02),
        ],
        "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
        "jpeg_compression": [25, 18, 15, 10, 7],
    },
}
# plasma_fractal's map size in each reference script (its default argument).
FOG_MAPSIZE = {"cifar": 32, "imagenet": 256}
# make_cifar_c.py shrinks the frost photographs by 0.2 before cropping; ImageNet-C crops them as is.
FROST_SCALE = {"cifar": 0.2, "imagenet": 1.0}
# Strength of the inversion blend x -> (1 - a) x + a (1 - x); severity 5 is the full negative.
INVERSION = [0.6, 0.7, 0.8, 0.9, 1.0]
# Corruptions defined on colour only: they refuse 1-channel images (hue is undefined on grey).
COLOR_ONLY = {"saturate"}
# ITU-R 601 luma weights: OpenCV's RGB2GRAY (snow) and the grey of the colour overlays.
LUMA = (0.299, 0.587, 0.114)


def _register(name: str) -> Callable[[Corruption], Corruption]:
    def deco(fn: Corruption) -> Corruption:
        CORRUPTIONS[name] = fn
        return fn

    return deco


def _c(name: str, severity: int, scale: str):
    return PARAMS[scale][name][severity - 1]


# ----------------------------------------------------------------------------- random draws


def _randn(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # Draw on the generator's device, then move: keeps results identical across devices.
    return torch.randn(x.shape, generator=g, device=g.device, dtype=torch.float32).to(x.device)


def _rand(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape, generator=g, device=g.device, dtype=torch.float32).to(x.device)


def _uniform(shape: tuple[int, ...], g: torch.Generator, device: torch.device, lo: float = 0.0,
             hi: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    u = torch.rand(shape, generator=g, device=g.device, dtype=dtype)
    return (u * (hi - lo) + lo).to(device)


def _normal(shape: tuple[int, ...], g: torch.Generator, device: torch.device, mean: float = 0.0,
            std: float = 1.0) -> torch.Tensor:
    n = torch.randn(shape, generator=g, device=g.device, dtype=torch.float32)
    return (n * std + mean).to(device)


# ----------------------------------------------------------------------------- filtering helpers


def _luma(x: torch.Tensor) -> torch.Tensor:
    """N×1×H×W grey level: OpenCV's RGB2GRAY weights for colour, the image itself for grey."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _fold_index(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map integer indices (any range) into [0, n) by a boundary rule.

    ``nearest``: clamp (scipy "nearest", OpenCV REPLICATE); ``reflect``: half-sample symmetric,
    d c b a | a b c d (scipy/scikit-image "reflect"); ``mirror``: whole-sample, d c b | a b c d
    (OpenCV REFLECT_101, the default border of its filters).
    """
    if mode == "nearest" or n == 1:
        return idx.clamp(0, n - 1)
    if mode == "reflect":
        i = torch.remainder(idx, 2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)
    if mode == "mirror":
        i = torch.remainder(idx, 2 * n - 2)
        return torch.where(i >= n, 2 * n - 2 - i, i)
    raise ValueError(mode)


def _filter_matrix(n: int, kernel: torch.Tensor, mode: str, device: torch.device,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The n×n matrix of a 1-D correlation with ``kernel`` (odd length) under boundary ``mode``.

    A matrix handles every boundary rule exactly, however wide the kernel is against the image
    (ImageNet-C's elastic transform blurs 224 px with a 1025-tap Gaussian), at the cost of an
    n×n product, which is small for images.
    """
    r = (len(kernel) - 1) // 2
    src = torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :]
    cols = _fold_index(src, n, mode)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.scatter_add_(1, cols, kernel.double().cpu().expand(n, -1).contiguous())
    return m.to(device=device, dtype=dtype)


@contextlib.contextmanager
def _full_precision() -> Iterator[None]:
    """Filters are matrix products and convolutions: keep them in true float32 on GPUs where TF32
    is on (cuDNN convolutions default to it), so GPU and CPU agree to float rounding."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=False):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _separable(x: torch.Tensor, kh: torch.Tensor, kw: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate the last two axes of ``x`` with 1-D kernels ``kh`` (rows) and ``kw`` (columns)."""
    mh = _filter_matrix(x.shape[-2], kh, mode, x.device, x.dtype)
    mw = _filter_matrix(x.shape[-1], kw, mode, x.device, x.dtype)
    with _full_precision():
        return mh @ x @ mw.T


def _gaussian_kernel1d(sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / max(sigma, 1e-8)) ** 2)
    return k / k.sum()


def _gaussian(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """scikit-image ``filters.gaussian`` (scipy ``gaussian_filter``) over the last two axes."""
    if sigma < 1e-15:  # scipy skips an axis whose sigma is 0
        return x
    radius = int(truncate * float(sigma) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 / float(sigma) ** 2 * t**2)
    k = k / k.sum()
    return _separable(x, k, k, mode)


def _box3(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``blur(x, (3, 3))`` on (N, H, W): 3×3 sum in double, REFLECT_101 border, times 1/9."""
    h, w = x.shape[-2:]
    ri = _fold_index(torch.arange(-1, h + 1, device=x.device), h, "mirror")
    ci = _fold_index(torch.arange(-1, w + 1, device=x.device), w, "mirror")
    p = x.double()[:, ri][:, :, ci]
    s = sum(p[:, i : i + h, j : j + w] for i in range(3) for j in range(3))
    return (s * (1.0 / 9.0)).float()


def _gather(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x[n, :, rows[n, i, j], cols[n, i, j]]`` for integer maps broadcastable to (N, H', W')."""
    n, c, h, w = x.shape
    rows, cols = torch.broadcast_tensors(rows, cols)
    rows, cols = rows.expand(n, -1, -1), cols.expand(n, -1, -1)
    ho, wo = rows.shape[-2:]
    idx = (rows * w + cols).reshape(n, 1, ho * wo).expand(n, c, ho * wo)
    return torch.gather(x.reshape(n, c, h * w), 2, idx).reshape(n, c, ho, wo)


def _bilinear(x: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of ``x`` at fractional (row, col) maps (N, H', W'), neighbours clamped.

    Callers fold coordinates into the image first (see :func:`_fold_coord`); clamping the two
    neighbours then reproduces the reflecting boundaries of scipy and OpenCV exactly.
    """
    h, w = x.shape[-2:]
    r0, c0 = torch.floor(r), torch.floor(c)
    fr, fc = (r - r0)[:, None], (c - c0)[:, None]
    r0, c0 = r0.long(), c0.long()
    ra, rb = r0.clamp(0, h - 1), (r0 + 1).clamp(0, h - 1)
    ca, cb = c0.clamp(0, w - 1), (c0 + 1).clamp(0, w - 1)
    top = _gather(x, ra, ca) * (1 - fc) + _gather(x, ra, cb) * fc
    bottom = _gather(x, rb, ca) * (1 - fc) + _gather(x, rb, cb) * fc
    return top * (1 - fr) + bottom * fr


def _fold_coord(t: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Fold fractional coordinates into the image: ``reflect`` (scipy) or ``mirror`` (OpenCV 101)."""
    if n == 1:
        return torch.zeros_like(t)
    if mode == "reflect":
        u = torch.remainder(t + 0.5, 2 * n)
        return torch.where(u >= n, 2 * n - u, u) - 0.5
    u = torch.remainder(t, 2 * n - 2)
    return torch.where(u > n - 1, 2 * n - 2 - u, u)


def _clipped_zoom(x: torch.Tensor, z: float) -> torch.Tensor:
    """make_*_c ``clipped_zoom``: zoom the centre crop by ``z`` and crop back to the input size.

    ``scipy.ndimage.zoom(order=1)`` maps output pixel o to input o (n_in - 1) / (n_out - 1), which
    is bilinear interpolation with ``align_corners=True``. Each axis is handled with its own size
    (the reference assumes square images).
    """
    h, w = x.shape[-2:]
    ch, cw = int(math.ceil(h / z)), int(math.ceil(w / z))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    oh, ow = int(round(ch * z)), int(round(cw * z))
    big = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    th, tw = (oh - h) // 2, (ow - w) // 2
    return big[..., th : th + h, tw : tw + w]


def _motion_blur(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick ``MotionBlurImage`` (the Wand call in make_*_c), one angle (degrees) per image.

    A one-sided Gaussian of ``2 ceil(radius) + 1`` taps, ``exp(-i^2 / 2 sigma^2)`` normalised, samples
    the pixel ``i`` steps along the angle, offsets rounded as ImageMagick does (``ceil(v - 0.5)``);
    pixels beyond the border repeat the edge (ImageMagick's default virtual-pixel method).
    """
    n, _, h, w = x.shape
    width = 2 * int(math.ceil(radius)) + 1
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(i**2) / (2.0 * max(sigma, 1e-12) ** 2))
    k = (k / k.sum()).tolist()
    a = torch.deg2rad(angles.double().cpu())[:, None]
    dx = torch.ceil(i[None] * torch.cos(a) - 0.5).long().to(x.device)  # (N, width)
    dy = torch.ceil(i[None] * torch.sin(a) - 0.5).long().to(x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    out = torch.zeros_like(x)
    for t in range(width):
        rr = (rows + dy[:, t, None, None]).clamp(0, h - 1)
        cc = (cols + dx[:, t, None, None]).clamp(0, w - 1)
        out += k[t] * _gather(x, rr, cc)
    return out


def _plasma_fractal(n: int, mapsize: int, wibbledecay: float, g: torch.Generator,
                    device: torch.device) -> torch.Tensor:
    """make_*_c ``plasma_fractal`` (diamond-square), N maps at once, each normalised to [0, 1]."""
    assert mapsize & (mapsize - 1) == 0
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64, device=device)
    step, wibble = mapsize, 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * _uniform(tuple(a.shape), g, device, -wibble, wibble, torch.float64)

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        sq = corner + corner.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        m[:, half::step, half::step] = wibbled(sq)
        dr, ul = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return (m / m.amax(dim=(1, 2), keepdim=True)).float()


# ----------------------------------------------------------------------------- colour


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """scikit-image ``rgb2hsv`` on an N×3×H×W batch (ties: blue over green over red, as there)."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    s = torch.where(delta == 0, torch.zeros_like(v), delta / torch.where(v == 0, torch.ones_like(v), v))
    h = torch.where(b == v, 4.0 + (r - g) / safe, torch.where(g == v, 2.0 + (b - r) / safe, (g - b) / safe))
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(delta == 0, torch.zeros_like(h), h)
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """scikit-image ``hsv2rgb`` on an N×3×H×W batch."""
    h, s, v = hsv.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = torch.remainder(hi, 6).long()
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.stack([torch.stack(rgb, 0) for rgb in table], 0)  # (6, 3, N, H, W)
    idx = sector[None, None].expand(1, 3, *sector.shape)
    return torch.gather(out, 0, idx)[0].permute(1, 0, 2, 3)


# ----------------------------------------------------------------------------- JPEG (libjpeg-turbo)

_JPEG_LUMA = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip
_JPEG_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
                24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32  # fmt: skip

# jfdctint.c / jidctint.c fixed-point constants (CONST_BITS = 13).
_F0298, _F0390, _F0541, _F0765, _F0899, _F1175 = 2446, 3196, 4433, 6270, 7373, 9633
_F1501, _F1847, _F1961, _F2053, _F2562, _F3072 = 12299, 15137, 16069, 16819, 20995, 25172


def _descale(v: torch.Tensor, n: int) -> torch.Tensor:
    return (v + (1 << (n - 1))) >> n


def _jpeg_qtable(base: list[int], quality: int) -> list[int]:
    """jcparam.c ``jpeg_set_quality(quality, force_baseline=TRUE)``."""
    quality = min(max(quality, 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - quality * 2
    return [min(max((b * scale + 50) // 100, 1), 255) for b in base]


def _fdct_islow(d: list[torch.Tensor], first: bool) -> list[torch.Tensor]:
    """One pass of jfdctint.c's ``jpeg_fdct_islow`` over 8 int64 tensors (a row or a column)."""
    t0, t7 = d[0] + d[7], d[0] - d[7]
    t1, t6 = d[1] + d[6], d[1] - d[6]
    t2, t5 = d[2] + d[5], d[2] - d[5]
    t3, t4 = d[3] + d[4], d[3] - d[4]
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    out: list[torch.Tensor] = [d[0]] * 8
    sh = 11 if first else 15  # CONST_BITS -/+ PASS1_BITS
    if first:
        out[0], out[4] = (t10 + t11) << 2, (t10 - t11) << 2
    else:
        out[0], out[4] = _descale(t10 + t11, 2), _descale(t10 - t11, 2)
    z1 = (t12 + t13) * _F0541
    out[2] = _descale(z1 + t13 * _F0765, sh)
    out[6] = _descale(z1 - t12 * _F1847, sh)
    z1, z2, z3, z4 = t4 + t7, t5 + t6, t4 + t6, t5 + t7
    z5 = (z3 + z4) * _F1175
    t4, t5, t6, t7 = t4 * _F0298, t5 * _F2053, t6 * _F3072, t7 * _F1501
    z1, z2, z3, z4 = z1 * -_F0899, z2 * -_F2562, z3 * -_F1961 + z5, z4 * -_F0390 + z5
    out[7] = _descale(t4 + z1 + z3, sh)
    out[5] = _descale(t5 + z2 + z4, sh)
    out[3] = _descale(t6 + z2 + z3, sh)
    out[1] = _descale(t7 + z1 + z4, sh)
    return out


def _idct_islow(d: list[torch.Tensor], first: bool) -> list[torch.Tensor]:
    """One pass of jidctint.c's ``jpeg_idct_islow`` (libjpeg-turbo) over 8 int64 tensors."""
    z2, z3 = d[2], d[6]
    z1 = (z2 + z3) * _F0541
    t2, t3 = z1 - z3 * _F1847, z1 + z2 * _F0765
    t0, t1 = (d[0] + d[4]) << 13, (d[0] - d[4]) << 13
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    o0, o1, o2, o3 = d[7], d[5], d[3], d[1]
    z1, z2, z3, z4 = o0 + o3, o1 + o2, o0 + o2, o1 + o3
    z5 = (z3 + z4) * _F1175
    o0, o1, o2, o3 = o0 * _F0298, o1 * _F2053, o2 * _F3072, o3 * _F1501
    z1, z2, z3, z4 = z1 * -_F0899, z2 * -_F2562, z3 * -_F1961 + z5, z4 * -_F0390 + z5
    o0, o1, o2, o3 = o0 + z1 + z3, o1 + z2 + z4, o2 + z2 + z3, o3 + z1 + z4
    sh = 11 if first else 18  # CONST_BITS - PASS1_BITS, CONST_BITS + PASS1_BITS + 3
    return [_descale(v, sh) for v in (t10 + o3, t11 + o2, t12 + o1, t13 + o0,
                                      t13 - o0, t12 - o1, t11 - o2, t10 - o3)]


def _idct_range_limit(v: torch.Tensor) -> torch.Tensor:
    """libjpeg-turbo's post-IDCT ``range_limit[v & RANGE_MASK]`` (+128, clamped, wraps far out)."""
    m = v & 1023
    return torch.where(m < 128, m + 128, torch.where(m < 512, 255, torch.where(m < 896, 0, m - 896)))


def _jpeg_plane(p: torch.Tensor, qtable: list[int]) -> torch.Tensor:
    """Encode and decode one int64 plane (N, H, W), H and W multiples of 8: islow DCT, quantise."""
    n, h, w = p.shape
    blocks = (p - 128).reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)  # (N, bh, bw, 8, 8)
    rows = _fdct_islow(list(blocks.unbind(-1)), True)  # pass 1 along each row
    cols = _fdct_islow(list(torch.stack(rows, -1).unbind(-2)), False)  # pass 2 along each column
    coef = torch.stack(cols, -2)  # (..., 8 rows = v, 8 cols = u)
    # jcdctmgr.c quantize: libjpeg-turbo's reciprocal arithmetic for the divisor 8 q.
    recip, corr, shift = [], [], []
    for q in qtable:
        div = q * 8
        r = 16 + div.bit_length() - 1
        fq, fr, c = (1 << r) // div, (1 << r) % div, div // 2
        if fr == 0:
            fq, r = fq >> 1, r - 1
        elif fr <= div // 2:
            c += 1
        else:
            fq += 1
        recip.append(fq)
        corr.append(c)
        shift.append(r)
    dev = p.device
    recip_t = torch.tensor(recip, device=dev).view(8, 8)
    corr_t = torch.tensor(corr, device=dev).view(8, 8)
    shift_t = torch.tensor(shift, device=dev).view(8, 8)
    mag = ((coef.abs() + corr_t) * recip_t) >> shift_t
    quant = torch.where(coef < 0, -mag, mag)
    deq = quant * torch.tensor(qtable, device=dev).view(8, 8)
    cols = _idct_islow(list(deq.unbind(-2)), True)  # pass 1 along each column
    rows = _idct_islow(list(torch.stack(cols, -2).unbind(-1)), False)  # pass 2 along each row
    out = _idct_range_limit(torch.stack(rows, -1))
    return out.permute(0, 1, 3, 2, 4).reshape(n, h, w)


def _pad_to(p: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Replicate the last row and column of (N, H0, W0) up to (N, h, w), as libjpeg pads."""
    rows = torch.arange(h, device=p.device).clamp(max=p.shape[-2] - 1)
    cols = torch.arange(w, device=p.device).clamp(max=p.shape[-1] - 1)
    return p[:, rows][:, :, cols]


def _ceil_to(v: int, m: int) -> int:
    return -(-v // m) * m


def _fancy_upsample_h2v2(c: torch.Tensor) -> torch.Tensor:
    """jdsample.c ``h2v2_fancy_upsample``: triangle filter, edges replicated, libjpeg rounding."""
    up = torch.cat([c[:, :1], c[:, :-1]], 1)
    down = torch.cat([c[:, 1:], c[:, -1:]], 1)
    rows = torch.stack([3 * c + up, 3 * c + down], 2).reshape(c.shape[0], -1, c.shape[2])
    left = torch.cat([rows[:, :, :1], rows[:, :, :-1]], 2)
    right = torch.cat([rows[:, :, 1:], rows[:, :, -1:]], 2)
    even, odd = (3 * rows + left + 8) >> 4, (3 * rows + right + 7) >> 4
    return torch.stack([even, odd], 3).reshape(rows.shape[0], rows.shape[1], -1)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress and decode a float batch in [0, 1] as Pillow does (libjpeg-turbo defaults).

    Bit-exact integer emulation of ``Image.save(format="JPEG", quality=q)`` then ``Image.open``:
    JFIF YCbCr with 2×2 chroma subsampling (``h2v2_downsample``), the islow integer DCT, the IJG
    tables scaled by quality, and on decoding the islow IDCT, fancy (triangle) chroma upsampling and
    the fixed-point YCbCr -> RGB conversion. One-channel images are coded as greyscale JPEG.
    Integer arithmetic makes the result identical on every device.
    """
    n, ch, h, w = x.shape
    u8 = torch.round(x.clamp(0, 1) * 255).long()
    if ch == 1:
        plane = _pad_to(u8[:, 0], _ceil_to(h, 8), _ceil_to(w, 8))
        out = _jpeg_plane(plane, _jpeg_qtable(_JPEG_LUMA, quality))[:, :h, :w]
        return (out.float() / 255.0)[:, None]
    fix = lambda v: int(v * 65536 + 0.5)  # noqa: E731  (jccolor.c FIX)
    r, g, b = u8.unbind(1)
    half, off = 1 << 15, 128 << 16
    y = (fix(0.299) * r + fix(0.587) * g + fix(0.114) * b + half) >> 16
    cb = (-fix(0.16874) * r - fix(0.33126) * g + fix(0.5) * b + off + half - 1) >> 16
    cr = (fix(0.5) * r - fix(0.41869) * g - fix(0.08131) * b + off + half - 1) >> 16
    lq, cq = _jpeg_qtable(_JPEG_LUMA, quality), _jpeg_qtable(_JPEG_CHROMA, quality)
    y_dec = _jpeg_plane(_pad_to(y, _ceil_to(h, 16), _ceil_to(w, 16)), lq)[:, :h, :w]
    # Chroma: full resolution padded to the MCU width and an even height, averaged 2×2 with the
    # alternating 1, 2 bias, then the downsampled rows padded to a block by repeating the last one.
    hc, wc = -(-h // 2), -(-w // 2)
    bias = (torch.arange(_ceil_to(w, 16) // 2, device=x.device) % 2) + 1
    dec = []
    for plane in (cb, cr):
        full = _pad_to(plane, 2 * hc, _ceil_to(w, 16))
        s = full[:, 0::2, 0::2] + full[:, 0::2, 1::2] + full[:, 1::2, 0::2] + full[:, 1::2, 1::2]
        small = (s + bias) >> 2
        small = _pad_to(small, _ceil_to(hc, 8), small.shape[-1])
        d = _jpeg_plane(small, cq)[:, :hc, :wc]
        up = _fancy_upsample_h2v2(d) if wc > 2 else d.repeat_interleave(2, 1).repeat_interleave(2, 2)
        dec.append(up[:, :h, :w])
    cb_d, cr_d = dec[0] - 128, dec[1] - 128
    rr = y_dec + ((fix(1.402) * cr_d + half) >> 16)
    gg = y_dec + ((-fix(0.34414) * cb_d + half - fix(0.71414) * cr_d) >> 16)
    bb = y_dec + ((fix(1.772) * cb_d + half) >> 16)
    return torch.stack([rr, gg, bb], 1).clamp(0, 255).float() / 255.0


# ----------------------------------------------------------------------------- OpenCV pieces (spatter)


def _conv3x3(x: torch.Tensor, kernel: list[list[float]]) -> torch.Tensor:
    """OpenCV ``filter2D`` (a correlation) with a 3×3 kernel, REFLECT_101 border, on (N, H, W)."""
    h, w = x.shape[-2:]
    ri = _fold_index(torch.arange(-1, h + 1, device=x.device), h, "mirror")
    ci = _fold_index(torch.arange(-1, w + 1, device=x.device), w, "mirror")
    xp = x[:, ri][:, :, ci][:, None]
    k = torch.tensor(kernel, dtype=x.dtype, device=x.device)[None, None]
    return F.conv2d(xp, k)[:, 0]


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """OpenCV ``Canny(img, low, high)`` (3×3 Sobel, L1 magnitude) on a uint8-valued (N, H, W) batch.

    Sobel with a replicated border; non-maximum suppression in four directions with OpenCV's
    integer tan(22.5°) test and its strict / non-strict comparisons; hysteresis as iterated 8-connected
    growth from the strong edges through the weak ones. Returns a boolean edge map.
    """
    f = img.double()
    h, w = f.shape[-2:]
    ri = torch.arange(-1, h + 1, device=f.device).clamp(0, h - 1)
    ci = torch.arange(-1, w + 1, device=f.device).clamp(0, w - 1)
    p = f[:, ri][:, :, ci][:, None]
    kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=f.dtype, device=f.device)
    dx = F.conv2d(p, kx[None, None])[:, 0].long()
    dy = F.conv2d(p, kx.T.contiguous()[None, None])[:, 0].long()
    mag = dx.abs() + dy.abs()
    lo, hi = math.floor(low), math.floor(high)
    mp = F.pad(mag, (1, 1, 1, 1))  # outside the image the magnitude is 0

    def at(dr: int, dc: int) -> torch.Tensor:
        return mp[:, 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]

    ax, ay = dx.abs(), dy.abs() << 15
    tg22 = ax * 13573  # int(tan(22.5°) * 2^15 + 0.5)
    tg67 = tg22 + (ax << 16)
    horiz = ay < tg22
    vert = ~horiz & (ay > tg67)
    diag = ~horiz & ~vert
    s_neg = (dx ^ dy) < 0  # s = -1: compare (r-1, c+1) and (r+1, c-1); else (r-1, c-1), (r+1, c+1)
    max_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    max_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    max_d = torch.where(s_neg, (mag > at(-1, 1)) & (mag > at(1, -1)), (mag > at(-1, -1)) & (mag > at(1, 1)))
    cand = (mag > lo) & ((horiz & max_h) | (vert & max_v) | (diag & max_d))
    edges = cand & (mag > hi)
    while True:
        grown = cand & (F.max_pool2d(edges[:, None].float(), 3, 1, 1)[:, 0] > 0) | edges
        if torch.equal(grown, edges):
            return edges
        edges = grown


def chamfer_distance(zero: torch.Tensor, limit: float) -> torch.Tensor:
    """OpenCV ``distanceTransform(DIST_L2, 5)`` from the ``zero`` pixels, exact up to ``limit``.

    The 5×5 chamfer mask (steps of cost 1, 1.4 and 2.1969, summed in float32 as OpenCV's IPP path
    does) as iterated min-plus relaxation: a path of cost <= limit has at most ceil(limit) steps, so
    that many rounds give OpenCV's two-pass result wherever it is <= limit (farther pixels only need
    to exceed it). Pixels beyond the border are unreachable, as in OpenCV.
    """
    hv, dg, lg = 1.0, 1.4, 2.1969
    moves = [(0, 1, hv), (1, 0, hv), (1, 1, dg), (1, -1, dg), (1, 2, lg), (2, 1, lg), (1, -2, lg), (2, -1, lg)]
    moves += [(-a, -b, c) for a, b, c in moves]
    big = 1e6
    d = torch.where(zero, 0.0, big).float()
    h, w = d.shape[-2:]
    for _ in range(int(math.ceil(limit)) + 1):
        p = F.pad(d, (2, 2, 2, 2), value=big)
        nd = d
        for a, b, c in moves:
            nd = torch.minimum(nd, p[:, 2 + a : 2 + a + h, 2 + b : 2 + b + w] + c)
        if torch.equal(nd, d):
            break
        d = nd
    return d


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """OpenCV ``equalizeHist`` on a uint8-valued (N, H, W) batch (its lookup table and rounding)."""
    n = img.shape[0]
    flat = img.reshape(n, -1).long()
    total = flat.shape[1]
    hist = torch.zeros(n, 256, dtype=torch.long, device=img.device).scatter_add_(1, flat, torch.ones_like(flat))
    first = (hist > 0).float().argmax(1, keepdim=True)  # the lowest grey level present
    cum = hist.cumsum(1) - hist.cumsum(1).gather(1, first)
    lowest = hist.gather(1, first)
    scale = (255.0 / (total - lowest).clamp(min=1).float())
    lut = torch.round(cum.float() * scale).clamp(0, 255)
    lut = torch.where(torch.arange(256, device=img.device)[None] <= first, 0.0, lut)
    out = lut.gather(1, flat).reshape(img.shape)
    # a constant image maps to itself
    return torch.where((lowest == total).view(n, 1, 1), img.float(), out)


# ----------------------------------------------------------------------------- frost photographs

# The reference draws np.random.randint(5) over a list of six files, so frost6.jpg is never used.
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FROST_DIR_ENV = "FTBENCH_FROST_DIR"  # a folder holding FROST_FILES, or "none" for the procedural texture
_FROST_WARNED: list[bool] = []


def frost_photo_dir() -> Path | None:
    """Where the reference's frost photographs are: ``$FTBENCH_FROST_DIR``, else the ``frost`` folder
    of an installed ``imagecorruptions`` package (found without importing it: its module imports
    OpenCV and numba and, in the PyPI release, breaks on numpy 2 for some functions); None if neither."""
    env = os.environ.get(FROST_DIR_ENV, "").strip()
    if env:
        return None if env.lower() == "none" else Path(env)
    import importlib.util

    try:
        spec = importlib.util.find_spec("imagecorruptions")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "frost"
    return folder if all((folder / f).is_file() for f in FROST_FILES) else None


@functools.lru_cache(maxsize=4)
def _load_frost_photos(folder: str) -> tuple[torch.Tensor, ...]:
    from PIL import Image

    out = []
    for f in FROST_FILES:
        path = Path(folder) / f
        try:
            with Image.open(path) as im:
                # cv2.imread(IMREAD_COLOR) drops an alpha channel without compositing, as convert("RGB")
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read frost photograph {str(path)!r}: {e}") from None
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())  # 3×H×W uint8, RGB
    return tuple(out)


def frost_photographs() -> tuple[torch.Tensor, ...] | None:
    """The five frost photographs the reference draws from (3×H×W uint8 RGB), or None when absent."""
    folder = frost_photo_dir()
    if folder is None:
        return None
    missing = [f for f in FROST_FILES if not (folder / f).is_file()]
    if missing:
        raise UsageError(f"${FROST_DIR_ENV}={str(folder)!r} lacks the frost photographs {', '.join(missing)}; "
                         f"accepted: a folder holding {', '.join(FROST_FILES)}, or 'none'")
    return _load_frost_photos(str(folder))


def frost_source() -> str:
    """Which frost ``frost`` uses here, in words (``ftbench list corruptions``)."""
    folder = frost_photo_dir()
    if folder is not None:
        return f"the reference's photographs ({folder})"
    return ("ftbench's procedural texture, weaker than the reference's photographs (install them with "
            "pip install 'ftbench[frost]')")


def _warn_procedural_frost() -> None:
    if not _FROST_WARNED:
        _FROST_WARNED.append(True)
        print("warning: frost: the reference's photographs are not installed; using ftbench's procedural "
              "texture, 30-40% weaker than the reference (pip install 'ftbench[frost]')", file=sys.stderr)


def _resize_linear(img: torch.Tensor, factor: float) -> torch.Tensor:
    """cv2.resize(img, (0, 0), fx=factor, fy=factor) with INTER_LINEAR on a 3×H×W uint8 image: output
    size round(H·factor), source coordinate (i + 0.5) / factor − 0.5, edges replicated, rounded to
    uint8. For the reference's factor 0.2 the coordinates are the integers 5i + 2: a subsampling."""
    if factor == 1.0:
        return img
    _, h, w = img.shape
    ho, wo = int(round(h * factor)), int(round(w * factor))
    r = ((torch.arange(ho, dtype=torch.float64) + 0.5) / factor - 0.5).clamp(0, h - 1)
    c = ((torch.arange(wo, dtype=torch.float64) + 0.5) / factor - 0.5).clamp(0, w - 1)
    r0, c0 = r.floor().long(), c.floor().long()
    r1, c1 = (r0 + 1).clamp(max=h - 1), (c0 + 1).clamp(max=w - 1)
    fr, fc = (r - r0)[:, None], (c - c0)[None, :]
    f = img.double()
    top = f[:, r0][:, :, c0] * (1 - fc) + f[:, r0][:, :, c1] * fc
    bottom = f[:, r1][:, :, c0] * (1 - fc) + f[:, r1][:, :, c1] * fc
    return (top * (1 - fr) + bottom * fr).round().clamp(0, 255).to(torch.uint8)


def frost_crops(photos: tuple[torch.Tensor, ...], n: int, h: int, w: int, shrink: float,
                g: torch.Generator) -> torch.Tensor:
    """(N, 3, H, W) frost in [0, 1], as make_cifar_c / make_imagenet_c ``frost``: per image one of the
    photographs (randint(5)), shrunk by ``shrink`` (CIFAR-10-C: 0.2; ImageNet-C: 1), and a random
    H×W crop with top-left ``(randint(0, Hp − H), randint(0, Wp − W))``. A photograph smaller than
    H+1 × W+1 (images over 300 px with ImageNet-C's constants) is first enlarged bilinearly to cover
    it, where the reference would fail."""
    shrunk = [_resize_linear(p, shrink) for p in photos]
    out = torch.empty(n, 3, h, w)
    for i in range(n):
        k = int(torch.randint(0, len(shrunk), (1,), generator=g))
        p = shrunk[k]
        if p.shape[1] <= h or p.shape[2] <= w:
            grow = max((h + 1) / p.shape[1], (w + 1) / p.shape[2])
            p = F.interpolate(p[None].float(), scale_factor=grow, mode="bilinear", align_corners=False)[0]
        r0 = int(torch.randint(0, p.shape[1] - h, (1,), generator=g))
        c0 = int(torch.randint(0, p.shape[2] - w, (1,), generator=g))
        out[i] = p[:, r0 : r0 + h, c0 : c0 + w].float() / 255.0
    return out


# ----------------------------------------------------------------------------- frost texture


def frost_texture(n: int, h: int, w: int, shrink: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Procedural stand-in for ImageNet-C's six frost photographs: (N, 3, H, W) in [0, 1].

    The reference crops a random window of one of six photographs of ice on glass (CIFAR-10-C
    first shrinks them by 0.2 with OpenCV's bilinear resize). They cannot be shipped here, so each
    image gets its own texture with the same ingredients: a bluish-white frosted sheet of uneven
    thickness (smooth noise), ice needles at random orientations, clustered where the sheet is
    thick (random seeds smeared along lines, two lengths), and fine grain. It is drawn at the
    photographs' resolution, ``(H, W) / shrink``, and resized bilinearly like the reference.
    """
    hb, wb = int(math.ceil(h / shrink)), int(math.ceil(w / shrink))
    # Drawn on a canvas of at least 128 px and cropped: a small image shows a window of a sheet,
    # like the reference's crop of a large photograph (not a whole sheet squeezed into it).
    hf, wf = hb, wb
    hb, wb = max(hb, 128), max(wb, 128)

    def field(sigma: float) -> torch.Tensor:
        # smoothed white noise scaled to unit variance by the kernel's energy, not by the image:
        # on an image smaller than sigma it stays nearly flat, a crop of a larger sheet
        t = torch.arange(-int(4 * sigma + 0.5), int(4 * sigma + 0.5) + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        energy = float(((k / k.sum()) ** 2).sum())  # the 2-D kernel's sum of squares is this squared
        return _gaussian(_normal((n, hb, wb), g, device), sigma, mode="reflect") / energy

    sheet = field(20.0)
    cluster = 0.4 + torch.sigmoid(2 * sheet)[:, None]
    # Needles in six directions 30° apart, turned at random per image. Each seed is drawn as a
    # line of Gaussian-weighted points (as a two-way ImageMagick motion blur of the seed would
    # be), accumulated in 2^-20 fixed point so the sum does not depend on the order of additions.
    turn = _uniform((n, 1), g, device, 0, 180, torch.float64)
    angle = torch.deg2rad(turn + 30.0 * torch.arange(6, device=device))  # (N, 6)
    acc = torch.zeros(n * hb * wb, dtype=torch.long, device=device)
    for length, density, weight in ((14.0, 0.002, 14.0), (5.0, 0.012, 3.0)):
        u = _uniform((n, 6, hb, wb), g, device)
        strength = _uniform((n, 6, hb, wb), g, device, 0.5, 1)
        hit = u < density * cluster
        ni, ki, ri, ci = hit.nonzero(as_tuple=True)
        width = 2 * int(math.ceil(length)) + 1
        t = torch.arange(-(width - 1), width, device=device, dtype=torch.float64)
        taps = torch.exp(-(t**2) / (2 * (length / 2) ** 2))
        taps = weight * taps / taps[width - 1 :].sum()
        a = angle[ni, ki][:, None]
        rr = ri[:, None] + torch.ceil(t * torch.sin(a) - 0.5).long()
        cc = ci[:, None] + torch.ceil(t * torch.cos(a) - 0.5).long()
        inside = (rr >= 0) & (rr < hb) & (cc >= 0) & (cc < wb)
        flat = (ni[:, None] * hb + rr) * wb + cc
        val = torch.round(strength[hit].double()[:, None] * taps * 2**20).long()
        acc.index_put_((flat[inside],), val[inside], accumulate=True)
    needles = acc.view(n, hb, wb).double().float() / 2**20
    needles = 1 - torch.exp(-0.8 * needles)
    tex = 0.32 + 0.1 * sheet + 0.5 * needles + 0.04 * _normal((n, hb, wb), g, device)
    tint = torch.tensor([0.88, 0.94, 1.0], device=device).view(1, 3, 1, 1)
    tex = (tex[:, None, :hf, :wf] * tint).clamp(0, 1)
    if (hf, wf) != (h, w):
        tex = F.interpolate(tex, size=(h, w), mode="bilinear", align_corners=False)
    return tex


# ----------------------------------------------------------------------------- glass blur shuffle


def glass_permutation(draws: np.ndarray, h: int, w: int, delta: int) -> np.ndarray:
    """The local pixel shuffle of make_*_c ``glass_blur``, one index map per image.

    The reference visits pixels from the bottom-right up, ``for h in range(H - d, d, -1)``,
    ``for w in range(W - d, d, -1)``, draws ``dx, dy = randint(-d, d)`` (so in [-d, d - 1]) and runs
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` with ``(h', w') = (h + dy, w + dx)``. On the H×W×3
    arrays the published datasets were made from, both right-hand sides are *views*: the first
    assignment copies pixel ``(h', w')`` into ``(h, w)``, and the second writes ``(h, w)``'s new value,
    i.e. ``(h', w')``'s own, back to ``(h', w')``. So each step *copies* a neighbour in and swaps
    nothing (only on a 2-D grey array is the statement a swap). The copies depend only on the draws,
    so they are replayed on an index array for the whole batch at once; a pixel may be copied
    several times and one source may fill several pixels, as in the reference. ``draws``: int array
    (iterations, positions, 2 (dx, dy), N). Returns (N, H*W): output pixel p takes input pixel
    ``perm[n, p]`` (not a permutation).
    """
    iters, _, _, n = draws.shape
    perm = np.tile(np.arange(h * w, dtype=np.int64)[:, None], (1, n))  # position-major: rows are contiguous
    ar = np.arange(n)
    pos = np.array([r * w + c for r in range(h - delta, delta, -1) for c in range(w - delta, delta, -1)],
                   dtype=np.int64)
    for it in range(iters):
        targets = pos[:, None] + draws[it, :, 1].astype(np.int64) * w + draws[it, :, 0].astype(np.int64)
        for p, q in zip(pos.tolist(), targets):
            perm[p] = perm[q, ar]  # copy, not swap: see the docstring
    return perm.T.copy()


# ----------------------------------------------------------------------------- the corruptions


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


@_register("speckle_noise")
def speckle_noise(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # x + x * N(0, c): noise proportional to the intensity.
    return (x + x * _randn(x, g) * _c("speckle_noise", severity, scale)).clamp(0, 1)


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
    # cv2.GaussianBlur pads with its default border, BORDER_REFLECT_101 ("mirror" here), not zeros:
    # where the disk reaches the support's edge (radius 8 and 10, ImageNet-C severities 4-5) the
    # reflection folds mass back in (the kernel sums to ~1.013, as the reference's) where zeros would
    # lose it: about one grey level of the output.
    gk = _gaussian_kernel1d(alias_blur, ksize // 2, device)
    return _separable(kernel[None, None], gk, gk, "mirror")[0, 0]


def _depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    kh, kw = kernel.shape
    w = kernel.to(x.dtype).expand(c, 1, kh, kw)
    # Reflect padding where the image is large enough (cv2's default border), else replicate.
    mode = "reflect" if min(x.shape[-2:]) > max(kh, kw) // 2 else "replicate"
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=mode)
    with _full_precision():
        return F.conv2d(xp, w, groups=c)


@_register("defocus_blur")
def defocus_blur(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    radius, alias = _c("defocus_blur", severity, scale)
    kernel = _disk(radius, alias, torch.device("cpu")).to(x.device)  # built on the CPU: the same on every device
    # Crop the all-zero border of the 17x17 support so small images can be padded.
    nz = kernel.abs().sum(0) > 0
    keep = torch.nonzero(nz).flatten()
    lo, hi = int(keep.min()), int(keep.max())
    kernel = kernel[lo : hi + 1, lo : hi + 1]
    return _depthwise(x, kernel).clamp(0, 1)


@_register("glass_blur")
def glass_blur(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # Gaussian blur, local pixel copies (iterations × every interior pixel), Gaussian blur again.
    sigma, delta, iters = _c("glass_blur", severity, scale)
    n, c, h, w = x.shape
    y = _gaussian(x, sigma)
    n_pos = max(h - 2 * delta, 0) * max(w - 2 * delta, 0)
    draws = torch.randint(-delta, delta, (iters, n_pos, 2, n), generator=g, dtype=torch.int8).numpy()
    perm = torch.from_numpy(glass_permutation(draws, h, w, delta)).to(x.device)
    y = torch.gather(y.reshape(n, c, h * w), 2, perm[:, None].expand(n, c, h * w)).reshape(n, c, h, w)
    return _gaussian(y, sigma).clamp(0, 1)


@_register("motion_blur")
def motion_blur(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    radius, sigma = _c("motion_blur", severity, scale)
    angles = _uniform((x.shape[0],), g, torch.device("cpu"), -45, 45, torch.float64)
    return _motion_blur(x, radius, sigma, angles).clamp(0, 1)


@_register("zoom_blur")
def zoom_blur(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # The mean of the image and its centre zoomed by each factor of np.arange(start, stop, step).
    factors = np.arange(*_c("zoom_blur", severity, scale))
    out = x.clone()
    for z in factors.tolist():
        out += _clipped_zoom(x, z)
    return (out / (len(factors) + 1)).clamp(0, 1)


@_register("gaussian_blur")
def gaussian_blur(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    return _gaussian(x, _c("gaussian_blur", severity, scale)).clamp(0, 1)


@_register("snow")
def snow(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # A layer of N(loc, scale) flakes, zoomed, thresholded, motion-blurred along a steep random
    # angle; added with its 180° rotation to the image brightened towards grey * 1.5 + 0.5.
    loc, std, zoom, thresh, radius, sigma, keep = _c("snow", severity, scale)
    n, _, h, w = x.shape
    layer = _normal((n, 1, h, w), g, x.device, loc, std)
    layer = _clipped_zoom(layer, zoom)
    layer = torch.where(layer < thresh, torch.zeros_like(layer), layer).clamp(0, 1)
    angles = _uniform((n,), g, torch.device("cpu"), -135, -45, torch.float64)
    layer = _motion_blur(layer, radius, sigma, angles)
    x = keep * x + (1 - keep) * torch.maximum(x, _luma(x) * 1.5 + 0.5)
    return (x + layer + layer.flip(-1, -2)).clamp(0, 1)


@_register("frost")
def frost(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # c0 * x + c1 * frost: a random crop of one of the reference's photographs when they are at hand
    # (the imagecorruptions wheel, `pip install 'ftbench[frost]'`), else the procedural texture.
    keep, amount = _c("frost", severity, scale)
    n, c, h, w = x.shape
    photos = frost_photographs()
    if photos is None:
        _warn_procedural_frost()
        tex = frost_texture(n, h, w, FROST_SCALE[scale], g, x.device)
    else:
        tex = frost_crops(photos, n, h, w, FROST_SCALE[scale], g).to(x.device)
    if c == 1:
        tex = _luma(tex)
    return (keep * x + amount * tex).clamp(0, 1)


@_register("fog")
def fog(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # Add a plasma fractal, then rescale so the image's maximum is kept.
    amount, decay = _c("fog", severity, scale)
    n, _, h, w = x.shape
    size = FOG_MAPSIZE[scale]
    while size < max(h, w):  # the reference map must cover the image
        size *= 2
    fractal = _plasma_fractal(n, size, decay, g, x.device)[:, None, :h, :w]
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + amount * fractal) * max_val / (max_val + amount)).clamp(0, 1)


@_register("spatter")
def spatter(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # A blurred, thresholded N(loc, scale) liquid layer: water (mode 0) adds an embossed
    # pale-turquoise film, mud (mode 1) paints brown blobs.
    loc, std, sigma, thresh, strength, mode = _c("spatter", severity, scale)
    n, c, h, w = x.shape
    # float64 like the reference: the uint8 edge image and its global histogram equalisation
    # are sensitive to the last bit of the layer.
    liquid = _gaussian(_normal((n, h, w), g, x.device, loc, std).double(), sigma)
    liquid = torch.where(liquid < thresh, torch.zeros_like(liquid), liquid)
    if mode == 0:
        # astype(np.uint8), wrapping as numpy's cast does in the reference (260.4 -> 4): a layer
        # value above 1 becomes a dark hole with edges (in ~19% of 32 px images at CIFAR severity 3)
        water = torch.remainder(torch.floor(liquid * 255), 256)
        dist = chamfer_distance(canny(water, 50, 150), 20).clamp(max=20)
        dist = torch.floor(_box3(dist))  # blur, then astype(uint8)
        dist = equalize_hist(dist)
        dist = torch.round(_conv3x3(dist, [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])).clamp(0, 255)  # CV_8U
        # the reference multiplies its uint8 copy of the layer (it rebinds the name)
        m = (water * torch.round(_box3(dist))).float()  # and blurring a uint8 image rounds
        peak = m.amax(dim=(1, 2), keepdim=True)
        m = torch.where(peak > 0, m / torch.where(peak > 0, peak, torch.ones_like(peak)), m) * strength
        color = torch.tensor([175 / 255.0, 238 / 255.0, 238 / 255.0], device=x.device)
        color = color.view(1, 3, 1, 1) if c == 3 else _luma(color.view(1, 3, 1, 1))
        return (x + m[:, None] * color).clamp(0, 1)
    m = _gaussian((liquid > thresh).float(), strength)  # float32, as the reference
    m = torch.where(m < 0.8, torch.zeros_like(m), m)[:, None]
    color = torch.tensor([63 / 255.0, 42 / 255.0, 20 / 255.0], device=x.device)
    color = color.view(1, 3, 1, 1) if c == 3 else _luma(color.view(1, 3, 1, 1))
    return (x * (1 - m) + color * m).clamp(0, 1)


@_register("contrast")
def contrast(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # Towards each channel's mean (np.mean(x, axis=(0, 1)) in the reference).
    c = _c("contrast", severity, scale)
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * c + means).clamp(0, 1)


@_register("brightness")
def brightness(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # HSV value + c, clipped. On grey (S = 0) that is x + c.
    c = _c("brightness", severity, scale)
    if x.shape[1] == 1:
        return (x + c).clamp(0, 1)
    hsv = rgb_to_hsv(x)
    hsv = torch.stack([hsv[:, 0], hsv[:, 1], (hsv[:, 2] + c).clamp(0, 1)], 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


@_register("saturate")
def saturate(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # HSV saturation * c0 + c1, clipped.
    if x.shape[1] != 3:
        raise UsageError(f"corruption 'saturate' changes colour saturation and needs 3-channel (RGB) images, "
                         f"got {x.shape[1]} channel(s)")
    mul, add = _c("saturate", severity, scale)
    hsv = rgb_to_hsv(x)
    hsv = torch.stack([hsv[:, 0], (hsv[:, 1] * mul + add).clamp(0, 1), hsv[:, 2]], 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


@_register("elastic_transform")
def elastic_transform(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # A random affine warp of three points (OpenCV warpAffine, REFLECT_101), then a smooth random
    # displacement field (uniform noise, Gaussian-blurred, times alpha) sampled bilinearly
    # (scipy map_coordinates order 1, mode "reflect").
    alpha, sigma, jitter = _c("elastic_transform", severity, scale)
    n, _, h, w = x.shape
    cy, cx, sq = float(h // 2), float(w // 2), float(min(h, w) // 3)
    src = torch.tensor([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]], dtype=torch.float64)
    dst = src[None] + _uniform((n, 3, 2), g, torch.device("cpu"), -jitter, jitter, torch.float64)
    # getAffineTransform: M [x, y, 1]^T = dst; warpAffine samples the source at M^-1 (x, y).
    a = torch.cat([src, torch.ones(3, 1, dtype=torch.float64)], 1)
    m = torch.linalg.solve(a[None], dst).transpose(1, 2)  # (N, 2, 3)
    full = torch.cat([m, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64).expand(n, 1, 3)], 1)
    inv = torch.linalg.inv(full)[:, :2].float().to(x.device)
    yy, xx = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32),
                            torch.arange(w, device=x.device, dtype=torch.float32), indexing="ij")
    sx = inv[:, 0, 0, None, None] * xx + inv[:, 0, 1, None, None] * yy + inv[:, 0, 2, None, None]
    sy = inv[:, 1, 0, None, None] * xx + inv[:, 1, 1, None, None] * yy + inv[:, 1, 2, None, None]
    warped = _bilinear(x, _fold_coord(sy, h, "mirror"), _fold_coord(sx, w, "mirror"))
    dx = _gaussian(_uniform((n, h, w), g, x.device, -1, 1), sigma, mode="reflect", truncate=3) * alpha
    dy = _gaussian(_uniform((n, h, w), g, x.device, -1, 1), sigma, mode="reflect", truncate=3) * alpha
    out = _bilinear(warped, _fold_coord(yy + dy, h, "reflect"), _fold_coord(xx + dx, w, "reflect"))
    return out.clamp(0, 1)


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
    with _full_precision():
        return torch.einsum("oh,nchw,pw->ncop", wh, x, ww)


@_register("pixelate")
def pixelate(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    # make_*_c.pixelate: PIL BOX resize down to c * size, then BOX resize back up.
    c = _c("pixelate", severity, scale)
    h, w = x.shape[-2:]
    small = box_resize(x, (max(1, int(h * c)), max(1, int(w * c))))
    return box_resize(small, (h, w)).clamp(0, 1)


@_register("jpeg_compression")
def jpeg_compression(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    return jpeg(x, _c("jpeg_compression", severity, scale))


@_register("inversion")
def inversion(x: torch.Tensor, severity: int, g: torch.Generator, scale: str) -> torch.Tensor:
    a = INVERSION[severity - 1]
    return (1 - a) * x + a * (1 - x)


def names() -> list[str]:
    """Names of the available corruptions."""
    return sorted(CORRUPTIONS)


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int, scale: str = "cifar") -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to a float batch (N, C, H, W) in [0, 1].

    ``scale`` picks the published severity constants: ``cifar`` (CIFAR-10-C) or ``imagenet``
    (ImageNet-C). Deterministic given ``seed``: the random draws use a CPU generator, so the same
    seed gives the same corrupted images on every device (up to float rounding of the filters).
    """
    if name not in CORRUPTIONS:
        raise unknown("corruption", name, names())
    if not (isinstance(severity, int) and 1 <= severity <= 5):
        raise UsageError(f"severity must be an integer in 1..5, got {severity!r}")
    if scale not in PARAMS:
        raise unknown("corruption scale", scale, sorted(PARAMS))
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UsageError(f"corruptions take N×C×H×W images with C = 1 or 3, got shape {tuple(x.shape)}")
    g = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))
    out = CORRUPTIONS[name](x.float(), severity, g, scale)
    assert out.shape == x.shape and math.isfinite(float(out.sum()))
    return out
