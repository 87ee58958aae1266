"""L2-SP and L1-SP (Li, Grandvalet & Davoine, 2018, "Explicit Inductive Bias for Transfer Learning
with Convolutional Networks"): fine-tune every block with a penalty that pulls the backbone
towards its pretrained values ("SP" = starting point) instead of towards zero.

    l2-sp:  Ω(w) = α/2 · ||w_S − w_S⁰||₂²  +  β/2 · ||w_head||₂²
    l1-sp:  Ω(w) = α   · ||w_S − w_S⁰||₁   +  β/2 · ||w_head||₂²

``w_S`` is every parameter of the backbone (every block except ``last``), ``w_S⁰`` their
pretrained values, copied before training, and ``w_head`` the classifier's weight and bias. Ω is
added to the mean cross-entropy of every step through the loop's ``extra_loss`` hook. The
optimizer's ``--wd`` (coupled L2 towards zero on every parameter) comes on top; see
docs/methods.md#l1-sp--l2-sp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ftbench.methods.base import BN_OPTION, METHODS, Method, Option

if TYPE_CHECKING:
    from ftbench.train.context import TrainContext

KINDS = ("l2", "l1")


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params]) if params else torch.zeros(0)


class SPPenalty:
    """``extra_loss`` callable: the SP penalty of ``backbone`` plus the L2 penalty of ``head``.

    The anchors ``w_S⁰`` are copied from ``backbone`` when the penalty is built, so build it
    before training. Calling it returns a scalar float32 tensor that autograd differentiates.
    """

    def __init__(self, backbone: list[nn.Parameter], head: list[nn.Parameter], kind: str,
                 alpha: float, beta: float = 0.0) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.backbone = list(backbone)
        self.head = list(head)
        self.kind = kind
        self.alpha = float(alpha)
        self.beta = float(beta)
        with torch.no_grad():
            # One flat copy: the penalty is then one cat, one subtraction and one reduction per step.
            self.anchor = _flat(self.backbone).detach().float().clone()

    def sp_term(self) -> torch.Tensor:
        """``||w_S − w_S⁰||₂²`` (l2) or ``||w_S − w_S⁰||₁`` (l1), without α."""
        if not self.backbone:
            return self.anchor.new_zeros(())
        d = _flat(self.backbone).float() - self.anchor
        return (d * d).sum() if self.kind == "l2" else d.abs().sum()

    def head_term(self) -> torch.Tensor:
        """``||w_head||₂²``, without β."""
        if not self.head:
            return self.anchor.new_zeros(())
        h = _flat(self.head).float()
        return (h * h).sum()

    def __call__(self) -> torch.Tensor:
        scale = self.alpha / 2 if self.kind == "l2" else self.alpha
        out = scale * self.sp_term()
        if self.beta:
            out = out + (self.beta / 2) * self.head_term()
        return out


class _SP(Method):
    """Shared behaviour of ``l2-sp`` and ``l1-sp``: all blocks, SP penalty via ``extra_loss``."""

    kind: ClassVar[str]
    options = {
        "alpha": Option(0.01, "strength α of the pull of the backbone (all blocks but last) towards its pretrained values",
                        minimum=0),
        "beta": Option(0.0, "strength β of the L2 penalty β/2·||w||² on the classifier (weight and bias)",
                       minimum=0),
        "bn": BN_OPTION,
    }


    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(block_names)

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        """Fine-tune every block with the SP penalty added to the loss of every step."""
        blocks = self.trainable_blocks(ctx.block_names)
        params = ctx.set_trainable(blocks, bn=self.opts["bn"])
        backbone = [p for b in blocks if b != "last" for p in ctx.model.block_parameters(b)]
        head = ctx.model.block_parameters("last")
        penalty = SPPenalty(backbone, head, self.kind, self.opts["alpha"], self.opts["beta"])
        ctx.fit(params, extra_loss=penalty)
        return {}


@METHODS.register("l2-sp")
class L2SP(_SP):
    """All blocks, with α/2·||w_S − w_S⁰||₂² on the backbone and β/2·||w_head||₂² on the classifier."""

    name = "l2-sp"
    kind = "l2"
    help = "all blocks, + alpha/2 ||w - w0||^2 on the backbone (w0 = pretrained) + beta/2 ||w_head||^2"
    paper = "Li et al. 2018, Explicit Inductive Bias for Transfer Learning with Convolutional Networks"
    order = 44


@METHODS.register("l1-sp")
class L1SP(_SP):
    """All blocks, with α·||w_S − w_S⁰||₁ on the backbone and β/2·||w_head||₂² on the classifier."""

    name = "l1-sp"
    kind = "l1"
    help = "all blocks, + alpha ||w - w0||_1 on the backbone (w0 = pretrained) + beta/2 ||w_head||^2"
    paper = "Li et al. 2018, Explicit Inductive Bias for Transfer Learning with Convolutional Networks"
    order = 45
