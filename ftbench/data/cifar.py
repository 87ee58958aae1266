"""The CIFAR-10 benchmarks of the surgical fine-tuning paper (Lee et al., ICLR 2023).

Three registered benchmarks share one source task and one source model:

* ``cifar10-c`` (input level): the target images are the published CIFAR-10-C (Hendrycks &
  Dietterich, 2019) for ``--corruption`` at ``--severity`` (default 5);
* ``cifar10-c-gen`` (input level): the same protocol with CIFAR-10-C regenerated locally from the
  CIFAR-10 test set by :mod:`ftbench.data.corruptions`, for when the published archive cannot be
  fetched; its images are *not* the published ones (see docs/benchmarks.md);
* ``cifar10-flip`` (output level): the target images are the clean CIFAR-10 test set with every
  label y replaced by 9 - y (CIFAR-Flip).

Source (ID) task: CIFAR-10 train, with a fixed, stratified tenth held out as ``source_val``;
``source_test`` (``id_acc``) is the clean CIFAR-10 test set. Target (OOD) task: the 10,000 target
images (one per CIFAR-10 test image) are split once, per class and with a fixed data seed, into a
target validation split, a few-shot pool and a target test split; fine-tuning sees ``shots``
images per class drawn from the pool with the run's seed, as in the paper's released code
(``train_n = 1000``: 100 per class).

Images are kept as uint8 until a split is built, then converted to float32 and normalised per
channel with the CIFAR-10 training-set mean and standard deviation. Data come from
``ftbench fetch cifar10 cifar10-c`` (``ftbench.data.fetch``); see docs/benchmarks.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ftbench.data import corruptions
from ftbench.data.base import BENCHMARKS, FetchedBenchmark, IdOodSplits, ShiftInfo, SourceTask, Split, TargetTask
from ftbench.data.fetch import CIFAR10_C_FILES, DATASETS
from ftbench.errors import UsageError

if TYPE_CHECKING:
    from ftbench.spec import RunSpec

NUM_CLASSES = 10
DATA_SEED = 0  # the fixed partitions below; not the run seed
# Per-channel statistics of the CIFAR-10 training images (in [0, 1]), the usual normalisation.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
SOURCE_VAL_FRACTION = 0.1  # of each class of CIFAR-10 train: 5,000 source_val, 45,000 source_train
# Of each class of the 10,000 target images (1,000 per class): 10 target_val (the released code's
# 10 per class), 500 in the few-shot pool, the remaining 490 target_test.
TARGET_VAL_FRACTION = 0.01
TARGET_POOL_FRACTION = 0.5
DEFAULT_SHOTS = 100  # the paper's train_n = 1000 over 10 classes
MAX_SHOTS = 500  # the pool size per class of the real data (smaller copies are checked in target())
DEFAULT_CORRUPTION = "gaussian_noise"
DEFAULT_SEVERITY = 5
# The 19 corruptions of the published CIFAR-10-C archive (15 benchmark + 4 extra).
CIFAR10_C = tuple(f.removesuffix(".npy") for f in CIFAR10_C_FILES if f != "labels.npy")
GEN_CHUNK = 1000  # cifar10-c-gen corrupts the test set in chunks of this many images, one seed each
GEN_VERSION = 1

# How the shared CIFAR-10 source model is pretrained (ftbench.train.pretrain; part of its cache
# key): the standard CIFAR ResNet recipe — SGD with momentum 0.9, lr 0.1 with cosine decay to 0,
# batch 128, weight decay 5e-4, random 4-px crop + horizontal flip — for 30 epochs.
PRETRAIN_RECIPE: dict[str, Any] = {"optimizer": "sgd", "lr": 0.1, "wd": 5e-4, "epochs": 30, "batch_size": 128,
                                   "seed": 0, "augment": "crop-flip", "schedule": "cosine"}


# --- reading the files ------------------------------------------------------------------------

class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 python batch (a dict of bytes, lists and one numpy array) and nothing
    else: a pickle that names any other global is refused instead of run."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One ``cifar-10-batches-py`` file -> (uint8 N×3×32×32 images, int64 labels)."""
    try:
        with open(path, "rb") as fh:
            d = _BatchUnpickler(fh, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as e:
        raise UsageError(f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}: {e}); "
                         "fetch cifar10 again") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise UsageError(f"{path} is not a CIFAR-10 batch: data {data.shape}, labels {labels.shape}; "
                         "fetch cifar10 again")
    if labels.size and not (0 <= labels.min() and labels.max() < NUM_CLASSES):
        raise UsageError(f"{path} has labels outside 0..9; fetch cifar10 again")
    return data.reshape(-1, 3, 32, 32), labels  # rows are R, G, B planes of 32×32


@functools.lru_cache(maxsize=1)
def _cifar10(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) of the CIFAR-10 under ``root``."""
    folder = Path(root) / DATASETS.get("cifar10").folder / "cifar-10-batches-py"
    parts = [_load_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _load_batch(folder / "test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), test_x, test_y


@functools.lru_cache(maxsize=4)
def _cifar10_c(root: str, name: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
    """The published CIFAR-10-C images (uint8 N×3×32×32) and labels of ``name`` at ``severity``.

    Each ``<corruption>.npy`` holds the test set five times, severities 1..5 in order.
    """
    folder = Path(root) / DATASETS.get("cifar10-c").folder / "CIFAR-10-C"
    path = folder / f"{name}.npy"
    try:
        images = np.load(path, mmap_mode="r")  # read only the severity's slice
        labels = np.load(folder / "labels.npy")
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not readable ({type(e).__name__}: {e}); fetch cifar10-c again") from None
    n = images.shape[0] // 5 if images.ndim == 4 else 0
    if (images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or n == 0
            or images.shape[0] != 5 * n or labels.shape != (images.shape[0],)):
        raise UsageError(f"{path} is not a CIFAR-10-C file: images {images.shape} {images.dtype}, labels "
                         f"{labels.shape}; expected 5·N×32×32×3 uint8 with N labels per severity")
    part = slice((severity - 1) * n, severity * n)
    x = np.ascontiguousarray(np.asarray(images[part]).transpose(0, 3, 1, 2))
    return x, labels[part].astype(np.int64)


def generation_seed(name: str, severity: int, chunk: int) -> int:
    """Seed of the corruption of chunk ``chunk`` (images ``chunk*GEN_CHUNK`` onwards) in cifar10-c-gen."""
    return zlib.crc32(f"cifar10-c-gen/{name}/{severity}/{chunk}".encode())


def generate(clean: np.ndarray, name: str, severity: int) -> np.ndarray:
    """CIFAR-10-C-style corrupted copies of uint8 images (N×3×32×32), as uint8.

    Each chunk of :data:`GEN_CHUNK` images is corrupted with :func:`ftbench.data.corruptions.corrupt`
    (CIFAR-10-C constants) on the CPU, seeded with :func:`generation_seed`; the result in [0, 1] is
    scaled by 255 and truncated to uint8, as ``np.uint8`` does in the reference ``make_cifar_c.py``.
    """
    out = np.empty_like(clean)
    for chunk, start in enumerate(range(0, clean.shape[0], GEN_CHUNK)):
        x = torch.from_numpy(clean[start:start + GEN_CHUNK]).float().div_(255)
        y = corruptions.corrupt(x, name, severity, seed=generation_seed(name, severity, chunk), scale="cifar")
        # +1e-3: a value that is exactly k/255 in exact arithmetic must not truncate to k - 1.
        out[start:start + GEN_CHUNK] = (y * 255 + 1e-3).floor_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def _gen_cache_key(clean: np.ndarray, name: str, severity: int) -> dict[str, Any]:
    # Tied to the input images and to the corruption code, so neither a different copy of CIFAR-10
    # nor a changed corruption ever reads a stale file.
    code = hashlib.sha256(Path(corruptions.__file__).read_bytes()).hexdigest()
    key = {"v": GEN_VERSION, "name": name, "severity": severity, "chunk": GEN_CHUNK, "corruptions": code,
           "n": int(clean.shape[0]), "crc": zlib.crc32(clean.tobytes())}
    return key


def _gen_cache_path(clean: np.ndarray, name: str, severity: int, key: dict[str, Any] | None = None) -> Path:
    from ftbench.environment import cache_dir

    key = key or _gen_cache_key(clean, name, severity)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "cifar10-c-gen" / f"{name}-{severity}-{digest}.npy"


@functools.lru_cache(maxsize=4)
def _generated(root: str, name: str, severity: int) -> np.ndarray:
    """cifar10-c-gen's images of ``name`` at ``severity``: from the disk cache, or generated now."""
    from ftbench import integrity

    clean = _cifar10(root)[2]
    key = _gen_cache_key(clean, name, severity)
    path = _gen_cache_path(clean, name, severity, key)
    why = integrity.check(path, key) if path.is_file() else ""  # the bytes written for this key, or none
    if why:
        print(f"warning: cached cifar10-c-gen images {path} are not used: {why}; regenerating", file=sys.stderr)
    elif path.is_file():
        try:
            x = np.load(path)
            if x.shape == clean.shape and x.dtype == np.uint8:
                return x
        except (OSError, ValueError):
            pass
        print(f"warning: cached cifar10-c-gen images {path} are unreadable; regenerating", file=sys.stderr)
    x = generate(clean, name, severity)
    try:  # the cache is an optimisation: an unwritable cache folder only costs time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, x)
        integrity.record(path, key, content=tmp)  # before the rename (ftbench/integrity.py)
        os.replace(tmp, path)
    except OSError as e:
        print(f"warning: cannot cache cifar10-c-gen images in {path.parent} ({e})", file=sys.stderr)
    return x


# --- building splits --------------------------------------------------------------------------

def _split(x: np.ndarray, y: np.ndarray) -> Split:
    """uint8 images -> a Split of float32 images normalised with MEAN/STD."""
    t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255)
    t = t.sub_(torch.tensor(MEAN).view(1, 3, 1, 1)).div_(torch.tensor(STD).view(1, 3, 1, 1))
    return Split(t, torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))


def _per_class(y: np.ndarray, fractions: tuple[float, ...]) -> list[np.ndarray]:
    """Stratified fixed partition of ``range(len(y))``: per class (in order 0..9) a permutation by
    ``default_rng(DATA_SEED)`` cut into pieces of ``max(1, round(f × class size))`` for each
    fraction ``f``, then the rest; returns the sorted index arrays, one per piece."""
    rng = np.random.default_rng(DATA_SEED)
    pieces: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for k, f in enumerate(fractions):
            n = max(1, int(round(f * len(idx))))
            pieces[k].append(idx[start:start + n])
            start += n
        pieces[-1].append(idx[start:])
    return [np.sort(np.concatenate(p)) for p in pieces]


def target_roles(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target_val, few-shot pool, target_test) indices of the target images with labels ``y``."""
    val, pool, test = _per_class(y, (TARGET_VAL_FRACTION, TARGET_POOL_FRACTION))
    return val, pool, test


def few_shot(y: np.ndarray, pool: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """``shots`` pool indices per class, drawn with ``default_rng([DATA_SEED, seed])``; sorted."""
    rng = np.random.default_rng([DATA_SEED, seed])
    return np.sort(np.concatenate([rng.permutation(pool[y[pool] == c])[:shots] for c in range(NUM_CLASSES)]))


# --- the benchmarks ---------------------------------------------------------------------------

class _Cifar10(FetchedBenchmark):
    """What the CIFAR-10 benchmarks share: source task, target partition, checks, class prompts."""

    default_model = "resnet26-cifar"  # the paper's CIFAR network (ftbench/models/cifar.py)
    input_stats = (MEAN, STD)
    default_shots = DEFAULT_SHOTS
    max_shots = MAX_SHOTS
    default_corruption = DEFAULT_CORRUPTION
    default_severity = DEFAULT_SEVERITY

    def class_prompts(self, spec: RunSpec, role: str) -> Any:
        from ftbench.data.prompts import CIFAR10

        if role == "target" and spec.shift == "label-flip":  # target label i is class 9 - i, and is called so
            return CIFAR10.relabelled([9 - i for i in range(10)])
        return CIFAR10

    def _root(self) -> str:
        """The data root, after checking every dataset this benchmark reads is there."""
        root, missing = self.missing_datasets()
        if missing:
            raise UsageError(f"{self.name} data not found under {root}: run `ftbench fetch {' '.join(missing)}` "
                             "(or --mirror)")
        return str(root)

    def source(self, spec: RunSpec) -> SourceTask:
        root = self._root()
        x, y, test_x, test_y = _cifar10(root)
        val, train = _per_class(y, (SOURCE_VAL_FRACTION,))
        # One source model for all three benchmarks; n_train keeps a small copy of the data (tests,
        # subsets) from sharing a cache entry with the real one.
        key = {"benchmark": "cifar10", "data_seed": DATA_SEED, "source_val_fraction": SOURCE_VAL_FRACTION,
               "normalize": [list(MEAN), list(STD)], "n_train": int(len(train))}
        return SourceTask(key, NUM_CLASSES, _split(x[train], y[train]), _split(x[val], y[val]),
                          _split(test_x, test_y), recipe=dict(PRETRAIN_RECIPE))

    def _target_images(self, spec: RunSpec, root: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 target images (one per CIFAR-10 test image) and their source-task labels."""
        raise NotImplementedError

    def _relabel(self, y: np.ndarray) -> np.ndarray:
        return y

    def target(self, spec: RunSpec) -> TargetTask:
        root = self._root()
        x, y = self._target_images(spec, root)
        val, pool, test = target_roles(y)
        most = int(min(np.sum(y[pool] == c) for c in range(NUM_CLASSES)))
        if spec.shots > most:
            raise UsageError(f"shots must be an integer in 1..{most} for benchmark {self.name!r} with the data "
                             f"under {root}, got {spec.shots}")
        train = few_shot(y, pool, spec.shots, spec.seed)
        yt = self._relabel(y)
        return TargetTask(NUM_CLASSES, _split(x[train], yt[train]), _split(x[val], yt[val]),
                          _split(x[test], yt[test]), info={"shift_level": self.shifts[spec.shift].level})



@BENCHMARKS.register("cifar10-c")
class Cifar10C(_Cifar10):
    name = "cifar10-c"
    help = "CIFAR-10 -> CIFAR-10-C (published archive): 19 corruptions x severities 1-5"
    datasets = ("cifar10", "cifar10-c")
    shifts = {
        "corruption": ShiftInfo(
            "corruption", "input", "target images from CIFAR-10-C (--corruption NAME --severity 1..5, default 5)",
            ("corruption", "severity"),
        ),
    }

    def corruption_names(self) -> list[str]:
        return sorted(CIFAR10_C)

    def _target_images(self, spec: RunSpec, root: str) -> tuple[np.ndarray, np.ndarray]:
        assert spec.corruption is not None and spec.severity is not None
        return _cifar10_c(root, spec.corruption, spec.severity)


@BENCHMARKS.register("cifar10-c-gen")
class Cifar10CGen(_Cifar10):
    name = "cifar10-c-gen"
    help = ("CIFAR-10 -> CIFAR-10-C regenerated locally with ftbench's torch corruptions (not the published "
            "images; needs only cifar10)")
    datasets = ("cifar10",)
    shifts = {
        "corruption": ShiftInfo(
            "corruption", "input",
            "CIFAR-10 test images corrupted by ftbench (--corruption NAME --severity 1..5, default 5)",
            ("corruption", "severity"),
        ),
    }

    def corruption_names(self) -> list[str]:
        return sorted(set(CIFAR10_C) & set(corruptions.names()))

    def _target_images(self, spec: RunSpec, root: str) -> tuple[np.ndarray, np.ndarray]:
        assert spec.corruption is not None and spec.severity is not None
        return _generated(root, spec.corruption, spec.severity), _cifar10(root)[3]


@BENCHMARKS.register("cifar10-flip")
class Cifar10Flip(_Cifar10):
    name = "cifar10-flip"
    help = "CIFAR-Flip: CIFAR-10 -> CIFAR-10 test images with labels permuted y -> 9 - y"
    datasets = ("cifar10",)
    shifts = {
        "label-flip": ShiftInfo("label-flip", "output", "clean CIFAR-10 test images, labels permuted y -> 9 - y"),
    }

    def _target_images(self, spec: RunSpec, root: str) -> tuple[np.ndarray, np.ndarray]:
        _, _, test_x, test_y = _cifar10(root)
        return test_x, test_y

    def _relabel(self, y: np.ndarray) -> np.ndarray:
        return (NUM_CLASSES - 1) - y


# --- CIFAR-10 -> CIFAR-10.1 and STL-10 (LP-FT, WiSE-FT) ---------------------------------------

# LP-FT's map from STL-10 labels (0-based, class_names.txt order: airplane, bird, car, cat, deer, dog,
# horse, monkey, ship, truck) to CIFAR-10 labels; -1: monkey, which CIFAR-10 lacks, is dropped
# (unlabeled_extrapolation/datasets/stl_cifar_style.py, make_labels_like_cifar). CIFAR's frog (6) has
# no STL-10 images; the model keeps its 10 logits, as in LP-FT.
STL_TO_CIFAR = (0, 2, 1, 3, 4, 5, 7, -1, 8, 9)
STL_SIZE = 96


def _npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable {what} array ({type(e).__name__}: {e}); fetch it again") from None


@functools.lru_cache(maxsize=1)
def _cifar10_1(root: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10.1 v6: uint8 N×3×32×32 images and their CIFAR-10 labels."""
    folder = Path(root) / DATASETS.get("cifar10.1").folder
    x = _npy(folder / "cifar10.1_v6_data.npy", "CIFAR-10.1")
    y = _npy(folder / "cifar10.1_v6_labels.npy", "CIFAR-10.1 label")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or y.shape != (x.shape[0],):
        raise UsageError(f"{folder} does not hold CIFAR-10.1 (images {x.dtype} {x.shape}, labels {y.shape}; expected "
                         "uint8 N×32×32×3 and N labels); fetch cifar10.1 again")
    if y.size and not (0 <= y.min() and y.max() < NUM_CLASSES):
        raise UsageError(f"{folder} has CIFAR-10.1 labels outside 0..9; fetch cifar10.1 again")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _stl10_test(root: str) -> tuple[np.ndarray, np.ndarray]:
    """STL-10's test split with CIFAR-10 labels (monkey dropped): uint8 N×3×96×96 images, labels."""
    folder = Path(root) / DATASETS.get("stl10").folder / "stl10_binary"
    try:
        raw = np.fromfile(folder / "test_X.bin", dtype=np.uint8)
        labels = np.fromfile(folder / "test_y.bin", dtype=np.uint8).astype(np.int64)
    except OSError as e:
        raise UsageError(f"cannot read STL-10 under {folder} ({type(e).__name__}: {e}); fetch stl10 again") from None
    per = 3 * STL_SIZE * STL_SIZE
    if raw.size != per * labels.size or labels.size == 0 or labels.min() < 1 or labels.max() > 10:
        raise UsageError(f"{folder} does not hold STL-10's test split ({raw.size:,} image bytes for {labels.size:,} "
                         f"labels in 1..10; expected {per:,} bytes per label); fetch stl10 again")
    # Each image is 3 planes (R, G, B) of 96×96 stored column-major (the STL-10 binary format).
    x = raw.reshape(-1, 3, STL_SIZE, STL_SIZE).transpose(0, 1, 3, 2)
    y = np.asarray(STL_TO_CIFAR, dtype=np.int64)[labels - 1]
    keep = y >= 0
    return np.ascontiguousarray(x[keep]), y[keep]


def _stl_split(x: np.ndarray, y: np.ndarray) -> Split:
    """STL-10 images at CIFAR-10's 32×32: each 3×3 block of pixels averaged (96 = 3 × 32; the box
    filter, PIL's ``Image.reduce(3)``), then normalised as CIFAR."""
    t = torch.nn.functional.avg_pool2d(torch.from_numpy(x).float().div_(255), 3)
    t = t.sub_(torch.tensor(MEAN).view(1, 3, 1, 1)).div_(torch.tensor(STD).view(1, 3, 1, 1))
    return Split(t, torch.from_numpy(y))


@BENCHMARKS.register("cifar10")
class Cifar10Ood(_Cifar10):
    """ID: CIFAR-10 (train less a fixed tenth held out as ID val; ID test: CIFAR-10 test) — the CIFAR-10
    benchmarks' source task. OOD test sets: CIFAR-10.1 v6 (2,000 images, 10 classes) and STL-10's test
    split (7,200 images of the 9 classes it shares with CIFAR-10, monkey dropped, labels mapped as LP-FT
    does), scored on all 10 logits as in LP-FT. Images stay at 32×32 (STL-10 averaged down from 96):
    LP-FT instead upsamples CIFAR-10 and STL-10 to 224 for its ImageNet and CLIP models (docs/benchmarks.md)."""

    name = "cifar10"
    help = "CIFAR-10 -> CIFAR-10.1 (v6) / STL-10 (9 shared classes) (ID→OOD protocol only)"
    datasets = ("cifar10", "cifar10.1", "stl10")
    default_model = "resnet50"  # LP-FT's CIFAR experiments fine-tune ImageNet-pretrained ResNet-50s
    few_shot = False
    id_ood_shift = ShiftInfo(
        "natural", "natural",
        "ID: CIFAR-10 (train less a tenth as ID val; ID test: CIFAR-10 test); OOD: CIFAR-10.1 v6, STL-10 test "
        "(its 9 CIFAR classes, averaged down to 32x32)")
    shifts = {"natural": id_ood_shift}
    id_ood_sets: ClassVar[dict[str, str]] = {"cifar10.1": "natural", "stl10": "natural"}
    id_ood_has_val = False
    id_ood_pretrains = False

    def id_ood_max_shots(self) -> int | None:
        return 4500  # of each class's 5,000 train images, 500 are ID val

    def id_ood(self, spec: RunSpec) -> IdOodSplits:
        s = self.source(spec)
        root = self._root()
        return IdOodSplits(NUM_CLASSES, s.train, s.val, s.test,
                           {"cifar10.1": _split(*_cifar10_1(root)), "stl10": _stl_split(*_stl10_test(root))})
