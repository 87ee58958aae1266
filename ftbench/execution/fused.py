"""Fused multi-run training: runs of a sweep that differ only in lr, weight decay or seed train together.

The runs share a model architecture, pretrained weights, benchmark, method and blocks. Their trained
parameters are stacked along a leading run dimension (``R × …``) and one step trains every run:
``torch.func.vmap`` over ``functional_call`` turns each convolution into a grouped one, so a small
model fills the device and the per-step Python and launch overhead is paid once for R runs.

Each run keeps everything that makes it *that* run:

* its own data: the seed draws the few-shot target sample (``Benchmark.target``), so the target train
  splits are stacked ``R × n × …`` and each run indexes its own;
* its own batch order: ``batch_indices`` with the run's own generator, exactly as ``ctx.fit`` draws it;
* its own BatchNorm running statistics (``bn=train``): the buffers of modules in train mode are
  stacked too and updated in place under ``vmap``, per run;
* its own optimizer hyperparameters: Adam (coupled L2) or SGD (momentum 0.9) as
  :func:`ftbench.train.loop.make_optimizer` builds them, written out on the stacked tensors with
  per-run lr and wd, in the same operation order as ``torch.optim``.

Per-run results equal separate runs up to floating-point rounding (grouped vs. plain kernels); the
tests check weights and accuracies against :func:`ftbench.execution.runner.execute`. When every block
below the trained ones is frozen, the frozen-prefix cache (``prefix.py``) is used as well: the
prefix is the same pretrained network for every run, so its activations are computed once for all
runs' images.

Scope: methods ``surgical``, ``full`` and ``none`` (``set_trainable`` + one plain ``ctx.fit``).
Methods with their own loss, hooks or solver run separately. A sweep calls :func:`fusable_groups`
on its resolved specs, :func:`run_fused` on each group of two or more, and :func:`~ftbench.execution.runner.execute`
on the rest. By default groups form on CUDA only (``FTBENCH_FASTPATH``, see
:func:`ftbench.train.prefix.fastpath_enabled`): on a CPU, grouped convolutions are slower than
separate ones.

Options (environment): ``FTBENCH_FUSE_MAX`` (runs per group, default 64), ``FTBENCH_COMPILE=1``
(``torch.compile`` the fused step's forward and loss; compiling takes minutes on a CPU, so it pays
only for long runs). Channels-last (``FTBENCH_CHANNELS_LAST``) applies to the plain loop only: under
``vmap`` a convolution with per-run weights becomes one grouped convolution on a reshaped input.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ftbench.environment import FUSE_MAX_DEFAULT, integer
from ftbench.methods.base import get_method
from ftbench.plan.resolve import resolve
from ftbench.spec import RunSpec
from ftbench.train import prefix
from ftbench.train.loop import steps_for
from ftbench.train.stacked import fit_fused


if TYPE_CHECKING:
    from ftbench.execution.runner import Trained

FUSABLE_METHODS = frozenset({"surgical", "full", "none"})
FUSED_FIELDS = ("lr", "wd", "seed")  # what may differ between the runs of a group
DEFAULT_MAX_RUNS = FUSE_MAX_DEFAULT


def fusion_key(spec: RunSpec) -> str | None:
    """What a *resolved* spec shares with the runs it can be fused with; None if it cannot be fused."""
    from ftbench.protocols.base import get_protocol

    # A protocol that gives each run a new classifier (id-ood) leaves frozen parameters that differ
    # by run (a probed head), which the fused step shares: those runs train one by one.
    if spec.method not in FUSABLE_METHODS or get_protocol(spec.protocol).fresh_head:
        return None
    if spec.options_dict.get("decay", "coupled") != "coupled":
        return None  # full's decay=decoupled steps AdamW's decay in a hook, which the fused step does not
    if spec.options_dict.get("proj", "frozen") != "frozen":
        return None  # surgical's proj=train trains a parameter outside its blocks, which the fused step does not
    loop_settings = (spec.schedule, spec.warmup, spec.clip_grad, spec.train_precision, spec.eval_precision, spec.augment)
    if any(v is not None for v in loop_settings):
        return None  # the fused step: constant rate, no clipping, the device's precision, no augmentation
    d = spec.to_dict()
    for k in FUSED_FIELDS:
        d.pop(k)
    return json.dumps(d, sort_keys=True, default=str)


def fusable_groups(specs: Sequence[RunSpec], device: str = "auto", max_runs: int | None = None) -> list[list[RunSpec]]:
    """Partition resolved ``specs`` into groups that :func:`run_fused` trains together on ``device``.

    Groups keep the specs' order (a group sits where its first spec was); specs that fuse with
    nothing are singletons; a group holds at most ``max_runs`` (``$FTBENCH_FUSE_MAX``, default 64).
    Every group is a singleton where ``$FTBENCH_FASTPATH`` turns fused training off for the device
    (by default it is on for CUDA only).
    """
    from ftbench.execution.runner import pick_device

    on = prefix.fastpath_enabled("fused", pick_device(device).type)
    limit = max_runs or integer("FTBENCH_FUSE_MAX", DEFAULT_MAX_RUNS, 1)
    groups: list[list[RunSpec]] = []
    open_groups: dict[str, list[RunSpec]] = {}
    for s in specs:
        key = fusion_key(s) if on else None
        g = open_groups.get(key) if key is not None else None
        if g is None or len(g) >= limit:
            g = [s]
            groups.append(g)
            if key is not None:
                open_groups[key] = g
        else:
            g.append(s)
    return groups


# --- runs in, result rows out --------------------------------------------------------------------


def run_fused(specs: Sequence[RunSpec], device: str = "auto",
              workdirs: dict[str, Path] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Train a group of fusable runs together; their result rows by run id, as ``execute`` gives them.

    ``specs`` must share a :func:`fusion_key` (one group of :func:`fusable_groups`). Each run's
    ``train_seconds`` is the group's training time divided by the number of runs. Raises
    ``ValueError`` for specs that do not fuse; a caller may then run them one by one.
    """
    from ftbench.execution.runner import result_rows

    return {tr.spec.run_id: result_rows(tr) for tr in train_fused(specs, device, workdirs)}


def train_fused(specs: Sequence[RunSpec], device: str = "auto",
                workdirs: dict[str, Path] | None = None) -> list[Trained]:
    """:func:`~ftbench.execution.runner.fine_tune` for a fusable group: one ``Trained`` per spec, in order."""
    from ftbench.data.base import get_benchmark
    from ftbench.protocols.base import Task, get_protocol
    from ftbench.train.context import TrainContext
    from ftbench.execution.runner import Trained, _evaluate, _sync, load, pick_device

    specs = [resolve(s) for s in specs]
    keys = {fusion_key(s) for s in specs}
    if not specs or None in keys or len(keys) != 1:
        raise ValueError("run_fused: the specs are not one fusable group (see fusable_groups)")
    if len({s.run_id for s in specs}) != len(specs):
        raise ValueError("run_fused: duplicate runs")
    dev = pick_device(device)
    s0 = specs[0]
    base, _ = load(s0, dev)
    targets: dict[int, Task] = {}
    ctxs: list[TrainContext] = []
    methods = []
    checkpoints: list[dict[int, dict[str, float]]] = [{} for _ in specs]
    for spec in specs:
        if spec.seed not in targets:  # the seed draws the few-shot sample; the model is the group's one
            targets[spec.seed] = get_protocol(spec.protocol).task(get_benchmark(spec.benchmark), spec).to(dev)
        ctx = TrainContext(spec, copy.deepcopy(base), targets[spec.seed], torch.Generator().manual_seed(spec.seed),
                           workdir=(workdirs or {}).get(spec.run_id))
        ctxs.append(ctx)
        methods.append(get_method(spec.method)(spec))
    eval_seconds = [0.0]

    def on_step(step: int) -> None:
        t0 = time.perf_counter()
        for r, ctx in enumerate(ctxs):
            checkpoints[r][step] = _evaluate(ctx.model, ctx.target)
        eval_seconds[0] += time.perf_counter() - t0

    _sync(dev)
    t0 = time.perf_counter()
    if s0.method == "none":
        for m, ctx in zip(methods, ctxs):
            ctx.metrics.update(m.run(ctx))
    else:
        # What Surgical.run / Full.run do, for every run at once: set_trainable, then ctx.fit.
        params = [ctx.set_trainable(m.trainable_blocks(ctx.block_names), bn=m.opts["bn"]) for m, ctx in zip(methods, ctxs)]
        n = len(ctxs[0].target.train)
        steps = steps_for(n, s0.batch_size, s0.steps, s0.epochs)
        at: frozenset[int] = frozenset()
        if s0.checkpoints:
            at = frozenset(round(k * steps / s0.checkpoints) for k in range(1, s0.checkpoints)) - {0, steps}
        stats = fit_fused([c.model for c in ctxs], params, [c.target.train for c in ctxs],
                          lrs=[c.spec.lr for c in ctxs], wds=[c.spec.wd for c in ctxs], steps=steps,
                          batch_size=s0.batch_size, optimizer=s0.optimizer,
                          generators=[c.generator for c in ctxs], at_steps=at, on_step=on_step if at else None)
        for ctx, st in zip(ctxs, stats):
            ctx.fits.append(st)
    _sync(dev)
    seconds = (time.perf_counter() - t0 - eval_seconds[0]) / len(specs)
    out: list[Trained] = []
    for r, (spec, m, ctx) in enumerate(zip(specs, methods, ctxs)):
        states = [{**cols, **_evaluate(ctx.model, ctx.target)} for cols in m.extra_states(ctx)]
        out.append(Trained(spec, dev, ctx.model, m, ctx.target, ctx, seconds, checkpoints[r], states))
    return out


def run_all(specs: Sequence[RunSpec], device: str = "auto") -> dict[str, list[dict[str, Any]]]:
    """Every spec's rows: fusable groups fused, the rest through ``execute`` (what a sweep does)."""
    from ftbench.execution.runner import execute

    out: dict[str, list[dict[str, Any]]] = {}
    for group in fusable_groups([resolve(s) for s in specs], device):
        if len(group) > 1:
            out.update(run_fused(group, device))
        else:
            out[group[0].run_id] = execute(group[0], device)
    return out
