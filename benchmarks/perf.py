"""ftbench's runner against a reference loop written the way the papers' released code is written.

    python benchmarks/perf.py                       # every workload this machine can run
    python benchmarks/perf.py --workload embedded   # the default suite on the embedded digits benchmark
    python benchmarks/perf.py --workload cifar-grid # GPU: ResNet-26, 32 px, 5 layer subsets × 5 lrs
    python benchmarks/perf.py --workload stream     # ImageNet-style JPEG streaming vs ImageFolder + DataLoader

In one process and one run, for the same runs (same model and pretrained weights, same data, steps
and hyperparameters), it times

1. the **reference loop**: a per-image torch ``Dataset`` returning ``(tensor, label)``, a
   ``DataLoader``, float32, one run at a time, evaluation on the target validation and test splits
   after every epoch (as the released code of the surgical fine-tuning and LP-FT papers does), and a
   linear probe fitted with scikit-learn's ``LogisticRegression`` on extracted features (LP-FT's code);
2. **ftbench's runner** with its fast paths (device-resident data, frozen-prefix caching, fused
   multi-run training, bf16 and large-batch inference-mode evaluation on GPU),

and prints images/second, wall time per run, the ratio, both sides' mean accuracies and their
largest per-run difference (a fast path that changes results is a bug), on GPU the model FLOPs
utilisation against the device's bf16 peak, and per workload a last line ``speedup WORKLOAD 3.41x``.

The reference's batches: its ``DataLoader`` takes a batch sampler that yields, epoch by epoch, the
batches ftbench draws from the same seed (``DataLoader(shuffle=True)`` would draw other batches:
its sampler consumes a second permutation per epoch), so the two loops compute the same steps and
their accuracies agree up to float rounding; only the linear probe's solver differs (scikit-learn's
L-BFGS vs. ftbench's torch L-BFGS on the same convex problem). Rounding differences (oneDNN's CPU
convolutions are not even bit-reproducible from one call to the next) grow over 50 Adam steps, so a
run's accuracy may differ by an image or a few; the means over the runs must agree. Work on both sides is interleaved
group by group, so a machine shared with other jobs slows both alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ftbench.data import corruptions
from ftbench.data.base import BENCHMARKS, Benchmark, ShiftInfo, SourceTask, Split, TargetTask, get_benchmark
from ftbench.errors import UsageError
from ftbench.methods.base import get_method
from ftbench.models.base import BlockModel
from ftbench.train.pretrain import pretrained
from ftbench.spec import RunSpec
from ftbench.plan.suites import expand_suite
from ftbench.plan.resolve import resolve
from ftbench.execution import fused
from ftbench.train import prefix
from ftbench.train.loop import batch_indices, steps_for
from ftbench.execution.runner import execute, pick_device

WORKLOADS = ("embedded", "cifar-grid", "stream")
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; first matching name wins.
BF16_PEAK = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("B200", 2250e12),
             ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12), ("L4", 121e12), ("A10", 125e12)]


# --- the reference loop --------------------------------------------------------------------------


class ImageDataset(Dataset):
    """One image at a time from host memory, as the released code's datasets: (tensor, label)."""

    def __init__(self, split: Split) -> None:
        self.x = split.x.cpu().numpy()
        self.y = split.y.cpu().numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i]), int(self.y[i])


class EpochBatches(Sampler[list[int]]):
    """Each iteration yields the next epoch's batches of ftbench's draw for this seed (see module doc)."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int) -> None:
        self.idx = batch_indices(n, batch_size, steps, torch.Generator().manual_seed(seed)).tolist()
        self.per_epoch = max(1, n // min(batch_size, n))
        self.pos = 0

    def __iter__(self) -> Iterator[list[int]]:
        end = min(self.pos + self.per_epoch, len(self.idx))
        while self.pos < end:
            self.pos += 1
            yield self.idx[self.pos - 1]

    def __len__(self) -> int:
        return min(self.per_epoch, len(self.idx) - self.pos)


@dataclasses.dataclass
class RefResult:
    accs: dict[str, float]
    images: int  # training images through the loop
    seconds: dict[str, float]  # setup, train, epoch_eval, final_eval


@torch.no_grad()
def ref_accuracy(model: nn.Module, ds: ImageDataset, batch_size: int, dev: torch.device) -> float:
    if len(ds) == 0:
        return float("nan")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    correct = 0
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
        correct += int((model(x.to(dev)).argmax(1).cpu() == y).sum())
    for m, training in modes:  # back to the run's modes (frozen BatchNorm stays in eval mode)
        m.train(training)
    return 100.0 * correct / len(ds)


def ref_set_trainable(model: BlockModel, blocks: list[str], bn: str) -> list[nn.Parameter]:
    """The semantics of ftbench's set_trainable (what trains, which BatchNorm layers update)."""
    model.requires_grad_(False)
    model.eval()
    params: list[nn.Parameter] = []
    for name in blocks:
        for m in model.blocks()[name]:
            m.requires_grad_(True)
            if bn == "train":
                m.train()
            params += list(m.parameters())
    return params


@torch.no_grad()
def ref_linear_probe(model: BlockModel, ds: ImageDataset, l2: float, max_iter: int, bs: int, dev: torch.device) -> None:
    """LP-FT's released recipe: extract features, fit scikit-learn's logistic regression, copy it in.

    sklearn minimises C·ΣCE + ½‖W‖²; ftbench's probe minimises mean CE + (l2/2)‖W‖²: C = 1/(n·l2).
    """
    from sklearn.linear_model import LogisticRegression

    model.eval()
    feats, labels = [], []
    for x, y in DataLoader(ds, batch_size=bs, shuffle=False):
        feats.append(model.features(x.to(dev)).float().cpu())
        labels.append(y)
    f, y = torch.cat(feats).numpy(), torch.cat(labels).numpy()
    kw: dict[str, Any] = {"C": 1.0 / (len(y) * l2)} if l2 > 0 else {"penalty": None}
    clf = LogisticRegression(max_iter=max_iter, **kw).fit(f, y)
    w = np.zeros((model.head.out_features, f.shape[1]), dtype=np.float32)
    b = np.full(model.head.out_features, -1e4, dtype=np.float32)  # classes absent from the few-shot set
    w[clf.classes_] = clf.coef_ if len(clf.classes_) > 2 else np.concatenate([-clf.coef_, clf.coef_]) / 2
    b[clf.classes_] = clf.intercept_ if len(clf.classes_) > 2 else np.concatenate([-clf.intercept_, clf.intercept_]) / 2
    model.head.weight.copy_(torch.from_numpy(w))
    model.head.bias.copy_(torch.from_numpy(b))


def ref_fit(model: BlockModel, params: list[nn.Parameter], train: ImageDataset, evals: list[ImageDataset],
            spec: RunSpec, dev: torch.device, seconds: dict[str, float]) -> int:
    """The released code's loop: epochs over a DataLoader, float32, evaluation after every epoch."""
    n, bs = len(train), spec.batch_size or 64
    steps = steps_for(n, bs, spec.steps, spec.epochs)
    opt = (torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.wd) if spec.optimizer == "adam"
           else torch.optim.SGD(params, lr=spec.lr, weight_decay=spec.wd, momentum=0.9))
    sampler = EpochBatches(n, bs, steps, spec.seed)
    loader = DataLoader(train, batch_sampler=sampler, num_workers=0)
    images = 0
    for _epoch in range(math.ceil(steps / sampler.per_epoch)):
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            images += len(y)
        _sync(dev)
        t1 = time.perf_counter()
        for ds in evals:
            ref_accuracy(model, ds, bs, dev)
        seconds["train"] += t1 - t0
        seconds["epoch_eval"] += time.perf_counter() - t1
    return images


def reference_run(spec: RunSpec, dev: torch.device) -> RefResult:
    """One run, start to finish, the released-code way (data and pretrained weights as ftbench's)."""
    sec = {"setup": 0.0, "train": 0.0, "epoch_eval": 0.0, "final_eval": 0.0}
    t0 = time.perf_counter()
    spec = resolve(spec)
    bench = get_benchmark(spec.benchmark)
    src, tgt = bench.source(spec), bench.target(spec)
    model = pretrained(spec.model or bench.default_model, src, dev)
    ds = {k: ImageDataset(s) for k, s in [("id", src.test), ("source_val", src.val), ("train", tgt.train),
                                          ("val", tgt.val), ("ood", tgt.test)]}
    method = get_method(spec.method)(spec)
    bs = spec.batch_size or 64
    sec["setup"] = time.perf_counter() - t0
    images = 0
    evals = [ds["val"], ds["ood"]]
    if spec.method in ("surgical", "full", "lp-ft"):
        if spec.method == "lp-ft":
            t = time.perf_counter()
            ref_set_trainable(model, ["last"], "frozen")
            ref_linear_probe(model, ds["train"], method.opts["lp_l2"], method.opts["lp_max_iter"], bs, dev)
            sec["train"] += time.perf_counter() - t
        params = ref_set_trainable(model, method.trainable_blocks(model.block_names()), method.opts["bn"])
        images = ref_fit(model, params, ds["train"], evals, spec, dev, sec)
    elif spec.method == "linear-probe":
        t = time.perf_counter()
        ref_set_trainable(model, ["last"], "frozen")
        ref_linear_probe(model, ds["train"], spec.wd or 0.0, method.opts["max_iter"], bs, dev)
        sec["train"] += time.perf_counter() - t
    elif spec.method != "none":
        raise UsageError(f"the reference loop has no method {spec.method!r}")
    t = time.perf_counter()
    accs = {k: ref_accuracy(model, ds[s], bs, dev)
            for k, s in [("id_acc", "id"), ("source_val_acc", "source_val"), ("val_acc", "val"), ("ood_acc", "ood")]}
    _sync(dev)
    sec["final_eval"] = time.perf_counter() - t
    return RefResult(accs, images, sec)


# --- the CIFAR-10-C-style grid (GPU) --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GridSize:
    """The synthetic CIFAR-10-C-style data: image counts and model width."""

    source: int = 2000
    target_train_per_class: int = 100  # 1000 target images, as the surgical paper's CIFAR-10-C runs
    target_test: int = 10000  # a CIFAR-10-C test set per corruption and severity
    epochs: int = 15


GRID = GridSize()


def _synthetic(n: int, seed: int) -> Split:
    """10 classes of smooth random 3×32×32 templates under heavy pixel noise, in [0, 1] (CIFAR-shaped,
learnable but not trivially: the classes differ by ±0.15 per pixel under noise of std 0.3)."""
    g = torch.Generator().manual_seed(1234)
    templates = F.interpolate(torch.rand(10, 3, 8, 8, generator=g), size=32, mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = (0.5 + 0.3 * (templates[y] - 0.5) + 0.3 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)
    return Split(x.contiguous(), y)


class SyntheticCifar(Benchmark):
    """Synthetic data of CIFAR-10-C's shape: source = clean, target = gaussian noise at severity 5."""

    name = "perf-cifar32"
    help = "benchmarks/perf.py only: synthetic 3x32x32, 10 classes; target = gaussian_noise severity 5"
    default_model = "resnet26-cifar"
    default_shots = GRID.target_train_per_class
    shifts = {"corruption": ShiftInfo("corruption", "input", "gaussian noise, severity 5 (CIFAR-10-C constants)")}

    def resolve(self, spec: RunSpec) -> RunSpec:
        return dataclasses.replace(spec, shift="corruption", corruption="gaussian_noise", severity=5,
                                   shots=spec.shots or GRID.target_train_per_class)

    def source(self, spec: RunSpec) -> SourceTask:
        n = GRID.source
        return SourceTask({"benchmark": self.name, "n": n, "v": 2}, 10, _synthetic(n, 1), _synthetic(n // 4, 2),
                          _synthetic(n // 2, 3))

    def target(self, spec: RunSpec) -> TargetTask:
        def shifted(n: int, seed: int) -> Split:
            s = _synthetic(n, seed)
            return Split(corruptions.corrupt(s.x, "gaussian_noise", 5, seed=seed, scale="cifar"), s.y)

        shots = spec.shots or GRID.target_train_per_class
        return TargetTask(10, shifted(10 * shots, 10 + spec.seed), shifted(GRID.target_test // 10, 4),
                          shifted(GRID.target_test, 5), info={"shift_level": "input"})

    def status(self) -> str:
        return "synthetic (generated on the fly)"


def register_grid() -> None:
    if "perf-cifar32" not in BENCHMARKS:
        BENCHMARKS.register("perf-cifar32")(SyntheticCifar)


def grid_specs(model: str, lrs: list[float]) -> list[RunSpec]:
    """5 layer subsets (block 1, 2, 3, last, all) × the learning rates, 15 epochs, Adam, batch 64."""
    out = []
    for blocks in (("1",), ("2",), ("3",), ("last",), None):
        for lr in lrs:
            method = "full" if blocks is None else "surgical"
            out.append(resolve(RunSpec(benchmark="perf-cifar32", model=model, method=method, blocks=blocks or (),
                                       lr=lr, wd=0.0, epochs=GRID.epochs, steps=None, batch_size=64, seed=0)))
    return out


# --- FLOPs ------------------------------------------------------------------------------------------


def step_flops(spec: RunSpec, dev: torch.device) -> tuple[int, int]:
    """(FLOPs of one plain training step at the run's batch size, FLOPs of one image's forward pass)."""
    from torch.utils.flop_counter import FlopCounterMode

    bench = get_benchmark(spec.benchmark)
    src = bench.source(spec)
    model = pretrained(spec.model, src, dev)
    method = get_method(spec.method)(spec)
    params = ref_set_trainable(model, method.trainable_blocks(model.block_names()), method.opts.get("bn", "train"))
    bs = spec.batch_size or 64
    x = src.train.x[:bs].to(dev)
    y = src.train.y[:bs].to(dev)
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(model(x), y).backward()
    train = fc.get_total_flops()
    for p in params:
        p.grad = None
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x[:1])
    return train, fc.get_total_flops()


def bf16_peak(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((p for key, p in BF16_PEAK if key in name), None)


# --- measuring --------------------------------------------------------------------------------------


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    return f"cpu ({model or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _time_reference(group: list[RunSpec], dev: torch.device, out: dict[str, RefResult]) -> float:
    t = time.perf_counter()
    for s in group:
        out[s.run_id] = reference_run(s, dev)
    _sync(dev)
    return time.perf_counter() - t


def _time_ftbench(group: list[RunSpec], dev: torch.device, out: dict[str, dict[str, Any]]) -> float:
    """ftbench as a sweep runs it: a fusable group fused, a lone run through ``execute``."""
    t = time.perf_counter()
    if len(group) > 1:
        rows = fused.run_fused(group, dev.type)
    else:
        rows = {group[0].run_id: execute(group[0], dev.type)}
    _sync(dev)
    for rid, r in rows.items():
        out[rid] = r[-1]
    return time.perf_counter() - t


def measure(name: str, specs: list[RunSpec], dev: torch.device, flops: bool) -> dict[str, Any]:
    """Time the reference and ftbench on ``specs``, interleaved group by group; print the table."""
    specs = [resolve(s) for s in specs]
    # Pretrained source models are built (or loaded) before timing: both sides load them from the cache.
    for s in specs:
        pretrained(s.model, get_benchmark(s.benchmark).source(s), dev)
    groups = fused.fusable_groups(specs, dev.type)
    ref: dict[str, RefResult] = {}
    ours: dict[str, dict[str, Any]] = {}
    t_ref = t_ours = 0.0
    print(f"{name}: {len(specs)} runs in {len(groups)} groups on {_device_name(dev)}", file=sys.stderr)
    for i, group in enumerate(groups):
        if i % 2 == 0:  # alternate who goes first, so drifting load on a shared machine hits both alike
            t_ref += _time_reference(group, dev, ref)
            t_ours += _time_ftbench(group, dev, ours)
        else:
            t_ours += _time_ftbench(group, dev, ours)
            t_ref += _time_reference(group, dev, ref)
        print(f"  group {i + 1}/{len(groups)} ({len(group)} runs): reference {t_ref:.1f} s, ftbench {t_ours:.1f} s",
              file=sys.stderr)

    images = sum(r.images for r in ref.values())
    out: dict[str, Any] = {"runs": len(specs), "ref_seconds": t_ref, "ftbench_seconds": t_ours, "images": images}
    diffs = {k: [ours[s.run_id][k] - ref[s.run_id].accs[k] for s in specs] for k in ("ood_acc", "id_acc")}
    mean = {side: {k: statistics.fmean(v) for k, v in accs.items()} for side, accs in [
        ("ref", {k: [ref[s.run_id].accs[k] for s in specs] for k in ("ood_acc", "id_acc")}),
        ("ours", {k: [ours[s.run_id][k] for s in specs] for k in ("ood_acc", "id_acc")})]}
    sec = {k: sum(r.seconds[k] for r in ref.values()) for k in ("setup", "train", "epoch_eval", "final_eval")}
    print(f"\n== {name}: {len(specs)} runs, {images} training images each side, device {_device_name(dev)}")
    paths = [k for k in prefix.FASTPATHS if prefix.fastpath_enabled(k, dev.type)]
    paths += ["channels-last"] if prefix.channels_last_enabled() else []
    print(f"   torch {torch.__version__}, fast paths: {', '.join(paths) or 'none'}, "
          f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"   {'':<16}{'wall s':>9}{'s/run':>8}{'train img/s':>13}{'mean OOD':>10}{'mean ID':>9}")
    for label, t, side in [("reference loop", t_ref, "ref"), ("ftbench runner", t_ours, "ours")]:
        print(f"   {label:<16}{t:>9.1f}{t / len(specs):>8.3f}{images / t:>13.0f}"
              f"{mean[side]['ood_acc']:>10.2f}{mean[side]['id_acc']:>9.2f}")
    agree = all(abs(statistics.fmean(v)) < 0.5 for v in diffs.values())
    print(f"   accuracy, ftbench - reference: mean ΔOOD {statistics.fmean(diffs['ood_acc']):+.2f}, mean ΔID "
          f"{statistics.fmean(diffs['id_acc']):+.2f} points -> {'agree' if agree else 'DISAGREE'}")
    probe = ("linear-probe", "lp-ft")  # the reference fits the probe with scikit-learn: another solver
    for label, subset in [("same steps", [i for i, s in enumerate(specs) if s.method not in probe]),
                          ("probe by sklearn", [i for i, s in enumerate(specs) if s.method in probe])]:
        if subset:
            same = sum(1 for i in subset if all(abs(diffs[k][i]) < 1e-3 for k in diffs))  # far below one image
            print(f"     per run, {label} ({len(subset)} runs): identical {same}, largest |ΔOOD| "
                  f"{max(abs(diffs['ood_acc'][i]) for i in subset):.2f}, |ΔID| {max(abs(diffs['id_acc'][i]) for i in subset):.2f}")
    print(f"   reference time: setup {sec['setup']:.1f} s, training {sec['train']:.1f} s, evaluation every epoch "
          f"{sec['epoch_eval']:.1f} s, final evaluation {sec['final_eval']:.1f} s")
    ours_train = sum(ours[s.run_id]["train_seconds"] for s in specs)
    print(f"   ftbench time: training {ours_train:.1f} s (the rows' train_seconds), setup and evaluation "
          f"{t_ours - ours_train:.1f} s")
    if flops:
        peak = bf16_peak(dev)
        cache: dict[tuple[Any, ...], tuple[int, int]] = {}
        sizes: dict[tuple[Any, ...], tuple[int, int]] = {}
        total = 0
        for s in specs:
            key = (s.model, s.method, s.blocks, s.options, s.batch_size)
            if key not in cache:
                cache[key] = step_flops(s, dev)
            st, fwd = cache[key]
            data_key = (s.benchmark, s.shift, s.corruption, s.severity, s.shots, s.seed)
            if data_key not in sizes:
                bench = get_benchmark(s.benchmark)
                src, tgt = bench.source(s), bench.target(s)
                sizes[data_key] = (len(tgt.train), len(tgt.val) + len(tgt.test) + len(src.val) + len(src.test))
            n_train, n_eval = sizes[data_key]
            steps = steps_for(n_train, s.batch_size or 64, s.steps, s.epochs) if s.method != "none" else 0
            total += steps * st + n_eval * fwd
        # Model FLOPs: what the plain loop computes for these runs (every step's forward and backward,
        # the final evaluation), whatever the fast paths skip; divided by ftbench's wall time.
        achieved = total / t_ours
        mfu = f"{100 * achieved / peak:.1f}% of bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else "peak unknown"
        print(f"   model FLOPs {total / 1e12:.2f} TFLOP: ftbench {achieved / 1e12:.3g} TFLOP/s ({mfu}); "
              f"reference {total / t_ref / 1e12:.3g} TFLOP/s")
        out["mfu"] = achieved / peak if peak else None
        out["model_tflop"], out["tflops"], out["peak_tflops"] = total / 1e12, achieved / 1e12, peak and peak / 1e12
    out["speedup"] = t_ref / t_ours
    out["agree"] = agree
    print(f"speedup {name} {t_ref / t_ours:.2f}x", flush=True)
    return out


# --- the streaming pipeline (ImageNet scale: images decoded from JPEG files every epoch) ---------

def _write_stream_jpegs(folder: Any, n: int, classes: int = 10) -> list[str]:
    """``n`` JPEGs of ImageNet's typical size (500×375, quality 90, smooth content plus noise, so the
    decoder has realistic work), in ``classes`` class folders as ImageFolder expects."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base = np.linspace(0, 200, 500, dtype=np.float32)[None, :, None] + np.linspace(0, 50, 375, dtype=np.float32)[:, None, None]
    paths = []
    for i in range(n):
        d = folder / f"n{i % classes:08d}"
        d.mkdir(exist_ok=True)
        px = np.clip(base + rng.normal(0, 12, (375, 500, 3)).astype(np.float32) + 5 * (i % 7), 0, 255).astype(np.uint8)
        p = d / f"img_{i:05d}.JPEG"
        Image.fromarray(px).save(p, quality=90)
        paths.append(str(p))
    return sorted(paths)


def measure_stream(n: int, batch_size: int, dev: torch.device, repeats: int = 2) -> dict[str, Any]:
    """Images/s of one pass over ``n`` JPEGs: torchvision's ``ImageFolder`` (PIL decode, Resize(256),
    CenterCrop(224), ToTensor, Normalize per image in the workers) + ``DataLoader`` against ftbench's
    ``StreamSplit`` (decode in the pool or on the GPU, uint8 to the device, normalised there), with the
    same worker count, each batch moved to ``dev``; best of ``repeats`` passes each, interleaved."""
    import tempfile
    from pathlib import Path

    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    from ftbench.data.imagenet import MEAN, STD
    from ftbench.data.stream import ImageFiles, StreamSplit, device_decode_wanted, resize_center_crop, workers

    with tempfile.TemporaryDirectory(prefix="ftbench-stream-") as tmp:
        paths = _write_stream_jpegs(Path(tmp), n)
        for p in paths:  # both sides read from the page cache
            Path(p).read_bytes()
        w = workers()
        ref_ds = ImageFolder(tmp, transform=T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                                                       T.Normalize(MEAN, STD)]))
        y = torch.as_tensor([t for _, t in ref_ds.samples])
        split = StreamSplit(ImageFiles(paths, resize_center_crop(224, 256)), y, MEAN, STD).to(dev)

        def ref_pass() -> tuple[float, torch.Tensor]:
            loader = DataLoader(ref_ds, batch_size=batch_size, shuffle=False, num_workers=w,
                                pin_memory=dev.type == "cuda", prefetch_factor=4 if w else None)
            t0 = time.perf_counter()
            first = None
            for xb, _ in loader:
                xb = xb.to(dev, non_blocking=True)
                first = xb if first is None else first
            _sync(dev)
            return time.perf_counter() - t0, first

        def ours_pass() -> tuple[float, torch.Tensor]:
            t0 = time.perf_counter()
            first = None
            for xb in split.batches(batch_size):
                first = xb if first is None else first
            _sync(dev)
            return time.perf_counter() - t0, first

        t_ref, t_ours = [], []
        for _ in range(repeats):
            t, ref_first = ref_pass()
            t_ref.append(t)
            t, our_first = ours_pass()
            t_ours.append(t)
        diff = (ref_first.float() - our_first.float()).abs().mul(torch.tensor(STD, device=dev).view(1, 3, 1, 1))
        on_device = "nvJPEG" if dev.type == "cuda" else "batched decode_jpeg, FTBENCH_DEVICE_DECODE=1"
        path = f"device decode ({on_device})" if device_decode_wanted(split.images, dev) else "worker pool decode"
    best_ref, best_ours = min(t_ref), min(t_ours)
    print(f"\n== stream: {n} JPEGs 500x375 -> 224x224, batch {batch_size}, {w} workers, device {_device_name(dev)}; "
          f"ftbench path: {path}")
    print(f"   torch {torch.__version__}, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"   ImageFolder + DataLoader  {n / best_ref:>8.0f} images/s  (best of {repeats}: {best_ref:.2f} s)")
    print(f"   ftbench StreamSplit       {n / best_ours:>8.0f} images/s  (best of {repeats}: {best_ours:.2f} s)")
    print(f"   pixels, first batch: mean |difference| {255 * float(diff.mean()):.3f} grey levels, largest "
          f"{255 * float(diff.max()):.0f} (PIL's resize vs torchvision's antialiased tensor resize)")
    print(f"speedup stream {best_ref / best_ours:.2f}x", flush=True)
    # The two resize implementations differ by rounding, not by content: a mean above 2 grey levels is a bug.
    return {"speedup": best_ref / best_ours, "agree": 255 * float(diff.mean()) < 2.0}


TINY_GRID = GridSize(source=200, target_train_per_class=8, target_test=200, epochs=1)


def cifar_grid(model: str, lrs: list[float], scale: str, dev: torch.device) -> dict[str, Any]:
    """The cifar-grid workload (also run by benchmarks/gpu_check.py): ``scale`` "full" or "tiny"
    (64 target images, 1 epoch, the first 3 lrs: the code path on any device)."""
    global GRID
    GRID = TINY_GRID if scale == "tiny" else GridSize()
    if scale == "tiny":
        lrs = lrs[:3]
    register_grid()
    return measure("cifar-grid", grid_specs(model, lrs), dev, flops=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=(*WORKLOADS, "all"), default="all")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--suite", default="default", help="embedded workload: the suite of benchmarks.toml to run")
    ap.add_argument("--limit", type=int, default=None, help="embedded workload: only the first N runs (fusable runs kept together)")
    ap.add_argument("--lrs", default="3e-5,1e-4,3e-4,1e-3,3e-3", help="cifar-grid: the 5 learning rates")
    ap.add_argument("--grid-model", choices=("resnet26-cifar", "wrn-28-10"), default="resnet26-cifar",
                    help="cifar-grid: the network (ftbench's registered CIFAR models)")
    ap.add_argument("--grid-scale", choices=("full", "tiny"), default="full",
                    help="cifar-grid: 'tiny' (64 target images, 1 epoch, 3 lrs) checks the code path on any device")
    ap.add_argument("--force", action="store_true", help="run cifar-grid without a GPU too")
    ap.add_argument("--stream-images", type=int, default=512, help="stream: JPEG files to make and read")
    ap.add_argument("--stream-batch", type=int, default=256, help="stream: batch size")
    args = ap.parse_args(argv)
    dev = pick_device(args.device)
    results = {}
    if args.workload in ("embedded", "all"):
        specs = expand_suite(args.suite)
        order = {k: i for i, k in enumerate(dict.fromkeys(fused.fusion_key(s) or s.run_id for s in specs))}
        specs = sorted(specs, key=lambda s: order[fused.fusion_key(s) or s.run_id])[: args.limit]
        results["embedded"] = measure("embedded", specs, dev, flops=dev.type == "cuda")
    if args.workload in ("cifar-grid", "all"):
        if dev.type != "cuda" and not args.force:
            print("\n== cifar-grid: skipped (needs a CUDA GPU; --force runs it here anyway)")
        else:
            results["cifar-grid"] = cifar_grid(args.grid_model, [float(v) for v in args.lrs.split(",")],
                                               args.grid_scale, dev)
    if args.workload in ("stream", "all"):
        results["stream"] = measure_stream(args.stream_images, args.stream_batch, dev)
    return 0 if all(r["agree"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
