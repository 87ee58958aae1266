"""The GPU check (benchmarks/gpu_check.py) and its CUDA tests.

``test_cuda_*`` need a CUDA GPU and are skipped without one; the GPU check runs them there
(``pytest tests/test_gpu_check.py -k cuda``). With ``FTBENCH_GPU_CHECK_DEVICE=cpu`` (what the check's
``--dry-run`` on a CPU sets) they run on the CPU with CUDA's defaults forced (fused training,
device decoding), so their plumbing is tested here and on the GPU only the GPU can fail them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from scripts import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> str:
    """The device of the CUDA tests: ``cuda`` (skipped without one), or ``$FTBENCH_GPU_CHECK_DEVICE``."""
    dev = os.environ.get("FTBENCH_GPU_CHECK_DEVICE", "cuda")
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (python benchmarks/gpu_check.py runs these on one)")
    if dev == "cpu":  # CUDA's defaults, forced: the same code paths on a CPU
        monkeypatch.setenv("FTBENCH_FASTPATH", "all")
        monkeypatch.setenv("FTBENCH_DEVICE_DECODE", "1")
    return dev


def _device_name(dev: str) -> str:
    from ftbench.execution.runner import _device_name

    return _device_name(torch.device(dev))


SUITE = """
[suites.gpu]
description = "two fusable groups of two runs (lr) on digits"
benchmark = "digits"
method = "surgical"
block = [1, "last"]
lr = [1e-3, 1e-2]
seed = 0
steps = 20
"""


def _results(folder: Path) -> pd.DataFrame:
    files = sorted(folder.glob("*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in files]) if files else pd.DataFrame()


def test_cuda_run_writes_a_row_made_on_the_gpu(cli, gpu: str, tmp_path: Path) -> None:
    r = cli("run", "--benchmark", "digits", "--method", "surgical", "--block", "1", "--steps", "20",
            "--device", gpu, "--out", tmp_path)
    assert r.code == 0, r.err
    rows = _results(tmp_path)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row.status == "ok" and row.device == _device_name(gpu)
    assert all(0 <= row[k] <= 100 for k in ("id_acc", "val_acc", "ood_acc"))
    assert row.ood_acc > 20  # 10 classes: a broken device path (NaN weights, wrong data) gives chance or less
    if gpu == "cuda":
        from ftbench.execution.runner import pick_device

        assert pick_device("auto").type == "cuda" and row.threads == 0


def test_cuda_sweep_trains_fusable_runs_together_each_once(cli, gpu: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA a sequential sweep fuses runs differing in lr and seed (ftbench/execution/fused.py). A fused
    group that raises falls back run by run with a warning: this test fails on that warning too."""
    from ftbench.execution import fused

    calls: list[tuple[int, str]] = []
    real = fused.run_fused

    def spy(specs, device="auto", workdirs=None):  # noqa: ANN001, ANN202
        try:
            rows = real(specs, device, workdirs)
        except Exception as e:
            calls.append((len(specs), type(e).__name__))
            raise
        calls.append((len(specs), "ok"))
        return rows

    monkeypatch.setattr(fused, "run_fused", spy)
    suites = tmp_path / "suites.toml"
    suites.write_text(SUITE)
    out = tmp_path / "results"
    r = cli("sweep", "gpu", "--suites", suites, "--out", out, "--device", gpu)
    assert r.code == 0, r.err
    assert "warning" not in r.err
    assert calls == [(2, "ok"), (2, "ok")]
    rows = _results(out)
    assert len(rows) == 4 and rows.run_id.nunique() == 4
    assert (rows.status == "ok").all() and (rows.device == _device_name(gpu)).all()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    r = cli("sweep", "gpu", "--suites", suites, "--out", out, "--device", gpu)
    assert r.code == 0, r.err
    assert len(calls) == 2 and stamps == {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}


def test_cuda_worker_pool_shares_the_gpu_and_records_each_run_once(cli, gpu: str, tmp_path: Path) -> None:
    """The local worker pool (ftbench/sweep/pool.py), two workers on one GPU (--per-gpu 2): each worker
    gets CUDA_VISIBLE_DEVICES; every run is recorded once, made on the GPU."""
    suites = tmp_path / "suites.toml"
    suites.write_text(SUITE)
    out = tmp_path / "results"
    r = cli("sweep", "gpu", "--suites", suites, "--out", out, "--device", gpu, "--jobs", "2", "--per-gpu", "2")
    assert r.code == 0, r.err
    rows = _results(out)
    assert len(rows) == 4 and rows.run_id.nunique() == 4
    assert (rows.status == "ok").all() and (rows.device == _device_name(gpu)).all()


def test_cuda_device_decode_falls_back_for_a_png_named_jpeg(gpu: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """nvJPEG refuses a batch holding a PNG under a .JPEG name (ImageNet train has one); the batch is
    then decoded file by file as the worker pool decodes it. The pool resizes on the CPU and the
    fallback on the device: the same antialiased bilinear weights, rounded to uint8 each, so at most
    one grey level apart."""
    from ftbench.data.stream import ImageFiles, StreamSplit, device_decode_wanted, resize_center_crop

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        px = (rng.random((30, 36, 3)) * 64 + np.linspace(0, 180, 36)[None, :, None]).astype(np.uint8)
        p = tmp_path / f"{i}.JPEG"
        Image.fromarray(px).save(p, quality=90, format="PNG" if i == 2 else "JPEG")
        paths.append(p)
    split = StreamSplit(ImageFiles(paths, resize_center_crop(16)), torch.zeros(4, dtype=torch.long), (0.5,) * 3,
                        (0.25,) * 3).to(gpu)
    monkeypatch.setenv("FTBENCH_DEVICE_DECODE", "0")
    want = torch.cat(list(split.uint8_batches(8)))
    monkeypatch.setenv("FTBENCH_DEVICE_DECODE", "1")
    assert device_decode_wanted(split.images, split.device)
    got = torch.cat(list(split.uint8_batches(8)))
    assert got.device.type == torch.device(gpu).type and got.shape == want.shape == (4, 3, 16, 16)
    assert int((got.int() - want.int()).abs().max()) <= 1


# --- the check itself, in its dry run on the CPU -------------------------------------------------


def _gpu_check():  # noqa: ANN202
    return load_script("benchmarks/gpu_check.py", "ftbench_gpu_check")


def test_dry_run_on_the_cpu_runs_every_stage_and_writes_the_table(tmp_path: Path, capsys, monkeypatch) -> None:
    check = _gpu_check()
    monkeypatch.delenv("OUT", raising=False)
    code = check.main(["--device", "cpu", "--dry-run", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == list(check.STAGES)
    for s in stages.values():  # the log of a failed stage says why
        assert s["status"] == "pass", (s["stage"], s["summary"], Path(s["log"]).read_text()[-3000:])
    assert code == 0
    assert stages["cuda-tests"]["figures"]["passed"] == 4  # the CUDA tests ran, on the CPU
    assert stages["paper"]["figures"]["runs_ok"] == stages["paper"]["figures"]["runs_expected"] == 2
    assert stages["bf16"]["figures"]["forward_rel"] > 0  # bf16 really was in effect
    md = (tmp_path / "out" / "gpu-check.md").read_text()
    assert md == out  # the table printed is the table written
    assert md.startswith("### GPU check: cpu (") and "(dry run)" in md
    assert "`python benchmarks/gpu_check.py --device cpu --dry-run --out " in md
    assert "| stage | result | seconds | figures |" in md
    assert all(f"| {name} | pass |" in md for name in check.STAGES)


def test_stages_past_their_time_are_rows_and_the_next_ones_still_start(tmp_path: Path, capsys, monkeypatch) -> None:
    """A stage past its budget is killed and reported as a row; the next stage still starts; one
    that the total cap leaves no time for is reported as not started; the exit code is 1."""
    check = _gpu_check()
    # Each stage's process never ends (a stand-in interpreter that sleeps), so the budgets decide,
    # not how fast this machine is.
    sleeper = tmp_path / "sleeping-python"
    sleeper.write_text("#!/bin/sh\nexec sleep 600\n")
    sleeper.chmod(0o755)
    monkeypatch.setattr(check.sys, "executable", str(sleeper))
    monkeypatch.setattr(check, "DRY_BUDGET", 6)
    code = check.main(["--device", "cpu", "--dry-run", "--stages", "paper,fused,nvjpeg", "--total-seconds", "17",
                       "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    capsys.readouterr()
    got = [(s["stage"], s["status"]) for s in report["stages"]]
    assert code == 1 and got == [("paper", "timeout"), ("fused", "timeout"), ("nvjpeg", "skipped")]
    assert re.match(r"stopped after \d+ s \(its budget\)", report["stages"][0]["summary"])
    assert report["stages"][2]["summary"] == "not started: the total cap of 17 s was reached"


def test_partial_grid_figures_come_from_the_progress_lines() -> None:
    check = _gpu_check()
    log = ("cifar-grid: 25 runs in 5 groups on NVIDIA H100\n"
           "  group 1/5 (5 runs): reference 50.0 s, ftbench 2.0 s\n"
           "  group 2/5 (5 runs): reference 101.5 s, ftbench 4.1 s\n")
    assert check._partial("cifar-grid", log) == "; after 2/5 groups: reference 102 s, ftbench 4.1 s (24.8x on those)"


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "error: unknown device 'tpu'; accepted: auto, cuda, cpu\n"),
    (["--stages", "fused,bogus"], "error: unknown stage 'bogus'; accepted: cuda-tests, fused, bf16, nvjpeg, paper, cifar-grid\n"),
    (["--device", "cpu"], "error: --device cpu runs only with --dry-run (the stages' plumbing): the check's figures "
                          "need a CUDA GPU\n"),
    (["--device", "cpu", "--dry-run", "--total-seconds", "0"],
     "error: --total-seconds must be a positive number of seconds, got 0.0\n"),
])
def test_bad_arguments_are_one_error_line(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    check = _gpu_check()
    code = check.main([*args, "--out", str(tmp_path / "out")])
    cap = capsys.readouterr()
    assert code == 2 and cap.err == message and not (tmp_path / "out").exists()
