"""The ImageNet benchmarks of the surgical fine-tuning paper (Lee et al., ICLR 2023).

Four registered benchmarks read a user-supplied ImageNet (``ftbench fetch imagenet`` checks it):

* ``imagenet-c`` (input level): source ImageNet, target the published ImageNet-C (Hendrycks &
  Dietterich, 2019) for ``--corruption`` at ``--severity`` (default 5);
* ``imagenet-c-gen`` (input level): the same protocol with the target images made on the fly from
  ImageNet val by :mod:`ftbench.data.corruptions` (ImageNet-C constants), for when ImageNet-C is not
  at hand; its images are *not* the published ones (docs/benchmarks.md);
* ``living17`` and ``entity30`` (feature level, subpopulation shift): the BREEDS tasks of Santurkar
  et al. (2021) — superclasses of ImageNet classes; the source sees some subclasses of each
  superclass, the target the others. The split is computed from the BREEDS hierarchy files exactly
  as ``robustness.tools.breeds_helpers.make_living17`` / ``make_entity30`` compute it with
  ``split="rand"`` (:func:`breeds_split`). They also offer the ID→OOD protocol (``--protocol
  id-ood``) of LP-FT (Kumar et al. 2022): fine-tune on the source subclasses, report ImageNet val
  of the source subclasses (ID) and of the unseen target subclasses (OOD test set
  ``unseen-subclasses``).

Images stay on disk: every large split is a :class:`~ftbench.data.stream.StreamSplit`, decoded by a
worker pool; the few-shot target train split is decoded once into memory. ImageNet images go
through the usual evaluation transform (shorter side resized to :data:`RESIZE`, central
:data:`IMAGE_SIZE` crop); ImageNet-C images are already 224 px centre crops and are only
normalised. All images are normalised with the ImageNet mean and standard deviation, as the hub
weights of ``resnet50`` (the default model) expect. Labels of ``imagenet-c`` are the position of
the class's WordNet id in the sorted list of the 1000 ImageNet class folders (timm's class order);
labels of the BREEDS tasks are the superclass's position in the sorted superclass list.

Every fixed partition below is drawn per class with a generator seeded by ``DATA_SEED`` and the
class's WordNet id, from the class's files in sorted order, so a class's partition depends on
nothing but its own files (a partial copy of the data partitions its classes as the full one).
Few-shot draws use the run seed, as in ``ftbench.data.cifar``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ftbench.data import corruptions
from ftbench.data.base import BENCHMARKS, FetchedBenchmark, IdOodSplits, ShiftInfo, SourceTask, TargetTask
from ftbench.data.fetch import DATASETS, IMAGENET_C, data_root
from ftbench.data.preprocess import photo_transform
from ftbench.data.stream import ImageFiles, StreamSplit, Transform, resize_center_crop
from ftbench.errors import UsageError

if TYPE_CHECKING:
    from ftbench.spec import RunSpec

# The evaluation transform of ImageNet images (resize the shorter side, central crop). Module
# constants so that tests can make them small; both enter the source model's cache key.
IMAGE_SIZE = 224
RESIZE = 256
# The ImageNet training-set statistics every ImageNet model of timm / torchvision is trained with.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DATA_SEED = 0  # the fixed partitions; not the run seed
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
# Of each ImageNet class's train images, this many (at most a tenth, at least one) are held out as
# source_val; the rest are source_train.
SOURCE_VAL_PER_CLASS = 10

# ImageNet-C: 50 images per class and corruption x severity (one per ImageNet val image). The
# released surgical fine-tuning code (dataset.py, ``imagenet-c``) draws per class ``train_n / 1000``
# training images (at most 20: ``assert train_n <= 20000``), 10 validation and 10 test images; here
# the 50 are cut once into 10 target_val, a pool of 20 and 20 target_test, and ``shots`` of the
# pool are drawn per class with the run seed. Default 5 shots: the README's ``train_n=5000``.
C_VAL_FRACTION = 0.2
C_POOL_FRACTION = 0.4
C_DEFAULT_SHOTS = 5
C_MAX_SHOTS = 20
DEFAULT_CORRUPTION = "gaussian_noise"
DEFAULT_SEVERITY = 5  # the paper's (config/imagenet-c.yaml: severity 5)
# The 4 extra corruptions of ImageNet-C (Zenodo's extra.tar; optional in a copy).
IMAGENET_C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
IMAGENET_C_ALL = IMAGENET_C + IMAGENET_C_EXTRA
GEN_JPEG_QUALITY = 85  # make_imagenet_c.py saves every corrupted image as JPEG with quality 85
GEN_VERSION = 1

# BREEDS: per target subclass, this many of its ImageNet train images (at most a tenth, at least
# one) are target_val; the rest are the few-shot pool. target_test is every ImageNet val image of
# the target subclasses, the BREEDS papers' target test set.
BREEDS_TARGET_VAL_PER_CLASS = 10
BREEDS_DEFAULT_SHOTS = 100
BREEDS_MAX_SHOTS = 1000
BREEDS_ROOT = "n00001740"  # robustness' ClassHierarchy root_wnid ("entity")
# make_living17 / make_entity30 of robustness.tools.breeds_helpers (robustness 1.2.1.post2):
# (level, ancestor, Nsubclasses); both use split="rand", balanced=True, random_seed=2.
BREEDS_TASKS: dict[str, tuple[int, str | None, int]] = {
    "living17": (5, "n00004258", 4),
    "entity30": (4, None, 8),
}
BREEDS_SEED = 2

# How a source model is trained from scratch on a streamed ImageNet source (``--weights scratch``,
# or a model without hub weights): the common ImageNet ResNet recipe — SGD with momentum 0.9, lr
# 0.1 with cosine decay, batch 256, weight decay 1e-4, 90 epochs — with ftbench's only on-device
# augmentation (random 4-px-padded crop + horizontal flip) instead of random-resized crops. With
# the default resnet50 and its hub weights only the classifier is fit (ftbench.train.pretrain).
PRETRAIN_RECIPE: dict[str, Any] = {"optimizer": "sgd", "lr": 0.1, "wd": 1e-4, "epochs": 90, "batch_size": 256,
                                   "seed": 0, "augment": "crop-flip", "schedule": "cosine"}


# --- listing the files ------------------------------------------------------------------------

def _is_wnid(name: str) -> bool:
    return len(name) > 1 and name[0] == "n" and name[1:].isdigit()


def _class_folders(folder: Path, is_class: Callable[[str], bool] = _is_wnid) -> list[str]:
    """The class folders directly under ``folder`` (default: WordNet ids ``n########``), sorted."""
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and is_class(e.name))
    except OSError as e:
        raise UsageError(f"cannot list {folder} ({type(e).__name__}: {e})") from None


@functools.lru_cache(maxsize=4)
def imagenet_classes(root: str) -> tuple[str, ...]:
    """The 1000 ImageNet WordNet ids, sorted: the class folders of ``<root>/imagenet/val``.

    Position in this tuple is the class label (timm's and torchvision's ImageNet class order).
    """
    wnids = tuple(_class_folders(Path(root) / DATASETS.get("imagenet").folder / "val"))
    if len(wnids) != 1000:  # fetch's check says the same; repeated for a copy changed since
        raise UsageError(f"{Path(root) / 'imagenet' / 'val'} has {len(wnids)} class folders n########, expected "
                         "1000; see `ftbench fetch imagenet` for the expected layout")
    return wnids


@functools.lru_cache(maxsize=16)
def _listing(folder: str, wnids: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """Image files in ``<folder>/<wnid>/`` for every ``wnid`` of ``wnids`` that has a folder there:
    (paths, position of each file's wnid in ``wnids``), by class then file name."""
    paths: list[str] = []
    labels: list[int] = []
    base = Path(folder)
    for i, w in enumerate(wnids):
        d = base / w
        if not d.is_dir():
            continue
        try:
            names = sorted(e.name for e in os.scandir(d) if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
        except OSError as e:
            raise UsageError(f"cannot list {d} ({type(e).__name__}: {e})") from None
        prefix = str(d) + os.sep  # string joins: ImageNet train has 1.28 million files
        paths.extend(prefix + n for n in names)
        labels.extend([i] * len(names))
    return paths, np.asarray(labels, dtype=np.int64)


def _stream(paths: Sequence[str], y: np.ndarray, transform: Transform) -> StreamSplit:
    return StreamSplit(ImageFiles(paths, transform), torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
                       MEAN, STD)


def _imagenet_transform() -> Transform:
    """The resize and crop of ImageNet's photographs (and its OOD sets'): the run's model's input
    transform where it has one (ftbench/data/preprocess.py), else the usual evaluation transform."""
    return photo_transform(resize_center_crop(IMAGE_SIZE, RESIZE))


# --- fixed partitions and few-shot draws ------------------------------------------------------

def partition(strata: np.ndarray, keys: Sequence[str], sizes: Callable[[int], tuple[int, ...]]) -> list[np.ndarray]:
    """Cut the positions of every stratum into consecutive pieces of a fixed permutation.

    For stratum ``s`` (the positions where ``strata == s``, in order) the permutation is drawn by
    ``default_rng([DATA_SEED, crc32(keys[s])])``; the pieces have ``sizes(n)`` elements (n: the
    stratum's size), the last piece is the rest. Returns one sorted index array per piece.
    """
    pieces: list[list[np.ndarray]] = []
    order = np.argsort(strata, kind="stable")  # positions grouped by stratum, in order within each
    values, starts = np.unique(strata[order], return_index=True)
    for s, a, b in zip(values, starts, [*starts[1:], len(order)]):
        idx = order[a:b]
        cuts = sizes(len(idx))
        if not pieces:
            pieces = [[] for _ in range(len(cuts) + 1)]
        idx = np.random.default_rng([DATA_SEED, zlib.crc32(keys[s].encode())]).permutation(idx)
        start = 0
        for k, n in enumerate(cuts):
            pieces[k].append(idx[start:start + n])
            start += n
        pieces[-1].append(idx[start:])
    if not pieces:
        pieces = [[] for _ in range(len(sizes(0)) + 1)]
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in pieces]


def _held_out(per_class: int) -> Callable[[int], tuple[int, ...]]:
    """``per_class`` held out of a class of n, but at most a tenth of it and at least one."""
    return lambda n: (min(per_class, max(1, n // 10), n),)


def few_shot(y: np.ndarray, pool: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """``shots`` pool indices per label (labels in increasing order), drawn with
    ``default_rng([DATA_SEED, seed])``; sorted. Fewer shots of the same seed are a subset of more."""
    rng = np.random.default_rng([DATA_SEED, seed])
    parts = [rng.permutation(pool[y[pool] == c])[:shots] for c in np.unique(y[pool])]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _check_shots(name: str, y: np.ndarray, pool: np.ndarray, shots: int, root: Path) -> None:
    counts = np.bincount(y[pool]) if len(pool) else np.zeros(0, np.int64)
    most = int(counts[counts > 0].min()) if (counts > 0).any() else 0
    if shots > most:
        raise UsageError(f"shots must be an integer in 1..{most} for benchmark {name!r} with the data under "
                         f"{root}, got {shots}")


# --- BREEDS -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BreedsSplit:
    """A BREEDS task: its superclasses (WordNet ids, sorted: position = label), their names, and
    per superclass the source and the target subclasses (ImageNet WordNet ids)."""

    superclasses: tuple[str, ...]
    names: tuple[str, ...]
    source: tuple[tuple[str, ...], ...]
    target: tuple[tuple[str, ...], ...]


class _Hierarchy:
    """``robustness.tools.breeds_helpers.ClassHierarchy`` without networkx: the WordNet hierarchy
    restricted to the ancestors of the ImageNet classes, each node's level (its longest path from
    the root) and the ImageNet classes below a node."""

    def __init__(self, info_dir: Path, root: str = BREEDS_ROOT) -> None:
        try:
            class_info = json.loads((info_dir / "dataset_class_info.json").read_text())
            edges = [ln.split() for ln in (info_dir / "class_hierarchy.txt").read_text().splitlines() if ln.strip()]
            mapping = [ln.strip().split("\t") for ln in (info_dir / "node_names.txt").read_text().splitlines()
                       if ln.strip()]
            self.leaves = [str(c[1]) for c in class_info]
        except (OSError, ValueError, TypeError, IndexError, KeyError) as e:
            raise UsageError(f"the BREEDS files in {info_dir} are not readable ({type(e).__name__}: {e}); "
                             "get them again from MadryLab/BREEDS-Benchmarks") from None
        if any(len(e) != 2 for e in edges):
            bad = next(e for e in edges if len(e) != 2)
            raise UsageError(f"{info_dir / 'class_hierarchy.txt'} has a line {' '.join(bad)!r}; expected 'parent child'")
        self.leaf_set = set(self.leaves)
        self.node_names = {m[0]: m[1] for m in mapping if len(m) >= 2}
        parents: dict[str, list[str]] = {}
        for p, c in edges:
            parents.setdefault(c, []).append(p)
        # _make_parent_graph: keep the edges p -> w for every ancestor-or-self w of an ImageNet class
        # (a backward breadth-first search from the classes found in the hierarchy).
        self.children: dict[str, set[str]] = {}
        todo = [n for n in self.leaves if n in parents]
        seen: set[str] = set()
        while todo:
            nxt = []
            for w in todo:
                if w in seen:
                    continue
                seen.add(w)
                for p in parents.get(w, ()):
                    self.children.setdefault(p, set()).add(w)
                    nxt.append(p)
            todo = nxt
        # _make_level_dict: level = the longest path from the root (breadth-first, keeping the
        # deepest level a node is reached at). Sets per depth give the same levels as the
        # reference's list of every path, without enumerating the paths.
        self.level: dict[str, int] = {}
        frontier, depth = {root}, 0
        while frontier:
            for n in frontier:
                self.level[n] = depth
            frontier = {c for n in frontier for c in self.children.get(n, ())}
            depth += 1
            if depth > len(self.children) + 2:
                raise UsageError(f"{info_dir / 'class_hierarchy.txt'} has a cycle; expected a tree-like hierarchy")

    def successors(self, n: str) -> list[str]:
        return sorted(self.children.get(n, ()))

    def leaves_reachable(self, n: str) -> set[str]:
        """The ImageNet classes below ``n`` (the search stops at a class), and ``n`` if it is one."""
        leaves: set[str] = set()
        todo = {n}
        while todo:
            nxt = set()
            for w in todo:
                for c in self.children.get(w, ()):
                    if c in self.leaf_set:
                        leaves.add(c)
                    else:
                        nxt.add(c)
            todo = nxt
        if n in self.leaf_set:
            leaves.add(n)
        return leaves

    def nodes_at_level(self, level: int, ancestor: str | None) -> set[str]:
        """Nodes at ``level``, restricted to the descendants-or-self of ``ancestor`` if given."""
        nodes = {n for n, lv in self.level.items() if lv == level}
        if ancestor is None:
            return nodes
        below, todo = {ancestor}, [ancestor]
        while todo:
            todo = [c for n in todo for c in self.children.get(n, ()) if c not in below]
            below.update(todo)
        return nodes & below


def breeds_split(info_dir: Path | str, task: str) -> BreedsSplit:
    """The BREEDS task ``task`` (``living17`` or ``entity30``) from the hierarchy files in ``info_dir``.

    A re-implementation of ``robustness.tools.breeds_helpers`` (robustness 1.2.1.post2;
    ``make_living17``/``make_entity30`` with ``split="rand"``, i.e. ``BreedsDatasetGenerator(info_dir)
    .get_superclasses(level, ancestor=..., Nsubclasses=..., split="rand", balanced=True,
    random_seed=2)``), step by step: the superclasses are the nodes at ``level`` (below
    ``ancestor``), sorted, that have at least ``Nsubclasses`` ImageNet classes below them; for each
    in turn one ``numpy.random.RandomState(2)`` chooses ``Nsubclasses`` of the classes below its
    first descendant with more than one child (``rng.choice(sorted(classes), N, replace=False)``),
    the first half for the source and the second for the target. robustness itself does not import
    with current torchvision (its models import ``torchvision.models.utils``), hence this copy.
    """
    level, ancestor, n_sub = BREEDS_TASKS[task]
    return _breeds_split(str(info_dir), level, ancestor, n_sub)


@functools.lru_cache(maxsize=4)
def _breeds_split(info_dir: str, level: int, ancestor: str | None, n_sub: int) -> BreedsSplit:
    h = _Hierarchy(Path(info_dir))
    rng = np.random.RandomState(BREEDS_SEED)  # get_superclasses' rng, shared by all superclasses in order
    rel_nodes = sorted(h.nodes_at_level(level, ancestor))
    in_desc = [sorted(h.leaves_reachable(n)) for n in rel_nodes]
    if not rel_nodes or min(len(d) for d in in_desc) == 0:
        raise UsageError(f"the BREEDS hierarchy in {info_dir} has no usable superclasses at level {level}; "
                         "are these the files of MadryLab/BREEDS-Benchmarks (imagenet_class_hierarchy/modified)?")
    superclasses = [n for n, d in zip(rel_nodes, in_desc) if len(d) >= n_sub]
    source, target = [], []
    nh = n_sub // 2  # balanced=True: Nsubclasses as given (even for both tasks)
    for sc in sorted(superclasses):
        # split_superclass(split_type="rand"): descend while the node has a single child.
        desc = h.successors(sc)
        while len(desc) == 1:
            desc = h.successors(desc[0])
        pool: list[str] = []
        for d in desc:
            pool.extend(sorted(h.leaves_reachable(d)))
        if len(pool) < 2 * nh:
            raise UsageError(f"BREEDS superclass {sc} has {len(pool)} subclasses below its first branching node, "
                             f"fewer than {2 * nh}; the hierarchy files in {info_dir} are not BREEDS'")
        sel = rng.choice(sorted(pool), nh * 2, replace=False)
        if len(set(sel)) != len(sel):  # the reference asserts the same (a class reached twice)
            raise UsageError(f"BREEDS superclass {sc}: a subclass was drawn twice; the hierarchy files in "
                             f"{info_dir} are not BREEDS'")
        source.append(tuple(str(s) for s in sel[:nh]))
        target.append(tuple(str(s) for s in sel[nh:]))
    return BreedsSplit(tuple(superclasses), tuple(h.node_names.get(s, s) for s in superclasses),
                       tuple(source), tuple(target))


# --- the benchmarks ---------------------------------------------------------------------------

def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class _ImageNetBenchmark(FetchedBenchmark):
    """What the ImageNet benchmarks share: data checks (resolve and status: FetchedBenchmark)."""

    default_model = "resnet50"
    input_stats = (MEAN, STD)
    timm_transform = True  # photographs: a timm model's pretrained_cfg resizes and crops them (models.base)
    default_corruption = DEFAULT_CORRUPTION
    default_severity = DEFAULT_SEVERITY

    def _root(self) -> Path:
        """The data root, after checking every dataset this benchmark reads is in place."""
        root = data_root()
        for d in self.datasets:
            ds = DATASETS.get(d)
            found = ds.problems(root)
            if found:
                how = f"expected {ds.layout} " if ds.manual else ""
                raise UsageError(f"{self.name} data not found under {root}: {found[0]}; {how}(check with "
                                 f"`ftbench fetch {' '.join(self.datasets)}`)")
        return root


class _ImageNetSource(_ImageNetBenchmark):
    """Source task: all of ImageNet (train -> source_train / source_val, val -> source_test)."""

    def class_prompts(self, spec: RunSpec, role: str) -> Any:
        from ftbench.data.prompts import imagenet

        return imagenet()  # ImageNet's 1000 classes in sorted-wnid order (a copy with fewer classes gets none)

    def source(self, spec: RunSpec) -> SourceTask:
        root = self._root()
        wnids = imagenet_classes(str(root))
        base = root / DATASETS.get("imagenet").folder
        train_paths, train_y = _listing(str(base / "train"), wnids)
        test_paths, test_y = _listing(str(base / "val"), wnids)
        for split, n in (("train", len(train_paths)), ("val", len(test_paths))):
            if n == 0:
                raise UsageError(f"no images (*.JPEG) in the class folders of {base / split}; see `ftbench fetch "
                                 "imagenet` for the expected layout")
        val, train = partition(train_y, [f"source-val/{w}" for w in wnids], _held_out(SOURCE_VAL_PER_CLASS))
        tf = _imagenet_transform()
        all_train = _stream(train_paths, train_y, tf)
        # One source model for imagenet-c and imagenet-c-gen; n_train keeps a small copy (tests) from
        # sharing a cache entry with the real one.
        key = {"benchmark": "imagenet", "image_size": IMAGE_SIZE, "resize": RESIZE, "data_seed": DATA_SEED,
               "source_val_per_class": SOURCE_VAL_PER_CLASS, "normalize": [list(MEAN), list(STD)],
               "n_train": int(len(train))}
        return SourceTask(key, len(wnids), all_train.subset(train), all_train.subset(val),
                          _stream(test_paths, test_y, tf), recipe=dict(PRETRAIN_RECIPE))

    def _target_images(self, spec: RunSpec, root: Path, wnids: tuple[str, ...]) -> StreamSplit:
        """All target images of ``spec`` (one per ImageNet val image), labelled, in listing order."""
        raise NotImplementedError

    def target(self, spec: RunSpec) -> TargetTask:
        root = self._root()
        wnids = imagenet_classes(str(root))
        images = self._target_images(spec, root, wnids)
        y = images.y.numpy()
        val, pool, test = partition(y, [f"target/{w}" for w in wnids],
                                    lambda n: (max(1, round(C_VAL_FRACTION * n)), max(1, round(C_POOL_FRACTION * n))))
        _check_shots(self.name, y, pool, spec.shots, root)
        train = few_shot(y, pool, spec.shots, spec.seed)
        return TargetTask(len(wnids), images.take(train), images.subset(val), images.subset(test),
                          info={"shift_level": self.shifts[spec.shift].level})


@BENCHMARKS.register("imagenet-c")
class ImageNetC(_ImageNetSource):
    name = "imagenet-c"
    help = "ImageNet -> ImageNet-C (published images, user-supplied): 15+4 corruptions x severities 1-5"
    datasets = ("imagenet", "imagenet-c")
    default_shots = C_DEFAULT_SHOTS
    max_shots = C_MAX_SHOTS
    shifts = {
        "corruption": ShiftInfo(
            "corruption", "input", "target images from ImageNet-C (--corruption NAME --severity 1..5, default 5)",
            ("corruption", "severity"),
        ),
    }

    def corruption_names(self) -> list[str]:
        return sorted(IMAGENET_C_ALL)

    def _target_images(self, spec: RunSpec, root: Path, wnids: tuple[str, ...]) -> StreamSplit:
        assert spec.corruption is not None and spec.severity is not None
        folder = root / DATASETS.get("imagenet-c").folder / spec.corruption / str(spec.severity)
        if not folder.is_dir():
            extra = (" (the 4 extra corruptions come in Zenodo's extra.tar)"
                     if spec.corruption in IMAGENET_C_EXTRA else "")
            raise UsageError(f"{folder} does not exist: the ImageNet-C copy lacks {spec.corruption} at severity "
                             f"{spec.severity}{extra}; expected {DATASETS.get('imagenet-c').layout}")
        stray = sorted(set(_class_folders(folder)) - set(wnids))
        if stray:
            raise UsageError(f"{folder / stray[0]} is not an ImageNet class (not a folder of "
                             f"{root / 'imagenet' / 'val'}); is this ImageNet-C?")
        paths, y = _listing(str(folder), wnids)
        if not paths:
            raise UsageError(f"no images (*.JPEG) in the class folders of {folder}; the ImageNet-C copy is incomplete")
        # Already 224 px centre crops: the transform only resizes an image of another size.
        return _stream(paths, y, resize_center_crop(IMAGE_SIZE))


class CorruptedFiles(ImageFiles):
    """ImageNet images corrupted as they are loaded, as ``make_imagenet_c.py`` makes ImageNet-C:
    resize and centre crop, corrupt (ImageNet-C constants) with a seed of the file's name,
    truncate to uint8, JPEG-encode at quality 85 and decode (emulated bit-exactly on the tensor)."""

    def __init__(self, paths: Sequence[str | Path], transform: Transform, corruption: str, severity: int) -> None:
        super().__init__(paths, transform)
        self.corruption, self.severity = corruption, severity

    def __getitem__(self, i: int) -> torch.Tensor:
        img = super().__getitem__(i)
        x = img.float().div_(255)[None]
        seed = generation_seed(self.corruption, self.severity, Path(self.paths[i]).name)
        y = corruptions.corrupt(x, self.corruption, self.severity, seed=seed, scale="imagenet")
        # np.uint8 truncation as the reference (+1e-3: an exact k/255 must not truncate to k - 1).
        y = (y * 255 + 1e-3).floor_().clamp_(0, 255) / 255
        return (corruptions.jpeg(y, GEN_JPEG_QUALITY)[0] * 255).round_().to(torch.uint8)


def generation_seed(corruption: str, severity: int, file_name: str) -> int:
    """Seed of the corruption of the ImageNet val image ``file_name`` in imagenet-c-gen."""
    return zlib.crc32(f"imagenet-c-gen/v{GEN_VERSION}/{corruption}/{severity}/{file_name}".encode())


@BENCHMARKS.register("imagenet-c-gen")
class ImageNetCGen(_ImageNetSource):
    name = "imagenet-c-gen"
    help = ("ImageNet -> ImageNet val corrupted on the fly by ftbench's torch corruptions (not the published "
            "ImageNet-C images; needs only imagenet)")
    datasets = ("imagenet",)
    default_shots = C_DEFAULT_SHOTS
    max_shots = C_MAX_SHOTS
    shifts = {
        "corruption": ShiftInfo(
            "corruption", "input",
            "ImageNet val images corrupted by ftbench (--corruption NAME --severity 1..5, default 5)",
            ("corruption", "severity"),
        ),
    }

    def corruption_names(self) -> list[str]:
        return sorted(set(IMAGENET_C_ALL) & set(corruptions.names()))

    def _target_images(self, spec: RunSpec, root: Path, wnids: tuple[str, ...]) -> StreamSplit:
        assert spec.corruption is not None and spec.severity is not None
        paths, y = _listing(str(root / DATASETS.get("imagenet").folder / "val"), wnids)
        if not paths:
            raise UsageError(f"no images (*.JPEG) in the class folders of {root / 'imagenet' / 'val'}")
        # The corruptions are defined on the 224 px crops make_imagenet_c.py makes: the benchmark's transform.
        files = CorruptedFiles(paths, resize_center_crop(IMAGE_SIZE, RESIZE), spec.corruption, spec.severity)
        return StreamSplit(files, torch.from_numpy(y.copy()), MEAN, STD)


class _Breeds(_ImageNetBenchmark):
    """Living-17 / Entity-30: superclass labels; source and target see disjoint subclasses."""

    datasets = ("imagenet", "breeds")
    default_shots = BREEDS_DEFAULT_SHOTS
    max_shots = BREEDS_MAX_SHOTS
    # The ID→OOD protocol (LP-FT's BREEDS): ID = the source subclasses, OOD = the target ones; no OOD
    # val set; the pretrained model is given (hub weights or --weights FILE).
    id_ood_shift = ShiftInfo(
        "subpopulation", "feature",
        "ID: the source subclasses of each superclass (ImageNet train minus 10 per subclass held out as ID val; "
        "ID test: their ImageNet val images); OOD test set 'unseen-subclasses': ImageNet val images of the "
        "target subclasses (BREEDS split 'rand')")
    id_ood_sets: ClassVar[dict[str, str]] = {"unseen-subclasses": "feature"}
    id_ood_has_val = False
    id_ood_pretrains = False

    def split(self, root: Path) -> BreedsSplit:
        """This task's BREEDS split, from the hierarchy files under ``root``."""
        return breeds_split(root / DATASETS.get("breeds").folder, self.name)

    def _files(self, root: Path, groups: tuple[tuple[str, ...], ...], part: str) -> tuple[list[str], np.ndarray,
                                                                                           np.ndarray, list[str]]:
        """(paths, superclass labels, subclass index, subclass wnids) of ImageNet ``part`` (train/val)
        for the subclasses ``groups[c]`` of each superclass ``c``."""
        wnids = tuple(w for g in groups for w in g)
        label = np.asarray([c for c, g in enumerate(groups) for _ in g], dtype=np.int64)
        folder = root / DATASETS.get("imagenet").folder / part
        paths, sub = _listing(str(folder), wnids)
        counts = np.bincount(sub, minlength=len(wnids))
        if (counts == 0).any():
            w = wnids[int(np.flatnonzero(counts == 0)[0])]
            raise UsageError(f"{folder / w} holds no images, but {w} is a {self.name} subclass; the ImageNet copy "
                             "is incomplete (see `ftbench fetch imagenet`)")
        return paths, label[sub], sub, list(wnids)

    def source(self, spec: RunSpec) -> SourceTask:
        root = self._root()
        split = self.split(root)
        tf = _imagenet_transform()
        paths, y, sub, wnids = self._files(root, split.source, "train")
        val, train = partition(sub, [f"source-val/{w}" for w in wnids], _held_out(SOURCE_VAL_PER_CLASS))
        all_train = _stream(paths, y, tf)
        test_paths, test_y, _, _ = self._files(root, split.source, "val")
        key = {"benchmark": self.name, "image_size": IMAGE_SIZE, "resize": RESIZE, "data_seed": DATA_SEED,
               "source_val_per_class": SOURCE_VAL_PER_CLASS, "normalize": [list(MEAN), list(STD)],
               "split": _digest(split.superclasses, split.source), "n_train": int(len(train))}
        return SourceTask(key, len(split.superclasses), all_train.subset(train), all_train.subset(val),
                          _stream(test_paths, test_y, tf), recipe=dict(PRETRAIN_RECIPE))

    def target(self, spec: RunSpec) -> TargetTask:
        root = self._root()
        split = self.split(root)
        tf = _imagenet_transform()
        paths, y, sub, wnids = self._files(root, split.target, "train")
        val, pool = partition(sub, [f"target-val/{w}" for w in wnids], _held_out(BREEDS_TARGET_VAL_PER_CLASS))
        _check_shots(self.name, y, pool, spec.shots, root)
        train = few_shot(y, pool, spec.shots, spec.seed)
        images = _stream(paths, y, tf)
        test_paths, test_y, _, _ = self._files(root, split.target, "val")
        return TargetTask(len(split.superclasses), images.take(train), images.subset(val),
                          _stream(test_paths, test_y, tf), info={"shift_level": self.shifts[spec.shift].level})

    def id_ood(self, spec: RunSpec) -> IdOodSplits:
        """ID train / val / test are the few-shot protocol's source_train / source_val / source_test (the
        source subclasses' ImageNet train images less 10 per subclass, those 10, their ImageNet val
        images); the OOD test set is the target subclasses' ImageNet val images, the few-shot
        protocol's target_test. LP-FT's release (``datasets/breeds.py``) trains on all the source
        subclasses' train images and early-stops on their val images; the held-out ID val here keeps
        selection off the ID test images (docs/benchmarks.md)."""
        s = self.source(spec)
        root = self._root()
        paths, y, _, _ = self._files(root, self.split(root).target, "val")
        return IdOodSplits(s.num_classes, s.train, s.val, s.test,
                           {"unseen-subclasses": _stream(paths, y, _imagenet_transform())})


@BENCHMARKS.register("living17")
class Living17(_Breeds):
    name = "living17"
    help = ("BREEDS Living-17: 17 animal superclasses of ImageNet, 2 source / 2 target subclasses each "
            "(user-supplied ImageNet + BREEDS files)")
    shifts = {
        "subpopulation": ShiftInfo(
            "subpopulation", "feature", "target = the superclasses' unseen ImageNet subclasses (BREEDS split 'rand')"
        ),
    }


@BENCHMARKS.register("entity30")
class Entity30(_Breeds):
    name = "entity30"
    help = ("BREEDS Entity-30: 30 ImageNet superclasses, 4 source / 4 target subclasses each "
            "(user-supplied ImageNet + BREEDS files)")
    shifts = {
        "subpopulation": ShiftInfo(
            "subpopulation", "feature", "target = the superclasses' unseen ImageNet subclasses (BREEDS split 'rand')"
        ),
    }


# --- ImageNet -> its OOD test sets (LP-FT, WiSE-FT, AutoFT, the PETL robustness study) ---------

IMAGENET_OOD = ("imagenet-v2", "imagenet-r", "imagenet-sketch", "imagenet-a")
# The 200 classes of ImageNet-R and of ImageNet-A, as positions in the sorted 1000 ImageNet wnids:
# mlfoundations/wise-ft @ 58b7a4b src/datasets/imagenet_r.py and imagenet_a.py, CLASS_SUBLIST (equal to
# hendrycks' imagenet-r eval.py imagenet_r_mask and natural-adv-examples eval.py indices_in_1k).
IMAGENET_R_CLASSES = (
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99, 100,
    105, 107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162, 163, 171, 172,
    178, 187, 195, 199, 203, 207, 208, 219, 231, 232, 234, 235, 242, 245, 247, 250, 251, 254, 259, 260,
    263, 265, 267, 269, 276, 277, 281, 288, 289, 291, 292, 293, 296, 299, 301, 308, 309, 310, 311, 314,
    315, 319, 323, 327, 330, 334, 335, 337, 338, 340, 341, 344, 347, 353, 355, 361, 362, 365, 366, 367,
    368, 372, 388, 390, 393, 397, 401, 407, 413, 414, 425, 428, 430, 435, 437, 441, 447, 448, 457, 462,
    463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558, 570, 579, 583, 587, 593, 594, 596, 609,
    613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768, 774, 776, 779, 780, 787, 805, 812, 815,
    820, 824, 833, 847, 852, 866, 875, 883, 889, 895, 907, 928, 931, 932, 933, 934, 936, 937, 943, 945,
    947, 948, 949, 951, 953, 954, 957, 963, 965, 967, 980, 981, 983, 988,
)
IMAGENET_A_CLASSES = (
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94, 96, 97, 99,
    105, 107, 108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234, 235, 254, 277, 283, 287,
    291, 295, 298, 301, 306, 307, 308, 309, 310, 311, 313, 314, 315, 317, 319, 323, 324, 326, 327, 330,
    334, 335, 336, 347, 361, 363, 372, 378, 386, 397, 400, 401, 402, 404, 407, 411, 416, 417, 420, 425,
    428, 430, 437, 438, 445, 456, 457, 461, 462, 470, 472, 483, 486, 488, 492, 496, 514, 516, 528, 530,
    539, 542, 543, 549, 552, 557, 561, 562, 569, 572, 573, 575, 579, 589, 606, 607, 609, 614, 626, 627,
    640, 641, 642, 643, 658, 668, 677, 682, 684, 687, 701, 704, 719, 736, 746, 749, 752, 758, 763, 765,
    768, 773, 774, 776, 779, 780, 786, 792, 797, 802, 803, 804, 813, 815, 820, 823, 831, 833, 835, 839,
    845, 847, 850, 859, 862, 870, 879, 880, 888, 890, 897, 900, 907, 913, 924, 932, 933, 934, 937, 943,
    945, 947, 951, 954, 956, 957, 959, 971, 972, 980, 981, 984, 986, 987, 988,
)


# The OOD val set of `imagenet` (id-ood): AutoFT's ImageNet search set (cchoi1/auto-ft @ 594e6a2): the 15
# ImageNet-C corruptions (src/datasets/imagenet_c.py:10-12) at severity 5 (its default, imagenet_c.py:22;
# args.py:21), concatenated (imagenet_c.py:52-56; get_data.py:56 does not pass --use_class_balanced_ood on,
# so this branch runs), a random 15,000 of them (imagenet_c.py:57-59 with scripts/imagenet.sh's
# --num_ood_hp_examples 15000). The release draws them anew in each run (an unseeded torch.randperm);
# here they are drawn once, from DATA_SEED, so every row's ood_val_acc is on the same images.
OOD_VAL_SEVERITY = 5
OOD_VAL_SIZE = 15_000


@BENCHMARKS.register("imagenet")
class ImageNetOod(_ImageNetSource):
    """ID: ImageNet (train less 10 per class held out as ID val; ID test: ImageNet val). OOD test sets:
    ImageNet-V2 MatchedFrequency, -R, -Sketch, -A, every image through the same evaluation transform as
    ImageNet val. R and A hold 200 of the 1000 classes and are scored on those classes' logits (the
    classes of their folders; on the real data these are wise-ft's and hendrycks' ``CLASS_SUBLIST`` /
    ``indices_in_1k``), V2 and Sketch on all 1000. OOD val set (where the ImageNet-C copy is in place):
    AutoFT's, a fixed 15,000 of ImageNet-C's 15 corruptions at severity 5 (:data:`OOD_VAL_SIZE`); the
    search split of ``autoft``."""

    name = "imagenet"
    help = ("ImageNet -> ImageNet-V2 / -R / -Sketch / -A (ID→OOD protocol only; user-supplied ImageNet, "
            "fetched OOD sets)")
    datasets = ("imagenet", *IMAGENET_OOD)
    few_shot = False
    id_ood_shift = ShiftInfo(
        "natural", "natural",
        "ID: ImageNet (train less 10 per class as ID val; ID test: ImageNet val); OOD: ImageNet-V2 matched "
        "frequency, -R and -A (scored on their 200 classes' logits), -Sketch; OOD val (AutoFT's search set, with "
        "imagenet-c): 15,000 images of ImageNet-C's 15 corruptions at severity 5")
    shifts = {"natural": id_ood_shift}
    id_ood_sets: ClassVar[dict[str, str]] = {n: "natural" for n in IMAGENET_OOD}
    id_ood_has_val = True  # where the ImageNet-C copy is in place (_ood_val)
    id_ood_pretrains = False

    def _ood_val(self, root: Path, wnids: tuple[str, ...]) -> StreamSplit | None:
        """The OOD val set (see :data:`OOD_VAL_SIZE`): ImageNet-C's 15 corruptions at severity
        :data:`OOD_VAL_SEVERITY`, a fixed draw of at most OOD_VAL_SIZE of them (sorted, in listing
        order: corruption, class, file); None without an ImageNet-C copy."""
        ds = DATASETS.get("imagenet-c")
        if ds.problems(root):
            return None
        paths: list[str] = []
        labels: list[np.ndarray] = []
        for c in IMAGENET_C:
            folder = root / ds.folder / c / str(OOD_VAL_SEVERITY)
            stray = sorted(set(_class_folders(folder)) - set(wnids))
            if stray:
                raise UsageError(f"{folder / stray[0]} is not an ImageNet class (not a folder of "
                                 f"{root / 'imagenet' / 'val'}); is this ImageNet-C?")
            p, y = _listing(str(folder), wnids)
            paths += p
            labels.append(y)
        if not paths:
            raise UsageError(f"no images in the class folders of {root / ds.folder}/<corruption>/{OOD_VAL_SEVERITY}; "
                             "the ImageNet-C copy is incomplete (imagenet's OOD val set is its 15 corruptions at "
                             f"severity {OOD_VAL_SEVERITY}; expected {ds.layout})")
        y = np.concatenate(labels)
        rng = np.random.default_rng([DATA_SEED, zlib.crc32(b"imagenet/ood-val")])
        idx = np.sort(rng.choice(len(paths), size=min(OOD_VAL_SIZE, len(paths)), replace=False))
        # ImageNet-C images are already 224 px centre crops: the transform only resizes another size.
        return _stream([paths[i] for i in idx], y[idx], resize_center_crop(IMAGE_SIZE))

    def _ood(self, root: Path, wnids: tuple[str, ...], name: str) -> tuple[StreamSplit, tuple[int, ...] | None]:
        """OOD test set ``name``: its images, labelled with ID labels, and the labels it is scored on."""
        ds = DATASETS.get(name)
        base = root / ds.folder / ds.required[0]
        if name == "imagenet-v2":  # folders 0..999 are class indices (not wnids; not string-sorted)
            folders = _class_folders(base, str.isdigit)
            bad = [d for d in folders if int(d) >= len(wnids)]
            if bad:
                raise UsageError(f"{base / bad[0]} is class {bad[0]}, but ImageNet has {len(wnids)} classes here")
            paths, y = _listing(str(base), tuple(str(i) for i in range(len(wnids))))
        else:
            stray = sorted(set(_class_folders(base)) - set(wnids))
            if stray:
                raise UsageError(f"{base / stray[0]} is not an ImageNet class (not a folder of "
                                 f"{root / 'imagenet' / 'val'}); is this {name}?")
            paths, y = _listing(str(base), wnids)
        if not paths:
            raise UsageError(f"no images in the class folders of {base}; the {name} copy is incomplete "
                             f"(ftbench fetch {name})")
        subset = None
        if name in ("imagenet-r", "imagenet-a"):  # the classes of its 200 folders: the published ones
            subset = tuple(sorted(wnids.index(w) for w in _class_folders(base)))
            published = IMAGENET_R_CLASSES if name == "imagenet-r" else IMAGENET_A_CLASSES
            if subset != published:
                odd = sorted(set(subset) ^ set(published))[0]
                raise UsageError(f"the class folders of {base} are not {name}'s 200 classes (ImageNet class {odd} "
                                 f"({wnids[odd]}) is {'extra' if odd in subset else 'missing'}); is this {name}?")
        return _stream(paths, y, _imagenet_transform()), subset

    def id_ood(self, spec: RunSpec) -> IdOodSplits:
        """ID train / val / test are the ImageNet source task's (as for imagenet-c); the OOD test sets
        are read whole (no partition: they are test sets only)."""
        s = self.source(spec)
        root = self._root()
        wnids = imagenet_classes(str(root))
        tests, classes = {}, {}
        for name in IMAGENET_OOD:
            tests[name], sub = self._ood(root, wnids, name)
            if sub is not None:
                classes[name] = sub
        return IdOodSplits(s.num_classes, s.train, s.val, s.test, tests, ood_val=self._ood_val(root, wnids),
                           ood_classes=classes)
