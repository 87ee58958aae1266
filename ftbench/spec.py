"""RunSpec — the frozen, hashable description of one run — and its run id: plain data.

A spec is *resolved* before it runs or is hashed (:func:`ftbench.plan.resolve.resolve`): benchmark,
model and method fill their defaults and reject what they cannot take, and hyperparameters a method
does not use are set to ``None``. The run id is a hash of the resolved spec, so the same run asked for
in two ways (e.g. with and without ``--model digits-resnet``) has one id, and sweeps skip it once it has
a result. This module is on the bottom floor (docs/extending.md): it imports no registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

SPEC_VERSION = 1  # bump when the meaning of a field changes, so old run ids are not reused

# Hyperparameter fields a method may or may not use (see Method.uses).
HYPERPARAMETERS = ("lr", "wd", "steps", "epochs", "batch_size", "optimizer")
OPTIMIZERS = ("adam", "sgd")
# Fields added after 0.1.0 and their defaults: they enter the run id only when set to something
# else, so the ids of runs made before them stay valid (their result folders are read as done).
LATER_FIELDS = {"checkpoints": None, "weights": None, "protocol": "few-shot", "data_version": None, "head_init": None,
                "schedule": None, "warmup": None, "clip_grad": None, "train_precision": None, "eval_precision": None,
                "augment": None, "input_transform": None}
# How the ID task's new classifier starts under a protocol that gives one (--head-init; None: the method's own).
HEAD_INITS = ("fresh", "zero-shot")
# Method options added after runs of their method were made, with the value that means what those runs
# did: at that value an option is left out of the run id, so the ids of earlier runs stay valid (a
# default that differs from it, as flyp's bn, gives default runs a new id: they train differently now).
LATER_OPTIONS: dict[tuple[str, str], Any] = {
    ("autoft", "dcm"): "uniform", ("autoft", "search_size"): 0, ("autoft", "lr_mode"): "sampled",
    ("flyp", "bn"): "frozen",
    ("full", "features"): "unit", ("linear-probe", "features"): "unit", ("lp-ft", "features"): "unit",
    ("full", "decay"): "coupled",
    **{(m, "proj"): "frozen" for m in ("surgical", "bitfit", "ln-tune", "lora", "adapter", "vpt", "ssf")},
}


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's result, except the device (recorded in the results: bf16 on
    CUDA and float32 on CPU can differ slightly for the same run id)."""

    benchmark: str = "digits"
    shift: str | None = None  # None: the protocol's default (few-shot: corruption where the benchmark has it)
    corruption: str | None = None
    severity: int | None = None
    shots: int | None = None
    model: str | None = None
    method: str = "surgical"
    blocks: tuple[str, ...] = ()
    lr: float | None = 1e-3
    wd: float | None = 1e-4
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = 64
    optimizer: str | None = "adam"
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()
    checkpoints: int | None = None  # evaluate at this many evenly spaced points of fine-tuning
    weights: str | None = None  # pretrained weights: None (the model's default), "scratch" or a state-dict file
    protocol: str = "few-shot"  # which splits fine-tune, select and report (ftbench/protocols, docs/protocols.md)
    # Set by resolution, never by the user: the benchmark's revision of this shift's data
    # (Benchmark.data_version), so results of a redefined shift are not taken for the new one.
    data_version: int | None = None
    # Under a protocol that gives the ID task a new classifier (id-ood), how a method that trains it
    # starts: "fresh" or "zero-shot" (CLIP's zero-shot head); None: the method's default. Resolution
    # sets a value equal to the method's default to None, so both ways of asking give one run id.
    head_init: str | None = None
    # The training loop's learning-rate schedule ("cosine"; None: constant), its linear warm-up in
    # optimizer steps (None: none) and gradient clipping by global norm (None: none), as the CLIP
    # releases train (ftbench/train/loop.py). Each enters the run id only when set.
    schedule: str | None = None
    warmup: int | None = None
    clip_grad: float | None = None
    # Autocast precision of training and of evaluation: "fp32" or "bf16"; None: the device's default
    # (bf16 on CUDA, fp32 on CPU). The releases evaluate CLIP in fp32 (docs/methods.md).
    train_precision: str | None = None
    eval_precision: str | None = None
    # Training augmentation on the device (ftbench/train/augment.py): "crop" or "crop-flip"; None: none.
    augment: str | None = None
    # Set by resolution, never by the user: the model's own input transform (InputTransform.key(),
    # ftbench/data/preprocess.py) where the run starts from the weights it belongs to; None: the
    # benchmark's transform. In the run id only when set, so runs of models without one keep their ids.
    input_transform: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks)
        d["options"] = dict(self.options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        d = dict(d)
        d["blocks"] = tuple(str(b) for b in d.get("blocks") or ())
        d["options"] = tuple(sorted((d.get("options") or {}).items()))
        return cls(**d)

    @property
    def run_id(self) -> str:
        """Stable hash of the (resolved) configuration: 16 hex characters."""
        # Fields added after 0.1.0 enter the hash only when set, so earlier run ids stay valid.
        d = {k: v for k, v in self.to_dict().items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
        d["options"] = {k: v for k, v in d["options"].items()
                        if not ((self.method, k) in LATER_OPTIONS and v == LATER_OPTIONS[self.method, k])}
        payload = json.dumps({"v": SPEC_VERSION, **_unsigned_zeros(d)}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def blocks_label(self) -> str:
        return ",".join(self.blocks)

    def settings(self, names: tuple[str, ...] = (*HYPERPARAMETERS, "schedule", "warmup", "clip_grad", "head_init",
                                                 "train_precision", "eval_precision", "augment", "shots")) -> list[str]:
        """``name=value`` for each field of ``names`` that is set (floats as ``%g``): how a run's
        settings are printed (the sweep's run lines, ``ftbench run``'s settings line)."""
        return [f"{n}={v:g}" if isinstance(v, float) else f"{n}={v}"
                for n in names if (v := getattr(self, n)) is not None]

    def columns(self) -> dict[str, Any]:
        """The result-row columns that describe this run: ``run_id`` and every spec field, with
        ``blocks`` as a label like ``"1,2"`` and ``options`` as a dict (stored as JSON)."""
        d = self.to_dict()
        return {"run_id": self.run_id, **d, "blocks": self.blocks_label(), "options": d["options"]}


def _unsigned_zeros(value: Any) -> Any:
    """``value`` with every float ``-0.0`` (also inside lists, tuples and dicts) made ``0.0``: they
    are equal and train alike, so ``wd=-0.0`` and ``wd=0`` must be one run id. Nothing else changes,
    so every other id is what it was."""
    if isinstance(value, float):
        return 0.0 if value == 0.0 else value
    if isinstance(value, dict):
        return {k: _unsigned_zeros(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unsigned_zeros(v) for v in value)
    return value
