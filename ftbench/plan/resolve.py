"""Resolving a RunSpec: its benchmark, protocol, model, method and weights fill their defaults and
reject what they cannot take (the run id is the hash of the result).

This is the plan floor (docs/extending.md): above the methods, whose ``resolve`` it calls, and below
the runner that executes what it returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ftbench.errors import UsageError, unknown
from ftbench.spec import HEAD_INITS, RunSpec

def normalize_blocks(blocks: list[str] | tuple[str, ...], accepted: tuple[str, ...], model: str) -> tuple[str, ...]:
    """Validate block names against a model's blocks; return them unique, in model order."""
    out = set()
    for b in blocks:
        name = str(b).strip().lower()
        if name not in accepted:
            raise UsageError(
                f"block {b!r} is out of range for model {model!r}; accepted: {', '.join(accepted)}"
            )
        out.add(name)
    return tuple(b for b in accepted if b in out)


def resolve(spec: RunSpec) -> RunSpec:
    """Fill defaults and validate ``spec`` against its benchmark, model and method."""
    from ftbench.data.base import get_benchmark
    from ftbench.methods.base import get_method
    from ftbench.models.base import get_model_entry
    from ftbench.protocols.base import get_protocol
    from ftbench.validate import check_run_numbers

    check_run_numbers(spec)  # types and ranges of every number first (ftbench/validate.py)
    bench = get_benchmark(spec.benchmark)
    protocol = get_protocol(spec.protocol)
    spec = protocol.resolve(bench, spec)
    spec = dataclasses.replace(spec, data_version=bench.data_version(spec))
    entry = get_model_entry(spec.model or bench.default_model)
    spec = dataclasses.replace(spec, model=spec.model or bench.default_model)
    method_cls = get_method(spec.method)
    method_cls.check_protocol(protocol)
    method_cls.check_entry(spec.model, entry)
    blocks = normalize_blocks(spec.blocks, entry.block_names, spec.model)
    spec = dataclasses.replace(spec, blocks=blocks)
    spec = method_cls.resolve(spec, entry.block_names)
    # -0.0 is 0.0 (x + 0.0 is x for every other float): the rows show one value for one run id.
    spec = dataclasses.replace(spec, **{f: v + 0.0 for f in ("lr", "wd") if isinstance(v := getattr(spec, f), float)})
    if spec.head_init is not None:
        spec = dataclasses.replace(spec, head_init=_head_init(spec, protocol, entry, method_cls))
    _check_features(spec, protocol, entry)
    spec = _loop_settings(spec, method_cls)
    if spec.weights is not None:
        from ftbench.models.weights import resolve_weights

        spec = dataclasses.replace(spec, weights=resolve_weights(spec.weights, entry))
    protocol.check_weights(bench, spec, entry.weights is not None)
    from ftbench.models.base import applied_transform

    transform = applied_transform(entry, spec.weights, bench)
    spec = dataclasses.replace(spec, input_transform=None if transform is None else transform.key())
    if spec.seed < 0:
        raise UsageError(f"seed must be >= 0, got {spec.seed}")
    return spec


def _loop_settings(spec: RunSpec, method_cls: Any) -> RunSpec:
    """``schedule``/``warmup``/``clip_grad`` and the precisions checked, the first two normalised (constant
    and 0 are None, so asking for them is the same run); the loop's settings (``train_precision`` among
    them) are refused for a method without an optimizer loop."""
    from ftbench.train.loop import PRECISIONS, SCHEDULES

    if spec.schedule is not None and spec.schedule not in SCHEDULES:
        raise unknown("--schedule", spec.schedule, SCHEDULES)
    from ftbench.train.augment import AUGMENTS

    if spec.augment is not None and spec.augment not in AUGMENTS:
        raise unknown("--augment", spec.augment, tuple(AUGMENTS))
    for name in ("train_precision", "eval_precision"):
        if getattr(spec, name) is not None and getattr(spec, name) not in PRECISIONS:
            raise unknown(f"--{name.replace('_', '-')}", getattr(spec, name), PRECISIONS)
    schedule = None if spec.schedule == "constant" else spec.schedule
    warmup = spec.warmup or None
    given = [f"--{n.replace('_', '-')}" for n, v in (("schedule", schedule), ("warmup", warmup),
                                                      ("clip_grad", spec.clip_grad),
                                                      ("train_precision", spec.train_precision),
                                                      ("augment", spec.augment)) if v is not None]
    if given and "steps" not in method_cls.uses:
        raise UsageError(f"{' / '.join(given)} has no effect with method {spec.method!r}, which trains no optimizer "
                         "loop; these apply to methods that take --steps (ftbench list methods)")
    return dataclasses.replace(spec, schedule=schedule, warmup=warmup)


def _check_features(spec: RunSpec, protocol: Any, entry: Any) -> None:
    """``--set features=raw`` (a CLIP model's raw ``encode_image`` output, as LP-FT's release) only where
    it can mean that: a model with a text tower (CLIP), a new classifier (--protocol id-ood), and not
    under a zero-shot head, which is made for unit-length features."""
    if spec.options_dict.get("features", "unit") != "raw":
        return
    if not entry.zero_shot:
        raise UsageError(f"--set features=raw applies to CLIP models (clip-*, digits-clip); model {spec.model!r} "
                         "is not one; accepted for it: features=unit")
    if not protocol.fresh_head:
        raise UsageError(f"--set features=raw applies only under --protocol id-ood (a new classifier on the raw "
                         f"features); protocol {spec.protocol!r} keeps the model's zero-shot head; accepted: features=unit")
    if spec.head_init == "zero-shot":
        raise UsageError("--set features=raw cannot start from --head-init zero-shot (the zero-shot head is made "
                         "for unit-length features); accepted: --head-init fresh, or features=unit")


def _head_init(spec: RunSpec, protocol: Any, entry: Any, method_cls: Any) -> str | None:
    """``spec.head_init`` checked against the protocol, model and method it is given with; None when
    it is the method's own default (one run id for both ways of asking). An option that would have no
    effect is refused, naming what makes it apply."""
    want = spec.head_init
    if want not in HEAD_INITS:
        raise unknown("--head-init", want, HEAD_INITS)
    if not protocol.fresh_head:
        raise UsageError(f"--head-init {want} applies only under --protocol id-ood, which gives the task a new "
                         f"classifier; protocol {spec.protocol!r} fine-tunes the model's own head")
    method = method_cls(spec)
    own = method_cls.builds_head or method.head_init(list(entry.block_names)) != "fresh"
    if own:
        raise UsageError(f"--head-init has no effect with method {spec.method!r}, which makes its own classifier "
                         "(a probe or the zero-shot head) before it trains; it applies to methods that train the "
                         "classifier from the start (full, surgical with block last, autoft, the PETL methods, ...)")
    if want == "zero-shot" and not entry.zero_shot:
        raise UsageError(f"--head-init zero-shot needs a model with a text tower (clip-*, digits-clip); model "
                         f"{spec.model!r} has none; accepted for it: fresh")
    default = "zero-shot" if method_cls.zero_shot_start and entry.zero_shot else "fresh"
    return None if want == default else want
