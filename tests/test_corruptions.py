"""Corruptions: batched, seeded, deterministic, in range, stronger with severity, and equal to the
reference definitions (make_cifar_c.py / make_imagenet_c.py) where those can be computed here."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ftbench.data import corruptions
from ftbench.errors import UsageError

# Tolerances. Images are float32 in [0, 1]; u = 2^-24 ~ 6e-8 is float32's relative rounding. A weighted
# sum of n terms with non-negative weights summing to 1 (every blur, resize and interpolation here)
# is within (n - 1) u of the exact value, and torch and numpy sum long reductions pairwise, within
# ~log2(n) u. Each comparison below states its n; where the other side is a float64 reference or a
# hand-worked formula, its own error is negligible. pytest.approx's default (1e-6 relative) is used
# only for constants from at most one float multiplication.

NAMES = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "contrast", "pixelate", "inversion"]
IMAGENET_C = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
]  # fmt: skip
EXTRA = ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
ALL = IMAGENET_C + EXTRA
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "spatter", "elastic_transform"}


def _images(size: int = 8) -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images[:64]).float()[:, None] / 16.0
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear") if size != 8 else x


def _photos(size: int = 32) -> torch.Tensor:
    """Six crops of scikit-learn's two sample photographs, area-resized: natural colour images."""
    pytest.importorskip("PIL")
    from sklearn.datasets import load_sample_image

    crops = []
    for name in ["china.jpg", "flower.jpg"]:
        im = torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1).float()[None] / 255
        for left in (0, 100, 213):
            crops.append(torch.nn.functional.interpolate(im[..., left : left + 427], size=(size, size), mode="area"))
    return torch.cat(crops)


def _scene(n: int = 2, h: int = 32, w: int = 32) -> torch.Tensor:
    """A colour scene without Pillow: gradients, a sharp-edged block, a red disc, a little texture."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.25 + 0.5 * xx, 0.3 + 0.4 * yy + 0.1 * torch.sin(12 * xx) * (yy > 0.5), 0.6 - 0.3 * xx * yy])
    img = img + 0.25 * ((xx - 0.45).abs() < 0.2).float() * (yy < 0.6)
    img[:, ((xx - 0.7) ** 2 + (yy - 0.75) ** 2) < 0.02] = torch.tensor([0.8, 0.2, 0.1])[:, None]
    img = img.clamp(0, 1)
    return torch.stack([img, img.flip(-1), img.flip(-2), img.flip(-1, -2)][:n])


def test_all_required_corruptions_exist() -> None:
    assert set(corruptions.names()) == set(ALL) | {"inversion"}
    for scale in ("cifar", "imagenet"):
        assert set(corruptions.PARAMS[scale]) == set(ALL)
        assert all(len(v) == 5 for v in corruptions.PARAMS[scale].values())


def test_published_constants_spot_check() -> None:
    # a few entries copied by hand from make_cifar_c.py / make_imagenet_c.py
    p = corruptions.PARAMS
    assert p["imagenet"]["glass_blur"][4] == (1.5, 4, 2) and p["cifar"]["glass_blur"][3] == (0.25, 1, 2)
    assert p["imagenet"]["motion_blur"][4] == (20, 15) and p["cifar"]["motion_blur"][0] == (6, 1)
    assert p["imagenet"]["jpeg_compression"] == [25, 18, 15, 10, 7] and p["cifar"]["jpeg_compression"][4] == 40
    assert p["imagenet"]["snow"][2] == (0.55, 0.3, 4, 0.9, 12, 8, 0.7)
    assert p["imagenet"]["elastic_transform"][0] == pytest.approx((488, 170.8, 24.4))
    assert p["cifar"]["elastic_transform"][1] == pytest.approx((1.6, 6.4, 2.24))
    assert p["imagenet"]["saturate"][4] == (20, 0.2) and p["cifar"]["brightness"][4] == 0.3


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", ["cifar", "imagenet"])
def test_deterministic_in_range_and_stronger_with_severity(name: str, scale: str) -> None:
    # At CIFAR's 32 px, the resolution the constants are published for (on 8 px digits, pixelate's
    # sizes are quantised: severities 1 and 2 both give 7x7).
    x = _images(32)
    dist = []
    for s in range(1, 6):
        a = corruptions.corrupt(x, name, s, seed=7, scale=scale)
        b = corruptions.corrupt(x, name, s, seed=7, scale=scale)
        assert torch.equal(a, b), "same seed must give the same images"
        assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
        dist.append(float((a - x).pow(2).mean().sqrt()))
    assert dist[0] > 0
    # Severity 5 is clearly stronger than severity 1, and strength never drops by much on the way.
    assert dist[4] > dist[0] * 1.2, dist
    assert all(d2 >= d1 * 0.9 for d1, d2 in zip(dist, dist[1:])), dist


@pytest.mark.parametrize("name", ALL + ["inversion"])
@pytest.mark.parametrize("scale", ["cifar", "imagenet"])
def test_every_corruption_runs_batched_seeded_and_in_range(name: str, scale: str) -> None:
    rgb, grey = _scene(2), _images(8)[:1]
    for s in range(1, 6):
        for x in (rgb, grey):
            if name in corruptions.COLOR_ONLY and x.shape[1] == 1:
                with pytest.raises(UsageError, match="needs 3-channel"):
                    corruptions.corrupt(x, name, s, seed=3, scale=scale)
                continue
            a = corruptions.corrupt(x, name, s, seed=3, scale=scale)
            assert a.shape == x.shape and a.dtype == torch.float32
            assert bool(torch.isfinite(a).all()) and a.min() >= 0 and a.max() <= 1
            assert torch.equal(a, corruptions.corrupt(x, name, s, seed=3, scale=scale)), "same seed, same images"
    if name in RANDOM:
        a, b = (corruptions.corrupt(rgb, name, 5, seed=seed, scale=scale) for seed in (1, 2))
        assert not torch.equal(a, b), "another seed must draw another corruption"


@pytest.mark.parametrize("name", ALL)
def test_non_square_images(name: str) -> None:
    x = _scene(2, 20, 28)
    out = corruptions.corrupt(x, name, 4, seed=0, scale="cifar")
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)


# Where the published severities are not ordered by distance from the clean image (checked on the
# sample photographs at 32 px), the test asserts the orderings the parameters do imply instead:
ORDERED_PAIRS = {
    # severities 1-2 desaturate (x0.3, x0.1), 3-5 saturate more and more
    ("cifar", "saturate"): [(1, 2), (3, 4), (4, 5)],
    ("imagenet", "saturate"): [(1, 2), (3, 4), (4, 5)],
    # CIFAR: a shrinking random affine (jitter 2.56 -> 0.96 px) dominates a growing elastic field
    ("cifar", "elastic_transform"): [],
    # ImageNet: severities 1-2 are large smooth warps (alpha 488, sigma 171), 3-5 a growing alpha
    ("imagenet", "elastic_transform"): [(3, 4), (4, 5)],
    # sigma goes 0.05, 0.25, 0.4, 0.25, 0.4: the second blur smooths the shuffle; more passes, more shift
    ("cifar", "glass_blur"): [(2, 4), (3, 5)],
    # ImageNet (sigma, delta, passes) = (.7,1,2), (.9,2,1), (1,2,3), (1.1,3,2), (1.5,4,2): the copy
    # passes do most of the damage, so only pairs with no fewer passes and larger sigma/delta are ordered
    ("imagenet", "glass_blur"): [(1, 4), (2, 3), (4, 5)],
    # 32 * 0.95 -> 30 px and 32 * 0.9 -> 28 px: a 30 px round trip misaligns more than a 28 px one
    ("cifar", "pixelate"): [(2, 3), (3, 4), (4, 5)],
    # c0 x + c1 frost: from severity 3 on, darkening the image more (c0 0.9 -> 0.75) offsets the frost
    ("cifar", "frost"): [(1, 2), (2, 3)],
}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("scale", ["cifar", "imagenet"])
def test_strength_grows_with_severity(name: str, scale: str) -> None:
    x = _photos(32)
    dist = [float((corruptions.corrupt(x, name, s, seed=0, scale=scale) - x).pow(2).mean().sqrt()) for s in range(1, 6)]
    assert min(dist) > 0, dist
    pairs = ORDERED_PAIRS.get((scale, name), [(s, s + 1) for s in range(1, 5)])
    # Random corruptions draw anew at each severity: allow that noise (3%); the others are exact.
    slack = 0.97 if name in RANDOM else 1.0
    for lo, hi in pairs:
        assert dist[hi - 1] >= dist[lo - 1] * slack, (lo, hi, dist)
    if (scale, name) not in ORDERED_PAIRS:
        assert dist[4] > dist[0] * 1.05, dist


def test_batched_equals_per_image_for_deterministic_corruptions() -> None:
    x = _images()[:8]
    for name in ["defocus_blur", "contrast", "pixelate", "inversion", "gaussian_blur", "zoom_blur", "brightness",
                 "jpeg_compression"]:
        batch = corruptions.corrupt(x, name, 4, seed=0)
        single = torch.cat([corruptions.corrupt(x[i : i + 1], name, 4, seed=0) for i in range(8)])
        # The same per-image arithmetic; with another batch size a kernel may only reorder its sums:
        # CIFAR's severity-4 disk (3x3) and Gaussian (7 taps, two passes) kernels, a 64-pixel mean:
        # <= 8 u + 12 u ~ 1.2e-6 in the worst case, ~4e-7 typically (zoom and JPEG: no reordering).
        assert torch.allclose(batch, single, rtol=0, atol=1e-6), name
    rgb = _scene(4)
    for name in ["saturate", "brightness", "jpeg_compression", "contrast"]:
        batch = corruptions.corrupt(rgb, name, 5, seed=0, scale="imagenet")
        single = torch.cat([corruptions.corrupt(rgb[i : i + 1], name, 5, seed=0, scale="imagenet") for i in range(4)])
        # Per-pixel colour arithmetic (~10 roundings of values <= 1) and per-image means (pairwise
        # sums of 1,024 pixels, ~10 u): < 1e-6.
        assert torch.allclose(batch, single, rtol=0, atol=1e-6), name


def test_reference_definitions() -> None:
    x = _images()
    # contrast: (x - mean) * c + mean per image; inversion severity 5: 1 - x.
    c = corruptions.PARAMS["imagenet"]["contrast"][2]
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    # allclose's default (atol 1e-8 + rtol 1e-5 of values <= 1): a few roundings of the same formula.
    assert torch.allclose(corruptions.corrupt(x, "contrast", 3, 0, "imagenet"), ((x - m) * c + m).clamp(0, 1))
    assert torch.allclose(corruptions.corrupt(x, "inversion", 5, 0), 1 - x)
    # impulse: about the published fraction of values replaced by 0 or 1.
    amount = corruptions.PARAMS["imagenet"]["impulse_noise"][4]
    big = torch.full((64, 1, 32, 32), 0.5)
    out = corruptions.corrupt(big, "impulse_noise", 5, 0, "imagenet")
    frac = float((out != 0.5).float().mean())
    # n = 65,536 values: the fraction's standard error is sqrt(a (1 - a) / n) = 0.0017 (a = 0.27); 0.01
    # is 6 of them.
    assert abs(frac - amount) < 0.01 and set(out.unique().tolist()) == {0.0, 0.5, 1.0}
    # gaussian: the added noise has the published standard deviation (before clipping, on mid-grey).
    sigma = corruptions.PARAMS["imagenet"]["gaussian_noise"][0]
    noisy = corruptions.corrupt(big, "gaussian_noise", 1, 0, "imagenet")
    # A sample std of n = 65,536 draws has standard error sigma / sqrt(2 n) = 2.2e-4 (sigma = 0.08;
    # clipping at 0 and 1 is 6 sigma away): 0.005 is over 20 of them. Speckle (c = 0.15): 12 of them.
    assert abs(float((noisy - 0.5).std()) - sigma) < 0.005
    # speckle: x + x * N(0, c): on a constant image the relative noise has the published deviation.
    c = corruptions.PARAMS["imagenet"]["speckle_noise"][0]
    quarter = torch.full((64, 1, 32, 32), 0.25)
    rel = (corruptions.corrupt(quarter, "speckle_noise", 1, 0, "imagenet") - 0.25) / 0.25
    assert abs(float(rel.std()) - c) < 0.005 and abs(float(rel.mean())) < 0.005


# ----------------------------------------------------------------------------- colour: numpy reference


def _np_rgb2hsv(arr: np.ndarray) -> np.ndarray:
    """scikit-image's rgb2hsv, as make_*_c calls it (inlined: scikit-image is not a dependency)."""
    out_v = arr.max(-1)
    delta = np.ptp(arr, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out_s = delta / out_v
    out_s[delta == 0.0] = 0.0
    out_h = np.zeros_like(out_v)
    with np.errstate(invalid="ignore", divide="ignore"):
        idx = arr[..., 0] == out_v
        out_h[idx] = (arr[idx, 1] - arr[idx, 2]) / delta[idx]
        idx = arr[..., 1] == out_v
        out_h[idx] = 2.0 + (arr[idx, 2] - arr[idx, 0]) / delta[idx]
        idx = arr[..., 2] == out_v
        out_h[idx] = 4.0 + (arr[idx, 0] - arr[idx, 1]) / delta[idx]
    out_h = (out_h / 6.0) % 1.0
    out_h[delta == 0.0] = 0.0
    return np.stack([out_h, out_s, out_v], -1)


def _np_hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = np.stack([hi, hi, hi], -1).astype(np.uint8) % 6
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    return np.choose(hi, np.stack([np.stack(c, -1) for c in table]))


@pytest.mark.parametrize("scale", ["cifar", "imagenet"])
def test_colour_corruptions_match_the_reference_numpy(scale: str) -> None:
    rng = np.random.default_rng(0)
    img = rng.random((6, 7, 3))
    img[0, :3] = [0.4, 0.4, 0.4]  # grey: hue undefined, saturation 0
    img[1, 0], img[1, 1], img[1, 2] = [0.7, 0.7, 0.1], [0.2, 0.6, 0.6], [0.0, 0.0, 0.0]  # ties and black
    x = torch.from_numpy(img).float().permute(2, 0, 1)[None]
    ref32 = img.astype(np.float32).astype(np.float64)
    for s in range(1, 6):
        c = corruptions.PARAMS[scale]["brightness"][s - 1]
        hsv = _np_rgb2hsv(ref32)
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        ref = np.clip(_np_hsv2rgb(hsv), 0, 1)
        ours = corruptions.corrupt(x, "brightness", s, 0, scale)[0].permute(1, 2, 0).numpy()
        # ~10 float32 roundings of values <= 1 through RGB -> HSV -> RGB, against float64: ~6e-7.
        assert np.abs(ours - ref).max() < 1e-6, ("brightness", s)
        mul, add = corruptions.PARAMS[scale]["saturate"][s - 1]
        hsv = _np_rgb2hsv(ref32)
        hsv[..., 1] = np.clip(hsv[..., 1] * mul + add, 0, 1)
        ref = np.clip(_np_hsv2rgb(hsv), 0, 1)
        ours = corruptions.corrupt(x, "saturate", s, 0, scale)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - ref).max() < 1e-6, ("saturate", s)
        c = corruptions.PARAMS[scale]["contrast"][s - 1]
        means = ref32.mean(axis=(0, 1), keepdims=True)  # per channel, as np.mean(x, axis=(0, 1))
        ref = np.clip((ref32 - means) * c + means, 0, 1)
        ours = corruptions.corrupt(x, "contrast", s, 0, scale)[0].permute(1, 2, 0).numpy()
        # A pairwise mean of 42 pixels (~6 u) and two more roundings: ~5e-7.
        assert np.abs(ours - ref).max() < 1e-6, ("contrast", s)
    # On grey, brightness is x + c (value up, saturation 0); saturate has nothing to act on.
    grey = _images()[:2]
    c = corruptions.PARAMS[scale]["brightness"][2]
    assert torch.allclose(corruptions.corrupt(grey, "brightness", 3, 0, scale), (grey + c).clamp(0, 1))
    with pytest.raises(UsageError, match="corruption 'saturate' changes colour saturation"):
        corruptions.corrupt(grey, "saturate", 3, 0, scale)


# ----------------------------------------------------------------------------- JPEG, blurs, warps


@pytest.mark.parametrize("shape", [(32, 32, 3), (13, 21, 3), (8, 8, 1), (27, 19, 1), (4, 3, 3)])
def test_jpeg_is_bit_exact_with_pillow(shape: tuple[int, int, int]) -> None:
    """jpeg_compression is Pillow's save(format='JPEG', quality=q) + open, pixel for pixel."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(sum(shape))
    h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([xx, yy, (xx + yy) / 2], -1)[..., :c] * 0.6 + 0.2 + 0.25 * (xx > 0.4)[..., None]
    u8 = np.clip(np.round((img + rng.normal(0, 0.06, img.shape)) * 255), 0, 255).astype(np.uint8)
    x = torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 255
    for quality in (95, 80, 40, 25, 7):
        buf = io.BytesIO()
        Image.fromarray(u8[..., 0] if c == 1 else u8, "L" if c == 1 else "RGB").save(buf, "JPEG", quality=quality)
        ref = np.asarray(Image.open(buf)).reshape(h, w, c)
        ours = torch.round(corruptions.jpeg(x, quality)[0] * 255).permute(1, 2, 0).to(torch.uint8).numpy()
        assert np.array_equal(ours, ref), (quality, int(np.abs(ours.astype(int) - ref).max()))
    # the corruption uses the published qualities
    q = corruptions.PARAMS["imagenet"]["jpeg_compression"][4]
    assert torch.equal(corruptions.corrupt(x, "jpeg_compression", 5, 0, "imagenet"), corruptions.jpeg(x, q))


def test_gaussian_blur_matches_scipy() -> None:
    from scipy.ndimage import gaussian_filter

    x = _scene(2, 24, 30)
    for scale in ("cifar", "imagenet"):
        for s in range(1, 6):
            sigma = corruptions.PARAMS[scale]["gaussian_blur"][s - 1]
            # skimage.filters.gaussian(multichannel=True): per channel, mode "nearest", truncate 4
            ref = gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
            ref = np.clip(ref, 0, 1)
            ours = corruptions.corrupt(x, "gaussian_blur", s, 0, scale).numpy()
            # Two separable passes of <= 49 taps (sigma <= 6, truncated at 4 sigma): <= 2 * 48 u ~ 6e-6.
            assert np.abs(ours - ref).max() < 1e-5, (scale, s)


def test_zoom_blur_matches_the_reference_with_scipy_zoom() -> None:
    from scipy.ndimage import zoom as scizoom

    def clipped_zoom(img: np.ndarray, z: float) -> np.ndarray:  # make_*_c.clipped_zoom
        h = img.shape[0]
        ch = int(np.ceil(h / z))
        top = (h - ch) // 2
        img = scizoom(img[top : top + ch, top : top + ch], (z, z, 1), order=1)
        trim = (img.shape[0] - h) // 2
        return img[trim : trim + h, trim : trim + h]

    x = _scene(1, 32, 32)
    img = x[0].permute(1, 2, 0).numpy()
    for scale in ("cifar", "imagenet"):
        for s in (1, 3, 5):
            factors = np.arange(*corruptions.PARAMS[scale]["zoom_blur"][s - 1])
            ref = np.clip((img + sum(clipped_zoom(img, z) for z in factors)) / (len(factors) + 1), 0, 1)
            ours = corruptions.corrupt(x, "zoom_blur", s, 0, scale)[0].permute(1, 2, 0).numpy()
            # The mean of <= 12 bilinear zooms (4 taps each): ~15 u, plus float32 sampling coordinates
            # (<= 32 u px on 32 px, times slopes <= 1 per px): < 3e-6.
            assert np.abs(ours - ref).max() < 1e-5, (scale, s)


def test_motion_blur_is_imagemagicks_one_sided_gaussian() -> None:
    # MotionBlurImage(radius 3, sigma 2, angle): 2 * 3 + 1 taps exp(-i^2 / 8), normalised, sampling the
    # pixel i steps along the angle (x right, y down), the edge repeated beyond the border.
    x = torch.rand(2, 1, 9, 11, generator=torch.Generator().manual_seed(0))
    out = corruptions._motion_blur(x, 3, 2, torch.tensor([0.0, 90.0], dtype=torch.float64))
    k = np.exp(-np.arange(7) ** 2 / 8.0)
    k /= k.sum()
    a = x.numpy()[:, 0]
    right = sum(k[i] * a[0][:, np.minimum(np.arange(11) + i, 10)] for i in range(7))
    down = sum(k[i] * a[1][np.minimum(np.arange(9) + i, 8), :] for i in range(7))
    # 7 taps with weights summing to 1: <= 6 u ~ 4e-7.
    assert np.allclose(out[0, 0].numpy(), right, atol=1e-6) and np.allclose(out[1, 0].numpy(), down, atol=1e-6)
    # at 45°, offsets round(i cos 45°) = 0, 1, 1, 2, 3, 4, 4 in both directions
    diag = corruptions._motion_blur(x, 3, 2, torch.tensor([45.0, 45.0], dtype=torch.float64))[0, 0].numpy()
    off = [0, 1, 1, 2, 3, 4, 4]
    r, c = np.arange(9)[:, None], np.arange(11)[None, :]
    ref = sum(k[i] * a[0][np.minimum(r + off[i], 8), np.minimum(c + off[i], 10)] for i in range(7))
    assert np.allclose(diag, ref, atol=1e-6)


@pytest.mark.parametrize("radius, alias", [(8, 0.5), (10, 0.5), (3, 0.1), (1.5, 0.1)])
def test_defocus_disk_is_antialiased_with_opencvs_reflect_101_border(radius: float, alias: float) -> None:
    """make_*_c's disk() blurs the disk with cv2.GaussianBlur, whose default border is REFLECT_101
    (numpy's "reflect" pad); zero padding, the former behaviour, loses mass where the disk reaches
    the support's edge (ImageNet-C severities 4-5)."""
    half = 8 if radius <= 8 else int(radius)
    r = np.arange(-half, half + 1)
    disk = ((r[None, :] ** 2 + r[:, None] ** 2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    k = 3 if radius <= 8 else 5
    t = np.arange(k) - k // 2
    g = np.exp(-(t**2) / (2 * alias**2))
    g /= g.sum()
    padded = np.pad(disk, k // 2, mode="reflect")
    rows = sum(g[i] * padded[i : i + disk.shape[0], :] for i in range(k))
    ref = sum(g[j] * rows[:, j : j + disk.shape[1]] for j in range(k))
    kernel = corruptions._disk(radius, alias, torch.device("cpu")).double().numpy()
    assert np.allclose(kernel, ref, atol=1e-7)  # float32 kernel: rounding of values <= 1
    if radius >= 8:  # the edge matters: reflection folds mass back in (sum > 1), zero padding loses it (< 1)
        assert kernel.sum() > 1.005


def test_glass_shuffle_replays_the_reference_loop_on_colour_arrays() -> None:
    """The reference's ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` runs on H×W×3 arrays, where both
    sides are views: it copies (h', w') into (h, w) and swaps nothing. Replayed here on such an
    array; the former swap semantics (what the statement does on a 2-D array) fails this test."""
    rng = np.random.default_rng(0)
    copies = 0
    for h, w, d, iters in [(12, 12, 1, 2), (10, 13, 2, 3), (9, 9, 4, 1)]:
        n_pos = max(h - 2 * d, 0) * max(w - 2 * d, 0)
        draws = rng.integers(-d, d, (iters, n_pos, 2, 3)).astype(np.int8)
        perm = corruptions.glass_permutation(draws, h, w, d)
        for n in range(3):
            img = np.repeat(np.arange(h * w).reshape(h, w, 1), 3, axis=2)  # H×W×3, as the datasets' images
            for it in range(iters):  # make_*_c.glass_blur's loop, fed the same (dx, dy) draws
                k = 0
                for y in range(h - d, d, -1):
                    for x in range(w - d, d, -1):
                        dx, dy = draws[it, k, 0, n], draws[it, k, 1, n]
                        k += 1
                        img[y, x], img[y + dy, x + dx] = img[y + dy, x + dx], img[y, x]
            assert (img == img[..., :1]).all()
            assert np.array_equal(perm[n], img[..., 0].reshape(-1)), (h, w, d, n)
            copies += h * w - len(set(perm[n].tolist()))  # pixels whose value now appears twice
    assert copies > 0  # not a permutation: a swap would keep every pixel exactly once


def test_glass_blur_matches_the_reference_on_a_colour_image() -> None:
    """End to end against numpy + scipy's Gaussian (scikit-image's ``gaussian``) with the same draws."""
    from scipy.ndimage import gaussian_filter

    x = _photos(16)[:2]
    sigma, d, iters = corruptions.PARAMS["cifar"]["glass_blur"][4]
    out = corruptions.corrupt(x, "glass_blur", 5, seed=3, scale="cifar")
    g = torch.Generator().manual_seed(3)
    n, c, h, w = x.shape
    draws = torch.randint(-d, d, (iters, (h - 2 * d) * (w - 2 * d), 2, n), generator=g, dtype=torch.int8).numpy()
    for i in range(n):
        img = np.stack([gaussian_filter(x[i, ch].double().numpy(), sigma, mode="nearest", truncate=4.0)
                        for ch in range(c)], axis=2)
        for it in range(iters):
            k = 0
            for yy in range(h - d, d, -1):
                for xx in range(w - d, d, -1):
                    dx, dy = int(draws[it, k, 0, i]), int(draws[it, k, 1, i])
                    k += 1
                    img[yy, xx], img[yy + dy, xx + dx] = img[yy + dy, xx + dx], img[yy, xx]
        ref = np.stack([gaussian_filter(img[..., ch], sigma, mode="nearest", truncate=4.0) for ch in range(c)])
        # float32 filters against float64 ones: a few float32 ulps of values in [0, 1]
        assert np.allclose(out[i].numpy(), np.clip(ref, 0, 1), atol=1e-5)


def test_elastic_sampling_matches_scipy_map_coordinates() -> None:
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(0)
    img = rng.random((12, 15)).astype(np.float32)
    rows = np.arange(12)[:, None] + rng.normal(0, 9, (12, 15))
    cols = np.arange(15)[None, :] + rng.normal(0, 9, (12, 15))
    ref = map_coordinates(img, (rows.reshape(-1), cols.reshape(-1)), order=1, mode="reflect").reshape(12, 15)
    r = corruptions._fold_coord(torch.from_numpy(rows).float()[None], 12, "reflect")
    c = corruptions._fold_coord(torch.from_numpy(cols).float()[None], 15, "reflect")
    ours = corruptions._bilinear(torch.from_numpy(img)[None, None], r, c)[0, 0].numpy()
    # 4 taps (3 u), and coordinates up to ~40 px rounded to float32 (40 u px) times slopes <= 1 per px:
    # ~3e-6.
    assert np.abs(ours - ref).max() < 1e-5


def _reference_plasma(mapsize: int, decay: float, g: torch.Generator) -> np.ndarray:
    """make_*_c.plasma_fractal in numpy, its np.random.uniform(-w, w) draws taken from ``g``."""
    m = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled(a: np.ndarray, wibble: float) -> np.ndarray:
        u = torch.rand((1, *a.shape), generator=g, dtype=torch.float64)[0].numpy()
        return a / 4 + wibble * (u * 2 * wibble - wibble)

    while step >= 2:
        half = step // 2
        corner = m[0::step, 0::step]
        sq = corner + np.roll(corner, -1, axis=0)
        sq += np.roll(sq, -1, axis=1)
        m[half::step, half::step] = wibbled(sq, wibble)
        dr, ul = m[half::step, half::step], m[0::step, 0::step]
        m[0::step, half::step] = wibbled(dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1), wibble)
        m[half::step, 0::step] = wibbled(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0), wibble)
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


def test_plasma_fractal_is_the_reference_diamond_square() -> None:
    """make_*_c.plasma_fractal, fed the same uniform draws, gives the same map."""
    for mapsize, decay in [(32, 3), (64, 1.4)]:
        ours = corruptions._plasma_fractal(1, mapsize, decay, torch.Generator().manual_seed(5), torch.device("cpu"))
        ref = _reference_plasma(mapsize, decay, torch.Generator().manual_seed(5))
        # The same float64 recursion (the draws are float64 too), normalised to [0, 1] and then
        # perhaps stored as float32: one rounding, 6e-8.
        assert np.abs(ours[0].numpy() - ref).max() < 1e-6


@pytest.mark.parametrize("scale", ["cifar", "imagenet"])
def test_fog_adds_the_fractal_and_keeps_the_maximum(scale: str) -> None:
    x, seed = _scene(2, 24, 24), 11
    for s in (1, 5):
        amount, decay = corruptions.PARAMS[scale]["fog"][s - 1]
        size = corruptions.FOG_MAPSIZE[scale]
        fractal = corruptions._plasma_fractal(2, size, decay, torch.Generator().manual_seed(seed), torch.device("cpu"))
        m = x.amax(dim=(1, 2, 3), keepdim=True)
        ref = ((x + amount * fractal[:, None, :24, :24]) * m / (m + amount)).clamp(0, 1)
        # The same four float32 operations on values <= 2, perhaps in another order: < 1e-6.
        assert torch.allclose(corruptions.corrupt(x, "fog", s, seed, scale), ref, rtol=0, atol=1e-6)


def test_snow_only_brightens_the_whitened_image() -> None:
    # x' = c6 x + (1 - c6) max(x, grey * 1.5 + 0.5), then the (non-negative) snow layer is added.
    x = _scene(2)
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    for s in range(1, 6):
        keep = corruptions.PARAMS["imagenet"]["snow"][s - 1][6]
        base = (keep * x + (1 - keep) * torch.maximum(x, grey * 1.5 + 0.5)).clamp(0, 1)
        out = corruptions.corrupt(x, "snow", s, 0, "imagenet")
        # base is recomputed here from the same three operations: a few roundings (< 1e-6) apart.
        assert bool((out >= base - 1e-6).all()) and float((out - base).mean()) > 0.01


def test_frost_blends_a_texture_and_uses_its_luminance_on_grey(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(corruptions.FROST_DIR_ENV, "none")  # the procedural fallback, whatever is installed
    monkeypatch.setattr(corruptions, "_FROST_WARNED", [])
    rgb_zero, grey_zero = torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 16, 16)
    for scale in ("cifar", "imagenet"):
        keep, amount = corruptions.PARAMS[scale]["frost"][2]
        tex = corruptions.corrupt(rgb_zero, "frost", 3, 4, scale) / amount  # c0 * 0 + c1 * frost
        assert 0.2 < float(tex.mean()) < 0.6 and float(tex[:, 2].mean()) > float(tex[:, 0].mean())  # bluish white
        luma = (tex * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        grey_out = corruptions.corrupt(grey_zero, "frost", 3, 4, scale)
        # A three-term weighted sum and one scaling: a few u.
        assert torch.allclose(grey_out, (amount * luma).clamp(0, 1), atol=1e-6)
        x = _scene(2, 16, 16)
        out = corruptions.corrupt(x, "frost", 3, 4, scale)
        # tex was recovered above by a division by amount (0.4-0.7): the rounding of frost's output,
        # u, becomes u / amount in tex, times amount again here, plus the blend's own: < 1e-6; 1e-5
        # because keep * x + amount * tex may be formed in another order on values up to ~1.5.
        assert torch.allclose(out, (keep * x + amount * tex).clamp(0, 1), atol=1e-5)
    err = capsys.readouterr().err
    assert err.count("warning: frost:") == 1 and "procedural texture" in err  # labelled, once per process
    assert "procedural texture" in corruptions.frost_source()


def _fake_frost_folder(folder, sizes=((600, 900), (315, 560), (315, 560), (350, 527), (495, 660))) -> list:
    """Five photographs (lossless PNG bytes under the reference's names) with position-coded pixels."""
    from PIL import Image

    photos = []
    for k, (h, w) in enumerate(sizes):
        r, c = np.mgrid[0:h, 0:w]
        arr = np.stack([(k * 50 + r + 3 * c + 17 * ch) % 256 for ch in range(3)], axis=2).astype(np.uint8)
        Image.fromarray(arr).save(folder / corruptions.FROST_FILES[k], format="PNG")
        photos.append(arr)
    return photos


@pytest.mark.parametrize("scale", ["cifar", "imagenet"])
def test_frost_crops_the_reference_photographs_when_present(tmp_path, monkeypatch, scale: str) -> None:
    """make_cifar_c: cv2.resize(photo, fx=fy=0.2) (INTER_LINEAR: pixels 5i + 2), a random 32×32 crop
    at (randint(0, Hp - h), randint(0, Wp - w)), clip(c0·x + c1·crop); make_imagenet_c: no resize."""
    pytest.importorskip("PIL")
    photos = _fake_frost_folder(tmp_path)
    monkeypatch.setenv(corruptions.FROST_DIR_ENV, str(tmp_path))
    assert str(tmp_path) in corruptions.frost_source()
    x = _scene(3, 16, 16)
    keep, amount = corruptions.PARAMS[scale]["frost"][2]
    out = corruptions.corrupt(x, "frost", 3, 9, scale)
    g = torch.Generator().manual_seed(9)
    for i in range(3):
        k = int(torch.randint(0, 5, (1,), generator=g))
        p = photos[k][2::5, 2::5] if scale == "cifar" else photos[k]
        r0 = int(torch.randint(0, p.shape[0] - 16, (1,), generator=g))
        c0 = int(torch.randint(0, p.shape[1] - 16, (1,), generator=g))
        crop = torch.from_numpy(p[r0 : r0 + 16, c0 : c0 + 16].astype(np.float32) / 255).permute(2, 0, 1)
        assert torch.allclose(out[i], (keep * x[i] + amount * crop).clamp(0, 1), atol=1e-6)
    grey = corruptions.corrupt(x[:, :1], "frost", 3, 9, scale)  # same draws: the crop's luminance
    assert grey.shape == (3, 1, 16, 16) and float(grey.std()) > 0


def test_frost_reports_a_folder_without_the_photographs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(corruptions.FROST_DIR_ENV, str(tmp_path))
    from ftbench.errors import UsageError

    with pytest.raises(UsageError, match=r"lacks the frost photographs frost1.png, .*accepted: a folder holding"):
        corruptions.corrupt(torch.zeros(1, 3, 8, 8), "frost", 1, 0)


@pytest.mark.skipif(__import__("importlib").util.find_spec("imagecorruptions") is None,
                    reason="imagecorruptions (the frost photographs, ftbench[frost]) not installed")
def test_frost_reads_the_installed_imagecorruptions_photographs(monkeypatch) -> None:
    monkeypatch.delenv(corruptions.FROST_DIR_ENV, raising=False)
    photos = corruptions.frost_photographs()
    assert photos is not None and [tuple(p.shape) for p in photos][:2] == [(3, 600, 900), (3, 315, 560)]


def test_spatter_opencv_pieces_on_hand_worked_cases() -> None:
    # Canny finds a vertical step once, one pixel wide (the non-maximum is suppressed).
    step = torch.zeros(1, 9, 9)
    step[:, :, 5:] = 200
    edges = corruptions.canny(step, 50, 150)
    assert edges.sum() == 9 and bool(edges[0, :, 4].all() | edges[0, :, 5].all())
    # The 5x5 chamfer distance: steps of 1, 1.4 and 2.1969 from the zero pixel.
    zero = torch.zeros(1, 7, 7, dtype=torch.bool)
    zero[0, 3, 3] = True
    d = corruptions.chamfer_distance(zero, 20)[0]
    # Sums of at most two float32 steps (1.4, 2.1969): exact to ~2 u; abs=1e-5 is the decimal places given.
    assert [float(d[3, 4]), float(d[4, 4]), float(d[4, 5]), float(d[3, 5]), float(d[5, 5])] == pytest.approx(
        [1.0, 1.4, 2.1969, 2.0, 2.8], abs=1e-5)
    # equalizeHist: the lowest level maps to 0, the rest to 255 * (cumulative count above it) / (N - n_lowest).
    img = torch.tensor([[[2.0, 2.0, 5.0, 9.0]]])
    assert corruptions.equalize_hist(img).tolist() == [[[0.0, 0.0, 128.0, 255.0]]]
    # mud (severity 4, 5): x (1 - m) + brown m, the same blend weight m in every channel
    x = _scene(2)
    out = corruptions.corrupt(x, "spatter", 5, 0, "imagenet")
    brown = torch.tensor([63, 42, 20]).view(1, 3, 1, 1) / 255.0
    changed = (out - x).abs().amax(1) > 1e-6
    assert 0 < float(changed.float().mean()) < 0.5
    weight = ((out - x) / (brown - x)).permute(1, 0, 2, 3)[:, changed]  # (3, changed pixels)
    # m is recovered by a division by (brown - x), as small as 0.003 where the scene's channel is
    # near brown: the output's rounding (u on values <= 1) becomes u / 0.003 ~ 2e-5; 1e-4 leaves 5x.
    assert torch.allclose(weight[0], weight[1], atol=1e-4) and torch.allclose(weight[0], weight[2], atol=1e-4)
    assert float(weight.min()) >= 0.8 - 1e-4  # m < 0.8 is set to 0


def test_bad_names_severities_and_shapes() -> None:
    x = _images()
    with pytest.raises(UsageError, match="unknown corruption 'snowstorm'; accepted: brightness"):
        corruptions.corrupt(x, "snowstorm", 1, 0)
    with pytest.raises(UsageError, match="severity must be an integer in 1..5"):
        corruptions.corrupt(x, "contrast", 6, 0)
    with pytest.raises(UsageError, match=r"C = 1 or 3, got shape \(2, 2, 8, 8\)"):
        corruptions.corrupt(torch.zeros(2, 2, 8, 8), "fog", 1, 0)


@pytest.mark.parametrize("size_in, size_out", [(32, 19), (19, 32), (8, 5), (5, 8), (32, 9), (9, 32), (224, 67)])
def test_box_resize_matches_pillow(size_in: int, size_out: int) -> None:
    """pixelate's resampling is Pillow's BOX filter, as make_imagenet_c / make_cifar_c use it."""
    PIL = pytest.importorskip("PIL.Image")

    img = np.random.default_rng(0).random((size_in, size_in)).astype(np.float32)
    ref = np.asarray(PIL.fromarray(img, mode="F").resize((size_out, size_out), PIL.BOX))
    ours = corruptions.box_resize(torch.from_numpy(img)[None, None], (size_out, size_out))[0, 0].numpy()
    # Box weights over <= 5 source pixels per axis (224 -> 67), two passes, on both sides in float32
    # with coefficients normalised separately: ~20 u ~ 1.2e-6.
    assert np.abs(ours - ref).max() < 1e-5


def test_cli_lists_and_runs_the_new_corruptions_on_digits(cli, tmp_path: Path) -> None:
    import pandas as pd

    r = cli("list", "corruptions")
    assert r.code == 0 and all(n in r.out for n in ALL)
    r = cli("run", "--shift", "corruption", "--corruption", "glass_blur", "--severity", "3", "--steps", "5",
            "--out", tmp_path / "glass")
    assert r.code == 0, r.err
    row = pd.read_parquet(next((tmp_path / "glass").glob("*.parquet"))).iloc[0]
    assert (row.corruption, row.severity, row.status) == ("glass_blur", 3, "ok") and math.isfinite(row.ood_acc)
    r = cli("run", "--shift", "corruption", "--corruption", "saturate", "--out", tmp_path / "sat")
    lines = r.err.strip().splitlines()
    assert r.code == 2 and len(lines) == 1 and lines[0].startswith("error: corruption 'saturate'")
    assert not list((tmp_path / "sat").glob("*.parquet"))
