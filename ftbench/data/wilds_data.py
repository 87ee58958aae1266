"""The WILDS benchmarks: ``waterbirds``, ``celeba``, ``camelyon17``, ``fmow``, ``iwildcam``.

Each dataset is read through the ``wilds`` package (2.0.0): its dataset class gives the metadata
(``y_array``, ``metadata_array``), the official splits (``split_array`` / ``split_dict``) and the
file each example is read from; ftbench streams the images from disk
(:class:`ftbench.data.stream.StreamSplit`) with WILDS' evaluation transform of the dataset and
ImageNet normalisation, and computes each dataset's official metrics with its own torch code
(checked against ``wilds``' ``dataset.eval`` in tests/test_wilds_data.py).

Two families (docs/benchmarks.md states the protocols in full):

* ``waterbirds`` and ``celeba`` (output level, spurious correlations; the surgical fine-tuning
  paper's output-level tasks): the source task is WILDS ``train``, where the label is correlated
  with a spurious attribute (background / gender); ``source_val`` / ``source_test`` are fixed
  group-stratified tenths of it. The target task breaks the correlation: the few-shot set holds
  ``shots`` examples *per group* (label x attribute) drawn from half of WILDS ``val``,
  ``target_val`` is taken from the other half, ``target_test`` is WILDS ``test``. Main metric:
  worst-group accuracy.
* ``camelyon17``, ``fmow``, ``iwildcam`` (natural shifts): the source task is WILDS ``train``,
  with ``id_val`` / ``id_test`` (Camelyon17 has no ``id_test``: its ``id_val`` is halved). The
  target is the OOD test domain (hospital 2; 2016-2017 images; unseen camera traps): a fixed
  part of WILDS' OOD ``test`` split is set aside as the few-shot pool and ``target_val``, the
  rest is ``target_test``, so fine-tuning sees the distribution it is scored on. Main metrics:
  accuracy, worst-region accuracy, macro-F1.

In the ID→OOD protocol (``--protocol id-ood``; LP-FT, AutoFT) every role is one of WILDS' official
splits, as ``dataset.get_subset(split)`` gives it (:attr:`_Wilds.id_ood_roles`): ID train =
``train``, ID val = ``id_val``, ID test = ``id_test`` (Camelyon17, which has none: ``id_val``, as
WILDS reports its ID accuracy), OOD val = ``val``, one OOD test set ``test`` = ``test``. Waterbirds
and CelebA have only ``train`` / ``val`` / ``test``: ID val = ``val``, and ``test`` is both the ID
test (average accuracy: ``id_acc``; for Waterbirds, whose test balances backgrounds, the
train-weighted ``id_adj_avg_acc``) and the OOD test set whose worst-group accuracy is the headline
(``ood_worst_group_acc``); they have no OOD val set.

Heavy imports (``wilds``, pandas, torchvision) happen inside functions: importing this module,
which ``get_benchmark`` does for every benchmark, stays cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ftbench.data.base import BENCHMARKS, FetchedBenchmark, IdOodSplits, Metrics, ShiftInfo, SourceTask, TargetTask
from ftbench.data.fetch import DATASETS, data_root
from ftbench.errors import UsageError, unknown

if TYPE_CHECKING:
    from ftbench.data.base import AnySplit
    from ftbench.data.stream import StreamSplit
    from ftbench.spec import RunSpec

DATA_SEED = 0  # the fixed partitions below; not the run seed
# ImageNet statistics: WILDS' default normalisation (examples/transforms.py) and the backbones'.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Image side per benchmark: WILDS' evaluation resolution (examples/configs/datasets.py, the
# WILDS 2.0 paper's for iWildCam). Part of the source model's cache key; tests shrink it.
SIZE = {"waterbirds": 224, "celeba": 224, "camelyon17": 96, "fmow": 224, "iwildcam": 448}
# Waterbirds' transform resizes to size * 256/224 before the centre crop (WILDS' resize_scale).
WATERBIRDS_RESIZE_SCALE = 256.0 / 224.0
SOURCE_HOLDOUT = 0.1  # waterbirds/celeba: source_val and source_test are each this fraction of train, per group
# target_val is decoded into memory (like the few-shot set) when its float32 images take at most this
# much; larger ones (iWildCam at 448 px) stay on disk and stream.
TAKE_MAX_BYTES = 512 << 20
# Waterbirds' training-set group sizes, by which WILDS weights its adjusted average accuracy.
WATERBIRDS_TRAIN_GROUPS = {(0, 0): 3498, (0, 1): 184, (1, 0): 56, (1, 1): 1057}  # (y, background) -> count


# --- wilds, offline and without torch_scatter -------------------------------------------------

def _scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: torch.Tensor | None = None,
             dim_size: int | None = None, reduce: str = "sum") -> torch.Tensor:
    """``torch_scatter.scatter`` for the 1-D ``sum`` / ``mean`` that ``wilds.common.utils.avg_over_groups``
    uses: ``index_add_`` of the values and of the counts (an empty group's mean is 0, as torch_scatter's)."""
    if src.dim() != 1 or out is not None or reduce not in ("sum", "mean"):
        raise NotImplementedError("ftbench's torch_scatter stand-in does only 1-D scatter sum/mean")
    n = int(dim_size) if dim_size is not None else (int(index.max()) + 1 if index.numel() else 0)
    total = torch.zeros(n, dtype=src.dtype, device=src.device).index_add_(0, index, src)
    if reduce == "sum":
        return total
    count = torch.zeros(n, dtype=src.dtype, device=src.device).index_add_(0, index, torch.ones_like(src))
    return total / count.clamp(min=1)


def _ensure_torch_scatter() -> None:
    """Make ``import torch_scatter`` work for wilds' group averaging: the real package when installed
    (it is source-only on PyPI), else a stand-in module with :func:`_scatter`."""
    if "torch_scatter" in sys.modules or importlib.util.find_spec("torch_scatter") is not None:
        return
    mod = types.ModuleType("torch_scatter", "ftbench stand-in for torch_scatter (1-D scatter sum/mean only)")
    mod.scatter = _scatter  # type: ignore[attr-defined]
    mod.__ftbench_standin__ = True  # type: ignore[attr-defined]
    sys.modules["torch_scatter"] = mod


def import_wilds() -> Any:
    """``import wilds`` without its PyPI version check (a network call in a thread at import time)."""
    _ensure_torch_scatter()
    os.environ.setdefault("OUTDATED_IGNORE", "1")
    if "wilds" in sys.modules:
        return sys.modules["wilds"]
    # wilds/version.py starts the check only when `from outdated import check_outdated` succeeds:
    # hide `outdated` while wilds is imported, then restore whatever was there.
    saved = sys.modules.get("outdated", None), "outdated" in sys.modules
    sys.modules["outdated"] = None  # type: ignore[assignment]  # makes the import raise ImportError
    try:
        import wilds
    except ImportError as e:
        raise UsageError(f"the WILDS benchmarks need the `wilds` package (2.0.0), which cannot be imported ({e}): "
                         "pip install wilds==2.0.0") from None
    finally:
        if saved[1]:
            sys.modules["outdated"] = saved[0]  # type: ignore[assignment]
        else:
            del sys.modules["outdated"]
    return wilds


# --- the data of one dataset --------------------------------------------------------------------

@dataclass(frozen=True)
class WildsData:
    """What ftbench keeps of a ``wilds`` dataset: per example its image file, label, metadata row and split."""

    folder: Path  # the dataset's folder (wilds' data_dir)
    paths: list[str]  # the image file of each example, as the dataset's get_input opens it
    y: torch.Tensor  # int64 labels
    meta: torch.Tensor  # int64 N×K: wilds' metadata_array
    fields: tuple[str, ...]  # its column names
    split: np.ndarray  # wilds' split id of each example (-1: in no split)
    split_ids: dict[str, int]  # split name -> id
    num_classes: int
    metadata_map: dict[str, list[Any]]

    def col(self, field: str) -> int:
        return self.fields.index(field)

    def indices(self, split: str) -> np.ndarray:
        """Positions of the examples of WILDS split ``split``, in dataset order."""
        return np.flatnonzero(self.split == self.split_ids[split])


def _file_list(name: str, ds: Any) -> list[str]:
    """The file each example's ``get_input`` opens (wilds 2.0.0 datasets/*_dataset.py)."""
    root = Path(ds.data_dir)
    if name == "celeba":
        return [str(root / "img_align_celeba" / f) for f in ds._input_array]
    if name == "fmow":
        return [str(root / "images" / f"rgb_img_{i}.png") for i in ds.full_idxs]
    if name == "iwildcam":
        return [str(root / "train" / f) for f in ds._input_array]
    return [str(root / f) for f in ds._input_array]  # waterbirds, camelyon17


def load_wilds_dataset(name: str, root: str | Path) -> Any:
    """The ``wilds`` dataset object of benchmark ``name`` under data root ``root`` (never downloads)."""
    wilds = import_wilds()
    try:
        with warnings.catch_warnings():
            # Harmless on current numpy/pandas: torch warns that pandas' (copy-on-write) arrays are
            # read-only, and wilds that FMoW's year grouper has empty groups when a copy starts after 2002.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            warnings.filterwarnings("ignore", message="Minimum metadata value for CombinatorialGrouper")
            return wilds.get_dataset(dataset=WILDS_NAMES[name], root_dir=str(root), download=False)
    except Exception as e:  # a damaged copy: missing CSV columns, unparsable dates, failed asserts
        folder = Path(root) / DATASETS.get(name).folder
        raise UsageError(f"the {name} data in {folder} cannot be read by wilds ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'no message'}); "
                         f"move the folder away and run `ftbench fetch {name}` again") from None


@functools.lru_cache(maxsize=2)
def load(name: str, root: str) -> WildsData:
    """:class:`WildsData` of benchmark ``name`` under data root ``root`` (cached per process)."""
    ds = load_wilds_dataset(name, root)
    return WildsData(
        folder=Path(ds.data_dir), paths=_file_list(name, ds), y=torch.as_tensor(ds.y_array).long(),
        meta=torch.as_tensor(ds.metadata_array).long(), fields=tuple(ds.metadata_fields),
        split=np.asarray(ds.split_array).astype(np.int64), split_ids=dict(ds.split_dict),
        num_classes=int(ds.n_classes), metadata_map={k: list(v) for k, v in (ds.metadata_map or {}).items()})


# --- transforms ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class WildsTransform:
    """WILDS' evaluation transform of a dataset (examples/transforms.py), on uint8 C×H×W tensors.

    * ``resize-crop`` (waterbirds, ``image_resize_and_center_crop``): resize to a square of side
      ``int(size * 256/224)``, aspect ratio not kept, then the central ``size`` square;
    * ``crop-resize`` (celeba, ``image_base`` on 178×218 images): the central square of the shorter
      side, then resize to ``size``;
    * ``resize`` (camelyon17, fmow, iwildcam, ``image_base``): resize to ``size`` × ``size``, aspect
      ratio not kept (a no-op on Camelyon17's 96 px and FMoW's 224 px images).

    Resizing is bilinear and antialiased, as PIL's. Picklable, for DataLoader workers.
    """

    kind: str
    size: int

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        s = self.size
        if self.kind == "resize-crop":
            r = int(s * WATERBIRDS_RESIZE_SCALE)
            if img.shape[-2:] != (r, r):
                img = TF.resize(img, [r, r], antialias=True)
            return TF.center_crop(img, [s, s])
        if self.kind == "crop-resize":
            m = min(img.shape[-2:])
            img = TF.center_crop(img, [m, m])
        if img.shape[-2:] != (s, s):
            img = TF.resize(img, [s, s], antialias=True)
        return img


# --- metrics ------------------------------------------------------------------------------------

def _host(pred: torch.Tensor, split: AnySplit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predictions, labels, metadata) of a split on the CPU."""
    if split.meta is None:
        raise ValueError("a WILDS metric needs the split's metadata (Split.meta)")
    return pred.detach().cpu().long(), split.y.detach().cpu().long(), split.meta.detach().cpu().long()


def group_accuracies(correct: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy (fraction, float64) of each group present, groups being the distinct rows of ``keys``
    (N×k): returns (the groups' keys, their accuracies)."""
    groups, inverse = torch.unique(keys, dim=0, return_inverse=True)
    n = torch.zeros(len(groups), dtype=torch.float64).index_add_(0, inverse, torch.ones(len(keys), dtype=torch.float64))
    hits = torch.zeros(len(groups), dtype=torch.float64).index_add_(0, inverse, correct.double())
    return groups, hits / n


def _worst(correct: torch.Tensor, keys: torch.Tensor, exclude: tuple[int, ...] = ()) -> float:
    """Worst accuracy in % over the groups present (rows of ``keys``); single-column groups whose
    value is in ``exclude`` do not count. NaN if no group counts."""
    groups, acc = group_accuracies(correct, keys)
    keep = ~torch.isin(groups[:, 0], torch.tensor(exclude, dtype=torch.long)) if exclude else torch.ones(
        len(groups), dtype=torch.bool)
    return float(acc[keep].min()) * 100.0 if bool(keep.any()) else float("nan")


def worst_group_metrics(pred: torch.Tensor, split: AnySplit, *, attribute: int, y: int,
                        adjusted: bool = False) -> dict[str, float]:
    """Waterbirds / CelebA: worst-group accuracy in % over the groups (attribute, label) present, as
    WILDS' ``acc_wg``; with ``adjusted``, also Waterbirds' ``adj_acc_avg``: the groups' accuracies
    weighted by their sizes in the training set (over the groups present)."""
    p, t, m = _host(pred, split)
    correct = p == t
    keys = m[:, [attribute, y]]
    out = {"worst_group_acc": _worst(correct, keys)}
    if adjusted:
        groups, acc = group_accuracies(correct, keys)
        w = torch.tensor([WATERBIRDS_TRAIN_GROUPS[(int(g[1]), int(g[0]))] for g in groups], dtype=torch.float64)
        out["adj_avg_acc"] = float((w * acc).sum() / w.sum()) * 100.0
    return out


def worst_slide_metrics(pred: torch.Tensor, split: AnySplit, *, slide: int) -> dict[str, float]:
    """Camelyon17: worst accuracy in % over the slides present (WILDS' ``acc_wg``); the main metric,
    average accuracy, is the row's ``acc`` column."""
    p, t, m = _host(pred, split)
    return {"worst_slide_acc": _worst(p == t, m[:, [slide]])}


def fmow_metrics(pred: torch.Tensor, split: AnySplit, *, region: int, year: int,
                 other: tuple[int, ...]) -> dict[str, float]:
    """FMoW: worst accuracy in % over the regions present except "Other" (WILDS' ``acc_worst_region``,
    the main metric) and over the years present (``acc_worst_year``)."""
    p, t, m = _host(pred, split)
    correct = p == t
    return {"worst_region_acc": _worst(correct, m[:, [region]], other),
            "worst_year_acc": _worst(correct, m[:, [year]])}


def macro_metrics(pred: torch.Tensor, split: AnySplit) -> dict[str, float]:
    """iWildCam: macro-averaged F1 and recall in % over the classes present in the labels (WILDS'
    ``F1-macro_all`` and ``recall-macro_all``: sklearn's with ``labels=unique(y_true)``)."""
    p, t, _ = _host(pred, split)
    if len(t) == 0:
        return {}
    k = int(max(int(p.max()), int(t.max()))) + 1
    tp = torch.bincount(t[p == t], minlength=k).double()
    n_true = torch.bincount(t, minlength=k).double()
    n_pred = torch.bincount(p, minlength=k).double()
    present = n_true > 0
    f1 = 2 * tp[present] / (n_true[present] + n_pred[present])  # 2TP / (2TP + FP + FN)
    recall = tp[present] / n_true[present]
    return {"macro_f1": float(f1.mean()) * 100.0, "macro_recall": float(recall.mean()) * 100.0}


# --- partitions ---------------------------------------------------------------------------------

def carve(idx: np.ndarray, strata: np.ndarray, sizes: Callable[[int], tuple[int, ...]]) -> list[np.ndarray]:
    """Fixed stratified partition of ``idx``: per stratum (in increasing order) a permutation by one
    ``default_rng(DATA_SEED)``, cut into consecutive pieces of ``sizes(stratum size)`` and the rest;
    returns the sorted index arrays, one per piece then the rest."""
    rng = np.random.default_rng(DATA_SEED)
    pieces: list[list[np.ndarray]] | None = None
    for s in np.unique(strata):
        members = rng.permutation(idx[strata == s])
        cuts = sizes(len(members))
        if pieces is None:
            pieces = [[] for _ in range(len(cuts) + 1)]
        start = 0
        for k, n in enumerate(cuts):
            pieces[k].append(members[start:start + n])
            start += n
        pieces[-1].append(members[start:])
    if pieces is None:
        pieces = [[] for _ in range(len(sizes(0)) + 1)]
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in pieces]


def few_shot(pool: np.ndarray, strata: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Up to ``shots`` pool indices per stratum (``strata`` aligned with ``pool``), drawn with
    ``default_rng([DATA_SEED, seed])``; sorted. For one seed the k-shot set is in the m-shot set (k < m)."""
    rng = np.random.default_rng([DATA_SEED, seed])
    parts = [rng.permutation(pool[strata == s])[:shots] for s in np.unique(strata)]
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)


# --- the benchmarks -----------------------------------------------------------------------------

WILDS_NAMES = {"waterbirds": "waterbirds", "celeba": "celebA", "camelyon17": "camelyon17", "fmow": "fmow",
               "iwildcam": "iwildcam"}


class _Wilds(FetchedBenchmark):
    prompts_name: ClassVar[str] = ""  # the dataset's table in ftbench/data/prompts.py
    input_stats = (MEAN, STD)

    def class_prompts(self, spec: RunSpec, role: str) -> Any:
        from ftbench.data import prompts

        return getattr(prompts, self.prompts_name, None)

    """What the five WILDS benchmarks share: data loading, splits, few-shot draw, checks."""

    default_model = "resnet50"  # timm resnet50.tv_in1k (ftbench/models/timm_models.py), as WILDS' baselines
    transform_kind: ClassVar[str] = "resize"
    shots_per: ClassVar[str] = "class"  # what --shots counts: per "class" or per "group" (label x attribute)
    exact_shots: ClassVar[bool] = True  # every stratum must have `shots` in the pool; else: up to `shots`
    max_shots: ClassVar[int]  # the largest --shots the real data allow (checked again on the data in target())
    main_metric: ClassVar[str]  # the WILDS metric this benchmark is reported by (a result column suffix)
    recipe: ClassVar[dict[str, Any] | None] = None  # pretraining recipe for --weights scratch (None: RECIPE)
    # The ID→OOD protocol: each role is one WILDS split, whole (role -> split name), and each OOD test
    # set too (set name -> split name). The pretrained model is given (hub weights or --weights FILE).
    id_ood_roles: ClassVar[dict[str, str]] = {"train": "train", "val": "id_val", "test": "id_test", "ood_val": "val"}
    id_ood_test_splits: ClassVar[dict[str, str]] = {"test": "test"}
    id_ood_has_val = True
    id_ood_pretrains = False

    # --- resolve / data ---

    def resolve(self, spec: RunSpec) -> RunSpec:
        if spec.corruption is not None or spec.severity is not None:
            raise UsageError(f"--corruption/--severity do not apply to benchmark {self.name!r} (its shift: "
                             f"{', '.join(self.shifts)})")
        shift = spec.shift
        if shift is None:  # not given: the benchmark's one shift (FewShot.resolve fills it first)
            shift = next(iter(self.shifts))
        if shift not in self.shifts:
            raise unknown(f"shift for benchmark {self.name!r}:", shift, list(self.shifts))
        shots = self.default_shots if spec.shots is None else spec.shots
        if not (isinstance(shots, int) and not isinstance(shots, bool) and 1 <= shots <= self.max_shots):
            raise UsageError(f"shots must be an integer in 1..{self.max_shots} (per {self.shots_per}) for "
                             f"benchmark {self.name!r}, got {shots!r}")
        return dataclasses.replace(spec, shift=shift, shots=shots)

    def _root(self) -> str:
        """The data root, after checking the dataset is there."""
        root = data_root()
        problems = DATASETS.get(self.name).problems(root)
        if problems:
            raise UsageError(f"{self.name} data not found under {root} ({problems[0]}): run "
                             f"`ftbench fetch {self.name}` (or `ftbench fetch {self.name} --mirror URL_OR_DIR`)")
        return str(root)

    def data(self) -> WildsData:
        """The dataset's :class:`WildsData` (UsageError naming ``ftbench fetch`` when missing)."""
        return load(self.name, self._root())

    @property
    def datasets(self) -> tuple[str, ...]:  # type: ignore[override]  # each reads the dataset of its name
        return (self.name,)

    def image_size(self) -> int:
        return SIZE[self.name]

    def images(self, d: WildsData) -> StreamSplit:
        """Every example of the dataset as one streamed split (subsets share its file list)."""
        from ftbench.data.preprocess import photo_transform
        from ftbench.data.stream import ImageFiles, StreamSplit

        # WILDS' evaluation transform, or the run's model's own where it has one (iWildCam's photos then
        # keep their aspect ratio: shorter side resized, centre crop; ftbench/data/preprocess.py).
        tf = photo_transform(WildsTransform(self.transform_kind, self.image_size()))
        return StreamSplit(ImageFiles(d.paths, tf), d.y, MEAN, STD, meta=d.meta)

    # --- per benchmark ---

    def strata(self, d: WildsData, idx: np.ndarray) -> np.ndarray:
        """The stratum of each example at ``idx`` for partitions and the few-shot draw: its class."""
        return d.y[torch.from_numpy(idx)].numpy()

    def source_roles(self, d: WildsData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source_train, source_val, source_test) positions: WILDS train, id_val, id_test."""
        return d.indices("train"), d.indices("id_val"), d.indices("id_test")

    def target_roles(self, d: WildsData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(few-shot pool, target_val, target_test) positions."""
        raise NotImplementedError

    def metrics(self, d: WildsData) -> Metrics:
        raise NotImplementedError

    # --- the tasks ---

    def source(self, spec: RunSpec) -> SourceTask:
        d = self.data()
        train, val, test = self.source_roles(d)
        full = self.images(d)
        key = {"benchmark": self.name, "wilds": DATASETS.get(self.name).folder, "size": self.image_size(),
               "transform": self.transform_kind, "normalize": [list(MEAN), list(STD)], "data_seed": DATA_SEED,
               "n_train": int(len(train))}
        return SourceTask(key, d.num_classes, full.subset(train), full.subset(val), full.subset(test),
                          recipe=None if self.recipe is None else dict(self.recipe), metrics=self.metrics(d))

    def target(self, spec: RunSpec) -> TargetTask:
        d = self.data()
        pool, val, test = self.target_roles(d)
        strata = self.strata(d, pool)
        counts = {int(s): int(n) for s, n in zip(*np.unique(strata, return_counts=True))}
        unit = f"per {self.shots_per}"
        if self.exact_shots:
            most = min(counts.values()) if counts else 0
            if spec.shots > most:
                raise UsageError(f"shots must be an integer in 1..{most} ({unit}) for benchmark {self.name!r} with "
                                 f"the data under {data_root()}, got {spec.shots}")
        train = few_shot(pool, strata, spec.shots, spec.seed)
        if len(train) == 0:
            raise UsageError(f"benchmark {self.name!r}: the few-shot pool of the data under {data_root()} is empty")
        full = self.images(d)
        target_val = _in_memory_if_small(full, val, self.image_size())
        return TargetTask(d.num_classes, full.take(train), target_val, full.subset(test),
                          info={"shift_level": self.shifts[spec.shift].level, "shots_per": self.shots_per},
                          metrics=self.metrics(d))

    def id_ood_indices(self, d: WildsData) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Positions of each ID→OOD role (train, val, test, ood_val where there is one) and of each OOD
        test set: the WILDS splits of :attr:`id_ood_roles` / :attr:`id_ood_test_splits`, whole."""
        roles = {role: d.indices(split) for role, split in self.id_ood_roles.items()}
        sets = {name: d.indices(split) for name, split in self.id_ood_test_splits.items()}
        words = {"train": "ID train", "val": "ID val", "test": "ID test", "ood_val": "OOD val"}
        for what, split, idx in [*((words[r], self.id_ood_roles[r], i) for r, i in roles.items()),
                                 *((f"OOD test set {n!r}", self.id_ood_test_splits[n], i) for n, i in sets.items())]:
            if len(idx) == 0:  # a copy whose metadata put nothing in a split: evaluation would be meaningless
                raise UsageError(f"benchmark {self.name!r}: WILDS split {split!r} ({what} in protocol id-ood) of the "
                                 f"data under {data_root()} is empty; move the folder away and run "
                                 f"`ftbench fetch {self.name}` again")
        return roles, sets

    def id_ood(self, spec: RunSpec) -> IdOodSplits:
        d = self.data()
        roles, sets = self.id_ood_indices(d)
        full, size = self.images(d), self.image_size()
        train = roles["train"]
        # Val and OOD val are read at every checkpoint and AutoFT trial: decoded once when small (as target_val).
        ood_val = _in_memory_if_small(full, roles["ood_val"], size) if "ood_val" in roles else None
        return IdOodSplits(
            d.num_classes, full.subset(train), _in_memory_if_small(full, roles["val"], size),
            full.subset(roles["test"]), {name: full.subset(idx) for name, idx in sets.items()}, ood_val=ood_val,
            metrics=self.metrics(d), info={"shots_per": self.shots_per},
            # --shots counts per group where the few-shot protocol does (waterbirds, celeba), else per class.
            strata=self.strata(d, train) if self.shots_per == "group" else None)


def _in_memory_if_small(full: StreamSplit, idx: np.ndarray, size: int) -> AnySplit:
    """The examples at ``idx``: decoded into memory when their float32 images (3 × size × size each)
    fit TAKE_MAX_BYTES, else left on disk (streamed)."""
    return full.take(idx) if len(idx) * 3 * size * size * 4 <= TAKE_MAX_BYTES else full.subset(idx)


class _Spurious(_Wilds):
    """Waterbirds and CelebA: a label spuriously correlated with an attribute in train."""

    attribute: ClassVar[str]  # the spurious metadata field
    shots_per = "group"
    val_per_group: ClassVar[int] = 100  # target_val: at most this many per group
    main_metric = "worst_group_acc"
    # ID→OOD: WILDS has no id_val / id_test / OOD val here. ID val = WILDS val, and WILDS test is both
    # the ID test (average accuracy) and the one OOD test set, whose headline is worst-group accuracy.
    id_ood_roles: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test"}
    id_ood_has_val = False
    id_ood_max_group: ClassVar[int]  # the smallest (label, attribute) group of the real WILDS train

    def id_ood_max_shots(self) -> int:
        return self.id_ood_max_group

    def strata(self, d: WildsData, idx: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(idx)
        return (2 * d.y[t] + d.meta[t, d.col(self.attribute)]).numpy()  # group = 2·label + attribute

    def source_roles(self, d: WildsData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = d.indices("train")
        val, test, train = carve(idx, self.strata(d, idx), lambda n: (round(SOURCE_HOLDOUT * n),) * 2)
        return train, val, test

    def target_roles(self, d: WildsData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = d.indices("val")
        cap = self.val_per_group
        pool, val, _unused = carve(idx, self.strata(d, idx), lambda n: (n // 2, min(cap, n - n // 2)))
        return pool, val, d.indices("test")

    def metrics(self, d: WildsData) -> Metrics:
        return functools.partial(worst_group_metrics, attribute=d.col(self.attribute), y=d.col("y"),
                                 adjusted=self.name == "waterbirds")


class _Natural(_Wilds):
    """Camelyon17, FMoW, iWildCam: the target is WILDS' OOD test domain."""

    pool_per_class: ClassVar[int]  # few-shot pool: at most this many per class (and a quarter of the class)
    val_per_class: ClassVar[int]  # target_val: at most this many per class (and a quarter of the class)

    def target_roles(self, d: WildsData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = d.indices("test")
        pc, vc = self.pool_per_class, self.val_per_class
        pool, val, test = carve(idx, self.strata(d, idx), lambda n: (min(pc, n // 4), min(vc, n // 4)))
        return pool, val, test


@BENCHMARKS.register("waterbirds")
class Waterbirds(_Spurious):
    name = "waterbirds"
    prompts_name = "WATERBIRDS"
    help = ("Waterbirds (WILDS): landbird/waterbird, background spuriously correlated in train -> group-balanced "
            "few-shot target; worst-group accuracy")
    shifts = {"spurious-background": ShiftInfo(
        "spurious-background", "output",
        "train: bird type correlated with land/water background; target: --shots per (bird, background) group "
        "from WILDS val, scored on WILDS test by worst-group accuracy")}
    attribute = "background"
    metric_names = ("worst_group_acc", "adj_avg_acc")
    transform_kind = "resize-crop"
    default_shots = 50
    max_shots = 66  # WILDS val has 133 waterbirds on land: half are the pool
    id_ood_shift = ShiftInfo(
        "spurious-background", "output",
        "ID: WILDS train (bird type correlated with background), val, test (average weighted by the train groups: "
        "id_adj_avg_acc); OOD test set 'test': WILDS test, scored by its worst (bird, background) group "
        "(ood_worst_group_acc)")
    id_ood_sets: ClassVar[dict[str, str]] = {"test": "output"}
    id_ood_max_group = min(WATERBIRDS_TRAIN_GROUPS.values())  # 56 waterbirds on land


@BENCHMARKS.register("celeba")
class CelebA(_Spurious):
    name = "celeba"
    prompts_name = "CELEBA"
    help = ("CelebA (WILDS): blond hair, gender spuriously correlated in train -> group-balanced few-shot target; "
            "worst-group accuracy")
    shifts = {"spurious-gender": ShiftInfo(
        "spurious-gender", "output",
        "train: blond hair correlated with gender; target: --shots per (hair, gender) group from WILDS val, "
        "scored on WILDS test by worst-group accuracy")}
    attribute = "male"
    metric_names = ("worst_group_acc",)
    transform_kind = "crop-resize"
    default_shots = 50
    max_shots = 91  # WILDS val has 182 blond men: half are the pool
    id_ood_shift = ShiftInfo(
        "spurious-gender", "output",
        "ID: WILDS train (blond hair correlated with gender), val, test (average accuracy); OOD test set 'test': "
        "WILDS test, scored by its worst (hair, gender) group (ood_worst_group_acc)")
    id_ood_sets: ClassVar[dict[str, str]] = {"test": "output"}
    id_ood_max_group = 1387  # blond men in WILDS train (Sagawa et al. 2020, table of group sizes)


@BENCHMARKS.register("camelyon17")
class Camelyon17(_Natural):
    name = "camelyon17"
    prompts_name = "CAMELYON17"
    help = "Camelyon17-WILDS: tumour patches, hospitals 0/3/4 -> hospital 2 (OOD test); accuracy"
    shifts = {"hospital": ShiftInfo(
        "hospital", "natural",
        "train: hospitals 0, 3, 4; target: hospital 2 (WILDS OOD test), --shots per class set aside from it")}
    default_shots = 100
    max_shots = 1000
    pool_per_class = 1000
    val_per_class = 250
    main_metric = "acc"
    metric_names = ("worst_slide_acc",)
    # No id_test in Camelyon17 (WILDS 2.0): ID test is id_val, the split WILDS reports ID accuracy on.
    id_ood_roles: ClassVar[dict[str, str]] = {"train": "train", "val": "id_val", "test": "id_val", "ood_val": "val"}
    id_ood_shift = ShiftInfo(
        "hospital", "natural",
        "ID: hospitals 0, 3, 4 (WILDS train, id_val; no id_test, so ID test = id_val); OOD val: hospital 1 "
        "(WILDS val); OOD test set 'test': hospital 2 (WILDS test)")
    id_ood_sets: ClassVar[dict[str, str]] = {"test": "natural"}
    # --weights scratch: WILDS' ERM recipe for Camelyon17, the one WILDS trains from random initialisation
    # (examples/configs/datasets.py: SGD, momentum 0.9, lr 1e-3, weight decay 0.01, batch 32, 5 epochs).
    recipe = {"optimizer": "sgd", "lr": 1e-3, "wd": 1e-2, "epochs": 5, "batch_size": 32, "seed": 0}

    def source_roles(self, d: WildsData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # No id_test in Camelyon17: its ID validation split (same hospitals as train) is halved per class.
        idx = d.indices("id_val")
        val, test = carve(idx, self.strata(d, idx), lambda n: (n // 2,))
        return d.indices("train"), val, test

    def metrics(self, d: WildsData) -> Metrics:
        return functools.partial(worst_slide_metrics, slide=d.col("slide"))


@BENCHMARKS.register("fmow")
class FMoW(_Natural):
    name = "fmow"
    prompts_name = "FMOW"
    help = "FMoW-WILDS: satellite images, 62 land uses, before 2013 -> 2016-2017 (OOD test); worst-region accuracy"
    shifts = {"time": ShiftInfo(
        "time", "natural",
        "train: images before 2013; target: 2016-2017 (WILDS OOD test), up to --shots per class set aside from it")}
    exact_shots = False
    default_shots = 20
    max_shots = 100
    pool_per_class = 100
    val_per_class = 10
    main_metric = "worst_region_acc"
    metric_names = ("worst_region_acc", "worst_year_acc")
    id_ood_shift = ShiftInfo(
        "time", "natural",
        "ID: images before 2013 (WILDS train, id_val, id_test); OOD val: 2013-2015 (WILDS val); OOD test set "
        "'test': 2016-2017 (WILDS test); worst-region accuracy")
    id_ood_sets: ClassVar[dict[str, str]] = {"test": "natural"}

    def metrics(self, d: WildsData) -> Metrics:
        other = tuple(i for i, r in enumerate(d.metadata_map.get("region", [])) if "Other" in str(r))
        return functools.partial(fmow_metrics, region=d.col("region"), year=d.col("year"), other=other)


@BENCHMARKS.register("iwildcam")
class IWildCam(_Natural):
    name = "iwildcam"
    prompts_name = "IWILDCAM"
    help = "iWildCam2020-WILDS: camera-trap species, 182 classes, train cameras -> unseen cameras (OOD test); macro-F1"
    shifts = {"camera": ShiftInfo(
        "camera", "natural",
        "train: 243 camera traps; target: 48 unseen ones (WILDS OOD test), up to --shots per class set aside from it")}
    exact_shots = False
    default_shots = 10
    max_shots = 100
    pool_per_class = 100
    val_per_class = 10
    main_metric = "macro_f1"
    metric_names = ("macro_f1", "macro_recall")
    id_ood_shift = ShiftInfo(
        "camera", "natural",
        "ID: 243 camera traps (WILDS train, id_val, id_test); OOD val: 32 other cameras (WILDS val); OOD test "
        "set 'test': 48 unseen cameras (WILDS test); macro-F1")
    id_ood_sets: ClassVar[dict[str, str]] = {"test": "natural"}

    def metrics(self, d: WildsData) -> Metrics:
        return macro_metrics
