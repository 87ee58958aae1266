"""The runner: one resolved RunSpec in, one result row out. Knows nothing of sweeps or executors."""

from __future__ import annotations

import datetime as dt
import functools
import importlib
import importlib.metadata
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import ftbench
from ftbench import numerics
from ftbench.data.base import get_benchmark
from ftbench.errors import UsageError
from ftbench.methods.base import Method, get_method
from ftbench.models.base import BlockModel
from ftbench.train.pretrain import pretrained
from ftbench.protocols.base import Task, get_protocol
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.train.context import TrainContext
from ftbench.train.loop import effective_precision, evaluate, precision
from ftbench.validate import DEVICES


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


def _cpu_model() -> str:
    """The CPU's marketing name (Linux: /proc/cpuinfo), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cpu_kernels() -> str:
    """Which CPU kernels torch runs (``aten=AVX2 onednn=native mkl=native``, or the portable mode's
    label): CPU results depend on the code path taken (docs/ci.md), so a row says which it was."""
    return numerics.kernels()


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, str]:
    """Library versions and hardware that CPU results depend on, recorded in every result row."""
    import numpy

    try:
        timm_version = importlib.metadata.version("timm")  # without importing timm (slow)
    except importlib.metadata.PackageNotFoundError:
        timm_version = "not installed"
    return {"torch_version": torch.__version__, "timm_version": timm_version, "numpy_version": numpy.__version__,
            "cpu_model": _cpu_model(), "cpu_kernels": _cpu_kernels()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Trained:
    """A fine-tuned model with everything needed to evaluate and describe it."""

    spec: RunSpec
    device: torch.device
    model: BlockModel
    method: Method
    task: Task
    ctx: TrainContext
    train_seconds: float
    checkpoints: dict[int, dict[str, float]]
    states: list[dict[str, Any]] = field(default_factory=list)  # Method.extra_states: columns + accuracies

    @property
    def target(self) -> Task:
        """The run's data by role (``task``; the name TrainContext uses too)."""
        return self.task


SELECTION_ROLES = ("val", "ood-val", "source-val")  # the splits report --select chooses on


def _evaluate(model: BlockModel, task: Task) -> dict[str, float]:
    """The accuracies (and benchmark metrics) of a result row, one per scored split of the task
    (``<prefix>_acc``, ``<prefix>_<metric>``); with several OOD test sets (``ood.<set>_*``), ``ood_acc``
    and each ``ood_<metric>`` all sets have are their means; the selection splits also get their mean
    cross-entropy (``val_loss``, ``ood_val_loss``, ``source_val_loss``). Restores the modules' modes afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    out: dict[str, float] = {}
    for sc in task.scored:
        loss = sc.role in SELECTION_ROLES  # <prefix>_loss: the report breaks ties on accuracy by it
        out[f"{sc.prefix}_acc"], extra = evaluate(model, sc.split, sc.metrics, sc.classes, loss=loss)
        out.update({f"{sc.prefix}_{k}": v for k, v in extra.items()})
    sets = [p for p in task.ood_prefixes if p != "ood"]
    if sets:  # the headline OOD number: the mean over the OOD test sets, as the papers average them
        names = {k[len(sets[0]) + 1:] for k in out if k.startswith(sets[0] + "_")}
        for name in sorted(names):
            vals = [out.get(f"{p}_{name}") for p in sets]
            if all(v is not None for v in vals):
                out[f"ood_{name}"] = sum(vals) / len(vals)
    for m, training in modes:
        m.train(training)
    return out


def load(spec: RunSpec, dev: torch.device) -> tuple[BlockModel, Task]:
    """The pretrained model and the task (splits by role) of resolved ``spec``, on ``dev``."""
    from ftbench.data.preprocess import model_transform
    from ftbench.models.base import applied_transform, check_input_fits, get_model_entry
    from ftbench.train.pretrain import trained_here

    bench = get_benchmark(spec.benchmark)
    # The model's own input transform, where resolve found one (spec.input_transform): the benchmark's
    # photographs are resized and cropped by it as they are decoded (ftbench/data/preprocess.py).
    transform = applied_transform(get_model_entry(spec.model), spec.weights, bench) if spec.input_transform else None
    with model_transform(transform):
        task = get_protocol(spec.protocol).task(bench, spec).to(dev)
    if not trained_here(spec.model, task.pretraining, dev, spec.weights, task.train):
        size = task.train.image_size if transform is None else transform.size  # the model resizes to its own
        check_input_fits(spec.model, task.train.channels, size, spec.benchmark)
    model = pretrained(spec.model, task.pretraining, dev, spec.weights, channels=task.train.channels,
                       num_classes=task.num_classes, input_stats=bench.input_stats, transform=transform)
    return model, task


def prepare_head(method: Method, ctx: TrainContext) -> None:
    """Under a protocol that gives the ID task a new classifier: put it in, and for methods whose
    ``head_init`` asks for the pretrained model's own readout (``"probe"``) make it so first: the
    zero-shot head of the task's class prompts for a model with a text tower (CLIP), else the linear
    probe of the pretrained features. With a zero-shot head, methods with ``zero_shot_start`` start
    from it too, though they train the classifier (docs/protocols.md)."""
    if not ctx.target.fresh_head:
        return
    ctx.new_head()
    probe = method.head_init(ctx.block_names) == "probe"
    init = ctx.spec.head_init  # --head-init, checked by resolve; None: the method's own default
    if init == "zero-shot" and not zero_shot_ready(ctx):
        raise UsageError(f"--head-init zero-shot: benchmark {ctx.spec.benchmark!r} has no class prompts for "
                         "a zero-shot head; accepted here: fresh")
    if zero_shot_ready(ctx) and (init == "zero-shot" or (init is None and (probe or method.zero_shot_start))):
        ctx.model.set_zero_shot_head(ctx.target.prompts)
        ctx.metrics["head_init"] = "zero-shot"  # a column of these rows only (docs/results.md)
        return
    if probe:
        from ftbench.models.weights import HEAD_RECIPE

        ctx.set_trainable(["last"], bn="frozen")
        ctx.linear_probe(l2=HEAD_RECIPE["l2"], max_iter=HEAD_RECIPE["max_iter"])


def zero_shot_ready(ctx: TrainContext) -> bool:
    """Whether the run's model has a text tower and its task class prompts (a zero-shot head)."""
    return bool(getattr(ctx.model, "has_text", False)) and ctx.target.prompts is not None


def work_dir(out_dir: Path | str, run_id: str) -> Path:
    """The scratch folder of run ``run_id`` in a results folder (hidden, so readers skip it)."""
    return Path(out_dir) / ".work" / run_id


def discard_work(workdir: Path | None, rows: list[dict[str, Any]]) -> None:
    """Remove a run's scratch folder (its resume state, AutoFT's search journal) once its result
    ``rows`` are written; kept when the run failed, so that ``--retry-failed`` resumes from it
    (it is checked before it is believed: ftbench/integrity.py). Never an error."""
    import shutil

    if workdir is None or (rows and rows[-1].get("status") == "failed"):
        return
    shutil.rmtree(workdir, ignore_errors=True)  # (a symlink in its place is not followed)


def fine_tune(spec: RunSpec, device: str = "auto", workdir: Path | None = None) -> Trained:
    """Resolve ``spec`` and train it (see :func:`_fine_tune`) under its training and evaluation precision."""
    spec = resolve(spec)
    with precision(spec.train_precision, spec.eval_precision):
        return _fine_tune(spec, device, workdir)


def _fine_tune(spec: RunSpec, device: str = "auto", workdir: Path | None = None) -> Trained:
    """Load resolved ``spec``'s data and pretrained model onto the device, and train.

    ``workdir`` is the run's scratch folder (see :func:`work_dir`), passed to the method as
    ``ctx.workdir``; it is created on demand by whoever writes there.

    With ``spec.checkpoints``, the model is also evaluated at evenly spaced steps of fine-tuning;
    those evaluations are in ``Trained.checkpoints`` (global step -> accuracies).
    """
    dev = pick_device(device)
    torch.manual_seed(spec.seed)
    with precision(None, None):  # the source model is pretrained (or its head fit) as every run's is
        model, task = load(spec, dev)
    method = get_method(spec.method)(spec)
    ctx = TrainContext(spec, model, task, torch.Generator().manual_seed(spec.seed), workdir=workdir)
    # With checkpoints and a workdir, the run's state is saved at each checkpoint and an interrupted
    # run resumes from the last one (ftbench/train/resume.py).
    from ftbench.train.resume import Resume

    resume = Resume.open(workdir, spec.run_id) if spec.checkpoints and workdir is not None else None
    ctx.resume = resume
    checkpoints: dict[int, dict[str, float]] = dict(resume.evals) if resume is not None else {}
    eval_seconds = [0.0]  # checkpoint evaluation is not training time
    before = resume.train_seconds if resume is not None else 0.0  # trained before an interruption

    def on_checkpoint(step: int) -> None:
        t = time.perf_counter()
        checkpoints[step] = _evaluate(model, task)
        eval_seconds[0] += time.perf_counter() - t
        if resume is not None:
            resume.save(ctx, step, checkpoints, before + time.perf_counter() - t0 - eval_seconds[0])

    if spec.checkpoints:
        ctx.on_checkpoint = on_checkpoint
    # torch.optim's first optimizer of a process imports torch._dynamo (1-2 s on a CPU): done here, so
    # that train_seconds measures training whether or not this is the process's first run.
    importlib.import_module("torch._dynamo")

    if spec.options_dict.get("features") == "raw":  # --set features=raw (resolve checked: a CLIP model)
        model.unit_features = False
    _sync(dev)
    t0 = time.perf_counter()
    prepare_head(method, ctx)
    ctx.metrics.update(method.run(ctx))
    _sync(dev)
    seconds = before + time.perf_counter() - t0 - eval_seconds[0]
    # The resume state stays until the result is written (discard_work): a kill during the
    # evaluations below, or before the row is written, resumes instead of training again.
    # States the method asks to have evaluated too (WiSE-FT's interpolations); not timed as training.
    states = [{**cols, **_evaluate(model, task)} for cols in method.extra_states(ctx)]
    return Trained(spec, dev, model, method, task, ctx, seconds, checkpoints, states)


def execute(spec: RunSpec, device: str = "auto", workdir: Path | None = None) -> list[dict[str, Any]]:
    """Run ``spec``; return its result rows: one per checkpoint, the final one last (docs/results.md).

    Without ``checkpoints`` there is one row. Checkpoint rows differ from the final row only in
    ``step``, ``final`` and the four accuracies.
    """
    return result_rows(fine_tune(spec, device, workdir))


def result_rows(tr: Trained) -> list[dict[str, Any]]:
    """The result rows of a trained run (see :func:`execute`; also used by fused training)."""
    with precision(tr.spec.train_precision, tr.spec.eval_precision):
        return _result_rows(tr)


def _result_rows(tr: Trained) -> list[dict[str, Any]]:
    spec, model, ctx, dev = tr.spec, tr.model, tr.ctx, tr.device
    finite = all(bool(p.isfinite().all()) for p in model.parameters())
    diverged = not finite or any(not math.isfinite(f.final_loss) for f in ctx.fits if f.steps)
    examples = sum(f.examples for f in ctx.fits)
    trainable = tr.method.trainable_blocks(model.block_names())
    loop_steps = sum(f.steps for f in ctx.fits if f.kind == "loop")
    final = {
        **spec.columns(),
        "variant": tr.method.variant(),
        "shift_level": tr.task.info.get("shift_level", ""),
        "status": "diverged" if diverged else "ok",
        "error": "non-finite loss or weights" if diverged else "",
        **_evaluate(model, tr.task),
        "step": loop_steps,
        "final": True,
        "n_target_train": len(tr.task.train),  # the fine-tuning examples, whichever split the protocol trains on
        "n_trainable": sum(p.numel() for b in trainable for p in model.block_parameters(b)),
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_steps": sum(f.steps for f in ctx.fits),
        "train_seconds": tr.train_seconds,
        "examples_per_second": examples / tr.train_seconds if examples and tr.train_seconds > 0 else 0.0,
        "device": _device_name(dev),
        "threads": torch.get_num_threads() if dev.type == "cpu" else 0,  # CPU results depend on it
        "train_dtype": effective_precision(dev, "train"),  # the precisions that ran (docs/results.md)
        "eval_dtype": effective_precision(dev, "eval"),
        "ftbench_version": ftbench.__version__,
        "timestamp": dt.datetime.now(dt.timezone.utc),
        **environment(),
        **ctx.metrics,
    }
    rows = [{**final, **acc, "step": step, "final": False} for step, acc in sorted(tr.checkpoints.items())]
    rows += [{**final, **state, "final": False} for state in tr.states]
    return rows + [final]
