"""The runner: one resolved RunSpec in, one result row out. Knows nothing of sweeps or executors."""

from __future__ import annotations

import datetime as dt
import platform
import time
from typing import Any

import torch

import ftbench
from ftbench.data.base import get_benchmark
from ftbench.errors import UsageError
from ftbench.methods.base import get_method
from ftbench.models.pretrain import pretrained
from ftbench.spec import RunSpec, resolve
from ftbench.train.context import TrainContext
from ftbench.train.loop import accuracy

DEVICES = ("auto", "cpu", "cuda")


def pick_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a usage error."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; accepted: {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available; use --device cpu or auto")
    return torch.device(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def execute(spec: RunSpec, device: str = "auto") -> dict[str, Any]:
    """Run ``spec`` and return its result row (see docs/results.md for the columns)."""
    spec = resolve(spec)
    dev = pick_device(device)
    torch.manual_seed(spec.seed)
    bench = get_benchmark(spec.benchmark)
    source = bench.source(spec)
    target = bench.target(spec)
    target = type(target)(target.num_classes, target.train.to(dev), target.val.to(dev), target.test.to(dev), target.info)
    model = pretrained(spec.model, source, dev)
    method = get_method(spec.method)(spec)
    trainable = method.trainable_blocks(model.block_names())
    ctx = TrainContext(spec, model, target, torch.Generator().manual_seed(spec.seed))

    _sync(dev)
    t0 = time.perf_counter()
    extra = method.run(ctx)
    _sync(dev)
    train_seconds = time.perf_counter() - t0

    finite = all(p.isfinite().all() for p in model.parameters())
    final_losses = [f.final_loss for f in ctx.fits if f.steps]
    diverged = not finite or any(l != l or l in (float("inf"), float("-inf")) for l in final_losses)
    examples = sum(f.examples for f in ctx.fits)
    n_trainable = sum(p.numel() for b in trainable for p in model.block_parameters(b))
    row: dict[str, Any] = {
        "run_id": spec.run_id,
        **{k: v for k, v in spec.to_dict().items() if k not in ("blocks", "options")},
        "blocks": spec.blocks_label(),
        "options": spec.options_dict,
        "variant": method.variant(),
        "shift_level": target.info.get("shift_level", ""),
        "status": "diverged" if diverged else "ok",
        "error": "non-finite loss or weights" if diverged else "",
        "id_acc": accuracy(model, source.test.to(dev)),
        "source_val_acc": accuracy(model, source.val.to(dev)),
        "val_acc": accuracy(model, target.val),
        "ood_acc": accuracy(model, target.test),
        "n_target_train": len(target.train),
        "n_trainable": n_trainable,
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_steps": sum(f.steps for f in ctx.fits),
        "train_seconds": train_seconds,
        "examples_per_second": examples / train_seconds if examples and train_seconds > 0 else 0.0,
        "device": _device_name(dev),
        "ftbench_version": ftbench.__version__,
        "timestamp": dt.datetime.now(dt.timezone.utc),
        **extra,
    }
    return row
