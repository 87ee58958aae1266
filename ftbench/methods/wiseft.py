"""WiSE-FT (Wortsman et al., 2022, "Robust fine-tuning of zero-shot models", CVPR 2022).

Fine-tune every block (as method ``full``), then evaluate weight-space ensembles of the pretrained
and the fine-tuned model, ``theta_alpha = (1 - alpha) * theta_pretrained + alpha * theta_finetuned``,
for each alpha of a grid. alpha = 0 is the pretrained model (method ``none``), alpha = 1 the
fine-tuned one (method ``full``); the rows in between trace the ID-OOD curve of the paper.

``run`` trains and leaves the fine-tuned model (alpha = 1) in place: that is the run's final row.
``extra_states`` then puts the model into each other theta_alpha in turn, yielding ``{"alpha": a}``,
so that the runner evaluates each one as an extra row (``final=False``), and restores the
fine-tuned weights when done.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ftbench.errors import UsageError
from ftbench.methods.base import (
    BN_OPTION,
    DECAY_OPTION,
    METHODS,
    Method,
    Option,
    decay_arguments,
)

if TYPE_CHECKING:
    from ftbench.train.context import TrainContext

DEFAULT_ALPHAS = "0,0.25,0.5,0.75,1"
ALPHAS_RULE = "comma-separated numbers in [0, 1], ascending, without repeats, e.g. alphas=0,0.25,0.5,0.75,1"
# Each alpha is an evaluation of the whole model: ftbench's limit, a grid of step 0.001 (the release's README
# evaluates 21, step 0.05; docs/methods.md#limits).
MAX_ALPHAS = 1_001


def _fmt(a: float) -> str:
    """Shortest text that reads back as ``a``: 1.0 -> '1', 0.25 -> '0.25' (for stable run ids)."""
    return repr(float(a)).removesuffix(".0")


def parse_alphas(value: Any) -> tuple[float, ...]:
    """The alpha grid from ``"0,0.5,1"`` (or a list of numbers, as a suite may give it).

    Raises :class:`UsageError` unless every value is a finite number in [0, 1] and the values are
    strictly ascending (sorted, unique).
    """
    items = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    if len(items) > MAX_ALPHAS:
        raise UsageError(f"option alphas of method 'wise-ft' has {len(items)} values; accepted: at most {MAX_ALPHAS} "
                         "(ftbench's limit, far above the papers' settings: docs/methods.md#limits)")
    shown = value if isinstance(value, str) else ",".join(str(v) for v in items)
    alphas: list[float] = []
    for item in items:
        text = str(item).strip()
        try:
            a = float(text) + 0.0  # -0 is 0: one text, one run id
        except ValueError:
            reason = "an empty value" if not text else f"{text!r} is not a number"
            raise UsageError(f"option alphas={shown!r} of method 'wise-ft': {reason}; expected {ALPHAS_RULE}") from None
        if not math.isfinite(a) or not 0.0 <= a <= 1.0:
            raise UsageError(f"option alphas={shown!r} of method 'wise-ft': {text} is outside [0, 1]; expected {ALPHAS_RULE}")
        if alphas and a <= alphas[-1]:
            what = "repeated" if a == alphas[-1] else f"smaller than {_fmt(alphas[-1])} before it"
            raise UsageError(f"option alphas={shown!r} of method 'wise-ft': {text} is {what}; expected {ALPHAS_RULE}")
        alphas.append(a)
    return tuple(alphas)


@dataclass(frozen=True)
class AlphasOption(Option):
    """The alpha grid: validated, and stored in one canonical text so equal grids share a run id."""

    def parse(self, name: str, value: Any, method: str) -> str:
        return ",".join(_fmt(a) for a in parse_alphas(value))


def interpolate(model: nn.Module, pretrained: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor],
                alpha: float) -> None:
    """Load ``(1 - alpha) * pretrained + alpha * finetuned`` into ``model`` (state dicts, same keys).

    Every floating-point entry is interpolated: parameters and buffers such as BatchNorm running
    mean and variance. Integer buffers (BatchNorm ``num_batches_tracked``) take the fine-tuned value.
    alpha = 0 and alpha = 1 copy the endpoints bit for bit (the formula would turn -0.0 into 0.0 and
    0 * inf into NaN), and elements equal in both endpoints keep their value exactly for every alpha
    (so whatever fine-tuning left untouched stays bit-identical to the pretrained model).
    """
    state = model.state_dict()
    with torch.no_grad():
        for key, dst in state.items():
            a, b = pretrained[key], finetuned[key]
            if not dst.is_floating_point() or alpha == 1.0:
                dst.copy_(b)
            elif alpha == 0.0:
                dst.copy_(a)
            else:
                dst.copy_(torch.where(a == b, a, (1.0 - alpha) * a + alpha * b))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer, on the model's device."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@METHODS.register("wise-ft")
class WiseFT(Method):
    """Full fine-tuning, then evaluation of the weight-space interpolations with the pretrained model."""

    name = "wise-ft"
    help = "all blocks, then (1-alpha)*pretrained + alpha*fine-tuned for each alpha"
    paper = "Wortsman et al. 2022, Robust fine-tuning of zero-shot models"
    order = 60
    zero_shot_start = True  # the release fine-tunes from the zero-shot head
    options = {
        "alphas": AlphasOption(DEFAULT_ALPHAS, "interpolation weights of the fine-tuned model, one result row each "
                               "(0 = pretrained, 1 = fine-tuned, always the final row)",
                               # The grid says where the curve is sampled, not how the model trains:
                               # runs with different grids are one report row.
                               in_variant=False),
        # coupled by default, so the alpha = 1 row is exactly `full`'s; the release's AdamW: decay=decoupled
        "decay": dataclasses.replace(DECAY_OPTION, default="coupled"),
        "bn": BN_OPTION,
    }

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self._pretrained: dict[str, torch.Tensor] | None = None

    @property
    def alphas(self) -> tuple[float, ...]:
        return parse_alphas(self.opts["alphas"])

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(block_names)

    def head_init(self, block_names: list[str]) -> str:
        # The alpha = 0 end must be a classifier: with a new head for the ID task (id-ood), the linear
        # probe of the pretrained features stands where the paper's zero-shot head stands, and
        # fine-tuning starts from it as the paper's end-to-end fine-tuning starts from the zero-shot head.
        return "probe"

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        self._pretrained = snapshot(ctx.model)
        params = ctx.set_trainable(self.trainable_blocks(ctx.block_names), bn=self.opts["bn"])
        ctx.fit(params, **decay_arguments(self.opts["decay"], float(self.spec.wd or 0.0)))
        return {"alpha": 1.0}  # the model stays fine-tuned: the final row

    def extra_states(self, ctx: TrainContext) -> Iterator[dict[str, Any]]:
        """After ``run``: put the model at theta_alpha for each alpha < 1 of the grid (ascending) and
        yield ``{"alpha": alpha}`` for the runner to evaluate; then restore the fine-tuned model."""
        if self._pretrained is None:
            raise RuntimeError("wise-ft: extra_states() called before run()")
        finetuned = snapshot(ctx.model)
        modes = [(m, m.training) for m in ctx.model.modules()]
        try:
            for alpha in self.alphas:
                if alpha == 1.0:
                    continue  # the final row
                interpolate(ctx.model, self._pretrained, finetuned, alpha)
                yield {"alpha": alpha}
        finally:
            interpolate(ctx.model, self._pretrained, finetuned, 1.0)
            for m, training in modes:
                m.train(training)
