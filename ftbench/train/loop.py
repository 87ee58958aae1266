"""The device-resident training loop (airbench style).

Data are tensors on the device; batch indices for the whole run are drawn up front from a seeded
CPU generator and moved to the device once, so the hot loop is indexing + forward + backward +
step with no per-image Python and no host-device synchronisation until the run ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ftbench.data.base import AnySplit, Split


@dataclass(frozen=True)
class FitStats:
    steps: int
    examples: int
    final_loss: float
    kind: str = "loop"  # "loop" (optimizer steps) or "lbfgs" (iterations of a convex solve)


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """(steps, batch) indices: consecutive random permutations of range(n), cut into batches."""
    bs = min(batch_size, n)
    per_epoch = n // bs  # drop the ragged tail of each permutation, as DataLoader(drop_last=True)
    epochs = math.ceil(steps / per_epoch)
    perms = [torch.randperm(n, generator=generator)[: per_epoch * bs] for _ in range(epochs)]
    return torch.cat(perms).view(-1, bs)[:steps]


def steps_for(n: int, batch_size: int, steps: int | None, epochs: int | None) -> int:
    """Number of optimizer steps for ``steps`` or ``epochs`` over ``n`` examples."""
    if steps is not None:
        return steps
    assert epochs is not None
    return epochs * max(1, n // min(batch_size, n))


SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, warmup: int, steps: int) -> Callable[[int], float]:
    """The learning rate's multiplier at 0-based step ``t`` of ``steps``: a linear warm-up over the
    first ``warmup`` steps, ``(t + 1) / warmup``, then 1 (``constant``) or a half cosine from 1 towards
    0 over the remaining steps (``cosine``): wise-ft's ``cosine_lr`` (src/models/utils.py), which FLYP
    and AutoFT reuse, with the step counted from 0 as there."""
    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        if schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (steps - warmup)))

    return factor


def make_optimizer(params: Any, name: str, lr: float, wd: float) -> torch.optim.Optimizer:
    """Adam (coupled L2, as the surgical paper's code) or SGD with momentum 0.9.

    ``foreach=True`` (torch's default on CUDA) on every device: on a CPU it is about twice as fast
    as the per-tensor loop and gives bit-identical updates (tests/test_fastpaths.py).

    In portable mode (ftbench/numerics.py) the step is torch's fused CPU kernel instead: the foreach
    and per-tensor Adam take the square root of the second moment with MKL's vector math
    (``vsSqrt``), which is not correctly rounded and picks its code path by CPU whatever ``MKL_CBWR``
    says (measured: docs/ci.md), while the fused kernel is ATen's own, ``std::sqrt`` in the generic
    build portable mode runs: correctly rounded, the same bits on every x86-64 CPU.
    """
    from ftbench import numerics

    params = params if isinstance(params, (list, tuple)) else list(params)
    how = {"fused": True} if numerics.portable() and _cpu_params(params) else {"foreach": True}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **how)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=0.9, **how)
    raise ValueError(name)


def _cpu_params(params: list | tuple) -> bool:
    """Whether every parameter in ``params`` (tensors, or param-group dicts) is on the CPU."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    return all(t.device.type == "cpu" for t in tensors)


PRECISIONS = ("fp32", "bf16")
# The run's --train-precision / --eval-precision (None: the device's default), set by the runner
# around a run's training and evaluation (not around loading or pretraining its source model).
_PRECISION: ContextVar[tuple[str | None, str | None]] = ContextVar("ftbench_precision", default=(None, None))


@contextmanager
def precision(train: str | None, evaluation: str | None) -> Iterator[None]:
    """Within this block, :func:`autocast` of phase ``train`` / ``eval`` uses these precisions."""
    token = _PRECISION.set((train, evaluation))
    try:
        yield
    finally:
        _PRECISION.reset(token)


def effective_precision(device: torch.device, phase: str = "train") -> str:
    """``fp32`` or ``bf16``: the run's setting for ``phase`` (``train`` or ``eval``), else the device's
    default (bf16 autocast on CUDA; fp32 on CPU, where bf16 is slower and changes results)."""
    train, evaluation = _PRECISION.get()
    return (train if phase == "train" else evaluation) or ("bf16" if device.type == "cuda" else "fp32")


def autocast(device: torch.device, phase: str = "train"):  # noqa: ANN201
    """bf16 autocast or full precision, as :func:`effective_precision` says for ``phase``."""
    if effective_precision(device, phase) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def fit(
    model: nn.Module,
    params: Iterable[nn.Parameter],
    data: AnySplit,
    *,
    lr: float,
    wd: float,
    steps: int,
    batch_size: int,
    optimizer: str,
    generator: torch.Generator,
    on_step: Callable[[int], None] | None = None,
    at_steps: frozenset[int] = frozenset(),
    extra_loss: Callable[[], torch.Tensor] | None = None,
    before_step: Callable[[torch.optim.Optimizer, int], None] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    start_step: int = 0,
    on_optimizer: Callable[[torch.optim.Optimizer], None] | None = None,
    progress: Callable[[int, torch.Tensor], None] | None = None,
    progress_every: int = 1,
    schedule: str = "constant",
    warmup: int = 0,
    clip_grad: float | None = None,
    augment: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> FitStats:
    """Minimise cross-entropy on ``data`` over ``params``; modules' train/eval modes are the caller's.

    ``on_step(t)`` is called after optimizer step ``t`` (1-based) for each ``t`` in ``at_steps``
    (checkpoint evaluation); it must leave the model's modes as it found them.
    ``extra_loss()`` is added to the cross-entropy of every step (e.g. an L2-SP penalty), and
    ``before_step(opt, t)`` runs after the backward pass and before step ``t``'s update, with the
    gradients in place (e.g. to set per-tensor learning rates). Each parameter is its own
    optimizer param group when ``before_step`` is given, so a hook can set per-tensor rates.
    ``loss_fn(logits, labels)``, when given, replaces the cross-entropy (float32 logits of the
    batch; e.g. AutoFT's learned objective).
    Resuming (ftbench/train/resume.py): ``on_optimizer(opt)`` is called once the optimizer exists
    (to load a checkpoint's state or keep a handle to save it), and the loop starts after step
    ``start_step``; the batch indices are drawn in full either way.
    ``progress(t, loss)`` is called after every ``progress_every``-th step and the last, with the
    step's loss as a tensor (reading it syncs the device; see :mod:`ftbench.status`).
    ``schedule``/``warmup`` scale every group's learning rate at step ``t`` by :func:`lr_factor`, after
    ``before_step`` (so per-tensor rates a hook sets are scaled too) and for that step only; the scale
    is also in each group's ``"lr_scale"`` while ``before_step`` runs (AdamW's decoupled decay reads it,
    as torch's AdamW decays with the scheduled rate). ``clip_grad`` clips the gradients of ``params``
    to that global L2 norm after the backward pass (``torch.nn.utils.clip_grad_norm_``, as wise-ft).
    ``augment(x, t)`` transforms step ``t``'s (0-based) batch of inputs (:mod:`ftbench.train.augment`).
    """
    params = [p for p in params if p.requires_grad]
    device = data.device
    idx = batch_indices(len(data), batch_size, steps, generator).to(device)
    # A streamed split (a large source set) is decoded batch by batch, ahead, by its worker pool.
    streamed = None if isinstance(data, Split) else data.batches_at(idx[start_step:])
    if not params or steps == 0:
        return FitStats(0, 0, float("nan"))
    groups: Any = [{"params": [p]} for p in params] if before_step is not None else params
    opt = make_optimizer(groups, optimizer, lr, wd)
    if on_optimizer is not None:
        on_optimizer(opt)
    last = torch.zeros((), device=device)
    scale = None if schedule == "constant" and warmup == 0 else lr_factor(schedule, warmup, idx.shape[0])
    for t in range(start_step, idx.shape[0]):
        b = idx[t]
        xb = data.x[b] if streamed is None else next(streamed)
        if augment is not None:
            xb = augment(xb, t)
        with autocast(device):
            logits = model(xb)
        loss = (loss_fn or F.cross_entropy)(logits.float(), data.y[b])
        if extra_loss is not None:
            loss = loss + extra_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        f = 1.0 if scale is None else scale(t)
        if scale is not None:
            for g in opt.param_groups:
                g["lr_scale"] = f
        if before_step is not None:
            before_step(opt, t + 1)
        if scale is None:
            opt.step()
        else:
            rates = [g["lr"] for g in opt.param_groups]
            for g, r in zip(opt.param_groups, rates):
                g["lr"] = r * f
            opt.step()
            for g, r in zip(opt.param_groups, rates):
                g["lr"] = r
        last = loss.detach()
        if on_step is not None and t + 1 in at_steps:
            on_step(t + 1)
        if progress is not None and ((t + 1) % progress_every == 0 or t + 1 == idx.shape[0]):
            progress(t + 1, last)
    return FitStats(idx.shape[0], idx.numel(), float(last))  # the one sync of the run


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Predicted labels for ``x`` in large batches (model must already be in eval mode)."""
    return predictions(model, Split(x, torch.empty(x.shape[0])), batch_size)


@torch.inference_mode()
def predictions(model: nn.Module, data: AnySplit, batch_size: int | None = None,
                classes: Sequence[int] | None = None) -> torch.Tensor:
    """Predicted labels for every example of ``data``, in order (model must be in eval mode); with
    ``classes``, the best of those labels' logits (ImageNet-R/-A's 200-class scoring).

    In-memory splits go in batches of 4096; streamed ones (:class:`ftbench.data.stream.StreamSplit`)
    in the decoder pool's batches of 256, each moved to the device as it is decoded.
    """
    return _predictions(model, data, batch_size, classes)[0]


def _predictions(model: nn.Module, data: AnySplit, batch_size: int | None = None,
                 classes: Sequence[int] | None = None, loss: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`predictions`, and with ``loss`` the summed cross-entropy of the logits (in float32) at
    the labels, from the same forward passes (None without ``loss``)."""
    out = []
    total = torch.zeros((), dtype=torch.float64, device=data.device) if loss else None
    bs = batch_size or (4096 if isinstance(data, Split) else 256)
    sub = None if classes is None else torch.as_tensor(list(classes), dtype=torch.long, device=data.device)
    start = 0
    for xb in data.batches(bs):
        with autocast(xb.device, "eval"):
            logits = model(xb)
            out.append(logits.argmax(dim=1) if sub is None else sub[logits[:, sub].argmax(dim=1)])
        if total is not None:
            yb = data.y[start : start + xb.shape[0]].to(logits.device)
            total += F.cross_entropy(logits.float(), yb, reduction="sum").double()
        start += xb.shape[0]
    preds = torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=data.device)
    return preds, total


def accuracy(model: nn.Module, data: AnySplit) -> float:
    """Top-1 accuracy in % of ``model`` (put in eval mode here) on ``data``."""
    return evaluate(model, data)[0]


def evaluate(model: nn.Module, data: AnySplit,
             metrics: Callable[[torch.Tensor, AnySplit], dict[str, float]] | None = None,
             classes: Sequence[int] | None = None, loss: bool = False) -> tuple[float, dict[str, float]]:
    """Top-1 accuracy in % of ``model`` (put in eval mode here) on ``data``, and the benchmark's
    extra ``metrics`` of the same predictions (one pass over the data); ``classes``: see predictions.
    With ``loss`` the extras also hold ``"loss"``: the mean cross-entropy over ``data`` (what selection
    breaks ties on, docs/report.md#ties); not with ``classes``, whose labels index a subset of logits."""
    model.eval()
    if len(data) == 0:
        return float("nan"), ({"loss": float("nan")} if loss else {})
    with torch.inference_mode():
        pred, total = _predictions(model, data, classes=classes, loss=loss and classes is None)
    acc = float((pred == data.y.to(pred.device)).float().mean()) * 100.0
    extra = metrics(pred, data) if metrics is not None else {}
    if total is not None:
        extra = {**extra, "loss": float(total) / len(data)}
    return acc, extra
