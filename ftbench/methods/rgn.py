"""Auto-RGN (Lee et al., 2022, "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts",
section on automatically selecting which layers to tune).

Every parameter tensor trains, with its own learning rate ``lr · RGN_i / max_j RGN_j``, where
``RGN_i = ||g_i||₂ / ||θ_i||₂`` is the relative gradient norm of tensor ``i``. The rates are set in
place on the loop's optimizer from a ``before_step`` hook, so the optimizer and its state (Adam's
moments, step counts) persist for the whole run; the released code instead rebuilt Adam every
epoch, which reset that state (see docs/methods.md#auto-rgn for every difference).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ftbench.methods.base import BN_OPTION, METHODS, STEPS_LIMIT, Method, Option

if TYPE_CHECKING:
    from ftbench.train.context import TrainContext

# ||θ|| below this counts as zero: the RGN divides by max(||θ||, EPS) instead. A zero tensor (e.g. a
# zero-initialised bias) thus gets a huge but finite RGN, i.e. the base learning rate, and scales
# every other multiplier down while it stays near zero (docs/methods.md#auto-rgn).
EPS = 1e-12


def relative_gradient_norms(params: list[torch.Tensor], eps: float = EPS) -> torch.Tensor:
    """``||g_i||₂ / max(||θ_i||₂, eps)`` per tensor, as a float64 CPU vector (one device sync).

    A tensor without a gradient (``p.grad is None``) has RGN 0.
    """
    if not params:
        return torch.zeros(0, dtype=torch.float64)
    zero = params[0].new_zeros((), dtype=torch.float32)
    g = [p.grad.detach().float().norm() if p.grad is not None else zero for p in params]
    w = [p.detach().float().norm() for p in params]
    norms = torch.stack([torch.stack(g), torch.stack(w)]).to("cpu", torch.float64)
    return norms[0] / norms[1].clamp_min(eps)


def normalised_multipliers(rgn: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """``rgn / max(rgn)`` over the tensors not ``excluded``; excluded tensors get 0.

    If every included RGN is 0 (no gradient at all), they are all equal to the maximum, so every
    included tensor gets 1. A NaN RGN (non-finite gradient) propagates, and the run is then
    recorded as diverged.
    """
    mask = torch.zeros_like(rgn, dtype=torch.bool) if excluded is None else excluded.to(torch.bool)
    included = rgn.masked_fill(mask, 0.0)
    if (~mask).sum() == 0:
        return torch.zeros_like(rgn)
    top = included[~mask].max()
    if top == 0:
        return (~mask).to(rgn.dtype)
    return included / top


class RGNSchedule:
    """A ``before_step(opt, t)`` hook: per-tensor learning rates from relative gradient norms.

    At steps 1, 1 + every, 1 + 2·every, … the multipliers are recomputed from the gradients in
    place (the current batch's), and each param group's ``lr`` is set to ``base_lr · multiplier``
    in place; in between, the last rates stay. The optimizer is never rebuilt. Each param group
    must hold exactly one tensor (the loop guarantees this when ``before_step`` is given).

    ``excluded`` holds the ids of tensors whose multiplier is always 0 (and which do not enter
    the maximum). :meth:`mean_multipliers` averages the multipliers in effect over the steps.
    """

    def __init__(self, base_lr: float, every: int = 1, excluded: set[int] | None = None, eps: float = EPS,
                 reported: set[int] | None = None) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.base_lr = float(base_lr)
        self.every = every
        self.excluded_ids = set(excluded or ())
        # The diagnostic (mean_reported) normalises over these tensors only, whatever trains.
        self.reported_ids = None if reported is None else set(reported)
        self.eps = eps
        self.params: list[torch.Tensor] = []
        self.multipliers: torch.Tensor | None = None
        self.reported: torch.Tensor | None = None
        self.recomputed_at: list[int] = []
        self._sum: torch.Tensor | None = None
        self._reported_sum: torch.Tensor | None = None
        self._steps = 0

    def __call__(self, opt: torch.optim.Optimizer, t: int) -> None:
        groups = opt.param_groups
        if not self.params:
            for g in groups:
                if len(g["params"]) != 1:
                    raise ValueError("auto-rgn needs one parameter tensor per optimizer param group")
            self.params = [g["params"][0] for g in groups]
        if self.multipliers is None or (t - 1) % self.every == 0:
            rgn = relative_gradient_norms(self.params, self.eps)
            excluded = torch.tensor([id(p) in self.excluded_ids for p in self.params], dtype=torch.bool)
            self.multipliers = normalised_multipliers(rgn, excluded)
            if self.reported_ids is None:
                self.reported = self.multipliers
            else:
                self.reported = normalised_multipliers(
                    rgn, torch.tensor([id(p) not in self.reported_ids for p in self.params], dtype=torch.bool))
            for g, m in zip(groups, self.multipliers.tolist()):
                g["lr"] = self.base_lr * m  # in place: the optimizer and its state persist
            self.recomputed_at.append(t)
        assert self.reported is not None
        self._sum = self.multipliers.clone() if self._sum is None else self._sum + self.multipliers
        self._reported_sum = self.reported.clone() if self._reported_sum is None else self._reported_sum + self.reported
        self._steps += 1

    def mean_multipliers(self) -> torch.Tensor:
        """Mean over the steps so far of each tensor's multiplier (param-group order)."""
        if self._sum is None:
            return torch.full((len(self.params),), float("nan"), dtype=torch.float64)
        return self._sum / self._steps

    def mean_reported(self) -> torch.Tensor:
        """Mean over the steps of ``RGN_i / max_j RGN_j`` with the maximum over the ``reported`` tensors
        only (0 for the others): the diagnostic, the same quantity whether or not BatchNorm trains."""
        if self._reported_sum is None:
            return torch.full((len(self.params),), float("nan"), dtype=torch.float64)
        return self._reported_sum / self._steps


def is_batchnorm(module: nn.Module) -> bool:
    """BatchNorm of any dimension (recognised by type, not by name)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


@METHODS.register("auto-rgn")
class AutoRGN(Method):
    """All blocks train; each tensor's learning rate is scaled by its normalised relative gradient norm."""

    name = "auto-rgn"
    help = "all blocks, per-tensor lr = lr * RGN / max RGN (relative gradient norm ||g||/||θ||)"
    paper = "Lee et al. 2022, Surgical Fine-Tuning Improves Adaptation to Distribution Shifts (Auto-RGN)"
    order = 42
    options = {
        "every": Option(1, "recompute the multipliers every k optimizer steps (kept in between)", minimum=1,
                        maximum=STEPS_LIMIT),
        "exclude_bn": Option(True, "BatchNorm weights/biases get multiplier 0 and stay put, as the released code "
                             "(their near-zero norms would set the maximum RGN); false: they train too"),
        "bn": BN_OPTION,
    }

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(block_names)

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        """Train every block with RGN-scaled per-tensor rates; return the diagnostic columns.

        ``rgn_block_<name>``: mean over training steps and over the block's non-BatchNorm parameter
        tensors (each tensor counts once, whatever its size) of ``RGN_i / max_j RGN_j``, the maximum
        taken over the non-BatchNorm tensors: the same quantity with ``exclude_bn`` true or false, so
        it shows which block RGN favours, not how BatchNorm is handled (NaN for a block with no such
        tensor). ``rgn_top``: the tensor with the largest mean training multiplier. ``n_trainable``:
        the parameters that can move (BatchNorm affine parameters excluded with ``exclude_bn``).
        """
        blocks = self.trainable_blocks(ctx.block_names)
        params = ctx.set_trainable(blocks, bn=self.opts["bn"])
        owner = {id(p): name for name in blocks for p in ctx.model.block_parameters(name)}
        bn_ids = {id(p) for m in ctx.model.modules() if is_batchnorm(m) for p in m.parameters(recurse=False)}
        excluded = bn_ids if self.opts["exclude_bn"] else set()
        reported = {id(p) for p in params if id(p) not in bn_ids}
        schedule = RGNSchedule(float(self.spec.lr), self.opts["every"], excluded, reported=reported)
        ctx.fit(params, before_step=schedule)
        means = schedule.mean_reported().tolist()
        per_block: dict[str, list[float]] = {name: [] for name in blocks}
        for p, m in zip(schedule.params, means):
            if id(p) in reported:
                per_block[owner[id(p)]].append(m)
        names = {id(p): n for n, p in ctx.model.named_parameters()}
        cols: dict[str, Any] = {f"rgn_block_{name}": (sum(v) / len(v) if v else float("nan"))
                                for name, v in per_block.items()}
        training = schedule.mean_multipliers().tolist()
        if schedule.params:
            top = max(range(len(training)), key=lambda i: training[i])
            cols["rgn_top"] = names.get(id(schedule.params[top]), "")
        cols["n_trainable"] = sum(p.numel() for p in params if id(p) not in excluded)
        return cols
