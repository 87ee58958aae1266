"""Linear probing and LP-FT (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution").

As in the paper, the linear probe is trained *to convergence* on frozen features: an L2-regularised
multinomial logistic regression solved with L-BFGS. By default it is solved and its strength chosen
as the released code does it, with its solver, scikit-learn's ``LogisticRegression`` (``unlabeled_extrapolation/log_reg_sk.py``): features standardised by one scalar
mean and standard deviation of the training features, C swept over ``logspace(-7, 2, 50)`` with
warm starts from the previous solution, the C of the best validation accuracy kept (the first on a
tie), the weights mapped back to the raw features. ``select=fixed`` keeps ftbench's former probe: one
given L2 strength, solved in torch on the device. LP-FT then fine-tunes every block starting from
that probed head, as the release loads the linear probe's chosen weights.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ftbench.methods.base import BN_OPTION, FEATURES_OPTION, METHODS, Method, Option
from ftbench.spec import RunSpec
from ftbench.train.loop import FitStats

if TYPE_CHECKING:
    from ftbench.data.base import AnySplit
    from ftbench.train.context import TrainContext

# log_reg_sk.py:66-69: Cs = np.logspace(start_c=-7, end_c=2, num_cs); run_adaptation_experiments.py:410
# passes num_reg_values=50.
C_MIN, C_MAX, C_STEPS = 1e-7, 1e2, 50
# Limits (docs/methods.md#limits): 20x the release's 50 C values; 500x the default L-BFGS budget.
MAX_C_STEPS, MAX_ITER = 1_000, 100_000


def c_grid(c_min: float, c_max: float, steps: int) -> list[float]:
    """``np.logspace(log10(c_min), log10(c_max), steps)``, ascending (strongest regularisation first)."""
    if steps == 1 or c_min == c_max:
        return [float(c_min)]
    lo, hi = math.log10(c_min), math.log10(c_max)
    return [10 ** (lo + (hi - lo) * i / (steps - 1)) for i in range(steps)]


@dataclasses.dataclass(frozen=True)
class ProbeChoice:
    """The outcome of a C sweep: the chosen C and its weights (on the standardised features)."""

    index: int
    c: float
    w: torch.Tensor
    b: torch.Tensor
    val_accs: list[float]
    iterations: int


def _head_of(clf: Any, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's coefficients as a ``classes``-row head: a binary problem's one row becomes
    ``[-w/2, w/2]`` (baseline_train.py:232-247) and classes absent from the training set get zero
    rows (log_reg_sk.pad_head)."""
    coef, icpt = clf.coef_, clf.intercept_
    if coef.shape[0] == 1 and len(clf.classes_) == 2:
        coef, icpt = np.concatenate([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    w, b = np.zeros((classes, coef.shape[1])), np.zeros(classes)
    w[clf.classes_], b[clf.classes_] = coef, icpt
    return w, b


def sweep_probe(z: np.ndarray, y: np.ndarray, zv: np.ndarray, yv: np.ndarray, classes: int,
                cs: list[float], max_iter: int) -> ProbeChoice:
    """log_reg_sk.test_log_reg_warm_starting, with its solver: one scikit-learn
    ``LogisticRegression(warm_start=True, max_iter=max_iter, random_state=0)`` refitted for each C
    ascending (each fit starts from the last solution), scored by accuracy on ``(zv, yv)``, the first
    C with the best accuracy kept (``cur_acc > best_acc``). Its objective ``C·Σ CE + ½||W||²`` is
    ftbench's mean-CE one with ``l2 = 1 / (C·n)``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(random_state=0, warm_start=True, max_iter=max_iter)
    best: ProbeChoice | None = None
    accs: list[float] = []
    total = 0
    for i, c in enumerate(cs):
        clf.C = c
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached: as the release, go on
            clf.fit(z, y)
        total += int(np.max(clf.n_iter_))
        acc = float((clf.predict(zv) == yv).mean()) * 100.0 if len(yv) else 0.0
        if best is None or acc > max(accs):  # strictly better: the first C wins a tie, as the release
            w, b = _head_of(clf, classes)
            best = ProbeChoice(i, c, torch.from_numpy(w), torch.from_numpy(b), [], 0)
        accs.append(acc)
    assert best is not None
    return dataclasses.replace(best, val_accs=accs, iterations=total)


@torch.no_grad()
def _features(ctx: TrainContext, split: AnySplit) -> torch.Tensor:
    """Penultimate features of every example of ``split`` (model in eval mode), in order."""
    out = [ctx.features(xb) for xb in split.batches(1024)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def probe_head(ctx: TrainContext, cs: list[float], max_iter: int) -> dict[str, Any]:
    """Fit the head as the release does (module docstring) and copy it in; return the result columns
    ``lp_c`` (chosen C), ``lp_c_index``, ``lp_l2`` (the mean-CE L2 strength it amounts to on the
    standardised features, 1/(C·n)) and ``lp_probe_val_acc`` (target-val accuracy of the probe)."""
    ctx.model.eval()
    feats = _features(ctx, ctx.target.train)  # the train split may be streamed (ID train of a large benchmark)
    f = feats.double().cpu().numpy()
    y = ctx.target.train.y.cpu().numpy()
    mean, std = float(f.mean()), max(float(f.std()), 1e-12)  # log_reg_sk.normalize_features: one scalar each
    fv = _features(ctx, ctx.target.val).double().cpu().numpy()
    yv = ctx.target.val.y.cpu().numpy()
    head = ctx.model.head
    choice = sweep_probe((f - mean) / std, y, (fv - mean) / std if len(fv) else fv, yv, head.weight.shape[0],
                         cs, max_iter)
    with torch.no_grad():  # log_reg_sk.inv_normalize_weights: back to the raw features
        w = choice.w / std
        head.weight.copy_(w.to(head.weight))
        head.bias.copy_((choice.b - w.sum(1) * mean).to(head.bias))
        loss = float(F.cross_entropy(head(feats), ctx.target.train.y.to(feats.device)))
    ctx.fits.append(FitStats(choice.iterations, len(y) * choice.iterations, loss, kind="lbfgs"))
    return {"lp_c": choice.c, "lp_c_index": choice.index, "lp_l2": 1.0 / (choice.c * len(y)),
            "lp_probe_val_acc": choice.val_accs[choice.index]}


SELECT_HELP = ("'val' = sweep C over a log grid on standardised features and keep the best target-val "
               "accuracy, as the released code; 'fixed' = one L2 strength (ftbench's former default)")


# Options of the mode not selected have no effect: Method.resolve resets them to their defaults (so they
# change neither result nor id) and refuses a value given for them (Option.applies_when).
SWEEP = {"select": ("val",)}
LP_SWEEP = {"lp_select": ("val",)}


def _check_grid(spec: RunSpec, lo: str, hi: str, method: str) -> None:
    from ftbench.errors import UsageError

    o = spec.options_dict
    if not o[lo] > 0:
        raise UsageError(f"option {lo}={o[lo]!r} of method {method!r} must be a positive number (a log grid)")
    if o[lo] > o[hi]:
        raise UsageError(f"option {lo}={o[lo]!r} of method {method!r} must not exceed {hi}={o[hi]!r}")


@METHODS.register("linear-probe")
class LinearProbe(Method):
    """Classifier only, fitted to convergence on frozen features (convex; lr-free)."""

    name = "linear-probe"
    builds_head = True  # --head-init has no effect: see Method.builds_head
    help = ("classifier only, L-BFGS logistic regression on frozen features, C swept on target val "
            "(select=fixed: --wd = L2 strength)")
    paper = "Kumar et al. 2022, Fine-Tuning can Distort Pretrained Features"
    order = 30
    uses = frozenset({"wd"})
    uses_when = {"wd": {"select": ("fixed",)}}  # the L2 strength of select=fixed; select=val sweeps C instead
    options = {
        "select": Option("val", SELECT_HELP, ("val", "fixed")),
        "c_min": Option(C_MIN, "smallest C of the sweep (log grid; select=val)", minimum=0, applies_when=SWEEP),
        "c_max": Option(C_MAX, "largest C of the sweep (select=val)", minimum=0, applies_when=SWEEP),
        "c_steps": Option(C_STEPS, "number of C values of the sweep (select=val)", minimum=1, maximum=MAX_C_STEPS,
                          applies_when=SWEEP),
        "max_iter": Option(200, "L-BFGS iterations per solve (the problem is convex)", minimum=1, maximum=MAX_ITER),
        "features": FEATURES_OPTION,
    }

    @classmethod
    def resolve(cls, spec: RunSpec, block_names: tuple[str, ...]) -> RunSpec:
        if spec.wd is None and dict(spec.options).get("select", "val") != "fixed":
            spec = dataclasses.replace(spec, wd=0.0)  # a resolved sweep spec (wd unused, None) resolves again
        spec = super().resolve(spec, block_names)
        if spec.options_dict["select"] == "val":
            _check_grid(spec, "c_min", "c_max", cls.name)
            spec = dataclasses.replace(spec, wd=None)  # the sweep chooses the strength: --wd is unused
        return spec

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return ["last"]

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        ctx.set_trainable(["last"], bn="frozen")
        o = self.opts
        if o["select"] == "val":
            return probe_head(ctx, c_grid(o["c_min"], o["c_max"], o["c_steps"]), o["max_iter"])
        ctx.linear_probe(l2=self.spec.wd or 0.0, max_iter=o["max_iter"])
        return {"lp_l2": float(self.spec.wd or 0.0)}


@METHODS.register("lp-ft")
class LPFT(Method):
    """Linear probe to convergence, then fine-tune all blocks from the probed head."""

    name = "lp-ft"
    builds_head = True  # --head-init has no effect: see Method.builds_head
    help = "linear probe (L-BFGS, C swept on target val) to convergence, then all blocks"
    paper = "Kumar et al. 2022, Fine-Tuning can Distort Pretrained Features"
    order = 50
    options = {
        "lp_select": Option("val", SELECT_HELP, ("val", "fixed")),
        "lp_c_min": Option(C_MIN, "smallest C of the probe's sweep (log grid; lp_select=val)", minimum=0,
                           applies_when=LP_SWEEP),
        "lp_c_max": Option(C_MAX, "largest C of the probe's sweep (lp_select=val)", minimum=0, applies_when=LP_SWEEP),
        "lp_c_steps": Option(C_STEPS, "number of C values of the probe's sweep (lp_select=val)", minimum=1,
                             maximum=MAX_C_STEPS, applies_when=LP_SWEEP),
        "lp_l2": Option(1e-3, "L2 strength of the linear-probe stage with lp_select=fixed", minimum=0,
                        applies_when={"lp_select": ("fixed",)}),
        "lp_max_iter": Option(200, "L-BFGS iterations of the linear-probe stage (per solve)", minimum=1,
                              maximum=MAX_ITER),
        "bn": BN_OPTION,
        "features": FEATURES_OPTION,
    }

    @classmethod
    def resolve(cls, spec: RunSpec, block_names: tuple[str, ...]) -> RunSpec:
        spec = super().resolve(spec, block_names)
        if spec.options_dict["lp_select"] == "val":
            _check_grid(spec, "lp_c_min", "lp_c_max", cls.name)
        return spec

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(block_names)

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        ctx.set_trainable(["last"], bn="frozen")
        o = self.opts
        if o["lp_select"] == "val":
            cols = probe_head(ctx, c_grid(o["lp_c_min"], o["lp_c_max"], o["lp_c_steps"]), o["lp_max_iter"])
        else:
            ctx.linear_probe(l2=o["lp_l2"], max_iter=o["lp_max_iter"])
            cols = {"lp_l2": float(o["lp_l2"])}
        ctx.fit(ctx.set_trainable(self.trainable_blocks(ctx.block_names), bn=o["bn"]))
        return cols
