"""A GPU-hours estimate for a suite, from counted FLOPs (``ftbench sweep NAME --dry-run``).

**An estimate, not a measurement**: no GPU was available where this was written, so no per-step cost
was measured. The formula:

    GPU-hours ≈ Σ_runs 3 · F(model, image size) · steps · batch size / (throughput · 3600)

* ``F`` is the forward FLOPs of one image, *counted* by ``torch.utils.flop_counter`` on the model
  built on PyTorch's meta device (no weights, no memory) at the benchmark's image size; a training
  step costs about 3 forward passes (forward + backward), the usual rule of thumb;
* ``steps`` is the run's ``--steps``, or ``--epochs`` × ⌊n / batch size⌋ with n = shots × classes (under
  ``--protocol id-ood`` without ``--shots``: the size of ID train, ``ID_TRAIN``);
* ``throughput`` is an *assumed* sustained rate, ``$FTBENCH_GPU_TFLOPS`` (default 100 TFLOP/s, bf16,
  a fraction of a current data-centre GPU's peak that small fine-tuning batches typically reach).

It counts training only: each evaluation adds F × (target val + test + source test images), which
for ImageNet-C-sized test sets and many ``--checkpoints`` can be of the same order. AutoFT's search counts
its trials × inner steps; methods that train more than one network per step (spottune) count as one.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from ftbench.environment import GPU_TFLOPS_DEFAULT, number

DEFAULT_TFLOPS = GPU_TFLOPS_DEFAULT
# The image size each benchmark feeds its model, and its number of classes (docs/benchmarks.md).
IMAGE_SIZE = {"digits": 8, "cifar10-c": 32, "cifar10-c-gen": 32, "cifar10-flip": 32, "imagenet-c": 224,
              "imagenet-c-gen": 224, "living17": 224, "entity30": 224, "waterbirds": 224, "celeba": 224,
              "camelyon17": 96, "fmow": 224, "iwildcam": 448, "imagenet": 224, "cifar10": 32}
CLASSES = {"digits": 10, "cifar10-c": 10, "cifar10-c-gen": 10, "cifar10-flip": 10, "imagenet-c": 1000,
           "imagenet-c-gen": 1000, "living17": 17, "entity30": 30, "waterbirds": 2, "celeba": 2, "camelyon17": 2,
           "fmow": 62, "iwildcam": 182, "imagenet": 1000, "cifar10": 10}
# Images of ID train under --protocol id-ood without --shots (the published split sizes less ftbench's held-out
# ID val: 10 per class or subclass for ImageNet and BREEDS, a tenth of CIFAR-10; WILDS' train splits as
# published). Rounded: they size an estimate.
ID_TRAIN = {"imagenet": 1_271_000, "cifar10": 45_000, "living17": 44_000, "entity30": 156_000, "iwildcam": 129_809,
            "fmow": 76_863, "camelyon17": 302_436, "waterbirds": 4_795, "celeba": 162_770}


@lru_cache(maxsize=64)
def forward_flops(model: str, channels: int, size: int, classes: int) -> float | None:
    """Forward FLOPs of one ``channels``×``size``×``size`` image, counted on the meta device (None if the
    model cannot be built or traced there); from the catalog cache in a fresh process."""
    from ftbench.catalog import cached

    return cached(("flops", model, channels, size, classes), lambda: _count_flops(model, channels, size, classes),
                  lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and math.isfinite(v) and v >= 0))


def _count_flops(model: str, channels: int, size: int, classes: int) -> float | None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ftbench.models.base import get_model_entry

    try:
        with torch.device("meta"):
            net = get_model_entry(model).build(channels, classes).eval()  # one image: BatchNorm in eval mode
            x = torch.empty(1, channels, size, size)
            with FlopCounterMode(display=False) as counter:
                net(x)
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001  (a model that does not run on meta tensors: no estimate for it)
        return None


@lru_cache(maxsize=64)
def block_flops(model: str, channels: int, size: int, classes: int) -> dict[str, float] | None:
    """Forward FLOPs of one image per block of ``model`` (its block partition, input to output order),
    counted on the meta device; None if the model cannot be built or traced there."""
    from ftbench.catalog import cached

    return cached(("block-flops", model, channels, size, classes),
                  lambda: _count_block_flops(model, channels, size, classes),
                  lambda v: v is None or (isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values())))


def _count_block_flops(model: str, channels: int, size: int, classes: int) -> dict[str, float] | None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ftbench.models.base import get_model_entry

    try:
        with torch.device("meta"):
            net = get_model_entry(model).build(channels, classes)
            x = torch.empty(1, channels, size, size)
            with FlopCounterMode(display=False, depth=None) as counter:
                net(x)
        counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
        root = type(net).__name__  # the counter names a module by its path under the root's class name
        names = {id(m): f"{root}.{n}" if n else root for n, m in net.named_modules()}
        out = {b: float(sum(counts.get(names[id(m)], 0) for m in modules)) for b, modules in net.blocks().items()}
        total = float(counts.get("Global", 0))
        if not total or sum(out.values()) > total * (1 + 1e-9):
            return None  # modules counted twice or not found: no per-block count rather than a wrong one
        return out
    except Exception:  # noqa: BLE001  (a model that does not run on meta tensors: no count for it)
        return None


def example_flops(model: str, benchmark: str, tuned: list[str] | None) -> float | None:
    """Training FLOPs of one image in one step when the blocks ``tuned`` train (None: all of them).

    Forward through the whole network (F), then the backward pass only as far down as the lowest tuned
    block: input gradients of every block from the lowest tuned one up, weight gradients of the tuned
    blocks, each about the block's forward FLOPs. Tuning everything gives the usual 3 F. None where the
    benchmark's image size or the model's per-block count is unknown."""
    size, classes = IMAGE_SIZE.get(benchmark), CLASSES.get(benchmark)
    if size is None or classes is None or not model:
        return None
    per = block_flops(model, 1 if benchmark == "digits" else 3, size, classes)
    if not per:
        return None
    names = list(per)
    tuned = names if tuned is None else [b for b in names if b in set(tuned)]
    forward = float(forward_flops(model, 1 if benchmark == "digits" else 3, size, classes) or sum(per.values()))
    if not tuned:
        return forward
    low = min(names.index(b) for b in tuned)
    return forward + sum(per[b] for b in names[low:]) + sum(per[b] for b in tuned)


def run_flops(spec: Any) -> float | None:
    """Training FLOPs of one resolved RunSpec (3 forward passes per image per step), or None."""
    if spec.method == "none":
        return 0.0
    size, classes = IMAGE_SIZE.get(spec.benchmark), CLASSES.get(spec.benchmark)
    if size is None or classes is None or not spec.model:
        return None
    channels = 1 if spec.benchmark == "digits" else 3
    f = forward_flops(spec.model, channels, size, classes)
    if f is None:
        return None
    bs = spec.batch_size or 64
    if spec.steps is not None:
        steps = spec.steps
    elif spec.epochs is not None:
        n = train_images(spec, classes) or (spec.shots or 1) * classes
        steps = spec.epochs * max(1, n // min(bs, n))
    else:
        steps = 0  # a method without a loop (linear-probe)
    if spec.method == "autoft":  # its search: trials × inner_steps more steps
        o = dict(spec.options)
        steps += int(o.get("trials", 0)) * int(o.get("inner_steps", 0))
    return 3.0 * f * steps * min(bs, train_images(spec, classes) or (spec.shots or bs) * classes)


def train_images(spec: Any, classes: int) -> int | None:
    """Images one epoch of ``spec`` trains on under id-ood without --shots (all of ID train); None otherwise."""
    if spec.shots is None and spec.protocol == "id-ood" and spec.benchmark in ID_TRAIN:
        return ID_TRAIN[spec.benchmark]
    return None


def estimate(specs: list[Any]) -> tuple[float, int]:
    """(GPU-hours, runs without an estimate) for ``specs`` at ``$FTBENCH_GPU_TFLOPS``."""
    tflops = number("FTBENCH_GPU_TFLOPS", DEFAULT_TFLOPS, positive=True)
    total, unknown = 0.0, 0
    for s in specs:
        f = run_flops(s)
        if f is None:
            unknown += 1
        else:
            total += f
    return total / (tflops * 1e12) / 3600.0, unknown


def describe_estimate(specs: list[Any]) -> str:
    """The dry-run's line: the estimate, marked as such, with its formula's assumption."""
    hours, unknown = estimate(specs)
    tflops = number("FTBENCH_GPU_TFLOPS", DEFAULT_TFLOPS, positive=True)
    text = (f"estimated GPU-hours for the runs to do: {hours:.3g} (an estimate, not a measurement: counted "
            f"training FLOPs at an assumed {tflops:g} TFLOP/s, $FTBENCH_GPU_TFLOPS; evaluation not counted; "
            "ftbench/papers/estimate.py)")
    if unknown:
        text += f"; {unknown} run(s) without an estimate (model or benchmark size unknown)"
    return text
