"""What a benchmark is: named splits, built for one shift; a protocol gives them roles.

A benchmark offers up to two families of splits (ftbench/protocols assigns their roles):

* few-shot target (every benchmark): ``source_train`` (what the source model is pretrained on),
  ``source_val`` / ``source_test`` (held-out source data; ``source_test`` gives ``id_acc``),
  ``target_train`` (the few labelled target examples fine-tuning sees), ``target_val`` (selection,
  ``val_acc``) and ``target_test`` (the reported ``ood_acc``) — :meth:`Benchmark.source`,
  :meth:`Benchmark.target`;
* ID→OOD (benchmarks with ``id_ood_shift``): ``id_train``, ``id_val``, ``id_test``, an optional
  ``ood_val`` and one or more named OOD test sets — :meth:`Benchmark.id_ood`, plus the pretraining
  task of :meth:`Benchmark.source` where the benchmark has one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Union

import numpy as np
import torch

from ftbench.registry import Registry

if TYPE_CHECKING:
    from ftbench.data.prompts import Prompts
    from ftbench.spec import RunSpec


@dataclass(frozen=True)
class Split:
    """Images ``x`` (float, N×C×H×W) and integer labels ``y`` (N,), kept on one device.

    ``meta`` (optional, N×K integers) carries what a benchmark's metrics need besides the label,
    e.g. the group of each example (WILDS' metadata array). Splits too large for memory are
    :class:`ftbench.data.stream.StreamSplit` objects, which offer the same ``batches``/``take``/``y``.
    """

    x: torch.Tensor
    y: torch.Tensor
    meta: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """H, W of the images."""
        return int(self.x.shape[-2]), int(self.x.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device | str) -> Split:
        meta = None if self.meta is None else self.meta.to(device, non_blocking=True)
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True), meta)

    def batches(self, batch_size: int = 4096) -> Iterator[torch.Tensor]:
        """The images in order, in batches (views, no copy)."""
        for i in range(0, len(self), batch_size):
            yield self.x[i : i + batch_size]

    def take(self, idx: np.ndarray | Sequence[int] | None = None) -> Split:
        """The examples at positions ``idx`` (default: all)."""
        if idx is None:
            return self
        t = torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.x.device)
        return Split(self.x[t], self.y[t], None if self.meta is None else self.meta[t])


class StreamedSplit(Protocol):
    """What a split streamed from disk offers (:class:`ftbench.data.stream.StreamSplit`, which this
    module does not import: stream.py builds on :class:`Split`), as :class:`Split` offers it."""

    y: torch.Tensor
    meta: torch.Tensor | None

    def __len__(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def image_size(self) -> tuple[int, int]: ...

    def to(self, device: torch.device | str) -> StreamedSplit: ...

    def batches(self, batch_size: int = 4096) -> Iterator[torch.Tensor]: ...


# A split of either kind; the runner evaluates both, training takes in-memory Splits.
AnySplit = Union[Split, StreamedSplit]
# Extra metrics of a benchmark: (predicted labels, the split) -> {name: value}, e.g. worst-group
# accuracy. Each becomes a result column, prefixed by the split's role (docs/results.md).
Metrics = Callable[[torch.Tensor, "AnySplit"], dict[str, float]]


@dataclass(frozen=True)
class SourceTask:
    """The source (ID) side of a benchmark: what the pretrained model learns."""

    key: dict[str, Any]  # identifies the source model's training data, for the pretrain cache
    num_classes: int
    train: AnySplit
    val: AnySplit
    test: AnySplit
    recipe: dict[str, Any] | None = None  # how to pretrain on it (ftbench.train.pretrain); None: RECIPE
    metrics: Metrics | None = None  # extra metrics of source_test, as id_<name> columns
    prompts: Prompts | None = None  # class names and templates: zero-shot heads, CLIP pretraining


@dataclass(frozen=True)
class TargetTask:
    """The target (OOD) side: few-shot train, validation for selection, test for reporting."""

    num_classes: int
    train: Split  # few-shot: always in memory
    val: AnySplit
    test: AnySplit
    info: dict[str, Any] = field(default_factory=dict)
    metrics: Metrics | None = None  # extra metrics of target_val / target_test, as val_<name> / ood_<name>
    prompts: Prompts | None = None  # the target labels' class names and templates (zero-shot heads)


@dataclass(frozen=True)
class IdOodSplits:
    """The ID→OOD side of a benchmark: ID train / val / test, OOD val, and named OOD test sets.

    No OOD image may reach fine-tuning: only ``train`` is trained on (tests/test_protocols.py).
    """

    num_classes: int
    train: AnySplit  # all of ID train (the protocol draws --shots per class from it)
    val: AnySplit  # ID val: the default selection split
    test: AnySplit  # ID test: id_acc
    ood_tests: dict[str, AnySplit]  # set name -> split, display order; names use [a-z0-9.-] only
    ood_val: AnySplit | None = None  # a small OOD val set from another distribution than ood_tests (AutoFT)
    metrics: Metrics | None = None  # the benchmark's metrics, computed on every split
    info: dict[str, Any] = field(default_factory=dict)
    strata: Any = None  # per-example stratum of ``train`` for --shots (default: its labels), e.g. WILDS groups
    prompts: Prompts | None = None  # the ID classes' names and templates (zero-shot heads)
    # OOD test sets of a subset of the ID classes that are scored on those classes' logits only (ImageNet-R
    # and -A: 200 of the 1000, as their authors score them); labels stay ID labels. Set name -> ID labels.
    ood_classes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ShiftInfo:
    """One shift a benchmark offers, with the surgical paper's level of it."""

    name: str
    level: str  # input | feature | output | natural
    help: str
    params: tuple[str, ...] = ()  # spec fields this shift takes, e.g. ("corruption", "severity")


class Benchmark:
    """Interface every registered benchmark implements."""

    name: ClassVar[str]
    help: ClassVar[str]
    shifts: ClassVar[dict[str, ShiftInfo]]
    default_model: ClassVar[str]
    default_shots: ClassVar[int]
    # The ID→OOD protocol: the shift its OOD sets make (None: the benchmark offers no ID→OOD splits),
    # the OOD test sets' names with their levels, and whether its source task pretrains a model
    # (else the protocol needs given weights: hub or --weights FILE).
    id_ood_shift: ClassVar[ShiftInfo | None] = None
    id_ood_sets: ClassVar[dict[str, str]] = {}
    id_ood_has_val: ClassVar[bool] = False
    id_ood_pretrains: ClassVar[bool] = False
    # Whether a timm model's own input transform (its pretrained_cfg) replaces this benchmark's: only for
    # ImageNet-style photographs (ftbench.models.base.applied_transform); a CLIP model's always does.
    timm_transform: ClassVar[bool] = False
    # The per-channel mean and std the benchmark normalises its images with (None: not given); a model
    # pretrained on other statistics (OpenAI's CLIP) maps them to its own (ClipClassifier.set_input_stats).
    input_stats: ClassVar[tuple[tuple[float, ...], tuple[float, ...]] | None] = None
    # Whether the benchmark has few-shot target splits (False: an ID→OOD benchmark only, e.g. imagenet).
    few_shot: ClassVar[bool] = True
    # The names of the extra metrics its ``metrics`` function computes (val_<name> / ood_<name> columns),
    # known without data: AutoFT's ``objective`` option is checked against them before a run starts.
    metric_names: ClassVar[tuple[str, ...]] = ()

    def resolve(self, spec: RunSpec) -> RunSpec:
        """Fill benchmark defaults into ``spec`` and reject values this benchmark cannot take."""
        raise NotImplementedError

    def source(self, spec: RunSpec) -> SourceTask:
        """The source task the model for ``spec`` is pretrained and ID-evaluated on."""
        raise NotImplementedError

    def target(self, spec: RunSpec) -> TargetTask:
        """The target task of ``spec``'s shift; the few-shot draw depends on ``spec.seed``."""
        raise NotImplementedError

    def data_version(self, spec: RunSpec) -> int | None:
        """The revision of the data ``spec``'s shift reads, when it was redefined after results of the
        earlier definition could exist (it enters the run id, so those are not reused); None: the first."""
        return None

    def id_ood(self, spec: RunSpec) -> IdOodSplits:
        """The ID→OOD splits of ``spec`` (benchmarks with ``id_ood_shift``)."""
        raise NotImplementedError

    def id_ood_max_shots(self) -> int | None:
        """The largest ``--shots`` (per class) ID train allows in the ID→OOD protocol; None: unknown
        until the data are read (the draw then checks)."""
        return None

    def status(self) -> str:
        """One line on whether the data are available locally."""
        raise NotImplementedError

    def class_prompts(self, spec: RunSpec, role: str) -> Prompts | None:
        """Class names and templates of the ``role`` task's labels (``source``, ``target`` or ``id``), for
        zero-shot heads (ftbench/data/prompts.py); None: ftbench has none for this benchmark. Splits that
        carry their own (``prompts=``) take precedence."""
        return None


class FetchedBenchmark(Benchmark):
    """A benchmark on data that ``ftbench fetch`` downloads or checks (``datasets``), with the
    usual spec resolution: one shift taken as the CLI's default, ``--corruption``/``--severity``
    only for a ``corruption`` shift, ``shots`` in ``1..max_shots``."""

    datasets: ClassVar[tuple[str, ...]]  # the ``ftbench fetch`` datasets this benchmark reads
    max_shots: ClassVar[int]  # the largest --shots the real data allow (target() checks the copy at hand)
    default_corruption: ClassVar[str] = "gaussian_noise"
    default_severity: ClassVar[int] = 5

    def corruption_names(self) -> list[str]:
        """The ``--corruption`` values this benchmark accepts."""
        return []

    def resolve(self, spec: RunSpec) -> RunSpec:
        import dataclasses

        from ftbench.errors import UsageError, unknown

        shift = spec.shift  # a shift not given is filled by the protocol (FewShot.resolve)
        if shift not in self.shifts:
            raise unknown(f"shift for benchmark {self.name!r}:", shift, list(self.shifts))
        changes: dict[str, Any] = {"shift": shift}
        if shift == "corruption":
            name = spec.corruption or self.default_corruption
            if name not in self.corruption_names():
                raise unknown(f"corruption for benchmark {self.name!r}:", name, self.corruption_names())
            sev = self.default_severity if spec.severity is None else spec.severity
            if not (isinstance(sev, int) and 1 <= sev <= 5):
                raise UsageError(f"severity must be an integer in 1..5, got {sev!r}")
            changes.update(corruption=name, severity=sev)
        elif spec.corruption is not None or spec.severity is not None:
            raise UsageError(f"--corruption/--severity apply only to --shift corruption, not {shift!r} "
                             f"(benchmark {self.name!r})")
        shots = self.default_shots if spec.shots is None else spec.shots
        if not (isinstance(shots, int) and 1 <= shots <= self.max_shots):
            raise UsageError(f"shots must be an integer in 1..{self.max_shots} for benchmark {self.name!r}, "
                             f"got {shots!r}")
        changes["shots"] = shots
        return dataclasses.replace(spec, **changes)

    def missing_datasets(self) -> tuple[Any, list[str]]:
        """(the data root, the datasets of ``datasets`` not in place under it)."""
        from ftbench.data.fetch import DATASETS, data_root

        root = data_root()
        return root, [d for d in self.datasets if DATASETS.get(d).problems(root)]

    def status(self) -> str:
        from ftbench.data.fetch import DATASETS
        from ftbench.data.fetch import status as dataset_status

        root, missing = self.missing_datasets()
        if not missing:
            return "ready"
        return f"{dataset_status(DATASETS.get(missing[0]), root)}: ftbench fetch {' '.join(missing)}"


BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark")


def _register_all() -> None:
    """Import every module of ``ftbench.data``: each registers its benchmarks (digits, cifar10-*,
    imagenet-c, living17/entity30, the WILDS datasets). Modules keep heavy imports (wilds,
    torchvision) inside functions, so this stays cheap."""
    import importlib
    import pkgutil

    import ftbench.data as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"ftbench.data.{info.name}")


def get_benchmark(name: str) -> Benchmark:
    """Instantiate the benchmark registered as ``name`` (UsageError listing names if unknown)."""
    _register_all()

    return BENCHMARKS.get(name)()
