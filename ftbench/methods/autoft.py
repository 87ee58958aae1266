"""AutoFT (Choi, Lee, Chen, Zhou, Raghunathan & Finn, 2024, "AutoFT: Learning an Objective for Robust
Fine-Tuning", arXiv:2401.10220).

A bi-level search. The *outer* level is Optuna's TPE sampler over the learning rate, the weight
decay and the weights ``w_k`` of a fine-tuning objective that is a weighted sum of loss terms:

    L(θ; x, y) = Σ_k w_k · L_k(θ; x, y),   k ∈ {ce, hinge, entropy, dcm, l1init, l2init, l1zero, l2zero, ls}

(see :data:`TERMS` and :class:`AutoFTLoss`). The *inner* level fine-tunes every block of the
pretrained model for ``inner_steps`` optimizer steps with a sampled objective and optimizer
settings; the trial's value is the resulting accuracy on the small OOD validation split (here: the
protocol's search split, or a random ``search_size`` of it as the release's 1000). With ``lr_mode=fixed``
the inner and final runs train at ``--lr`` whatever lr was sampled, as the release does (its scheduler
sets every step's lr from ``args.lr``). After ``trials`` complete trials, the model is fine-tuned
again from the pretrained weights with the best configuration, for the spec's steps.

The Optuna study lives in the run's scratch folder (``ctx.workdir``) as an append-only journal, so a
run killed mid-search resumes with the trials it completed (docs/methods.md#autoft). Each trial is
deterministic given the spec's seed and its index among the complete trials: the sampler is
re-seeded per trial from both, and so is the inner run's batch order, so a resumed search makes
exactly the trials an uninterrupted one makes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ftbench.errors import UsageError
from ftbench.methods.base import (
    BN_OPTION,
    DECAY_OPTION,
    METHODS,
    DecoupledDecay,  # noqa: F401  (re-exported: autoft.DecoupledDecay)
    Method,
    Option,
    decay_arguments,
)
from ftbench.spec import RunSpec
from ftbench.train import loop

if TYPE_CHECKING:
    import optuna

    from ftbench.train.context import TrainContext

# The loss terms, in the order of the results columns (autoft_w_<term>).
TERMS = ("ce", "hinge", "entropy", "dcm", "l1init", "l2init", "l1zero", "l2zero", "ls")
TERM_HELP = {
    "ce": "cross-entropy",
    "hinge": "multiclass hinge, sum over j != y of max(0, 1 + z_j - z_y)",
    "entropy": "entropy of the predicted distribution",
    "dcm": ("confidence minimisation on misclassified examples: cross-entropy to the uniform distribution "
            "(option dcm=uniform), or their entropy as the release (dcm=entropy)"),
    "l1init": "mean |θ - θ0| (θ0 = pretrained)",
    "l2init": "mean (θ - θ0)²",
    "l1zero": "mean |θ|",
    "l2zero": "mean θ²",
    "ls": "cross-entropy to the uniform distribution (label smoothing)",
}
# FLYP's contrastive loss (Goyal et al. 2023), a term of the release's objective for CLIP models:
# searched only when asked for (--set terms=...,flyp) and only for models with a text tower.
FLYP = "flyp"
ALL_TERMS = (*TERMS, FLYP)
TERM_HELP[FLYP] = ("CLIP's contrastive loss between the batch's images and a caption of each one's class "
                   "(methods/flyp.py); models with a text tower, which then trains too")
WEIGHT_RANGE = (1e-4, 10.0)  # every loss weight: log-uniform, as the released code
# The DCM term's two forms (option dcm): what the misclassified examples' predictions are pushed by.
DCM_FORMS = ("uniform", "entropy")
# How the inner and final fine-tunes get their learning rate (option lr_mode).
LR_MODES = ("sampled", "fixed")
STUDY_NAME = "autoft"
JOURNAL = "autoft-journal.log"


# --- the learned objective ----------------------------------------------------------------


def _flat(params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params]) if params else torch.zeros(0)


def loss_terms(logits: torch.Tensor, y: torch.Tensor, dcm: str = "uniform") -> dict[str, torch.Tensor]:
    """The five terms that depend on the batch's predictions, each a mean over the batch.

    With ``p = softmax(z)`` and ``C`` classes, per example:

    * ``ce``      = −log p_y
    * ``hinge``   = Σ_{j≠y} max(0, 1 + z_j − z_y)   (Weston–Watkins multiclass hinge, margin 1)
    * ``entropy`` = H(p) = −Σ_k p_k log p_k
    * ``ls``      = −(1/C) Σ_k log p_k   (cross-entropy to the uniform distribution)
    * ``dcm``     = 1[argmax z ≠ y] · ls  (``dcm="uniform"``, ftbench's) or 1[argmax z ≠ y] · H(p)
      (``dcm="entropy"``, the release's ``losses/learnedloss.py:29-32``); the indicator carries no gradient
    """
    if dcm not in DCM_FORMS:
        raise ValueError(f"unknown dcm form {dcm!r}; known: {', '.join(DCM_FORMS)}")
    logp = F.log_softmax(logits, dim=1)
    n, c = logits.shape
    rows = torch.arange(n, device=logits.device)
    correct = logits[rows, y]
    margins = (1.0 + logits - correct[:, None]).clamp_min(0.0)
    margins = margins.masked_fill(F.one_hot(y, c).bool(), 0.0)  # j = y is not a margin
    uniform_ce = -logp.mean(dim=1)
    entropy = -(logp.exp() * logp).sum(dim=1)
    wrong = (logits.detach().argmax(dim=1) != y).to(logits.dtype)
    return {
        "ce": F.nll_loss(logp, y),
        "hinge": margins.sum(dim=1).mean(),
        "entropy": entropy.mean(),
        "dcm": (wrong * (uniform_ce if dcm == "uniform" else entropy)).mean(),
        "ls": uniform_ce.mean(),
    }


class AutoFTLoss:
    """``loss_fn(logits, y)`` for the training loop: ``Σ_k w_k · L_k`` over the weighted terms.

    The weight terms are means over every element of ``params`` (not sums, as the released code,
    so that one weight range fits every model size): ``l1init = mean|θ − θ0|``, ``l2init =
    mean (θ − θ0)²``, ``l1zero = mean|θ|``, ``l2zero = mean θ²``, where ``θ0`` is ``anchor`` (the
    pretrained values of ``params``, flattened), copied from ``params`` when not given. Terms with
    weight 0 or absent from ``weights`` are not computed. ``dcm``: the DCM term's form (:func:`loss_terms`).
    """

    def __init__(self, weights: Mapping[str, float], params: Sequence[nn.Parameter],
                 anchor: torch.Tensor | None = None, flyp: Any = None, classes: int = 0,
                 dcm: str = "uniform") -> None:
        bad = sorted(set(weights) - set(ALL_TERMS))
        if bad:
            raise ValueError(f"unknown loss terms {bad}; known: {', '.join(ALL_TERMS)}")
        self.weights = {k: float(weights[k]) for k in ALL_TERMS if k in weights and float(weights[k]) != 0.0}
        # The flyp term: the loop's outputs are then [logits | unit image embeddings] (LogitsAndEmbeddings)
        # and ``flyp(embeddings, y)`` is the contrastive loss (ftbench.methods.flyp.ContrastiveLoss).
        if FLYP in self.weights and flyp is None:
            raise ValueError("the flyp term needs the contrastive loss of a model with a text tower")
        self.flyp, self.classes, self.dcm = flyp, classes, dcm
        self.params = list(params)
        with torch.no_grad():
            self.anchor = (anchor if anchor is not None else _flat(self.params)).detach().float().clone()

    def param_terms(self) -> dict[str, torch.Tensor]:
        """The four weight terms (means over every element of ``params``)."""
        flat = _flat(self.params).float()
        d = flat - self.anchor
        return {"l1init": d.abs().mean(), "l2init": (d * d).mean(), "l1zero": flat.abs().mean(),
                "l2zero": (flat * flat).mean()}

    def terms(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every term, unweighted (for inspection and tests)."""
        return {**loss_terms(logits, y, self.dcm), **self.param_terms()}

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = None
        if self.flyp is not None:
            logits, emb = logits[:, :self.classes], logits[:, self.classes:]
        terms = loss_terms(logits, y, self.dcm)
        if FLYP in self.weights:
            terms[FLYP] = self.flyp(emb, y)
        if any(k in self.weights for k in ("l1init", "l2init", "l1zero", "l2zero")):
            terms.update(self.param_terms())
        out = logits.new_zeros((), dtype=torch.float32)
        for k, w in self.weights.items():
            out = out + w * terms[k]
        return out


# --- the search space --------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One point of the search space: optimizer settings and loss weights."""

    lr: float
    wd: float
    weights: dict[str, float] = field(default_factory=dict)

    def columns(self) -> dict[str, float]:
        """``autoft_lr``, ``autoft_wd`` and ``autoft_w_<term>`` for every term (0 = not in the objective)."""
        flyp = {f"autoft_w_{FLYP}": float(self.weights[FLYP])} if FLYP in self.weights else {}
        return {"autoft_lr": self.lr, "autoft_wd": self.wd,
                **{f"autoft_w_{k}": float(self.weights.get(k, 0.0)) for k in TERMS}, **flyp}


@dataclass(frozen=True)
class Space:
    """The ranges searched: log-uniform, except the weight decay (uniform unless ``wd_log``)."""

    terms: tuple[str, ...]
    lr: tuple[float, float]
    wd: tuple[float, float]
    fix_ce: bool = False
    weight: tuple[float, float] = WEIGHT_RANGE
    wd_log: bool = False  # the release samples wd uniformly (autoft/src/models/autoft.py:47)

    @property
    def dimensions(self) -> int:
        """How many numbers the search samples per trial."""
        return 2 + sum(1 for k in self.terms if not (k == "ce" and self.fix_ce))

    def sample(self, trial: optuna.trial.BaseTrial) -> Config:
        """Ask ``trial`` for a configuration (works with ``optuna.trial.FixedTrial`` too)."""
        lr = trial.suggest_float("lr", *self.lr, log=True)
        wd = trial.suggest_float("wd", *self.wd, log=self.wd_log)
        weights = {}
        for k in self.terms:
            if k == "ce" and self.fix_ce:
                weights[k] = 1.0
            else:
                weights[k] = trial.suggest_float(f"w_{k}", *self.weight, log=True)
        return Config(lr, wd, weights)


def parse_terms(value: Any) -> tuple[str, ...]:
    """Loss terms from ``"ce,hinge,l2init"`` (or a list): known, non-empty, no repeats; canonical order."""
    items = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    names = [str(i).strip().lower() for i in items]
    rule = f"comma-separated loss terms from: {', '.join(ALL_TERMS)}"
    for n in names:
        if n not in ALL_TERMS:
            what = "an empty name" if not n else f"unknown term {n!r}"
            raise UsageError(f"option terms={value!r} of method 'autoft': {what}; expected {rule}")
    if len(set(names)) != len(names):
        raise UsageError(f"option terms={value!r} of method 'autoft': a term is repeated; expected {rule}")
    return tuple(k for k in ALL_TERMS if k in names)


@dataclass(frozen=True)
class TermsOption(Option):
    """The searched loss terms, stored in one canonical order so equal sets share a run id."""

    def parse(self, name: str, value: Any, method: str) -> str:
        return ",".join(parse_terms(value))


# --- the search -------------------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers (NumPy's SeedSequence: well mixed, stable across platforms)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


SALT_SAMPLER, SALT_INNER, SALT_SEARCH = 1, 2, 3


def search_subset(n: int, size: int, seed: int) -> np.ndarray | None:
    """Positions of a random ``size``-example subset of a search split of ``n`` (sorted; drawn without
    replacement, as the release's ``np.random.choice``, from ``seed``); None for the whole split
    (``size`` 0, or not smaller than ``n``)."""
    if size <= 0 or size >= n:
        return None
    rng = np.random.default_rng(derive_seed(seed, SALT_SEARCH))
    return np.sort(rng.choice(n, size=size, replace=False))


@dataclass
class TrialRecord:
    """A complete trial: its index among the complete trials, its configuration and value."""

    index: int
    config: Config
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "value": self.value, "lr": self.config.lr, "wd": self.config.wd,
                "weights": dict(self.config.weights)}


def _storage(workdir: Path | None) -> optuna.storages.BaseStorage:
    """Journal file in ``workdir`` (append-only, so a SIGKILL loses at most the running trial), else in memory."""
    import optuna

    if workdir is None:
        return optuna.storages.InMemoryStorage()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(workdir / JOURNAL)))


def _journal_checked(workdir: Path | None, run_id: str | None) -> None:
    """Keep ``workdir``'s journal only as far as it was recorded for ``run_id`` (ftbench/integrity.py).

    After each complete trial the journal's size and SHA-256 are recorded with the run id; a journal
    without that record (an older ftbench's, a copied one), another run's, or one whose recorded
    bytes changed (an edited or forged trial) is removed with a warning and the search starts over.
    Bytes after the recorded length (a trial begun, or told but not yet recorded, when the process
    died) are cut off: that trial is redone, as a trial left RUNNING always was.
    """
    from ftbench import integrity

    if workdir is None:
        return
    path = Path(workdir) / JOURNAL
    if not path.is_file():
        integrity.remove(path)
        return
    rec, why = integrity.recorded(path, {"run_id": run_id})
    if rec is not None:
        try:
            size = path.stat().st_size
            if size < rec["size"] or integrity.digest(path, rec["size"]) != (rec["sha256"], rec["size"]):
                why = "its content does not match the hash recorded when it was written (edited or replaced)"
            elif size > rec["size"]:
                with open(path, "r+b") as fh:
                    fh.truncate(rec["size"])
        except OSError as e:
            why = f"unreadable ({type(e).__name__})"
    if why:
        import sys

        print(f"warning: ignored AutoFT's search journal {path} ({why}); the search starts over", file=sys.stderr)
        integrity.remove(path)


def _journal_recorded(workdir: Path | None, run_id: str | None) -> None:
    """Record the journal's bytes as this run's, after a complete trial (see :func:`_journal_checked`)."""
    from ftbench import integrity

    if workdir is not None:
        integrity.record(Path(workdir) / JOURNAL, {"run_id": run_id})


def _records(study: optuna.Study) -> list[TrialRecord]:
    import optuna

    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        p = t.params
        weights = {k[2:]: float(v) for k, v in p.items() if k.startswith("w_")}
        if "ce" in t.user_attrs.get("fixed", {}):
            weights["ce"] = float(t.user_attrs["fixed"]["ce"])
        weights = {k: weights[k] for k in ALL_TERMS if k in weights}
        out.append(TrialRecord(int(t.user_attrs["index"]), Config(float(p["lr"]), float(p["wd"]), weights),
                               float(t.value)))
    return sorted(out, key=lambda r: r.index)


def best_of(records: Sequence[TrialRecord]) -> TrialRecord:
    """Highest value; on a tie the later trial (as the released code, which subtracted number·1e-10)."""
    return max(records, key=lambda r: (r.value, r.index))


def run_search(space: Space, n_trials: int, evaluate: Any, seed: int, workdir: Path | None,
               callbacks: Sequence[Any] = (), run_id: str | None = None) -> tuple[list[TrialRecord], int]:
    """Run TPE until the study holds ``n_trials`` complete trials; return them (by index) and how many were reused.

    ``evaluate(config, index) -> float`` runs one inner fine-tune. Trials left RUNNING by a killed
    process are marked FAIL first; they count for nothing and are redone. Trial ``index`` ``k`` is
    sampled by a TPE sampler seeded from ``(seed, k)`` over the ``k`` complete trials before it, so
    its configuration does not depend on whether the search was interrupted. ``callbacks`` are
    called as ``cb(record)`` after each new trial (tests use them to interrupt the search).
    A journal in ``workdir`` is reused only as far as it was recorded for ``run_id``
    (:func:`_journal_checked`).
    """
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _journal_checked(workdir, run_id)
    storage = _storage(workdir)
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study.tell(t.number, state=TrialState.FAIL)  # interrupted: not counted, redone below
    _journal_recorded(workdir, run_id)
    reused = len(_records(study))
    while True:
        records = _records(study)
        k = len(records)
        if k >= n_trials:
            return records[:n_trials], min(reused, n_trials)
        # A fresh sampler per trial, seeded from (seed, k): the k-th trial is the same whether or not
        # the process was restarted before it (a sampler's random state would otherwise be lost).
        # Independent (univariate) TPE: Optuna's default when the paper was written; pinned because
        # Optuna 5 made multivariate the default, and a run id must mean one search on either.
        sampler = optuna.samplers.TPESampler(seed=derive_seed(seed, k, SALT_SAMPLER), multivariate=False)
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler)
        trial = study.ask()
        trial.set_user_attr("index", k)
        config = space.sample(trial)
        if "ce" in space.terms and space.fix_ce:
            trial.set_user_attr("fixed", {"ce": 1.0})
        value = float(evaluate(config, k))
        if not math.isfinite(value):
            value = 0.0  # a NaN value would make the trial FAIL, and the search would redo it forever
        study.tell(trial, value)
        _journal_recorded(workdir, run_id)
        for cb in callbacks:
            cb(TrialRecord(k, config, value))


def objective_metric(spec: RunSpec, objective: str) -> str:
    """The metric trials are scored by: ``acc`` or a benchmark metric (a ``val_<m>`` column's ``m``).

    ``main`` is the benchmark's main metric (WILDS' ``main_metric``: macro-F1 for iWildCam, worst-region
    accuracy for FMoW, worst-group accuracy for Waterbirds/CelebA), as the release scores iWildCam
    and FMoW (autoft.py:158-167); accuracy for benchmarks without one.
    """
    if objective != "main":
        return objective
    from ftbench.data.base import get_benchmark

    return str(getattr(get_benchmark(spec.benchmark), "main_metric", "acc"))


# --- the method ---------------------------------------------------------------------------


class LogitsAndEmbeddings(nn.Module):
    """``[logits | unit image embeddings]`` of a CLIP classifier, for an objective with the flyp term."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model.features(x)
        return torch.cat([self.model.head(f), f], dim=1)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@METHODS.register("autoft")
class AutoFT(Method):
    """TPE search over lr, wd and loss-term weights by short fine-tunes scored on OOD val; then a full fine-tune."""

    name = "autoft"
    help = ("all blocks, with the objective (weights of 9 loss terms), lr and wd found by a TPE search "
            "of short fine-tunes scored on the target val split")
    paper = "Choi et al. 2024, AutoFT: Learning an Objective for Robust Fine-Tuning"
    order = 65
    zero_shot_start = True  # the release fine-tunes from the zero-shot head
    # lr and wd are searched; the spec's steps/epochs, batch size and optimizer apply (the inner
    # runs use inner_steps steps instead of the spec's).
    uses = frozenset({"steps", "epochs", "batch_size", "optimizer"})
    uses_when = {"lr": {"lr_mode": ("fixed",)}}  # --lr trains only with lr_mode=fixed (else the searched lr)
    options = {
        # limits (docs/methods.md#limits): 20x the release's 500 trials (--hopt_evals), 1,000x its 100
        # inner steps (imagenet.sh)
        "trials": Option(16, "complete search trials (each: an inner fine-tune + an evaluation on target val)",
                         minimum=1, maximum=10_000),
        "inner_steps": Option(20, "optimizer steps of each trial's inner fine-tune", minimum=1, maximum=100_000),
        "terms": TermsOption(",".join(TERMS), "loss terms whose weights are searched (default: all nine)"),
        "fix_ce": Option(False, "fix the cross-entropy weight at 1 instead of searching it (released code's default)"),
        "lr_min": Option(1e-5, "lowest learning rate searched (log-uniform)", minimum=0),
        "lr_max": Option(1e-1, "highest learning rate searched", minimum=0),
        "wd_min": Option(0.0, "lowest weight decay searched (the release: uniform on [0, 1])", minimum=0),
        "wd_max": Option(1.0, "highest weight decay searched", minimum=0),
        "wd_scale": Option("uniform", "how wd is sampled: 'uniform' (the release) or 'log' (log-uniform; "
                           "needs wd_min > 0)", ("uniform", "log")),
        "decay": DECAY_OPTION,
        "objective": Option("main", "what trials are scored by on target val: 'main' = the benchmark's main "
                            "metric (accuracy, macro_f1, worst_region_acc, ...), 'acc', or a metric name"),
        "bn": BN_OPTION,
        "dcm": Option("uniform", "the dcm term on misclassified examples: 'uniform' = cross-entropy to the uniform "
                      "distribution (confidence minimisation); 'entropy' = their prediction entropy, as the release "
                      "(losses/learnedloss.py:29-32)", DCM_FORMS),
        "search_size": Option(0, "examples of the search split that score the trials: 0 = all of it; n = a random "
                              "subset of n, drawn once from the run's seed (the release: 1000, get_data.py:56)",
                              minimum=0, maximum=10_000_000),  # more than any split has (ImageNet train: 1.28M)
        "lr_mode": Option("sampled", "learning rate of the inner and final fine-tunes: 'sampled' = the searched "
                          "lr; 'fixed' = --lr, the searched lr unused, as the release, whose scheduler "
                          "overwrites it at every step (finetune.py:92, 122)", LR_MODES),
    }

    @classmethod
    def resolve(cls, spec: RunSpec, block_names: tuple[str, ...]) -> RunSpec:
        lr = spec.lr  # used (and kept in the spec) with lr_mode=fixed only: "lr" is not in `uses`
        spec = super().resolve(spec, block_names)
        o = spec.options_dict
        if o["lr_mode"] == "fixed":
            if lr is None or not (float(lr) > 0 and math.isfinite(float(lr))):
                raise UsageError(f"lr must be a positive number, got {lr!r} (method 'autoft' with lr_mode=fixed "
                                 "trains at --lr)")
            spec = dataclasses.replace(spec, lr=float(lr))
        log_ranges = ["lr_min"] + (["wd_min"] if o["wd_scale"] == "log" else [])
        for lo, hi in (("lr_min", "lr_max"), ("wd_min", "wd_max")):
            if lo in log_ranges and not o[lo] > 0:
                raise UsageError(f"option {lo}={o[lo]!r} of method 'autoft' must be a positive number (log-uniform range)")
            if o[lo] > o[hi]:
                raise UsageError(f"option {lo}={o[lo]!r} of method 'autoft' must not exceed {hi}={o[hi]!r}")
        if FLYP in parse_terms(o["terms"]):
            from ftbench.methods.flyp import require_text
            from ftbench.models.base import get_model_entry

            require_text("autoft with the flyp term", str(spec.model), get_model_entry(str(spec.model)))
        if o["fix_ce"] and "ce" not in parse_terms(o["terms"]):
            raise UsageError("option fix_ce=True of method 'autoft' needs 'ce' in terms")
        objective = str(o["objective"]).strip()
        from ftbench.data.base import get_benchmark

        metrics = ("main", "acc", *get_benchmark(spec.benchmark).metric_names)
        if objective not in metrics:  # before any work: the search would stop at its first trial
            raise UsageError(f"option objective={o['objective']!r} of method 'autoft' is not a metric of benchmark "
                             f"{spec.benchmark!r}; accepted: {', '.join(metrics)}")
        return spec

    @classmethod
    def notice(cls, spec: RunSpec) -> str | None:
        o = spec.options_dict
        space = Space(parse_terms(o["terms"]), (1.0, 1.0), (1.0, 1.0), bool(o["fix_ce"]))
        if o["trials"] >= 100:
            return None
        return (f"autoft: {o['trials']} trials over {space.dimensions} searched numbers is close to random search "
                "(TPE samples its first 10 trials at random); the release runs 100-500 "
                "(--set trials=100, or --recipe autoft)")

    def space(self) -> Space:
        o = self.opts
        return Space(parse_terms(o["terms"]), (float(o["lr_min"]), float(o["lr_max"])),
                     (float(o["wd_min"]), float(o["wd_max"])), bool(o["fix_ce"]), wd_log=o["wd_scale"] == "log")

    def _decay(self, wd: float) -> dict[str, Any]:
        return decay_arguments(self.opts["decay"], wd)

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(block_names)

    def run(self, ctx: TrainContext, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        """Search, then fine-tune from the pretrained weights with the best configuration.

        Returns ``autoft_objective`` (the metric trials were scored by), ``autoft_search_examples`` (how
        many examples of the search split scored them), ``autoft_trials``, ``autoft_reused`` (trials taken from an earlier, interrupted
        process), ``autoft_best_trial``, ``autoft_best_val``, the best configuration
        (``autoft_lr``, ``autoft_wd``, ``autoft_w_<term>``) and ``autoft_trials_json``.
        """
        # The protocol's search split: target val (few-shot), the benchmark's OOD val set (id-ood), as AutoFT
        # searches on a small OOD validation set from another distribution than the OOD test sets.
        search = ctx.target.search
        if search is None or len(search) == 0:
            raise UsageError(f"method 'autoft' scores its trials on the protocol's search split (target val in few-shot, "
                             f"the OOD val set in id-ood); benchmark {self.spec.benchmark!r} has none in protocol "
                             f"{self.spec.protocol!r}")
        subset = search_subset(len(search), int(self.opts["search_size"]), self.spec.seed)
        if subset is not None:  # a split on disk stays there; an in-memory one is indexed
            search = search.subset(subset) if hasattr(search, "subset") else search.take(subset)
        fixed_lr = float(self.spec.lr) if self.opts["lr_mode"] == "fixed" and self.spec.lr is not None else None
        # lr_mode=fixed is the release's cosine_lr(optimizer, args.lr, warmup, inner_steps) in the inner runs too
        # (finetune.py:92, 103-104): the run's --schedule/--warmup/--clip-grad over inner_steps. The default keeps
        # the inner runs at a constant rate (the final run is scheduled either way, by ctx.fit).
        inner_loop = {} if fixed_lr is None else {"schedule": self.spec.schedule or "constant",
                                                  "warmup": self.spec.warmup or 0, "clip_grad": self.spec.clip_grad}
        dcm = str(self.opts["dcm"])
        blocks = self.trainable_blocks(ctx.block_names)
        bn = self.opts["bn"]
        pretrained = _snapshot(ctx.model)
        params = ctx.set_trainable(blocks, bn=bn)
        anchor = _flat(params).detach().float().clone()
        spec = self.spec
        assert spec.batch_size is not None and spec.optimizer is not None
        metric = objective_metric(spec, str(self.opts["objective"]).strip())
        flyp = FLYP in parse_terms(self.opts["terms"])
        net: nn.Module = LogitsAndEmbeddings(ctx.model) if flyp else ctx.model

        def trainable() -> list[nn.Parameter]:
            ps = ctx.set_trainable(blocks, bn=bn)
            if not flyp:
                return ps
            text = ctx.model.text_parameters()  # the release trains both towers and the logit scale
            for p in text:
                p.requires_grad_(True)
            return ps + text

        def objective(config: Config, ps: list[nn.Parameter], seed: int) -> AutoFTLoss:
            contrastive = None
            if flyp:
                from ftbench.methods.flyp import ContrastiveLoss, task_prompts

                contrastive = ContrastiveLoss(ctx.model, task_prompts(ctx, "autoft"), torch.Generator().manual_seed(seed))
            # the weight terms (l1init, ...) are over the image classifier's parameters, as `anchor`
            return AutoFTLoss(config.weights, ps[:len(params)], anchor, flyp=contrastive,
                              classes=ctx.target.num_classes, dcm=dcm)

        def evaluate(config: Config, index: int) -> float:
            ctx.model.load_state_dict(pretrained)  # in place: the parameter objects stay the same
            ps = trainable()
            seed = derive_seed(spec.seed, index, SALT_INNER)
            loop.fit(net, ps, ctx.target.train, lr=config.lr if fixed_lr is None else fixed_lr, steps=self.opts["inner_steps"],
                     batch_size=spec.batch_size, optimizer=spec.optimizer,
                     generator=torch.Generator().manual_seed(seed),
                     loss_fn=objective(config, ps, seed), **self._decay(config.wd), **inner_loop)
            acc, extra = loop.evaluate(ctx.model, search, ctx.target.metrics)
            if metric == "acc":
                return acc
            if metric not in extra:
                raise UsageError(f"option objective={metric!r} of method 'autoft' is not a metric of benchmark "
                                 f"{spec.benchmark!r}; accepted: main, acc" + "".join(f", {m}" for m in sorted(extra)))
            return extra[metric]

        records, reused = run_search(self.space(), self.opts["trials"], evaluate, spec.seed, ctx.workdir,
                                     callbacks=callbacks, run_id=spec.run_id)
        best = best_of(records)
        logging.getLogger(__name__).info("autoft: best trial %d of %d, val acc %.2f", best.index, len(records),
                                         best.value)
        ctx.model.load_state_dict(pretrained)
        ps = trainable()
        ctx.fit(ps, lr=best.config.lr if fixed_lr is None else fixed_lr, loss_fn=objective(best.config, ps, spec.seed),
                **({"net": net} if flyp else {}), **self._decay(best.config.wd))
        if flyp:
            for p in ctx.model.text_parameters():
                p.requires_grad_(False)
        return {
            "autoft_objective": metric,
            "autoft_search_examples": len(search),
            "autoft_trials": len(records),
            "autoft_reused": reused,
            "autoft_best_trial": best.index,
            "autoft_best_val": best.value,
            **best.config.columns(),
            "autoft_trials_json": json.dumps([r.to_dict() for r in records]),
        }
