"""Splits too large to hold in memory: image files decoded on the fly by a worker pool.

ImageNet-C, BREEDS and the WILDS datasets have tens of thousands of test images at 96-448 px; as
float32 tensors they would not fit in memory (50,000 ImageNet images at 224 px are 30 GB). A
:class:`StreamSplit` keeps only the file list and the labels; :meth:`StreamSplit.batches` decodes
the images with TorchCodec's (or torchvision's) decoders (libjpeg-turbo / libpng, in C) in a
``torch.utils.data.DataLoader`` worker pool, sends each batch to the device as uint8 (a quarter of
the bytes of float32, pinned memory on CUDA) and converts and normalises it there. On a GPU, JPEG
files are decoded on the device instead (nvJPEG through torchvision's batched ``decode_jpeg``; the
pool only reads the files' bytes), then resized and cropped there (:func:`device_decode_wanted`).

Few-shot target training sets and validation splits are small: :meth:`StreamSplit.take` decodes
them once into an in-memory :class:`~ftbench.data.base.Split`, which training indexes as usual.
Evaluation (``ftbench.train.loop.predictions``) accepts either kind.

Why not torchvision's ``ImageFolder``: it decodes with PIL, returns float tensors per image and
assumes one folder per class; the benchmarks here list their files and labels from metadata
(WILDS' CSVs, BREEDS' class hierarchy) and want uint8 batches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ftbench.data.base import Split
from ftbench.errors import UsageError

Transform = Callable[[torch.Tensor], torch.Tensor]  # uint8 C×H×W -> uint8 C×h×w


def _decoder() -> Callable[[str], torch.Tensor]:
    """TorchCodec's ``decode_image`` (the PyTorch image decoder since torchvision 0.29 deprecated
    its own) when installed, else torchvision's; both give the same uint8 RGB pixels."""
    try:
        from torchcodec.decoders import decode_image as codec_decode

        return lambda path: codec_decode(path, mode="RGB")
    except ImportError:
        import warnings

        from torchvision.io import ImageReadMode, decode_image

        def tv_decode(path: str) -> torch.Tensor:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_image(path, mode=ImageReadMode.RGB)

        return tv_decode


_DECODE: Callable[[str], torch.Tensor] | None = None


def decode(path: str | Path) -> torch.Tensor:
    """The image file at ``path`` as uint8 RGB, 3×H×W (grayscale and RGBA are converted).

    A file that is missing or not a decodable image is a UsageError naming it.
    """
    global _DECODE
    if _DECODE is None:
        _DECODE = _decoder()
    try:
        return _DECODE(str(path))
    except (RuntimeError, OSError, ValueError) as e:
        raise UsageError(f"cannot read image {path} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         "the dataset copy is incomplete or corrupt — fetch it again") from None


class resize_center_crop:  # noqa: N801  (used like a function; a class so DataLoader workers can pickle it)
    """Resize the shorter side to ``resize`` (default ``size``; bilinear, antialiased, as PIL) and
    take the central ``size`` × ``size`` crop — the usual evaluation transform (ImageNet: 256, 224)."""

    def __init__(self, size: int, resize: int | None = None) -> None:
        self.size, self.short = size, size if resize is None else resize

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        h, w = img.shape[-2:]
        if min(h, w) != self.short:
            img = TF.resize(img, [self.short], antialias=True)
        if img.shape[-2:] != (self.size, self.size):
            img = TF.center_crop(img, [self.size, self.size])
        return img


class resize_to:  # noqa: N801  (used like a function; picklable)
    """Resize to exactly ``height`` × ``width`` (bilinear, antialiased), aspect ratio not kept."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        if img.shape[-2:] != (self.height, self.width):
            img = TF.resize(img, [self.height, self.width], antialias=True)
        return img


class ImageFiles(torch.utils.data.Dataset):
    """Image files by index, decoded by :func:`decode` and passed through ``transform``.

    Picklable (a list of paths and a top-level transform) so DataLoader workers can be spawned.
    """

    def __init__(self, paths: Sequence[str | Path], transform: Transform | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = decode(self.paths[i])
        return self.transform(img) if self.transform is not None else img


class FileBytes(torch.utils.data.Dataset):
    """The raw bytes of the files of an :class:`ImageFiles` (what the decoder pool reads when the
    device decodes: :func:`device_decode`)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            with open(self.paths[i], "rb") as fh:
                return torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8)
        except OSError as e:
            raise UsageError(f"cannot read image {self.paths[i]} ({type(e).__name__}: {e}); the dataset copy is "
                             "incomplete or corrupt — fetch it again") from None


def _as_list(batch: list[torch.Tensor]) -> list[torch.Tensor]:  # a DataLoader collate_fn (picklable)
    return batch


JPEG_SUFFIXES = (".jpg", ".jpeg")


def device_decode_wanted(images: torch.utils.data.Dataset, device: torch.device) -> bool:
    """Whether a streamed split decodes its JPEGs on ``device`` (nvJPEG on CUDA, through torchvision's
    batched ``decode_jpeg``) instead of in the worker pool: ``$FTBENCH_DEVICE_DECODE`` = ``1`` (on any
    device, also the CPU: the batched libjpeg-turbo path), ``0`` (never), unset: on CUDA. Only plain
    :class:`ImageFiles` of JPEG files (a subclass such as ImageNet-C-gen's corrupts after decoding)."""
    from ftbench.environment import device_decode

    env = device_decode()
    if env == "0" or (env == "" and device.type != "cuda") or type(images) is not ImageFiles:
        return False
    return all(p.lower().endswith(JPEG_SUFFIXES) for p in images.paths)


def device_decode(data: list[torch.Tensor], paths: Sequence[str], transform: Transform | None,
                  device: torch.device) -> torch.Tensor:
    """Decode a batch of JPEG files' bytes on ``device`` in one call and apply ``transform`` there;
    uint8 N×3×h×w. A batch the batched decoder refuses (ImageNet train holds a PNG and CMYK JPEGs
    under ``.JPEG`` names) is decoded file by file by :func:`decode`, as the worker pool decodes
    it, which names a file no decoder can read."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec's
            warnings.simplefilter("ignore", DeprecationWarning)
            imgs = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        imgs = [decode(p).to(device) for p in paths]  # raises the UsageError naming an unreadable file
    return torch.stack([transform(im) if transform is not None else im for im in imgs])


def workers() -> int:
    """Decoder processes per streamed split: ``$FTBENCH_WORKERS``, else up to 8 of this machine's CPUs."""
    from ftbench.environment import WORKERS_UNSET, integer

    return integer("FTBENCH_WORKERS", min(8, os.cpu_count() or 1), 0, WORKERS_UNSET)


# Below this many images a split is decoded in the calling process: starting workers costs more.
INLINE_BELOW = 512


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255).sub_(mean).div_(std)


@dataclass(frozen=True)
class StreamSplit:
    """A split whose images stay on disk: ``images[i]`` is image ``i`` (uint8 C×H×W, one shape for
    all), ``y`` its label; ``mean``/``std`` normalise ``[0, 1]`` pixels per channel.

    ``index`` (None: all) selects and orders the images of ``images`` this split consists of, so
    subsets share one file list. ``meta`` holds per-example integers a benchmark's metrics need
    (e.g. WILDS' metadata array), aligned with ``y``.
    """

    images: torch.utils.data.Dataset
    y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: torch.Tensor | None = None
    index: np.ndarray | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def x(self) -> torch.Tensor:  # so a caller that assumes an in-memory split fails loudly
        raise TypeError("a StreamSplit has no in-memory images: iterate batches() or take() a subset")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def image_size(self) -> tuple[int, int]:
        """H, W of the images (one shape for all): of the split's first image, decoded for it."""
        first = self.images[0 if self.index is None else int(self.index[0])]
        first = first[0] if isinstance(first, tuple) else first
        return int(first.shape[-2]), int(first.shape[-1])

    def to(self, device: torch.device | str) -> StreamSplit:
        """The split with its batches, labels and metadata on ``device`` (the files stay on disk)."""
        dev = torch.device(device)
        return replace(self, device=dev, y=self.y.to(dev),
                       meta=None if self.meta is None else self.meta.to(dev))

    def subset(self, idx: np.ndarray | Sequence[int]) -> StreamSplit:
        """The examples at positions ``idx`` of this split (still on disk)."""
        idx = np.asarray(idx, dtype=np.int64)
        base = idx if self.index is None else self.index[idx]
        t = torch.from_numpy(idx)
        return replace(self, y=self.y[t.to(self.y.device)], index=base,
                       meta=None if self.meta is None else self.meta[t.to(self.meta.device)])

    def _loader(self, batch_size: int) -> torch.utils.data.DataLoader:
        data = self.images if self.index is None else torch.utils.data.Subset(self.images, self.index.tolist())
        n = workers() if len(self) >= INLINE_BELOW else 0
        return torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=False, num_workers=n,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if n else None,
            persistent_workers=False)

    def uint8_batches(self, batch_size: int = 256) -> Iterator[torch.Tensor]:
        """The images in order, as uint8 batches on :attr:`device`."""
        if device_decode_wanted(self.images, self.device):
            n = len(self.images) if self.index is None else len(self.index)
            rows = np.arange(n) if self.index is None else self.index
            yield from self._device_batches([rows[i:i + batch_size] for i in range(0, n, batch_size)])
            return
        for xb in self._loader(batch_size):
            yield xb.to(self.device, non_blocking=True)

    def _device_batches(self, rows: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """uint8 batches on :attr:`device` of the files at each of ``rows`` (positions in ``images``): the
        worker pool reads the bytes, the device decodes them (:func:`device_decode`)."""
        files = self.images
        assert isinstance(files, ImageFiles)
        total = sum(len(r) for r in rows)
        n = workers() if total >= INLINE_BELOW else 0
        loader = torch.utils.data.DataLoader(
            FileBytes(files.paths), batch_sampler=[r.tolist() for r in rows], num_workers=n,
            collate_fn=_as_list, prefetch_factor=4 if n else None)
        for r, data in zip(rows, loader):
            yield device_decode(data, [files.paths[i] for i in r], files.transform, self.device)

    def batches(self, batch_size: int = 256) -> Iterator[torch.Tensor]:
        """The images in order, normalised float32 batches on :attr:`device`."""
        mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
        for xb in self.uint8_batches(batch_size):
            yield _normalise(xb, mean, std)

    def batches_at(self, index_batches: torch.Tensor) -> Iterator[torch.Tensor]:
        """Normalised float32 batches on :attr:`device` of the examples at each row of positions
        ``index_batches`` (steps × batch), decoded ahead by the worker pool — how training reads a
        streamed split with the same batch draws as an in-memory one."""
        rows = index_batches.cpu().numpy()
        base = rows if self.index is None else self.index[rows]
        if device_decode_wanted(self.images, self.device):
            mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
            for xb in self._device_batches(list(base)):
                yield _normalise(xb, mean, std)
            return
        n = workers() if base.size >= INLINE_BELOW else 0
        loader = torch.utils.data.DataLoader(
            self.images, batch_sampler=base.tolist(), num_workers=n, pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if n else None)
        mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
        for xb in loader:
            yield _normalise(xb.to(self.device, non_blocking=True), mean, std)

    def take(self, idx: np.ndarray | Sequence[int] | None = None) -> Split:
        """Decode the examples at positions ``idx`` (default: all) into an in-memory :class:`Split`."""
        part = self if idx is None else self.subset(idx)
        xs = list(part.batches())
        c = self.channels
        x = torch.cat(xs) if xs else torch.empty(0, c, 0, 0, device=self.device)
        meta = None if part.meta is None else part.meta.to(self.device)
        return Split(x, part.y.to(self.device), meta)

