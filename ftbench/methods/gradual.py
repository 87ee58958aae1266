"""Gradual unfreezing (Howard & Ruder, 2018, "Universal Language Model Fine-tuning for Text
Classification", ULMFiT; a baseline in Lee et al., 2022, "Surgical Fine-Tuning Improves Adaptation
to Distribution Shifts", in both directions).

Training is split into K stages for a model with K blocks. At stage k the k blocks nearest the
starting end train: ``last-to-first`` (ULMFiT) starts with the classifier and adds one block
towards the input per stage; ``first-to-last`` starts with block 1 and adds one towards the output.
The steps are split evenly across the stages. One optimizer persists for the whole run: a block's
parameters join it when their stage begins, as with ``add_param_group`` (see
docs/methods.md#gradual-unfreeze).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ftbench.methods.base import BN_OPTION, METHODS, Method, Option
from ftbench.train.loop import steps_for

if TYPE_CHECKING:
    from ftbench.train.context import TrainContext

DIRECTIONS = ("last-to-first", "first-to-last")


def stage_steps(steps: int, stages: int) -> list[int]:
    """Steps of each stage: ``steps // stages`` each, one more for the first ``steps % stages``.

    With fewer steps than stages, the last stages get 0 steps and never run.
    """
    base, extra = divmod(steps, stages)
    return [base + (1 if k < extra else 0) for k in range(stages)]


def unfreeze_order(block_names: list[str], direction: str) -> list[str]:
    """Blocks in the order they are unfrozen."""
    if direction == "last-to-first":
        return list(reversed(block_names))
    if direction == "first-to-last":
        return list(block_names)
    raise ValueError(f"unknown direction {direction!r}")


class GradualUnfreeze:
    """A ``before_step(opt, t)`` hook that runs the stages inside one call of the loop.

    The loop is given every parameter, so its single optimizer holds them all from the start. A
    parameter whose block is still frozen has its gradient dropped (``p.grad = None``) before each
    update, so the optimizer skips it: no update, no weight decay and no optimizer state (Adam's
    moments and step count begin at the first step of its stage), which is exactly what
    ``add_param_group`` at the stage boundary would give. After step 1 frozen parameters also stop
    requiring gradients, so the backward pass does not reach blocks it need not reach. At the last
    step of a stage the next stage's blocks are switched on (``requires_grad``, and train mode for
    BatchNorm with ``bn=train``), ready for the next forward pass.
    """

    def __init__(self, blocks: dict[str, list[nn.Module]], order: list[str], steps: list[int], bn: str) -> None:
        self.blocks, self.order, self.bn = blocks, order, bn
        self.steps = steps
        self.ends: list[int] = []  # global step at which each stage ends (stages with 0 steps included)
        total = 0
        for s in steps:
            total += s
            self.ends.append(total)
        self.total = total
        self.unfrozen = 0  # number of blocks of ``order`` currently trainable
        self.stage_started_at: dict[int, int] = {}  # stage (1-based) -> its first step, for stages that ran

    def stage_at(self, t: int) -> int:
        """1-based stage of global step ``t`` (skipping stages with no steps)."""
        return next(k + 1 for k, end in enumerate(self.ends) if t <= end)

    def _params(self, names: list[str]) -> list[nn.Parameter]:
        return [p for name in names for m in self.blocks[name] for p in m.parameters()]

    def enter(self, stage: int) -> None:
        """Make the blocks of ``stage`` (the first ``stage`` of the order) trainable."""
        for name in self.order[self.unfrozen : stage]:
            for m in self.blocks[name]:
                m.requires_grad_(True)
                if self.bn == "train":
                    m.train()
        self.unfrozen = max(self.unfrozen, stage)

    def __call__(self, opt: torch.optim.Optimizer, t: int) -> None:
        stage = self.stage_at(t)
        self.stage_started_at.setdefault(stage, t)
        frozen = self._params(self.order[stage:])
        for p in frozen:
            p.grad = None
            if t == 1:
                p.requires_grad_(False)
        if t < self.total and self.stage_at(t + 1) != stage:
            self.enter(self.stage_at(t + 1))


@METHODS.register("gradual-unfreeze")
class GradualUnfreezing(Method):
    """All blocks, unfrozen one per stage from one end; one optimizer for the whole run."""

    name = "gradual-unfreeze"
    help = "all blocks, unfrozen one block per stage (default last-to-first), steps split evenly"
    paper = "Howard & Ruder 2018 (ULMFiT); baseline in Lee et al. 2022, Surgical Fine-Tuning"
    order = 46
    options = {
        "direction": Option("last-to-first", "order in which blocks are unfrozen: 'last-to-first' = classifier "
                            "first (ULMFiT), 'first-to-last' = block 1 first", DIRECTIONS),
        "bn": BN_OPTION,
    }

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.schedule: GradualUnfreeze | None = None

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(block_names)

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        """Run the stages in one loop call; return ``gradual_stage_steps`` (steps per stage, in order)."""
        names = ctx.block_names
        order = unfreeze_order(names, self.opts["direction"])
        s = self.spec
        total = steps_for(len(ctx.target.train), s.batch_size, s.steps, s.epochs)
        steps = stage_steps(total, len(order))
        schedule = GradualUnfreeze(ctx.model.blocks(), order, steps, self.opts["bn"])
        self.schedule = schedule
        # Stage 1's modes: only its block is in train mode (bn=train); the rest stay in eval mode.
        ctx.set_trainable(order[:1], bn=self.opts["bn"])
        schedule.unfrozen = 1
        # Every parameter must require a gradient when the loop starts, so that its one optimizer holds
        # them all; the hook drops the frozen ones' gradients (and stops computing them after step 1).
        ctx.model.requires_grad_(True)
        ctx.fit(list(ctx.model.parameters()), before_step=schedule)
        return {"gradual_stage_steps": ",".join(map(str, steps))}
