"""Streamed splits (ftbench/data/stream.py): images decoded from disk give the same batches,
training and evaluation as the same images held in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ftbench.data.base import Split
from ftbench.data.stream import ImageFiles, StreamSplit, decode, resize_center_crop, resize_to
from ftbench.errors import UsageError
from ftbench.train import loop

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _write_pngs(folder: Path, n: int, size: tuple[int, int] = (12, 10), seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """``n`` random RGB PNGs (lossless, so decoding must give the pixels back exactly)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, size[0], size[1], 3), dtype=np.uint8)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:03d}.png"
        Image.fromarray(pixels[i]).save(p)
        paths.append(p)
    return paths, pixels


def _in_memory(pixels: np.ndarray, y: torch.Tensor) -> Split:
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return Split(x, y)


@pytest.fixture
def images(tmp_path: Path) -> tuple[StreamSplit, Split]:
    paths, pixels = _write_pngs(tmp_path, 40)
    y = torch.arange(40) % 4
    meta = torch.stack([y, torch.arange(40) % 3], dim=1)
    stream = StreamSplit(ImageFiles(paths), y, MEAN, STD, meta=meta)
    return stream, Split(_in_memory(pixels, y).x, y, meta)


def test_decode_gives_the_pixels_and_converts_grayscale(tmp_path: Path) -> None:
    paths, pixels = _write_pngs(tmp_path, 1)
    assert torch.equal(decode(paths[0]), torch.from_numpy(pixels[0]).permute(2, 0, 1))
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((5, 7), 9, dtype=np.uint8)).save(gray)
    img = decode(gray)
    assert img.shape == (3, 5, 7) and img.dtype == torch.uint8 and int(img.max()) == 9


def test_a_corrupt_or_missing_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(UsageError, match="bad.jpg"):
        decode(bad)
    with pytest.raises(UsageError, match="missing.png"):
        decode(tmp_path / "missing.png")


def test_transforms_give_the_requested_shape(tmp_path: Path) -> None:
    img = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    assert resize_center_crop(16, 20)(img).shape == (3, 16, 16)
    assert resize_center_crop(30)(img).shape == (3, 30, 30)  # shorter side already 30: crop only
    assert torch.equal(resize_center_crop(30)(img), img[:, :, 5:35])
    assert resize_to(8, 12)(img).shape == (3, 8, 12)


def test_batches_take_and_subset_match_the_in_memory_split(images: tuple[StreamSplit, Split]) -> None:
    # Exact: both sides compute float(x) / 255 - mean, / std elementwise, in that order, and an IEEE
    # elementwise operation gives the same bits however it is vectorised.
    stream, mem = images
    assert len(stream) == 40 and stream.channels == 3
    got = torch.cat(list(stream.batches(7)))
    assert torch.equal(got, mem.x)
    idx = np.array([5, 1, 33])
    part = stream.take(idx)
    assert torch.equal(part.x, mem.x[idx])
    assert torch.equal(part.y, mem.y[idx]) and torch.equal(part.meta, mem.meta[idx])
    nested = stream.subset(np.arange(10, 30)).subset([0, 19])  # positions compose
    assert torch.equal(nested.y, mem.y[[10, 29]])
    assert torch.equal(nested.take().x, mem.x[[10, 29]])
    with pytest.raises(TypeError, match="batches"):
        stream.x  # noqa: B018  (code written for in-memory splits must fail loudly, not load it all)


def test_worker_pool_gives_the_same_batches_in_order(images: tuple[StreamSplit, Split], monkeypatch) -> None:
    import ftbench.data.stream as stream_mod

    stream, mem = images
    monkeypatch.setattr(stream_mod, "INLINE_BELOW", 0)  # force worker processes on a small split
    monkeypatch.setenv("FTBENCH_WORKERS", "2")
    assert torch.equal(torch.cat(list(stream.batches(6))), mem.x)
    rows = torch.tensor([[3, 3, 0], [39, 2, 7]])
    got = list(stream.batches_at(rows))
    assert torch.equal(got[1], mem.x[[39, 2, 7]])


def test_bad_workers_setting_is_a_usage_error(monkeypatch) -> None:
    from ftbench.data.stream import workers

    monkeypatch.setenv("FTBENCH_WORKERS", "many")
    with pytest.raises(UsageError, match="FTBENCH_WORKERS"):
        workers()


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 4))


def test_training_on_a_streamed_split_equals_training_in_memory(images: tuple[StreamSplit, Split]) -> None:
    stream, mem = images
    results = []
    for data in (stream, mem):
        model = _tiny_model()
        stats = loop.fit(model, model.parameters(), data, lr=0.05, wd=0.0, steps=6, batch_size=8,
                         optimizer="sgd", generator=torch.Generator().manual_seed(3))
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
    (s1, p1), (s2, p2) = results
    assert s1.steps == s2.steps == 6
    # The batches are bit-identical (test above), but their memory layout may differ, so a convolution
    # may sum its 27 products (3x3 kernel, 3 channels) in another order: <= 27 * 2^-24 = 1.6e-6 of
    # the gradient's size per step. Six SGD steps of lr 0.05 on O(1) gradients then move weights of
    # size ~0.3 apart by <= 6 * 0.05 * 1.6e-6 * (1 + growth) ~ 1e-6; atol 1e-5 leaves 10x.
    assert all(torch.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(p1, p2))
    assert any(not torch.equal(a, b) for a, b in zip(p1, [p.detach() for p in _tiny_model().parameters()]))


def test_evaluation_streams_and_computes_the_benchmark_metrics_from_the_same_predictions(
        images: tuple[StreamSplit, Split]) -> None:
    stream, mem = images
    model = _tiny_model().eval()
    seen = {}

    def metrics(pred: torch.Tensor, split) -> dict[str, float]:
        seen["pred"] = pred
        return {"worst_group_acc": min(float((pred[split.meta[:, 1] == g] == split.y[split.meta[:, 1] == g])
                                             .float().mean()) for g in range(3)) * 100}

    acc_s, extra_s = loop.evaluate(model, stream, metrics)
    acc_m, extra_m = loop.evaluate(model, mem, metrics)
    # Exact: the inputs are bit-identical and only their layout may differ; that moves a logit by
    # rounding (~1e-6 of its size), which could flip only an argmax tie that close: on 40 images of
    # a random model, a chance of about 1e-5.
    assert acc_s == acc_m and extra_s == extra_m and set(extra_s) == {"worst_group_acc"}
    assert torch.equal(seen["pred"], loop.predictions(model, mem))
    assert acc_s == pytest.approx(float((seen["pred"] == mem.y).float().mean()) * 100)
    # The selection split's loss streams too (batches of 256 against the labels in order): the same
    # cross-entropy, up to the logits' rounding (~1e-6 relative) summed over 40 images.
    loss_s = loop.evaluate(model, stream, loss=True)[1]["loss"]
    assert loss_s == pytest.approx(loop.evaluate(model, mem, loss=True)[1]["loss"], rel=1e-5)


# --- JPEGs decoded on the device (nvJPEG on CUDA; FTBENCH_DEVICE_DECODE=1 takes that path on a CPU) ---

def _write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))  # sizes differ, as ImageNet's
        px = (rng.random((h, w, 3)) * 64 + np.linspace(0, 180, w)[None, :, None]).astype(np.uint8)
        p = folder / f"{i:03d}.JPEG"
        Image.fromarray(px).save(p, quality=90)
        paths.append(p)
    return paths


def test_device_decode_gives_the_worker_pool_s_batches(tmp_path: Path, monkeypatch) -> None:
    """The batched-decode path (bytes read by the pool, decoded and resized where the batches go)
    yields the same pixels as decoding in the pool: both are libjpeg-turbo on a CPU. (On CUDA, nvJPEG's
    IDCT may differ from libjpeg-turbo's by a grey level; that path is exercised on a GPU only.)"""
    paths = _write_jpegs(tmp_path, 23)
    split = StreamSplit(ImageFiles(paths, resize_center_crop(16, 18)), torch.arange(23) % 3, (0.5,) * 3, (0.25,) * 3)
    monkeypatch.setenv("FTBENCH_DEVICE_DECODE", "0")
    want = torch.cat(list(split.batches(5)))
    rows = torch.tensor([[4, 0, 19], [7, 7, 1]])
    want_at = list(split.subset(np.arange(3, 23)).batches_at(rows))
    monkeypatch.setenv("FTBENCH_DEVICE_DECODE", "1")
    from ftbench.data.stream import device_decode_wanted

    assert device_decode_wanted(split.images, split.device)
    assert torch.equal(torch.cat(list(split.batches(5))), want)
    got_at = list(split.subset(np.arange(3, 23)).batches_at(rows))
    assert all(torch.equal(a, b) for a, b in zip(got_at, want_at)) and len(got_at) == 2
    assert torch.equal(split.subset([5, 2]).take().x, want[[5, 2]])


def test_device_decode_is_only_for_plain_jpeg_files_and_names_a_bad_one(tmp_path: Path, monkeypatch) -> None:
    from ftbench.data.stream import device_decode_wanted

    paths = _write_jpegs(tmp_path, 3)
    monkeypatch.delenv("FTBENCH_DEVICE_DECODE", raising=False)
    assert not device_decode_wanted(ImageFiles(paths), torch.device("cpu"))  # unset: CUDA only
    assert device_decode_wanted(ImageFiles(paths), torch.device("cuda"))  # (decided without touching a GPU)
    (tmp_path / "png").mkdir()
    pngs, _ = _write_pngs(tmp_path / "png", 2)
    assert not device_decode_wanted(ImageFiles(pngs), torch.device("cuda"))

    class Altered(ImageFiles):  # e.g. imagenet-c-gen's CorruptedFiles: it works on decoded images
        pass

    assert not device_decode_wanted(Altered(paths), torch.device("cuda"))
    monkeypatch.setenv("FTBENCH_DEVICE_DECODE", "yes")
    with pytest.raises(UsageError, match="FTBENCH_DEVICE_DECODE must be 0 or 1, got 'yes'"):
        device_decode_wanted(ImageFiles(paths), torch.device("cpu"))
    monkeypatch.setenv("FTBENCH_DEVICE_DECODE", "1")
    paths[1].write_bytes(paths[1].read_bytes()[:40])  # truncated JPEG
    split = StreamSplit(ImageFiles(paths, resize_center_crop(16)), torch.zeros(3, dtype=torch.long), (0.5,) * 3,
                        (0.25,) * 3)
    with pytest.raises(UsageError, match=f"cannot read image {paths[1]}"):
        list(split.batches(8))


def test_device_decode_falls_back_for_a_png_named_jpeg(tmp_path: Path, monkeypatch) -> None:
    """ImageNet train holds a PNG under a .JPEG name (n02105855_2933.JPEG): the batched JPEG decoder
    refuses its batch, which is then decoded file by file as the worker pool decodes it."""
    paths = _write_jpegs(tmp_path, 4)
    Image.open(paths[2]).convert("RGB").save(paths[2], format="PNG")  # a PNG with a .JPEG name
    split = StreamSplit(ImageFiles(paths, resize_center_crop(16)), torch.zeros(4, dtype=torch.long), (0.5,) * 3,
                        (0.25,) * 3)
    monkeypatch.setenv("FTBENCH_DEVICE_DECODE", "0")
    want = torch.cat(list(split.batches(8)))
    monkeypatch.setenv("FTBENCH_DEVICE_DECODE", "1")
    assert torch.equal(torch.cat(list(split.batches(8))), want)
