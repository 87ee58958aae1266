"""Surgical fine-tuning (Lee et al., 2022, "Surgical Fine-Tuning Improves Adaptation to
Distribution Shifts") and its two reference points: tune everything, tune nothing."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ftbench.errors import UsageError
from ftbench.methods.base import (
    BN_OPTION,
    DECAY_OPTION,
    FEATURES_OPTION,
    METHODS,
    PROJ_OPTION,
    Method,
    decay_arguments,
)
from ftbench.spec import RunSpec

if TYPE_CHECKING:
    from ftbench.train.context import TrainContext


@METHODS.register("surgical")
class Surgical(Method):
    """Only the chosen blocks train; every other parameter and BatchNorm statistic stays put."""

    name = "surgical"
    help = "only the --block blocks (default: block 1)"
    paper = "Lee et al. 2022, Surgical Fine-Tuning Improves Adaptation to Distribution Shifts"
    order = 10
    takes_blocks = True
    default_blocks = ("1",)
    # proj=train: CLIP's projection (block 3) trains with the head, with --block last only: the PETL study's
    # "linear" row, whose head is Sequential(proj, classifier) (experiment/build_model.py:122-124).
    options = {"bn": BN_OPTION, "proj": PROJ_OPTION}

    @classmethod
    def resolve(cls, spec: RunSpec, block_names: tuple[str, ...]) -> RunSpec:
        from ftbench.methods.petl import check_projection

        spec = super().resolve(spec, block_names)
        if spec.options_dict["proj"] == "train":
            if spec.blocks != ("last",):
                raise UsageError(f"option proj=train of method 'surgical' applies only with --block last (given: "
                                 f"--block {','.join(spec.blocks)}), where it adds CLIP's projection to the "
                                 "trained head; drop proj=train or give --block last")
            check_projection(cls.name, spec)
        return spec

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(self.spec.blocks)

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        from ftbench.methods.petl import trained_projection

        params = ctx.set_trainable(self.trainable_blocks(ctx.block_names), bn=self.opts["bn"])
        proj = trained_projection(self.name, self.spec, ctx.model)
        for p in proj:  # in no trained block: the true count overrides the runner's per-block one
            p.requires_grad_(True)
        ctx.fit(params + proj)
        return {"n_trainable": sum(p.numel() for p in params + proj)} if proj else {}


@METHODS.register("full")
class Full(Method):
    """Standard full fine-tuning: every block trains."""

    name = "full"
    help = "all blocks"
    paper = "baseline in every paper"
    order = 40
    # decay: coupled by default (ftbench's loop, as the surgical and LP-FT releases' Adam/SGD); the AutoFT and
    # WiSE-FT releases fine-tune their baseline with AdamW: decay=decoupled (recipe autoft)
    options = {"bn": BN_OPTION, "features": FEATURES_OPTION,
               "decay": dataclasses.replace(DECAY_OPTION, default="coupled")}

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(block_names)

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        params = ctx.set_trainable(self.trainable_blocks(ctx.block_names), bn=self.opts["bn"])
        ctx.fit(params, **decay_arguments(self.opts["decay"], float(self.spec.wd or 0.0)))
        return {}


@METHODS.register("none")
class NoFineTuning(Method):
    """The source model as it is: the no-fine-tuning reference point of ID-vs-OOD plots."""

    name = "none"
    help = "nothing (evaluate the pretrained source model)"
    order = 0
    uses = frozenset()

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return []

    @classmethod
    def check_protocol(cls, protocol: Any) -> None:
        if protocol.fresh_head:
            raise UsageError(f"method 'none' trains nothing, and protocol {protocol.name!r} gives the ID task a new "
                             "classifier, so there is no pretrained classifier to evaluate; its untuned-backbone "
                             "reference row is method linear-probe")

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        ctx.set_trainable([], bn="frozen")
        return {}
