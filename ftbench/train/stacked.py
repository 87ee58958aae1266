"""Stacked training: R models that share an architecture trained in one step (the engine under fused runs).

Their trained parameters are stacked along a leading run dimension (``R × …``) and one step trains every
run: ``torch.func.vmap`` over ``functional_call`` turns each convolution into a grouped one. Each run
keeps its own data, batch order (its own generator, as ``ctx.fit`` draws it), BatchNorm running
statistics and optimizer hyperparameters (Adam with coupled L2 or SGD with momentum 0.9 as
:func:`ftbench.train.loop.make_optimizer` builds them, written out on the stacked tensors with per-run
lr and wd, in the same operation order as ``torch.optim``). Which runs may train together, and the
runs' results, are the runner's (:mod:`ftbench.execution.fused`, which explains the whole fast path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ftbench.data.base import Split
from ftbench.models.base import BlockModel
from ftbench.train import prefix
from ftbench.train.loop import FitStats, autocast, batch_indices


ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as make_optimizer uses them
ADAM_EPS = 1e-8
SGD_MOMENTUM = 0.9


def _flag(name: str) -> bool:
    from ftbench.environment import flag

    return flag(name)


# --- the stacked optimizer ---------------------------------------------------------------------


class StackedOptimizer:
    """Adam or SGD over parameters stacked along a run dimension, with per-run lr and wd.

    All trained tensors live in one flat buffer (each parameter a contiguous ``R × …`` slice of
    it) and so do their gradients, so one step is a handful of kernels whatever the model. The
    arithmetic is torch.optim's, operation for operation (``_single_tensor_adam`` / ``sgd``).
    """

    def __init__(self, flat: torch.Tensor, grad: torch.Tensor, run_of: torch.Tensor, name: str,
                 lrs: Sequence[float], wds: Sequence[float]) -> None:
        self.flat, self.grad, self.name = flat, grad, name
        dev = flat.device
        lr = torch.tensor(list(lrs), dtype=torch.float32, device=dev)
        wd = torch.tensor(list(wds), dtype=torch.float32, device=dev)
        self.neg_lr = (-lr)[run_of]  # per element of flat: minus its run's lr
        self.wd = wd[run_of] if any(w != 0 for w in wds) else None
        self.t = 0
        if name == "adam":
            self.m = torch.zeros_like(flat)
            self.v = torch.zeros_like(flat)
        elif name == "sgd":
            self.buf: torch.Tensor | None = None
        else:
            raise ValueError(name)

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        g = self.grad if self.wd is None else self.grad.add(self.wd * self.flat)
        if self.name == "adam":
            b1, b2 = ADAM_BETAS
            self.m.lerp_(g, 1 - b1)
            self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
            denom = (self.v.sqrt() / bc2**0.5).add_(ADAM_EPS)
            self.flat.add_(self.neg_lr / bc1 * self.m / denom)
        else:
            if self.buf is None:
                self.buf = g.clone()
            else:
                self.buf.mul_(SGD_MOMENTUM).add_(g)
            self.flat.add_(self.neg_lr * self.buf)


# --- the fused loop ------------------------------------------------------------------------------


def _same(tensors: list[torch.Tensor]) -> bool:
    return all(torch.equal(tensors[0], t) for t in tensors[1:])


def fit_fused(
    models: Sequence[BlockModel],
    params: Sequence[Sequence[nn.Parameter]],
    datas: Sequence[Split],
    *,
    lrs: Sequence[float],
    wds: Sequence[float],
    steps: int,
    batch_size: int,
    optimizer: str,
    generators: Sequence[torch.Generator],
    at_steps: frozenset[int] = frozenset(),
    on_step: Callable[[int], None] | None = None,
) -> list[FitStats]:
    """:func:`ftbench.train.loop.fit` for R models of one architecture at once; one FitStats per run.

    Run ``r`` trains ``params[r]`` (parameters of ``models[r]``, the same names in every run) on
    ``datas[r]`` with ``lrs[r]``, ``wds[r]`` and batches drawn from ``generators[r]``. Modes are the
    caller's, as in ``fit``. Trained parameters and the buffers of modules in train mode are stacked;
    any other tensor that differs between the models is stacked too (read-only). At the end, and
    before ``on_step(t)`` for ``t`` in ``at_steps``, each model holds its run's current state.
    """
    R = len(models)
    template = models[0]
    dev = datas[0].x.device
    n = len(datas[0])
    if any(len(d) != n for d in datas) or not (len(params) == len(lrs) == len(wds) == len(generators) == R == len(datas)):
        raise ValueError("fused runs need one data split, parameter list, lr, wd and generator per run, all splits of one size")
    named = [dict(m.named_parameters()) for m in models]
    ids = [{id(p) for p in ps if p.requires_grad} for ps in params]
    trained = [k for k, p in named[0].items() if id(p) in ids[0]]
    for r in range(R):
        if {k for k, p in named[r].items() if id(p) in ids[r]} != set(trained) or len(ids[r]) != len(trained):
            raise ValueError("fused runs must train the same parameters of the same architecture")
    idx = torch.stack([batch_indices(n, batch_size, steps, g) for g in generators]).to(dev)  # R × steps × bs
    if not trained or steps == 0:
        return [FitStats(0, 0, float("nan")) for _ in range(R)]

    # Which tensors are per run: trained parameters, buffers of train-mode modules (BatchNorm running
    # stats), and anything else that differs between the models (read-only).
    mods = [dict(m.named_modules()) for m in models]
    live_buffers = {f"{mname}.{b}" if mname else b for mname, m in mods[0].items() if m.training
                    for b, _ in m.named_buffers(recurse=False)}
    buffers = [dict(m.named_buffers()) for m in models]
    if any({k for k, mm in md.items() if mm.training} != {k for k, mm in mods[0].items() if mm.training} for md in mods):
        raise ValueError("fused runs must have the same modules in train mode")
    frozen_differ = [k for k in named[0] if k not in trained and not _same([nm[k].detach() for nm in named])]
    buffer_differ = [k for k in buffers[0] if k in live_buffers or not _same([b[k] for b in buffers])]

    # Frozen prefix shared by every run (the same pretrained weights): cache its activations once.
    net: nn.Module = template
    xs = torch.stack([d.x for d in datas])  # R × n × …
    ys = torch.stack([d.y for d in datas])
    plan = prefix.plan(template, params[0])
    per_run = set(trained) | set(frozen_differ) | set(buffer_differ)
    if plan and plan.block is not None:
        below = template.block_names()[: template.block_names().index(plan.block)]
        pre = {name for b in below for name, _ in _named_in(template, b)}
        if per_run & pre:
            plan = prefix.PrefixPlan(None, "the frozen prefix differs between runs")
    if plan and plan.block is not None:
        h = prefix.cached_activations(template, plan.block, xs.flatten(0, 1))
        if h is not None:
            prefix.debug(f"fused: training {R} runs from block {plan.block} on cached activations")
            xs = h.view(R, n, *h.shape[1:])
            net = prefix.Suffix(template, plan.block)
    else:
        prefix.debug(f"fused: {R} runs, full forward ({plan.reason})")
    pfx = "model." if net is not template else ""

    # One flat buffer for every trained tensor of every run: parameter k is flat[a:b].view(R, *shape).
    sizes = [named[0][k].numel() for k in trained]
    total = R * sum(sizes)
    dtype = named[0][trained[0]].dtype
    if any(named[0][k].dtype != dtype for k in trained):
        raise ValueError("fused training needs every trained parameter in one dtype")
    flat = torch.empty(total, dtype=dtype, device=dev)
    grad = torch.zeros_like(flat)
    run_of = torch.empty(total, dtype=torch.long, device=dev)
    stacked: dict[str, torch.Tensor] = {}
    off = 0
    for k, size in zip(trained, sizes):
        shape = named[0][k].shape
        view = flat[off : off + R * size].view(R, *shape)
        view.copy_(torch.stack([nm[k].detach() for nm in named]))
        view.requires_grad_(True)
        view.grad = grad[off : off + R * size].view(R, *shape)  # backward accumulates in place here
        run_of[off : off + R * size] = torch.arange(R, device=dev).repeat_interleave(size)
        stacked[pfx + k] = view
        off += R * size
    const = {pfx + k: torch.stack([nm[k].detach() for nm in named]) for k in frozen_differ}
    bufs = {pfx + k: torch.stack([b[k] for b in buffers]).clone() for k in buffer_differ}
    opt = StackedOptimizer(flat, grad, run_of, optimizer, lrs, wds)

    def run_loss(p: dict[str, torch.Tensor], c: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                 x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(net, {**p, **c, **b}, (x,))
        return F.cross_entropy(logits.float(), y)  # the loop's loss, per run

    def losses(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(dev):
            return vmap(run_loss)(stacked, const, bufs, x, y)

    step_losses = torch.compile(losses) if _flag("FTBENCH_COMPILE") else losses

    def write_back() -> None:
        with torch.no_grad():
            for r in range(R):
                for k in trained:
                    named[r][k].copy_(stacked[pfx + k][r])
                for k in buffer_differ:
                    buffers[r][k].copy_(bufs[pfx + k][r])

    rows = torch.arange(R, device=dev)[:, None]
    last = torch.zeros(R, device=dev)
    for t in range(steps):
        b = idx[:, t]
        loss = step_losses(xs[rows, b], ys[rows, b])
        grad.zero_()
        loss.sum().backward()  # runs are independent: each run's slice gets its own gradient
        opt.step()
        last = loss.detach()
        if on_step is not None and t + 1 in at_steps:
            write_back()
            on_step(t + 1)
    write_back()
    final = last.tolist()  # the one sync of the fused run
    return [FitStats(steps, steps * idx.shape[2], float(final[r])) for r in range(R)]


def _named_in(model: BlockModel, block: str) -> list[tuple[str, torch.Tensor]]:
    """(model-relative name, tensor) for every parameter and buffer of ``block``."""
    ids = {id(t) for m in model.blocks()[block] for t in [*m.parameters(), *m.buffers()]}
    return [(k, t) for k, t in [*model.named_parameters(), *model.named_buffers()] if id(t) in ids]
