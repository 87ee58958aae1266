"""What a benchmark is: named splits with roles, built for one shift.

Roles (the words used everywhere, including parquet columns):

* ``source_train`` — what the source model is pretrained on;
* ``source_val`` / ``source_test`` — held-out source data; ``source_test`` gives ``id_acc``;
* ``target_train`` — the few labelled target examples fine-tuning sees;
* ``target_val`` — target data for model selection (``val_acc``);
* ``target_test`` — target data for the reported ``ood_acc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ftbench.registry import Registry

if TYPE_CHECKING:
    from ftbench.spec import RunSpec


@dataclass(frozen=True)
class Split:
    """Images ``x`` (float, N×C×H×W) and integer labels ``y`` (N,), kept on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))


@dataclass(frozen=True)
class SourceTask:
    """The source (ID) side of a benchmark: what the pretrained model learns."""

    key: dict[str, Any]  # identifies the source model's training data, for the pretrain cache
    num_classes: int
    train: Split
    val: Split
    test: Split
    recipe: dict[str, Any] | None = None  # how to pretrain on it (ftbench.models.pretrain); None: RECIPE


@dataclass(frozen=True)
class TargetTask:
    """The target (OOD) side: few-shot train, validation for selection, test for reporting."""

    num_classes: int
    train: Split
    val: Split
    test: Split
    info: dict[str, Any] = field(default_factory=dict)


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

    def resolve(self, spec: RunSpec) -> RunSpec:
        """Fill benchmark defaults into ``spec`` and reject values this benchmark cannot take."""
        raise NotImplementedError

    def source(self, spec: RunSpec) -> SourceTask:
        """The source task the model for ``spec`` is pretrained and ID-evaluated on."""
        raise NotImplementedError

    def target(self, spec: RunSpec) -> TargetTask:
        """The target task of ``spec``'s shift; the few-shot draw depends on ``spec.seed``."""
        raise NotImplementedError

    def status(self) -> str:
        """One line on whether the data are available locally."""
        raise NotImplementedError


BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark")


def get_benchmark(name: str) -> Benchmark:
    """Instantiate the benchmark registered as ``name`` (UsageError listing names if unknown)."""
    import ftbench.data.digits  # noqa: F401  (registers the embedded benchmark)
    import ftbench.data.cifar  # noqa: F401  (cifar10-c, cifar10-c-gen, cifar10-flip)

    return BENCHMARKS.get(name)()
