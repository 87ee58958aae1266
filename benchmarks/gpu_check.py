"""ftbench's CUDA paths checked in one command, for the few minutes a GPU is lent; one table for
docs/performance.md.

    python benchmarks/gpu_check.py --out "$OUT"               # on the GPU machine: at most ~8 minutes on one H100
    python benchmarks/gpu_check.py --device cpu --dry-run     # every stage's plumbing, tiny, on a CPU (tests/test_gpu_check.py)
    python benchmarks/gpu_check.py --stages fused,bf16        # some stages only

Each stage runs in its own process (a CUDA error or a hang in one cannot take the others down),
with its own time budget, under a total wall-clock cap; a stage that fails, errs, lacks a package or
runs out of time is a row of the table, and the next stage starts. Stages, in order:

``cuda-tests``  the CUDA tests: ``tests/test_gpu_check.py -k test_cuda_`` (a run, a sweep with fused groups,
                the worker pool sharing the GPU, nvJPEG's fallback for a PNG named .JPEG). On a
                CPU they are skipped; ``--dry-run`` runs them on the CPU with the same code paths
                forced (``FTBENCH_GPU_CHECK_DEVICE=cpu``).
``fused``       fused-vs-separate training (``ftbench/execution/fused.py``) on the device, three groups
                of three runs as tests/test_fastpaths.py: in float32 (autocast and TF32 off) within
                the CPU tests' bound, and in the default bf16 within bf16's.
``bf16``        bf16 autocast against float32 (TF32 off) for a short run: the logits of one forward
                pass, the trained weights and the accuracies, each within a bound argued from
                bf16's precision (see BF16_*).
``nvjpeg``      nvJPEG against libjpeg-turbo on the tests' fabricated JPEGs (tests/test_stream.py):
                raw decodes and the streamed split's resized batches, and perf.py's ``stream``
                workload (images/s against ImageFolder + DataLoader).
``paper``       the first runs of ``paper-surgical-cifar10c`` (WRN-28-10, the surgical recipe: 26
                runs of one corruption and seed) on fabricated CIFAR-10/-10-C files
                (tests/test_cifar.py), as ``ftbench sweep`` runs them; a second sweep runs nothing.
``cifar-grid``  perf.py's ``cifar-grid`` workload: the speedup over the reference loop and the
                model-FLOPs utilisation; on a timeout the groups finished so far are reported.

Pass/fail is about correctness; speed figures are reported against the targets in
docs/performance.md, not judged. The table goes to stdout and, as ``gpu-check.md`` and
``gpu-check.json``, to ``--out`` (default: ``$OUT`` when set, else ``./gpu-check``), with each
stage's log under ``gpu-check-logs/``. The source models and data are made in a fresh temporary
cache (``FTBENCH_CACHE``), so the run is a fresh clone's, and removed at the end.

Nothing is installed: the check runs from the source tree (``PYTHONPATH`` is set for the stages) with
the Python it is started with; a stage whose package is missing says which one.
Exit code: 0 if every stage passed, 1 otherwise, 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Stage -> seconds it may take on one H100 (GPU) and in the dry run. cifar-grid gets whatever the
# total cap leaves (at least its budget's worth when the others take theirs).
# Estimates for one H100 (none measured yet): each stage process starts Python, torch and CUDA (~10 s).
BUDGET = {"cuda-tests": 75, "fused": 60, "bf16": 45, "nvjpeg": 45, "paper": 60, "cifar-grid": 185}
DRY_BUDGET = 120
TOTAL_CAP = 470  # 7 min 50 s: under 8 minutes with the interpreter's start and the table
DRY_TOTAL_CAP = 600

# Fused vs separate, float32: the two paths differ only in the order of float32 operations; the CPU
# tests' bound and its argument (tests/test_fastpaths.py, DRIFT) apply unchanged.
FP32_DRIFT = 5e-3
# bf16 (8 significant bits): every operand a convolution or matmul reads under autocast is rounded
# to bf16, a relative error of at most u = 2^-8 = 3.9e-3 (half an ulp of 2^-7), two operands per
# product; the sums accumulate in float32. Rounding errors of independent sign add in quadrature:
# per layer about sqrt(2)·u = 5.5e-3 relative, and over the L layers a signal passes, sqrt(L) times
# that: ResNet-26 (L = 26) 0.028, digits-resnet (L ~ 10) 0.017. A forward pass's logits may thus differ
# from float32's by BF16_FORWARD = 0.05 relative (1.8x over ResNet-26's estimate; a bug — a layer in
# the wrong dtype, fp16 overflow, autocast not applied at all (exactly 0) — is O(1) or 0).
BF16_FORWARD = 0.05
# A training step's gradient carries the forward's relative error and the backward's (another L
# layers): sqrt(2)·0.028 = 0.04 for ResNet-26 by the same count; the weight gradients are sums over a
# batch and its pixels whose terms cancel, which can raise their relative error several times. So
# the check measures it: one batch's gradient at the source weights, bf16 against float32 (above
# BF16_GRAD = 0.25 it is not rounding any more). With SGD each update is linear in its gradient, and
# the steps' rounding errors are independent, adding no faster than the steps themselves: the final
# weights differ from float32 training's by at most that relative error of the distance training
# moved them; BF16_STEPS = 3 times it leaves room for the error varying from step to step.
BF16_GRAD = 0.25
BF16_STEPS = 3.0
# Fused vs separate under bf16: each path is within BF16_STEPS times the gradient's measured bf16
# error of float32 training, so within twice that of each other.
# nvJPEG vs libjpeg-turbo. A conforming IDCT is within 1 of the exact one per sample (IEEE 1180 /
# ISO/IEC 10918-2), so two decoders' Y, Cb, Cr differ by at most 2; R = Y + 1.402 Cr', G = Y - 0.344
# Cb' - 0.714 Cr', B = Y + 1.772 Cb' and two roundings: |dB| <= 2 + 2·1.772 + 1 = 6.5. With 4:4:4
# chroma (no upsampling) a pixel may differ by at most 6 grey levels. The same standard bounds the
# IDCT's mean square error per sample by 0.02 (mean |error| <= 0.14, two decoders 0.28), times the
# colour conversion's 1 + 1.772 and 0.5 for rounding: a mean of at most 1.3 grey levels.
JPEG_444_MAX = 6
JPEG_444_MEAN = 1.3
# With 4:2:0 chroma (PIL's default, the tests' files) the decoders may also upsample chroma
# differently (libjpeg-turbo's triangular "fancy" filter vs. replication), which moves pixels at
# chroma edges by up to the local chroma step: no useful maximum, and the mean is bounded as
# torchvision's own test of its CUDA decoder bounds it (test_image.py, test_decode_jpegs_cuda): < 2.
JPEG_420_MEAN = 2.0


# --- small helpers ------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _module(path: Path, name: str) -> Any:
    """A module of this repository that is not a package (benchmarks/perf.py, a test file), by path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _perf() -> Any:
    return _module(REPO / "benchmarks" / "perf.py", "ftbench_perf")


def _tests(name: str) -> Any:
    return _module(REPO / "tests" / f"{name}.py", f"gpu_check_{name}")


def _state(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _apart(source: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """(distance between two trained states, distance training moved ``a`` from ``source``)."""
    floats = [k for k in a if a[k].is_floating_point()]
    moved = sum(float(((a[k].double().cpu() - source[k].double().cpu()) ** 2).sum()) for k in floats) ** 0.5
    apart = sum(float(((a[k].double().cpu() - b[k].double().cpu()) ** 2).sum()) for k in floats) ** 0.5
    return apart, moved


@contextlib.contextmanager
def precision(mode: str, dev: Any) -> Iterator[None]:
    """Training and evaluation precision: ``default`` (ftbench's: bf16 autocast on CUDA, float32 on a
    CPU), ``fp32`` (no autocast, TF32 off: true float32 on a GPU) or ``bf16`` (autocast on any
    device, so the dry run compares bf16 with float32 on a CPU too). Swaps ``autocast`` in every
    loaded ftbench module that imported it."""
    import torch

    from ftbench.train import loop

    for name in ("ftbench.train.stacked", "ftbench.train.prefix", "ftbench.execution.runner", "ftbench.train.pretrain"):
        importlib.import_module(name)
    original = loop.autocast
    if mode == "default":
        yield
        return
    if mode == "fp32":
        def replacement(device: Any, phase: str = "train") -> Any:  # loop.autocast's signature, both phases
            return contextlib.nullcontext()
    else:
        def replacement(device: Any, phase: str = "train") -> Any:
            return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    mods = [m for n, m in list(sys.modules.items()) if n.startswith("ftbench") and getattr(m, "autocast", None) is original]
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    for m in mods:
        m.autocast = replacement
    if mode == "fp32":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        for m in mods:
            m.autocast = original
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


# --- the stages (each runs in its own process: `--stage NAME`) ------------------------------------
# A stage returns (passed, one-line summary for the table, figures for the JSON).

Outcome = tuple[bool, str, dict[str, Any]]


def stage_cuda_tests(dev: Any, dry: bool, work: Path) -> Outcome:
    import xml.etree.ElementTree as ET

    if importlib.util.find_spec("pytest") is None:
        raise ModuleNotFoundError("No module named 'pytest'", name="pytest")
    junit = work / "junit.xml"
    env = dict(os.environ, FTBENCH_GPU_CHECK_DEVICE=dev.type)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_gpu_check.py",
           "-k", "test_cuda_", f"--junitxml={junit}"]
    print("$", shlex.join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=REPO, env=env)
    if not junit.is_file():
        return False, f"pytest exited {rc} without a report", {"returncode": rc}
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
    figures = {"passed": passed, **n, "failed_tests": failed, "returncode": rc}
    # On the device every CUDA test must run: a skip there means the GPU was not seen.
    ok = rc == 0 and passed > 0 and n["skipped"] == 0
    summary = f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped ({dev.type})"
    return ok, summary + (f": {', '.join(failed)}" if failed else ""), figures


def _fused_groups(dry: bool) -> dict[str, dict[str, Any]]:
    """tests/test_fastpaths.py's groups (digits-resnet on the digits benchmark), fewer in the dry run."""
    groups = {
        "last-prefix": {"method": "surgical", "blocks": ("last",)},
        "block2-sgd-bn-frozen": {"method": "surgical", "blocks": ("2",), "optimizer": "sgd", "options": (("bn", "frozen"),)},
        "full": {"method": "full", "steps": 8, "options": (("bn", "train"),)},
    }
    return {"last-prefix": {**groups["last-prefix"], "steps": 4}} if dry else groups


def stage_fused(dev: Any, dry: bool, work: Path) -> Outcome:
    from ftbench.data.base import get_benchmark
    from ftbench.train.pretrain import pretrained
    from ftbench.spec import RunSpec
    from ftbench.plan.resolve import resolve
    from ftbench.execution import fused
    from ftbench.execution.runner import fine_tune, result_rows

    triple = [(1e-3, 1e-4, 0), (1e-2, 0.0, 1), (3e-3, 1e-3, 0)][: 2 if dry else 3]  # (lr, wd, seed)
    figures: dict[str, Any] = {}
    ok = True
    worst: dict[str, tuple[float, float]] = {}
    mode16 = "default" if dev.type == "cuda" else "bf16"  # CUDA's default; forced on a CPU (dry run)
    for mode in ("fp32", mode16):
        for name, kw in _fused_groups(dry).items():
            specs = [resolve(RunSpec(**{"steps": 15, **kw, "lr": lr, "wd": wd, "seed": seed})) for lr, wd, seed in triple]
            bench = get_benchmark("digits")
            base = pretrained(specs[0].model, bench.source(specs[0]), dev)
            source = _state(base)
            drift = FP32_DRIFT
            if mode != "fp32":
                train = bench.target(specs[0]).train
                xb, yb = train.x[: specs[0].batch_size].to(dev), train.y[: specs[0].batch_size].to(dev)
                g32, g16 = _gradient(base, xb, yb, "fp32", dev), _gradient(base, xb, yb, mode, dev)
                drift = 2 * BF16_STEPS * min(float((g16 - g32).norm() / g32.norm()), BF16_GRAD)
            with precision(mode, dev):
                together = fused.train_fused(specs, dev.type)
                rows = []
                for spec, tr in zip(specs, together):
                    alone = fine_tune(spec, dev.type)
                    apart, moved = _apart(source, _state(alone.model), _state(tr.model))
                    a, b = result_rows(tr)[-1], result_rows(alone)[-1]
                    n_test = len(alone.target.test)
                    dacc = max(abs(a[k] - b[k]) for k in ("id_acc", "val_acc", "ood_acc"))
                    rows.append({"lr": spec.lr, "seed": spec.seed, "rel": apart / moved if moved else math.inf,
                                 "max_dacc": dacc, "one_image": 100.0 / n_test})
            rel = max(r["rel"] for r in rows)
            # float32: equal up to one test image (the CPU tests' argument); bf16: reported
            acc_ok = mode != "fp32" or all(r["max_dacc"] <= r["one_image"] + 1e-6 for r in rows)
            ok &= rel <= drift and acc_ok
            figures[f"{mode}/{name}"] = {"runs": rows, "max_rel": rel, "bound": drift, "passed": rel <= drift and acc_ok}
            w = worst.get(mode, (0.0, 0.0, math.inf))
            worst[mode] = (max(w[0], rel), max(w[1], max(r["max_dacc"] for r in rows)), min(w[2], drift))
    parts = [f"{'fp32' if m == 'fp32' else 'bf16'}: weights {w[0]:.1e} of training's move (bound "
             f"{w[2]:.1e}{'' if m == 'fp32' else f' = 2 x {BF16_STEPS:g} x gradient error'}), acc ±{w[1]:.2f} pt"
             for m, w in worst.items()]
    n = len(_fused_groups(dry)) * len(triple)
    return ok, f"{n} runs fused vs separate; " + "; ".join(parts), figures


@contextlib.contextmanager
def _no_grad_eval(model: Any) -> Iterator[None]:
    import torch

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, t in modes:
            m.train(t)


def _logits(model: Any, x: Any, mode: str, dev: Any) -> Any:
    import torch

    from ftbench.train import loop

    out = []
    with _no_grad_eval(model), precision(mode, dev):
        for i in range(0, x.shape[0], 1024):
            with loop.autocast(x.device):  # the loop's autocast, as patched by `precision`
                out.append(model(x[i:i + 1024]).float())
    return torch.cat(out)


def _gradient(model: Any, x: Any, y: Any, mode: str, dev: Any) -> Any:
    """The cross-entropy gradient of every parameter for one batch, flattened (BatchNorm in eval mode)."""
    import torch
    import torch.nn.functional as F

    from ftbench.train import loop

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        with precision(mode, dev):
            with loop.autocast(x.device):
                logits = model(x)
            grads = torch.autograd.grad(F.cross_entropy(logits.float(), y), params)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        for m, t in modes:
            m.train(t)
    return torch.cat([g.float().flatten() for g in grads])


def stage_bf16(dev: Any, dry: bool, work: Path) -> Outcome:
    from ftbench.data.base import get_benchmark
    from ftbench.train.pretrain import pretrained
    from ftbench.spec import RunSpec
    from ftbench.plan.resolve import resolve
    from ftbench.execution.runner import fine_tune, result_rows

    if dry:
        spec = resolve(RunSpec(benchmark="digits", method="full", steps=3, batch_size=32, optimizer="sgd", lr=1e-2, seed=0))
    else:  # the cifar-grid's network and data (benchmarks/perf.py), a short SGD run of every block
        perf = _perf()
        perf.register_grid()
        spec = resolve(RunSpec(benchmark="perf-cifar32", model="resnet26-cifar", method="full", steps=40,
                               batch_size=64, optimizer="sgd", lr=1e-2, wd=0.0, seed=0))
    mode16 = "default" if dev.type == "cuda" else "bf16"  # on a CPU, autocast is forced for the dry run
    bench = get_benchmark(spec.benchmark)
    source_model = pretrained(spec.model, bench.source(spec), dev)
    source = _state(source_model)
    target = bench.target(spec)
    x = target.test.x.to(dev)
    # 1. One forward pass of the source model: bf16 autocast against float32.
    z32, z16 = _logits(source_model, x, "fp32", dev), _logits(source_model, x, mode16, dev)
    fwd = float((z16 - z32).norm() / z32.norm())
    # 2. One training batch's gradient at the source weights: the per-step error.
    xb, yb = target.train.x[: spec.batch_size].to(dev), target.train.y[: spec.batch_size].to(dev)
    g32, g16 = _gradient(source_model, xb, yb, "fp32", dev), _gradient(source_model, xb, yb, mode16, dev)
    grad = float((g16 - g32).norm() / g32.norm())
    # 3. The same short run trained both ways.
    with precision("fp32", dev):
        t32 = fine_tune(spec, dev.type)
        r32 = result_rows(t32)[-1]
    with precision(mode16, dev):
        t16 = fine_tune(spec, dev.type)
        r16 = result_rows(t16)[-1]
    apart, moved = _apart(source, _state(t32.model), _state(t16.model))
    rel = apart / moved if moved else math.inf
    drift = BF16_STEPS * min(grad, BF16_GRAD)
    # 4. Accuracies: an image's prediction can change only if its float32 margin (top-1 minus top-2
    # logit) is within what the two runs' logits may differ by: `drift` of what fine-tuning moved
    # them plus BF16_FORWARD of their size, twice (either logit of the pair may move).
    zt = _logits(t32.model, x, "fp32", dev)
    top2 = zt.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    reach = 2 * (drift * (zt - z32).norm(dim=1) + BF16_FORWARD * zt.norm(dim=1))
    allowed = 100.0 * (int((margin < reach).sum()) + 1) / x.shape[0]
    dacc = abs(r16["ood_acc"] - r32["ood_acc"])
    ok = 0 < fwd <= BF16_FORWARD and 0 < grad <= BF16_GRAD and rel <= drift and dacc <= allowed
    figures = {"model": spec.model, "benchmark": spec.benchmark, "steps": spec.steps, "forward_rel": fwd,
               "forward_bound": BF16_FORWARD, "gradient_rel": grad, "gradient_bound": BF16_GRAD, "weights_rel": rel,
               "weights_bound": drift, "ood_acc_fp32": r32["ood_acc"], "ood_acc_bf16": r16["ood_acc"],
               "ood_acc_diff": dacc, "ood_acc_bound": allowed, "train_seconds_fp32": t32.train_seconds,
               "train_seconds_bf16": t16.train_seconds}
    summary = (f"{spec.model}, {spec.steps} SGD steps: logits {fwd:.1e} apart (bound {BF16_FORWARD:g}), one batch's "
               f"gradient {grad:.1e} (bound {BF16_GRAD:g}), trained weights {rel:.1e} of training's move (bound "
               f"{BF16_STEPS:g} x gradient's = {drift:.1e}), OOD acc {r16['ood_acc']:.2f} vs {r32['ood_acc']:.2f} "
               f"(bound ±{allowed:.2f}); train {t16.train_seconds:.2f} s bf16 vs {t32.train_seconds:.2f} s fp32")
    if fwd == 0 or grad == 0:
        summary = "bf16 autocast not in effect (float32's results exactly); " + summary
    return ok, summary, figures


def stage_nvjpeg(dev: Any, dry: bool, work: Path) -> Outcome:
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from ftbench.data.stream import ImageFiles, StreamSplit, decode, device_decode_wanted, resize_center_crop

    write_jpegs = _tests("test_stream")._write_jpegs
    (work / "420").mkdir()
    (work / "444").mkdir()
    paths = write_jpegs(work / "420", 16 if dry else 96)  # the tests' fabricated JPEGs (PIL: 4:2:0 chroma)
    paths444 = []
    for p in paths:  # the same pixels with full-resolution chroma: only the IDCT and colour conversion differ
        q = work / "444" / p.name
        Image.open(p).convert("RGB").save(q, quality=90, subsampling=0)
        paths444.append(q)

    def raw(files: list[Path]) -> tuple[float, float]:
        cpu = [decode(p) for p in files]  # the worker pool's decoder (libjpeg-turbo)
        data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
        on_dev = decode_jpeg(data, mode=ImageReadMode.RGB, device=dev)  # nvJPEG on CUDA
        d = [(a.to(dev).float() - b.float()).abs() for a, b in zip(cpu, on_dev)]
        return max(float(t.max()) for t in d), float(sum(t.sum() for t in d) / sum(t.numel() for t in d))

    max444, mean444 = raw(paths444)
    max420, mean420 = raw(paths)
    # The streamed split's resized batches, decoded in the pool (0) and on the device (1).
    split = StreamSplit(ImageFiles(paths, resize_center_crop(16, 18)), torch.arange(len(paths)) % 3,
                        (0.5,) * 3, (0.25,) * 3).to(dev)
    batches = {}
    for env in ("0", "1"):
        os.environ["FTBENCH_DEVICE_DECODE"] = env
        assert device_decode_wanted(split.images, split.device) == (env == "1")
        batches[env] = torch.cat(list(split.uint8_batches(8)))
    os.environ.pop("FTBENCH_DEVICE_DECODE")
    d = (batches["0"].float() - batches["1"].float()).abs()
    max_split, mean_split = float(d.max()), float(d.mean())
    stream = _perf().measure_stream(24 if dry else 512, 8 if dry else 256, dev)
    ok = (max444 <= JPEG_444_MAX and mean444 <= JPEG_444_MEAN and mean420 < JPEG_420_MEAN
          and mean_split < JPEG_420_MEAN and bool(stream["agree"]))
    figures = {"images": len(paths), "raw_444_max": max444, "raw_444_mean": mean444, "raw_420_max": max420,
               "raw_420_mean": mean420, "split_max": max_split, "split_mean": mean_split,
               "bounds": {"444_max": JPEG_444_MAX, "444_mean": JPEG_444_MEAN, "420_mean": JPEG_420_MEAN},
               "stream_speedup": stream["speedup"], "stream_agree": stream["agree"]}
    summary = (f"{len(paths)} JPEGs, grey levels device vs CPU: 4:4:4 max {max444:.0f} mean {mean444:.2f} "
               f"(bounds {JPEG_444_MAX}, {JPEG_444_MEAN}); 4:2:0 max {max420:.0f} mean {mean420:.2f} (mean < "
               f"{JPEG_420_MEAN:g}); resized batches max {max_split:.0f} mean {mean_split:.2f}; stream "
               f"{stream['speedup']:.2f}x ImageFolder")
    return ok, summary, figures


PAPER_SUITE = "paper-surgical-cifar10c"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool) or isinstance(v, (int, float, str)) or isinstance(v, list):
        return json.dumps(v)  # JSON's strings, numbers, booleans and arrays of them are valid TOML
    raise TypeError(f"gpu_check: cannot write {v!r} as TOML")


def stage_paper(dev: Any, dry: bool, work: Path) -> Outcome:
    import pandas as pd

    from ftbench.cli import main as ftbench_main
    from ftbench.data import cifar
    from ftbench.plan.suites import expand_suite, load_suites

    make_cifar_root = _tests("test_cifar").make_cifar_root
    root = work / "data"
    make_cifar_root(root)  # CIFAR-10 + CIFAR-10-C files as `ftbench fetch` leaves them; gaussian_noise filled
    os.environ["FTBENCH_DATA"] = str(root)
    suites, _ = load_suites(REPO / "ftbench" / "benchmarks.toml")
    table = dict(suites[PAPER_SUITE])
    # Its first runs: one corruption, one seed; 5 shots (the fabricated test split has 20 images a class).
    table.update(description=f"{PAPER_SUITE}'s first runs on fabricated data", corruption=["gaussian_noise"],
                 seed=[0], shots=5)
    if dry:  # the plumbing only: a small model, two runs, a two-epoch source model
        table.update(model="digits-resnet", method=["none", "surgical"], block=[1], lr=[1e-3], epochs=2, checkpoints=2)
        cifar.PRETRAIN_RECIPE["epochs"] = 1
    name = "gpu-check-paper"
    suites_file = work / "suites.toml"
    suites_file.write_text(f"[suites.{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items()))
    expected = len(expand_suite(name, suites_file))
    out = work / "results"
    args = ["sweep", name, "--suites", str(suites_file), "--out", str(out), "--device", dev.type]
    print("$ ftbench", shlex.join(args), flush=True)
    t0 = time.perf_counter()
    code = ftbench_main(args)
    seconds = time.perf_counter() - t0
    files = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    print("$ ftbench", shlex.join(args), "(again: nothing to run)", flush=True)
    code2 = ftbench_main(args)
    again = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    rows = pd.concat([pd.read_parquet(p) for p in files]) if files else pd.DataFrame()
    final = rows[rows["final"]] if len(rows) else rows
    ok_runs = int((final["status"] == "ok").sum()) if len(final) else 0
    by_method = final.groupby("method")["ood_acc"].mean().round(2).to_dict() if len(final) else {}
    ok = code == 0 and code2 == 0 and len(files) == expected == ok_runs and again == files
    figures = {"runs_expected": expected, "result_files": len(files), "runs_ok": ok_runs, "sweep_seconds": seconds,
               "exit_codes": [code, code2], "second_sweep_wrote": sorted(str(p) for p in again if again[p] != files.get(p)),
               "mean_ood_acc_by_method": by_method, "model": table.get("model")}
    summary = (f"{ok_runs}/{expected} runs ok ({table.get('model')}, {seconds:.0f} s); rerun wrote "
               f"{len(figures['second_sweep_wrote'])}; mean OOD acc " + ", ".join(f"{k} {v:.1f}" for k, v in by_method.items()))
    return ok, summary, figures


def stage_cifar_grid(dev: Any, dry: bool, work: Path) -> Outcome:
    perf = _perf()
    lrs = [1e-3] if dry else [3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    if dry:  # a source model of two epochs: the plumbing, not the accuracy
        from ftbench.train import pretrain

        pretrain.RECIPE = {**pretrain.RECIPE, "epochs": 2}
    # The dry run: the tiny grid with digits-resnet (it takes the 3×32×32 images too), one lr.
    r = perf.cifar_grid("digits-resnet" if dry else "resnet26-cifar", lrs, "tiny" if dry else "full", dev)
    mfu = r.get("mfu")
    figures = {k: r.get(k) for k in ("runs", "ref_seconds", "ftbench_seconds", "speedup", "agree", "mfu",
                                     "model_tflop", "tflops", "peak_tflops")}
    targets = {"speedup >= 20x": r["speedup"] >= 20, "MFU >= 30%": mfu is not None and mfu >= 0.3,
               "grid < 60 s": r["ftbench_seconds"] < 60}
    figures["targets"] = targets
    util = (f"MFU {100 * mfu:.1f}% of bf16 peak {r['peak_tflops']:.0f} TFLOP/s" if mfu is not None
            else f"{r.get('tflops', 0):.3g} TFLOP/s (no bf16 peak known for this device)")
    summary = (f"{'tiny grid, ' if dry else ''}{r['runs']} runs: ftbench {r['ftbench_seconds']:.1f} s, reference "
               f"{r['ref_seconds']:.1f} s: {r['speedup']:.2f}x; {util}; accuracies "
               f"{'agree' if r['agree'] else 'DISAGREE'}")
    if not dry:  # the targets, for a GPU's full grid
        summary += "; targets: " + ", ".join(f"{k} {'met' if v else 'not met'}" for k, v in targets.items())
    return bool(r["agree"]), summary, figures


STAGES: dict[str, Callable[[Any, bool, Path], Outcome]] = {
    "cuda-tests": stage_cuda_tests, "fused": stage_fused, "bf16": stage_bf16, "nvjpeg": stage_nvjpeg,
    "paper": stage_paper, "cifar-grid": stage_cifar_grid,
}


def run_stage(name: str, device: str, dry: bool, result: Path, work: Path) -> int:
    """The child: run one stage, write its outcome to ``result`` (JSON), never raise."""
    import traceback

    t0 = time.perf_counter()
    try:
        import torch

        if device == "cpu":
            torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        dev = torch.device(device)
        ok, summary, figures = STAGES[name](dev, dry, work)
        status = "pass" if ok else "fail"
    except ModuleNotFoundError as e:
        traceback.print_exc()
        status, summary, figures = "missing", (f"missing package {e.name!r}: it must already be in this Python "
                                               f"(pip install {e.name}; nothing is installed here)"), {"missing": e.name}
    except Exception as e:  # reported as the stage's row; the other stages go on
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        status, summary, figures = "error", f"{type(e).__name__}: {first}"[:300], {}
    out = {"stage": name, "status": status, "summary": summary, "figures": figures,
           "seconds": time.perf_counter() - t0}
    _write_atomic(result, json.dumps(out, indent=1, default=str))
    return 0


# --- the parent: stages in order, the table -----------------------------------------------------


GROUP_LINE = re.compile(r"group (\d+)/(\d+) \((\d+) runs\): reference ([\d.]+) s, ftbench ([\d.]+) s")


def _partial(name: str, log: str) -> str:
    """What a stage that ran out of time got done, from its log (cifar-grid: the groups finished)."""
    if name == "cifar-grid":
        m = list(GROUP_LINE.finditer(log))
        if m:
            g, n, _, ref, ours = m[-1].groups()
            return (f"; after {g}/{n} groups: reference {float(ref):.0f} s, ftbench {float(ours):.1f} s "
                    f"({float(ref) / max(float(ours), 1e-9):.1f}x on those)")
    lines = [ln for ln in log.splitlines() if ln.strip()]
    return f"; last output: {lines[-1][:160]}" if lines else ""


def _git() -> str:
    """The checkout's commit (and whether it has local changes); "unknown" in a copy without git."""
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if git.returncode != 0:
        return "unknown"
    return git.stdout.strip() + (" (with local changes)" if dirty.stdout.strip() else "")


def _environment(device: str, git: str) -> dict[str, str]:
    import torch

    info = {"torch": torch.__version__, "cuda": str(torch.version.cuda or "none"), "git": git}
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        info["torchvision"] = "missing"
    try:
        import ftbench

        info["ftbench"] = ftbench.__version__
    except ImportError:
        info["ftbench"] = "missing"
    if device == "cuda":
        info["device"] = f"{torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)"
    else:
        model = ""
        with contextlib.suppress(OSError):
            model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
        info["device"] = f"cpu ({model or 'unknown'}, {os.cpu_count()} CPUs)"
    return info


def table(report: dict[str, Any]) -> str:
    """The markdown for docs/performance.md: device, date, command, one row per stage."""
    e = report["environment"]
    lines = [f"### GPU check: {e['device']}, {report['date']}{' (dry run)' if report['dry_run'] else ''}", "",
             f"`{report['command']}` — torch {e['torch']} (CUDA {e['cuda']}), torchvision {e['torchvision']}, "
             f"ftbench {e['ftbench']}, git {e['git']}; {report['seconds']:.0f} s of a {report['cap']:.0f} s cap", "",
             "| stage | result | seconds | figures |", "|---|---|---:|---|"]
    for s in report["stages"]:
        summary = s["summary"].replace("|", "\\|")
        lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']:.0f} | {summary} |")
    return "\n".join(lines) + "\n"


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when visible), cuda or cpu")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes: every stage's plumbing (on a CPU: the CUDA paths forced there)")
    ap.add_argument("--out", default=None, help="folder for gpu-check.md, gpu-check.json and the logs (default: $OUT, else ./gpu-check)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)} (default: all)")
    ap.add_argument("--total-seconds", type=float, default=None,
                    help=f"wall-clock cap of all stages (default {TOTAL_CAP}; dry run {DRY_TOTAL_CAP})")
    ap.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device not in ("auto", "cuda", "cpu"):
        return _fail(f"unknown device {args.device!r}; accepted: auto, cuda, cpu")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        return _fail(f"unknown stage {(bad or [args.stages])[0]!r}; accepted: {', '.join(STAGES)}")
    if args.stage:
        if args.stage not in STAGES or not args.result or not args.work or args.device == "auto":
            return _fail("--stage needs a known stage, --result, --work and --device cpu|cuda")
        return run_stage(args.stage, args.device, args.dry_run, Path(args.result), Path(args.work))
    cap = args.total_seconds if args.total_seconds is not None else (DRY_TOTAL_CAP if args.dry_run else TOTAL_CAP)
    if not math.isfinite(cap) or cap <= 0:
        return _fail(f"--total-seconds must be a positive number of seconds, got {args.total_seconds}")
    out = Path(args.out or os.environ.get("OUT") or "gpu-check")
    if out.exists() and not out.is_dir():
        return _fail(f"--out {str(out)!r} exists and is not a folder")
    start = time.monotonic()
    try:
        import torch
    except ModuleNotFoundError:
        return _fail("missing package 'torch': this check runs with the Python it is started with and installs nothing")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda but no CUDA GPU is visible; --device cpu --dry-run checks the plumbing on a CPU")
    if device == "cpu" and not args.dry_run:
        return _fail("--device cpu runs only with --dry-run (the stages' plumbing): the check's figures need a CUDA GPU")
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "gpu-check-logs"
    logs.mkdir(exist_ok=True)
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    git = _git()  # of the code the stages run, before anything changes it
    command = shlex.join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"gpu-check: {len(stages)} stages on {device}{' (dry run)' if args.dry_run else ''}, cap {cap:.0f} s; "
          f"logs in {logs}", file=sys.stderr, flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="ftbench-gpu-check-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    if not (args.dry_run and env.get("FTBENCH_CACHE")):  # the dry run may reuse the caller's (the tests' session cache)
        env["FTBENCH_CACHE"] = str(scratch / "cache")  # a fresh clone's: source models trained here, shared by the stages
    env.pop("FTBENCH_GPU_CHECK_DEVICE", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if device == "cpu":  # the CUDA defaults forced onto the CPU, so the dry run takes the same code paths
        env["FTBENCH_FASTPATH"] = "all"
    if args.dry_run:
        env["FTBENCH_WORKERS"] = "0"  # decode in the stage's process: starting decoder processes costs more here
    results = []
    try:
        for i, name in enumerate(stages):
            left = cap - (time.monotonic() - start)
            budget = DRY_BUDGET if args.dry_run else BUDGET[name]
            if name == "cifar-grid" or i == len(stages) - 1:
                budget = max(budget, left)  # the last stage takes what is left
            room = left - 2  # for writing the table
            if room < min(10, budget):
                results.append({"stage": name, "status": "skipped", "seconds": 0.0, "figures": {},
                                "summary": f"not started: the total cap of {cap:.0f} s was reached"})
                continue
            timeout = min(budget, room)
            work = scratch / name
            work.mkdir()
            result = scratch / f"{name}.json"
            log = logs / f"{name}.log"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--device", device,
                   "--result", str(result), "--work", str(work)] + (["--dry-run"] if args.dry_run else [])
            print(f"gpu-check: {name} (up to {timeout:.0f} s) ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            with open(log, "w", encoding="utf-8") as f:
                proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                try:
                    proc.wait(timeout=timeout)
                    timed_out = False
                except subprocess.TimeoutExpired:
                    timed_out = True
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)  # the stage's own process group: it and its workers
                    proc.wait()
            seconds = time.monotonic() - t0
            text = log.read_text(encoding="utf-8", errors="replace")
            if timed_out:
                r = {"stage": name, "status": "timeout", "figures": {},
                     "summary": f"stopped after {seconds:.0f} s (its budget)" + _partial(name, text)}
            elif result.is_file():
                r = json.loads(result.read_text(encoding="utf-8"))
            else:
                r = {"stage": name, "status": "error", "figures": {"returncode": proc.returncode},
                     "summary": f"the stage's process died (exit {proc.returncode})" + _partial(name, text)}
            r["seconds"] = seconds
            r["log"] = str(log)
            results.append(r)
            print(f"gpu-check: {name}: {r['status']} ({seconds:.0f} s) {r['summary']}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"date": date, "command": command, "dry_run": args.dry_run, "cap": cap,
              "seconds": time.monotonic() - start, "environment": _environment(device, git), "stages": results}
    md = table(report)
    _write_atomic(out / "gpu-check.md", md)
    _write_atomic(out / "gpu-check.json", json.dumps(report, indent=1, default=str))
    print(md, end="")
    print(f"(also in {out / 'gpu-check.md'} and {out / 'gpu-check.json'})", file=sys.stderr)
    return 0 if results and all(r["status"] == "pass" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
