"""Surgical fine-tuning (Lee et al., 2022, "Surgical Fine-Tuning Improves Adaptation to
Distribution Shifts") and its two reference points: tune everything, tune nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftbench.errors import UsageError
from ftbench.methods.base import BN_OPTION, FEATURES_OPTION, METHODS, Method
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
    options = {"bn": BN_OPTION}

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(self.spec.blocks)

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        params = ctx.set_trainable(self.trainable_blocks(ctx.block_names), bn=self.opts["bn"])
        ctx.fit(params)
        return {}


@METHODS.register("full")
class Full(Method):
    """Standard full fine-tuning: every block trains."""

    name = "full"
    help = "all blocks"
    paper = "baseline in every paper"
    order = 40
    options = {"bn": BN_OPTION, "features": FEATURES_OPTION}

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(block_names)

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        ctx.fit(ctx.set_trainable(self.trainable_blocks(ctx.block_names), bn=self.opts["bn"]))
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
