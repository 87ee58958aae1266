"""What a protocol is: a mapping from a benchmark's named splits to the roles of a run.

A benchmark offers splits (``ftbench/data/base.py``): a *few-shot target* family (source train / val /
test, target pool / val / test) and, where it has one, an *ID→OOD* family (ID train / val / test, an
OOD val set, one or more OOD test sets). A protocol picks from them, for one resolved RunSpec:

* ``pretraining`` — what the source model is pretrained on (or None: the model's given weights);
* ``train`` — what fine-tuning sees (the only split any gradient step or probe fit reads);
* ``val`` — the protocol's selection split (``val_*`` columns, the report's default ``--select val``);
* ``search`` — what a method that searches its own hyperparameters maximises (AutoFT);
* ``scored`` — every split evaluated into the result row, each under a column prefix.

The runner and the report know these roles and the column prefixes, never a benchmark or a
protocol by name; a new protocol is a new mapping (a class here), not branches elsewhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ftbench.registry import Registry

if TYPE_CHECKING:
    import torch

    from ftbench.data.base import AnySplit, Benchmark, Metrics, SourceTask
    from ftbench.data.prompts import Prompts
    from ftbench.spec import RunSpec


@dataclass(frozen=True)
class Scored:
    """One split evaluated into every result row: accuracy as ``<prefix>_acc``, the benchmark's
    metrics as ``<prefix>_<metric>`` (docs/results.md)."""

    prefix: str  # "id", "source_val", "val", "ood_val", "ood" or "ood.<set>"
    role: str  # "id-test", "source-val", "val", "ood-val" or "ood-test"
    split: AnySplit
    metrics: Metrics | None = None
    classes: tuple[int, ...] | None = None  # score on these labels' logits only (None: all)


@dataclass(frozen=True)
class Task:
    """One run's data, by role (what the runner and the methods see)."""

    protocol: str
    num_classes: int
    train: AnySplit  # fine-tuning data
    val: AnySplit  # the protocol's selection split
    search: AnySplit | None  # the split a hyperparameter-searching method maximises; None: there is none
    id_test: AnySplit  # in-distribution test (method diagnostics such as SpotTune's routing)
    test: AnySplit  # the first OOD test split (method diagnostics)
    scored: tuple[Scored, ...]
    metrics: Metrics | None = None  # the benchmark's metrics, for val / search / train splits
    info: dict[str, Any] = field(default_factory=dict)
    fresh_head: bool = False  # the ID task's classifier starts new (re-initialised) before the method runs
    pretraining: SourceTask | None = None  # what the source model is trained on (None: given weights only)
    prompts: Prompts | None = None  # the trained task's class names and templates (zero-shot heads)

    @property
    def ood_prefixes(self) -> tuple[str, ...]:
        """Column prefixes of the OOD test sets, in display order."""
        return tuple(s.prefix for s in self.scored if s.role == "ood-test")

    def to(self, device: torch.device | str) -> Task:
        """The task with every split on ``device`` (streamed splits decode there)."""
        scored = tuple(dataclasses.replace(s, split=s.split.to(device)) for s in self.scored)
        moved = {id(s.split): m.split for s, m in zip(self.scored, scored)}

        def mv(x: Any) -> Any:
            return None if x is None else moved.get(id(x)) or x.to(device)

        return dataclasses.replace(self, train=mv(self.train), val=mv(self.val), search=mv(self.search),
                                   id_test=mv(self.id_test), test=mv(self.test), scored=scored)


class Protocol:
    """Interface of a registered protocol."""

    name: ClassVar[str]
    help: ClassVar[str]
    papers: ClassVar[str]
    # What --select names mean under this protocol: selection name -> (column, caption words).
    selections: ClassVar[dict[str, tuple[str, str]]]
    id_words: ClassVar[str]  # what id_acc is, for captions
    ood_words: ClassVar[str]  # what ood_acc is, for captions
    fresh_head: ClassVar[bool] = False  # the ID task's classifier starts new before the method runs
    shift_params: ClassVar[bool] = True  # --corruption/--severity may pick the shift's variant

    def offered_by(self, bench: Benchmark) -> bool:
        """Whether ``bench`` offers the splits this protocol needs."""
        raise NotImplementedError

    def resolve(self, bench: Benchmark, spec: RunSpec) -> RunSpec:
        """Fill the benchmark's defaults for this protocol into ``spec``; reject what it cannot take."""
        raise NotImplementedError

    def task(self, bench: Benchmark, spec: RunSpec) -> Task:
        """The roles of resolved ``spec``'s splits."""
        raise NotImplementedError

    def check_weights(self, bench: Benchmark, spec: RunSpec, has_hub_weights: bool) -> None:
        """Refuse (UsageError) a model/weights choice the protocol cannot pretrain; default: any."""


# The built-in protocols and the module registering each (imported by name: they import this one).
PROTOCOLS: Registry[type[Protocol]] = Registry("protocol", "ftbench.protocols", {"few-shot": "few_shot", "id-ood": "id_ood"})
DEFAULT_PROTOCOL = "few-shot"


def get_protocol(name: str) -> Protocol:
    """The protocol registered as ``name`` (UsageError listing the names if unknown)."""
    PROTOCOLS.import_builtins()
    return PROTOCOLS.get(name)()


def protocol_names() -> list[str]:
    """Registered protocols, the default first."""
    get_protocol(DEFAULT_PROTOCOL)
    return sorted(PROTOCOLS.names(), key=lambda n: (n != DEFAULT_PROTOCOL, n))


def fitting(prompts: Prompts | None, num_classes: int) -> Prompts | None:
    """``prompts`` when they name exactly ``num_classes`` classes, else None (e.g. a copy of ImageNet
    with fewer classes than its 1000 names): a zero-shot head must have a row per label."""
    return prompts if prompts is not None and len(prompts.classnames) == num_classes else None


def per_class_draw(labels: np.ndarray, shots: int, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """Positions of ``shots`` examples per stratum (default: per class), drawn with ``seed``; sorted.

    Every stratum must have ``shots`` examples (the caller checks and says so)."""
    strata = labels if strata is None else strata
    rng = np.random.default_rng([0, seed])
    picks = [rng.permutation(np.flatnonzero(strata == s))[:shots] for s in np.unique(strata)]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)

