"""Linear probing and LP-FT (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution").

As in the paper, the linear probe is trained *to convergence* on frozen features: an L2-regularised
multinomial logistic regression solved with L-BFGS (the paper uses scikit-learn's solver; we solve
the same convex problem in torch on the device). LP-FT then fine-tunes every block starting from
that probed head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftbench.methods.base import BN_OPTION, METHODS, Method, Option
if TYPE_CHECKING:
    from ftbench.train.context import TrainContext


@METHODS.register("linear-probe")
class LinearProbe(Method):
    """Classifier only, fitted to convergence on frozen features (convex; lr-free)."""

    name = "linear-probe"
    help = "classifier only, L-BFGS logistic regression on frozen features (--wd = L2 strength)"
    paper = "Kumar et al. 2022, Fine-Tuning can Distort Pretrained Features"
    order = 30
    uses = frozenset({"wd"})
    options = {"max_iter": Option(200, "L-BFGS iterations (the problem is convex)", minimum=1)}

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return ["last"]

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        ctx.set_trainable(["last"], bn="frozen")
        ctx.linear_probe(l2=self.spec.wd or 0.0, max_iter=self.opts["max_iter"])
        return {}


@METHODS.register("lp-ft")
class LPFT(Method):
    """Linear probe to convergence, then fine-tune all blocks from the probed head."""

    name = "lp-ft"
    help = "linear probe (L-BFGS) to convergence, then all blocks"
    paper = "Kumar et al. 2022, Fine-Tuning can Distort Pretrained Features"
    order = 50
    options = {
        "lp_l2": Option(1e-3, "L2 strength of the linear-probe stage", minimum=0),
        "lp_max_iter": Option(200, "L-BFGS iterations of the linear-probe stage", minimum=1),
        "bn": BN_OPTION,
    }

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(block_names)

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        ctx.set_trainable(["last"], bn="frozen")
        ctx.linear_probe(l2=self.opts["lp_l2"], max_iter=self.opts["lp_max_iter"])
        ctx.fit(ctx.set_trainable(self.trainable_blocks(ctx.block_names), bn=self.opts["bn"]))
        return {}
