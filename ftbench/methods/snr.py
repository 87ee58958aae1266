"""Auto-SNR (Lee et al., 2022, "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts",
section on automatically selecting which layers to tune).

Each parameter tensor is scored by the signal-to-noise ratio of its gradient across target train
examples: per element ``SNR = mean_n(g_n)² / var_n(g_n)`` over the per-example gradients ``g_n``,
averaged over the tensor's elements, then divided by the largest tensor score so the scores lie in
[0, 1]. Only the selected tensors train (normalised SNR >= ``threshold``, or the top ``fraction``);
every other tensor stays bit-identical. Per-example gradients come from ``torch.func``
(``vmap(grad(...))`` over ``functional_call``), not a Python loop over examples. See
docs/methods.md#auto-snr for every difference from the released code.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ftbench.errors import UsageError
from ftbench.methods.base import BN_OPTION, METHODS, STEPS_LIMIT, Method, Option
from ftbench.methods.rgn import is_batchnorm
from ftbench.spec import RunSpec

if TYPE_CHECKING:
    from ftbench.train.context import TrainContext

RULES = ("threshold", "top")
# Per-example gradients are computed for at most this many gradient elements at once
# (examples × candidate parameters), i.e. 256 MB of float32, plus the chunk's activations.
CHUNK_ELEMENTS = 1 << 26


def per_example_gradients(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient of each example's cross-entropy w.r.t. the parameters ``names``: ``{name: (N, *shape)}``.

    The model runs in whatever modes it is in; call it in eval mode (see :func:`gradient_moments`).
    Computed in float32 (no autocast), as one vectorised ``vmap(grad(...))`` call.
    """
    params = dict(model.named_parameters())
    chosen = {n: params[n].detach() for n in names}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        # Parameters not in ``p`` (and all buffers) are the module's own.
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return F.cross_entropy(out.float(), yi.unsqueeze(0))

    # no_grad outside: torch.func.grad still differentiates inside, but the result is not itself
    # recorded for autograd through the other parameters that still require grad.
    with torch.no_grad():
        return vmap(grad(loss), in_dims=(None, 0, 0))(chosen, x, y)


def gradient_moments(
    model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor, chunk: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Mean and unbiased variance (N − 1) over examples of each per-example gradient element.

    The model is put in eval mode for the computation and its modes are restored afterwards: in
    train mode BatchNorm normalises with the statistics of the whole batch, so one example's loss
    would depend on the others (no per-example gradient exists), and under ``vmap`` each example
    would be a batch of one whose running-statistics update is an in-place write vmap refuses. In
    eval mode BatchNorm uses the running statistics, which are left untouched, so each example's
    gradient is its own and computing the SNR changes nothing in the model.

    Examples are processed in chunks of ``chunk`` (default: as many as fit in
    :data:`CHUNK_ELEMENTS`), merged with Chan et al.'s pairwise update, which is exact up to
    rounding and does not cancel catastrophically when the variance is small.
    """
    n = int(y.shape[0])
    if n < 2:
        raise UsageError(f"auto-snr needs at least 2 target train examples for a gradient variance, got {n}")
    params = dict(model.named_parameters())
    size = sum(params[k].numel() for k in names) or 1
    chunk = chunk or max(1, min(n, CHUNK_ELEMENTS // size))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        count = 0
        mean: dict[str, torch.Tensor] = {}
        m2: dict[str, torch.Tensor] = {}
        for i in range(0, n, chunk):
            g = per_example_gradients(model, names, x[i : i + chunk], y[i : i + chunk])
            nb = int(y[i : i + chunk].shape[0])
            for k, v in g.items():
                mb = v.mean(dim=0)
                m2b = ((v - mb) ** 2).sum(dim=0)
                if not count:
                    mean[k], m2[k] = mb, m2b
                else:
                    delta = mb - mean[k]
                    total = count + nb
                    mean[k] = mean[k] + delta * (nb / total)
                    m2[k] = m2[k] + m2b + delta**2 * (count * nb / total)
            count += nb
    finally:
        for m, training in modes:
            m.train(training)
    return mean, {k: v / (count - 1) for k, v in m2.items()}


def element_snr(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``mean² / var`` elementwise; 0 where mean and variance are both 0, +inf where only var is 0.

    0/0 arises for an element no example moves (e.g. behind a dead ReLU): no signal, so 0. A
    nonzero mean with zero variance is a noiseless signal: its SNR is infinite.
    """
    zero_var = var == 0
    ratio = mean**2 / torch.where(zero_var, torch.ones_like(var), var)
    noiseless = torch.where(mean == 0, torch.zeros_like(mean), torch.full_like(mean, math.inf))
    return torch.where(zero_var, noiseless, ratio)


def tensor_snr(mean: dict[str, torch.Tensor], var: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    """Per tensor, the average over its elements of :func:`element_snr` (float64 CPU vector, ``names`` order)."""
    if not names:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack([element_snr(mean[k], var[k]).double().mean() for k in names]).cpu()


def normalise(snr: torch.Tensor) -> torch.Tensor:
    """Divide by the largest score so the scores lie in [0, 1].

    If the largest score is 0 (no tensor has any signal), every score equals the maximum: all 1.
    If it is +inf, the infinite tensors get 1 and the others 0 (their ratio to infinity). A NaN score
    (a non-finite gradient) stays NaN and is never selected.
    """
    valid = ~snr.isnan()
    if not valid.any():
        return snr.clone()
    top = snr[valid].max()
    if top == 0:
        return torch.where(valid, torch.ones_like(snr), snr)
    if math.isinf(float(top)):
        return torch.where(valid, (snr == top).to(snr.dtype), snr)
    return snr / top


def select(scores: torch.Tensor, rule: str, threshold: float, fraction: float) -> torch.Tensor:
    """Boolean mask of the selected tensors from normalised scores.

    ``threshold``: score >= threshold (the released code's ``v < 0.95 -> frozen``, i.e. ``>=`` trains).
    ``top``: the ``ceil(fraction · T)`` highest scores (at least one), ties broken by model order.
    NaN scores are never selected.
    """
    finite = ~scores.isnan()
    if rule == "threshold":
        return finite & (scores >= threshold)
    if rule == "top":
        # The slack keeps float products such as 0.2 · 40 = 8.000000000000002 from rounding up.
        k = min(int(finite.sum()), max(1, math.ceil(fraction * len(scores) - 1e-9)))
        order = torch.argsort(scores.nan_to_num(-math.inf), descending=True, stable=True)
        mask = torch.zeros_like(finite)
        mask[order[:k]] = True
        return mask & finite
    raise ValueError(f"unknown rule {rule!r}")


@dataclasses.dataclass
class SNRSelection:
    """One evaluation of the criterion: per candidate tensor (model order) its raw and normalised score."""

    names: list[str]
    snr: torch.Tensor
    scores: torch.Tensor
    selected: torch.Tensor  # bool, per name

    def chosen(self) -> list[str]:
        return [n for n, s in zip(self.names, self.selected.tolist()) if s]


class SNRSelector:
    """Computes the selection on a fixed set of examples; as a ``before_step(opt, t)`` hook it
    recomputes it every ``every`` steps and drops the gradients of unselected tensors.

    Dropping a gradient (``p.grad = None``) makes the optimizer skip the tensor for that step: no
    update, no weight decay and no optimizer state, exactly as if the tensor were not in the
    optimizer. The optimizer itself is never rebuilt.
    """

    def __init__(self, model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor,
                 rule: str, threshold: float, fraction: float, every: int = 0) -> None:
        self.model, self.names, self.x, self.y = model, names, x, y
        self.rule, self.threshold, self.fraction, self.every = rule, threshold, fraction, every
        params = dict(model.named_parameters())
        self.params = [params[n] for n in names]
        self.history: list[tuple[int, SNRSelection]] = []  # (first step it applies to, selection)
        self._sum = torch.zeros(len(names), dtype=torch.float64)
        self._steps = 0
        self.ever = torch.zeros(len(names), dtype=torch.bool)

    def compute(self, step: int = 1) -> SNRSelection:
        """Evaluate the criterion at the model's current weights; record it as applying from ``step``."""
        mean, var = gradient_moments(self.model, self.names, self.x, self.y)
        snr = tensor_snr(mean, var, self.names)
        scores = normalise(snr)
        sel = SNRSelection(self.names, snr, scores, select(scores, self.rule, self.threshold, self.fraction))
        self.history.append((step, sel))
        self.ever |= sel.selected
        return sel

    @property
    def current(self) -> SNRSelection:
        return self.history[-1][1]

    def count_step(self) -> None:
        """Account one optimizer step under the current selection (for :meth:`mean_selected`)."""
        self._sum += self.current.selected.double()
        self._steps += 1

    def __call__(self, opt: torch.optim.Optimizer, t: int) -> None:
        if not self.history:
            self.compute(t)
        elif self.every and t > 1 and (t - 1) % self.every == 0:
            self.compute(t)  # at the weights this step's gradients were taken at
        for p, keep in zip(self.params, self.current.selected.tolist()):
            if not keep:
                p.grad = None
        self.count_step()

    def mean_selected(self) -> torch.Tensor:
        """Per tensor, the fraction of training steps during which it was selected."""
        if not self._steps:
            return self.current.selected.double() if self.history else self._sum
        return self._sum / self._steps


def candidate_names(model: nn.Module, block_params: dict[str, list[nn.Parameter]], exclude_bn: bool) -> list[str]:
    """Names (model order) of the tensors the criterion may select: every block's, minus BatchNorm's if asked."""
    in_blocks = {id(p) for ps in block_params.values() for p in ps}
    bn = {id(p) for m in model.modules() if is_batchnorm(m) for p in m.parameters(recurse=False)} if exclude_bn else set()
    return [n for n, p in model.named_parameters() if id(p) in in_blocks and id(p) not in bn]


def snr_examples(n: int, limit: int, seed: int) -> torch.Tensor:
    """Indices of the target train examples the SNR is computed on: all when ``n <= limit``, else
    the first ``limit`` of a permutation drawn from its own generator seeded with the run seed (so
    the loop's batch order does not depend on this option)."""
    if n <= limit:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]


@METHODS.register("auto-snr")
class AutoSNR(Method):
    """Only the tensors whose normalised gradient signal-to-noise ratio passes the rule train."""

    name = "auto-snr"
    help = "the tensors whose normalised gradient SNR (mean²/var over examples) is >= threshold"
    paper = "Lee et al. 2022, Surgical Fine-Tuning Improves Adaptation to Distribution Shifts (Auto-SNR)"
    order = 43
    options = {
        "rule": Option("threshold", "which tensors train: 'threshold' = normalised SNR >= threshold; "
                       "'top' = the top fraction of tensors by SNR", RULES),
        "threshold": Option(0.95, "rule=threshold: smallest normalised SNR (in [0, 1]) that trains", minimum=0,
                            applies_when={"rule": ("threshold",)}),
        "fraction": Option(0.25, "rule=top: share of the tensors that train (in (0, 1], at least one)", minimum=0,
                           applies_when={"rule": ("top",)}),
        "examples": Option(256, "target train examples the SNR is computed over (all if fewer)", minimum=2,
                           maximum=10_000_000),  # more than any split has (ImageNet train: 1.28M)
        "every": Option(0, "0 = select once before training; k = recompute the selection every k steps", minimum=0,
                        maximum=STEPS_LIMIT),
        "exclude_bn": Option(False, "never select BatchNorm weights/biases, as the released code"),
        "bn": BN_OPTION,
    }

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        self.selector: SNRSelector | None = None
        self._blocks_of: dict[str, str] = {}

    @classmethod
    def resolve(cls, spec: RunSpec, block_names: tuple[str, ...]) -> RunSpec:
        """Also check the ranges of ``threshold`` and ``fraction``; the option the rule does not use
        is reset to its default, so it changes neither the result nor the run id."""
        spec = super().resolve(spec, block_names)
        opts = dict(spec.options)
        if not 0 <= opts["threshold"] <= 1:
            raise UsageError(f"option threshold={opts['threshold']!r} of method 'auto-snr' must be in [0, 1]")
        if not 0 < opts["fraction"] <= 1:
            raise UsageError(f"option fraction={opts['fraction']!r} of method 'auto-snr' must be in (0, 1]")
        unused = "fraction" if opts["rule"] == "threshold" else "threshold"
        opts[unused] = cls.options[unused].default
        return dataclasses.replace(spec, options=tuple(sorted(opts.items())))

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        """Before ``run``: every block (any tensor may be selected). After: the blocks with a tensor
        that was selected at some step."""
        if self.selector is None:
            return list(block_names)
        chosen = {self._blocks_of[n] for n, e in zip(self.selector.names, self.selector.ever.tolist()) if e}
        return [b for b in block_names if b in chosen]

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        """Select tensors by gradient SNR, train them; return ``snr_block_<name>``, ``snr_selected``
        and ``snr_selected_params``."""
        o = self.opts
        blocks = ctx.block_names
        block_params = {b: ctx.model.block_parameters(b) for b in blocks}
        owner = {id(p): b for b, ps in block_params.items() for p in ps}
        names = candidate_names(ctx.model, block_params, o["exclude_bn"])
        named = dict(ctx.model.named_parameters())
        self._blocks_of = {n: owner[id(named[n])] for n in names}
        train = ctx.target.train
        idx = snr_examples(len(train), o["examples"], self.spec.seed).to(train.x.device)
        sel = SNRSelector(ctx.model, names, train.x[idx], train.y[idx], o["rule"], o["threshold"],
                          o["fraction"], o["every"])
        self.selector = sel
        first = sel.compute(1)  # at the pretrained weights, before any BatchNorm mode changes
        if o["every"] == 0:
            # Fixed selection: a block with no selected tensor is frozen as in `surgical` (eval mode,
            # bit-identical buffers); in the others the unselected tensors get no gradient.
            chosen = set(first.chosen())
            trained = [b for b in blocks if any(self._blocks_of.get(n) == b for n in chosen)]
            ctx.set_trainable(trained, bn=o["bn"])
            params = []
            for n, p in ctx.model.named_parameters():
                p.requires_grad_(n in chosen)
                if n in chosen:
                    params.append(p)
            stats = ctx.fit(params)
            for _ in range(stats.steps):
                sel.count_step()
        else:
            # The selection moves, so every block is set up as trained (BatchNorm as `bn` says) and
            # the hook drops the gradients of the tensors not selected at each step.
            ctx.set_trainable(blocks, bn=o["bn"])
            candidates = set(names)
            for n, p in ctx.model.named_parameters():
                p.requires_grad_(n in candidates)
            ctx.fit([named[n] for n in names], before_step=sel)
        return self._columns(blocks, block_params)

    def _columns(self, blocks: list[str], block_params: dict[str, list[nn.Parameter]]) -> dict[str, Any]:
        assert self.selector is not None
        sel = self.selector
        mean = dict(zip(sel.names, sel.mean_selected().tolist()))
        named = {id(p): n for n, p in self.selector.model.named_parameters()}
        cols: dict[str, Any] = {}
        for b in blocks:
            # Every tensor of the block counts (excluded BatchNorm tensors as never selected).
            fr = [mean.get(named[id(p)], 0.0) for p in block_params[b]]
            cols[f"snr_block_{b}"] = sum(fr) / len(fr) if fr else float("nan")
        ever = [p for p, e in zip(sel.params, sel.ever.tolist()) if e]
        cols["snr_selected"] = len(ever)
        cols["snr_selected_params"] = sum(p.numel() for p in ever)
        return cols
