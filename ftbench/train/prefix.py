"""Frozen-prefix caching: train only the blocks from the first trained one on, from cached activations.

When every block below the trained ones is frozen and deterministic — no parameter there requires a
gradient, every module there is in eval mode (BatchNorm uses its running statistics, dropout is off),
no hook watches those modules or the model, and the loop applies no augmentation — the prefix maps
each training image to the same activations at every step. They are computed once per ``fit`` (one
large-batch pass under ``no_grad``) and the loop runs unchanged on them: the same batch indices
from the same generator draws, the same suffix forward, loss, backward and optimizer. Results equal
the plain path's up to floating-point rounding (a large batch may pick other kernels than a batch
of 64). Linear probing by gradient steps and last-block tuning become nearly free.

Models opt in by implementing :meth:`BlockModel.forward_to` / :meth:`BlockModel.forward_from`.
``FTBENCH_FASTPATH=0`` turns every fast path off (see :func:`fastpath_enabled`);
``FTBENCH_DEBUG=1`` prints which path each fit takes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module

from ftbench.data.base import Split
from ftbench.environment import PREFIX_CACHE_MB_DEFAULT
from ftbench.models.base import BlockModel
from ftbench.train.loop import autocast

FASTPATHS = ("prefix", "fused")
# ctx.fit arguments that leave the forward pass alone (they act on params, the optimizer or the
# logits), so the fast path stays exact with them. Anything else (say a future augmentation
# hook) sends the fit down the plain path until it is known to be safe.
SAFE_KEYS = frozenset({"lr", "wd", "batch_size", "optimizer", "extra_loss", "before_step", "loss_fn"})
DEFAULT_BUDGET_MB = PREFIX_CACHE_MB_DEFAULT  # at most this much memory for cached activations (FTBENCH_PREFIX_CACHE_MB)


def fastpath_enabled(kind: str, device_type: str | None = None) -> bool:
    """Whether fast path ``kind`` (``prefix`` or ``fused``) is on under ``$FTBENCH_FASTPATH``.

    Unset or ``auto``: frozen-prefix caching everywhere, fused training on CUDA only (on a CPU a
    grouped convolution is slower than separate ones: measured in docs/performance.md).
    ``1``, ``on`` or ``all``: every fast path on every device; ``0``, ``off`` or ``none``: none;
    otherwise a comma-separated list of the ones to use on every device (e.g. ``prefix``).
    """
    from ftbench.environment import fastpath

    mode, on = fastpath()  # anything else is one error line (ftbench/environment.py), never "all off"
    if mode == "auto":
        return kind == "prefix" or device_type == "cuda"
    return kind in on


def debug(msg: str) -> None:
    """One line on stderr when ``$FTBENCH_DEBUG`` is set (which path a fit took, and why)."""
    if os.environ.get("FTBENCH_DEBUG"):
        print(f"ftbench fastpath: {msg}", file=sys.stderr)


@dataclass(frozen=True)
class PrefixPlan:
    """The outcome of :func:`plan`: cache the activations entering ``block``, or why not."""

    block: str | None  # first block of the trained suffix; None when the fast path does not apply
    reason: str  # why it applies or not (for FTBENCH_DEBUG and tests)

    def __bool__(self) -> bool:
        return self.block is not None


def can_cut(model: nn.Module) -> bool:
    """Whether ``model`` implements forward_to/forward_from and nothing replaced its forward on the instance."""
    if not isinstance(model, BlockModel):
        return False
    cls = type(model)
    if cls.forward_to is BlockModel.forward_to or cls.forward_from is BlockModel.forward_from:
        return False
    # A method may patch an instance's forward (e.g. to route inputs): then the cut is not forward().
    return not any(k in vars(model) for k in ("forward", "features", "forward_to", "forward_from"))


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    return any(getattr(_module, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks"))


def plan(model: nn.Module, params: Iterable[nn.Parameter], keys: Iterable[str] = ()) -> PrefixPlan:
    """Decide whether a fit of ``params`` on ``model`` can run from cached prefix activations.

    ``keys`` are the names of the arguments the fit gets besides the data (see :data:`SAFE_KEYS`).
    """
    if not fastpath_enabled("prefix"):
        return PrefixPlan(None, "disabled by FTBENCH_FASTPATH")
    unsafe = sorted(set(keys) - SAFE_KEYS)
    if unsafe:
        return PrefixPlan(None, f"fit arguments not known to be safe: {', '.join(unsafe)}")
    if not can_cut(model):
        return PrefixPlan(None, f"{type(model).__name__} cannot be cut at a block (no forward_to/forward_from)")
    assert isinstance(model, BlockModel)
    if _global_hooks() or _hooked(model):
        return PrefixPlan(None, "forward/backward hooks on the model")
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        return PrefixPlan(None, "nothing to train")
    blocks = model.blocks()
    names = list(blocks)
    where: dict[int, int] = {}  # id(param) -> index of its block
    for i, mods in enumerate(blocks.values()):
        for m in mods:
            for p in m.parameters():
                where.setdefault(id(p), i)
    if any(id(p) not in where for p in model.parameters()):
        return PrefixPlan(None, "the model has parameters outside its blocks")
    if any(id(p) not in where for p in trainable):
        return PrefixPlan(None, "some trained parameters are not the model's")
    grad_blocks = [where[id(p)] for p in model.parameters() if p.requires_grad] + [where[id(p)] for p in trainable]
    k = min(grad_blocks)
    if k == 0:
        return PrefixPlan(None, f"block {names[0]} trains: no frozen prefix")
    # Every module outside the trained suffix — the prefix blocks, and to be safe any parameter-free
    # module outside all blocks (a dropout between blocks, say) — must be deterministic and unwatched.
    suffix = {id(m) for mods in list(blocks.values())[k:] for top in mods for m in top.modules()}
    for m in model.modules():
        if id(m) in suffix or m is model:
            continue
        if m.training:
            return PrefixPlan(None, f"{type(m).__name__} below block {names[k]} is in train mode")
        if _hooked(m):
            return PrefixPlan(None, f"hooks on a {type(m).__name__} below block {names[k]}")
    return PrefixPlan(names[k], f"blocks {', '.join(names[:k])} frozen and in eval mode: cached")


class Suffix(nn.Module):
    """``h -> model.forward_from(block, h)`` as a module (what the loop calls on cached activations)."""

    def __init__(self, model: BlockModel, block: str) -> None:
        super().__init__()
        self.model = model
        self.block = block

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_from(self.block, h)


def _budget_bytes() -> int:
    from ftbench.environment import number

    return int(number("FTBENCH_PREFIX_CACHE_MB", DEFAULT_BUDGET_MB, positive=False) * 2**20)


@torch.no_grad()
def cached_activations(model: BlockModel, block: str, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor | None:
    """The activations entering ``block`` for every row of ``x``, as the loop's forward computes them
    (under the same autocast), or None when they would exceed ``$FTBENCH_PREFIX_CACHE_MB``."""
    out: list[torch.Tensor] = []
    budget, used = _budget_bytes(), 0
    for i in range(0, x.shape[0], chunk):
        with autocast(x.device):
            h = model.forward_to(block, x[i : i + chunk])
        used += h.numel() * h.element_size()
        if used * x.shape[0] > budget * min(x.shape[0], i + chunk):  # extrapolated total over budget
            return None
        out.append(h)
    return torch.cat(out) if len(out) > 1 else out[0]


def channels_last_enabled() -> bool:
    """``$FTBENCH_CHANNELS_LAST=1``: images and convolution weights in channels-last memory format
    (opt-in: about 15-20% faster convolutions on this project's CPU, but other kernels, so results
    move by float rounding)."""
    from ftbench.environment import flag

    return flag("FTBENCH_CHANNELS_LAST")


def _channels_last(model: nn.Module, data: Split) -> Split:
    if not channels_last_enabled() or data.x.dim() != 4:
        return data
    model.to(memory_format=torch.channels_last)  # in place: the Parameter objects stay the same
    return Split(data.x.contiguous(memory_format=torch.channels_last), data.y)


def fit_inputs(model: nn.Module, params: list[nn.Parameter], data: Split, hp: dict[str, Any]) -> tuple[nn.Module, Split]:
    """What the loop should run on: ``(Suffix, cached activations)`` when the fast path is exact,
    else ``(model, data)``. Labels, and hence the batch draws, are the same either way. With
    ``$FTBENCH_CHANNELS_LAST=1`` the images (or 4-d activations) are made channels-last too."""
    if not isinstance(data, Split):  # a streamed train split (ID→OOD on a large benchmark): decoded per batch
        debug("plain loop (streamed train split)")
        return model, data
    p = plan(model, params, hp)
    if not p or len(data) == 0:
        debug(f"plain loop ({p.reason})")
        return model, _channels_last(model, data)
    assert isinstance(model, BlockModel) and p.block is not None
    h = cached_activations(model, p.block, data.x)
    if h is None:
        debug("plain loop (prefix activations exceed FTBENCH_PREFIX_CACHE_MB)")
        return model, _channels_last(model, data)
    debug(f"training from block {p.block} on cached activations ({p.reason})")
    return Suffix(model, p.block), _channels_last(model, Split(h, data.y))
