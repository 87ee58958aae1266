"""What a method sees while it trains: the model, its blocks, the target data and the loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ftbench.data.base import Split
from ftbench.models.base import BlockModel
from ftbench.protocols.base import Task
from ftbench.spec import RunSpec
from ftbench.train import prefix
from ftbench.train.augment import Augment
from ftbench.train.loop import FitStats, fit, steps_for


@dataclass
class TrainContext:
    spec: RunSpec
    model: BlockModel
    target: Task  # the run's data by role (ftbench/protocols): .train is all fine-tuning ever reads
    generator: torch.Generator
    fits: list[FitStats] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    on_checkpoint: Callable[[int], None] | None = None  # called with the global step at checkpoints
    # The run's own scratch folder (``<results>/.work/<run_id>``), kept across interruptions so a
    # method can resume work there (e.g. AutoFT's Optuna storage); None when the caller gives none.
    workdir: Path | None = None
    resume: Any = None  # ftbench.train.resume.Resume: checkpoint state of an interrupted run

    @property
    def task(self) -> Task:
        """The run's data by role (the same object as ``target``)."""
        return self.target

    def new_head(self) -> None:
        """Give the model a new classifier for the task's classes, initialised as ``nn.Linear`` does
        (weight and bias uniform in ±1/sqrt(fan_in)) from a generator of the run's seed, so it does not
        depend on whatever used torch's global RNG before (pretraining, or loading from the cache)."""
        old = self.model.head
        dev = old.weight.device
        g = torch.Generator().manual_seed(self.spec.seed)
        bound = 1.0 / math.sqrt(old.in_features)
        n = self.target.num_classes
        head = nn.Linear(old.in_features, n)
        with torch.no_grad():
            head.weight.copy_((torch.rand(n, old.in_features, generator=g) * 2 - 1) * bound)
            head.bias.copy_((torch.rand(n, generator=g) * 2 - 1) * bound)
        self.model.head = head.to(dev)

    @property
    def block_names(self) -> list[str]:
        return self.model.block_names()

    def set_trainable(self, blocks: list[str], bn: str = "train") -> list[nn.Parameter]:
        """Freeze everything, then unfreeze ``blocks``; return their parameters.

        Modes: the whole model is put in eval mode, then the trained blocks in train mode when
        ``bn == "train"``. So BatchNorm running statistics of frozen blocks never change, and
        those of trained blocks update only with ``bn="train"``.
        """
        self.model.requires_grad_(False)
        self.model.eval()
        params: list[nn.Parameter] = []
        parts = self.model.blocks()
        for name in blocks:
            for m in parts[name]:
                m.requires_grad_(True)
                if bn == "train":
                    m.train()
                params += list(m.parameters())
        return params

    def fit(self, params: list[nn.Parameter], **overrides: Any) -> FitStats:
        """Run the standard loop on the target train split with the spec's hyperparameters.

        ``overrides`` may replace ``lr``, ``wd``, ``batch_size``, ``optimizer`` or ``steps``, and pass
        the loop's hooks ``extra_loss``, ``before_step`` and ``loss_fn`` (see :func:`ftbench.train.loop.fit`).
        ``net`` replaces the module the loop runs (default: the model; e.g. FLYP's image embeddings).
        """
        s = self.spec
        steps = overrides.pop("steps", None)
        module = overrides.pop("net", None)
        hp = {"lr": s.lr, "wd": s.wd, "batch_size": s.batch_size, "optimizer": s.optimizer}
        hp.update(overrides)
        loop_settings = {"schedule": s.schedule or "constant", "warmup": s.warmup or 0, "clip_grad": s.clip_grad,
                         "augment": Augment(s.augment, s.seed) if s.augment else None}
        n = len(self.target.train)
        steps = steps or steps_for(n, hp["batch_size"], s.steps, s.epochs)
        done = sum(f.steps for f in self.fits if f.kind == "loop")
        at: frozenset[int] = frozenset()
        if s.checkpoints and self.on_checkpoint is not None:
            # Evenly spaced, the last at the end (which is the run's final row, not a checkpoint row).
            at = frozenset(round(k * steps / s.checkpoints) for k in range(1, s.checkpoints)) - {0, steps}
        cb = self.on_checkpoint
        # Frozen-prefix fast path (ftbench/train/prefix.py): same loop on cached activations when exact.
        params = list(params)
        resume = self.resume.fit_kwargs(self, steps, done, hp) if self.resume is not None else {}
        if module is None and not s.augment:
            net, data = prefix.fit_inputs(self.model, params, self.target.train, hp)
        elif module is None:  # augmented inputs: no cached prefix activations
            net, data = self.model, self.target.train
        else:
            net, data = module, self.target.train
        stats = fit(net, params, data, steps=steps, generator=self.generator,
                    on_step=(lambda t: cb(done + t)) if cb else None, at_steps=at, **hp, **resume, **loop_settings)
        if self.resume is not None:
            self.resume.fit_done()
        self.fits.append(stats)
        return stats

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features with the model in its current modes (eval for a probe)."""
        return self.model.features(x).float()

    def linear_probe(self, l2: float, max_iter: int) -> FitStats:
        """Fit the head to convergence on frozen features: L2-regularised logistic regression.

        Minimises mean cross-entropy + l2/2 * ||W||^2 (bias unpenalised, as scikit-learn) with
        full-batch L-BFGS, starting from the current head.
        """
        self.model.eval()
        train = self.target.train
        feats = torch.cat([self.features(xb) for xb in train.batches(256 if not isinstance(train, Split) else 4096)])
        y = train.y.to(feats.device)
        head = self.model.head
        w = head.weight.detach().clone().float().requires_grad_(True)
        b = head.bias.detach().clone().float().requires_grad_(True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-7,
                                tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(feats @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
            loss.backward()
            return loss

        loss = opt.step(closure)
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(b)
        iters = int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", max_iter))
        stats = FitStats(iters, len(y) * iters, float(loss.detach()), kind="lbfgs")
        self.fits.append(stats)
        return stats
