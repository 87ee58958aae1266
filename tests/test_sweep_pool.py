"""The local pool: several workers give the same results as one, survive dying workers, record
failures (raise, NaN, out of memory), and a sweep killed at any moment and restarted ends with
exactly the uninterrupted result set."""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from sweep_support import result_set, write_suite

from ftbench.results.store import read_results
from ftbench.spec import RunSpec
from ftbench.plan.suites import expand_suite
from ftbench.sweep.local import run_sweep
from ftbench.sweep.pool import run_pool, worker_slots
from ftbench.sweep.task import claim

# Eight quick runs; checkpoints make every run write resumable state mid-training too.
SUITE = """
[suites.tiny]
benchmark = "digits"
shift = ["corruption", "label-flip"]
method = "surgical"
block = [1, "last"]
lr = 1e-2
steps = 12
checkpoints = 3
seed = [0, 1]
"""
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_suite(tmp_path_factory, SUITE)


@pytest.fixture(scope="module")
def reference(suite_file: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The uninterrupted result set, run in this process, one run after the other."""
    out = tmp_path_factory.mktemp("reference")
    specs = expand_suite("tiny", suite_file)
    assert len(specs) == 8  # 2 shifts x 2 blocks x 2 seeds
    summary = run_sweep(specs, out, "cpu", progress=False, threads=1)
    assert summary.done == 8
    return result_set(out)


def assert_same(out: Path, reference: pd.DataFrame) -> None:
    got = result_set(out)
    assert list(got["run_id"].unique()) == list(reference["run_id"].unique())
    assert got.groupby("run_id").size().eq(3).all()  # 2 checkpoint rows + the final row, each once
    pd.testing.assert_frame_equal(got, reference, check_exact=True)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".work"]
    assert leftovers == [] and not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not list(out.glob(".work/*/resume.pt"))  # resume states go once their run is done


def test_worker_slots_without_gpus() -> None:
    assert worker_slots("cpu", None, 1) == [None]
    assert worker_slots("cpu", 3, 2) == [None, None, None]


def test_two_workers_give_exactly_the_results_of_one(cli, suite_file: Path, reference: pd.DataFrame,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "results"
    r = cli("sweep", "tiny", "--suites", suite_file, "--out", out, "--jobs", "2", "--device", "cpu",
            "--format", "markdown")
    assert r.code == 0, r.err
    assert "8 to run" in r.err and "ran 8 runs" in r.err and "[8/8]" in r.err
    assert_same(out, reference)
    r = cli("sweep", "tiny", "--suites", suite_file, "--out", out, "--jobs", "2", "--dry-run")
    assert "8 runs, 8 done, 0 to do" in r.out


# --- an execute that misbehaves inside a worker (module-level: workers import it by name) ---------

def _misbehave(plan: dict, marker_dir: str, spec: RunSpec, device: str, workdir):
    """Per run id: "die-once" (SIGKILL itself the first time, as the OOM killer would), "die"
    (every time), or an exception to raise; other runs run normally."""
    from ftbench.execution.runner import execute

    what = plan.get(spec.run_id)
    marker = Path(marker_dir) / spec.run_id
    if what == "die" or (what == "die-once" and not marker.exists()):
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if isinstance(what, BaseException):
        raise what
    return execute(spec, device, workdir)


def test_dead_workers_failures_and_held_runs(suite_file: Path, reference: pd.DataFrame, tmp_path: Path) -> None:
    """One pool sweep where workers get killed, runs raise or run out of memory, and one run is
    held by another process: every run ends recorded exactly once, and the sweep goes on."""
    import threading

    import torch

    from ftbench.results.store import write_result
    from ftbench.sweep.task import failed_row

    specs = expand_suite("tiny", suite_file)
    held, once, always, mem, cuda_oom, raises, normal = specs[:7]
    plan = {once.run_id: "die-once", always.run_id: "die", mem.run_id: MemoryError(),
            cuda_oom.run_id: torch.cuda.OutOfMemoryError("CUDA out of memory."), raises.run_id: ValueError("bad thing")}
    out = tmp_path / "results"
    box: dict = {}
    with claim(out, held.run_id) as mine:  # "another sweep" has the first run
        assert mine
        sweep = threading.Thread(target=lambda: box.setdefault("s", run_pool(
            specs[:7], out, "cpu", jobs=2, progress=False,
            execute=functools.partial(_misbehave, plan, str(tmp_path)))))
        sweep.start()
        others = [s.run_id for s in specs[1:7]]
        deadline = time.monotonic() + 600
        while not all((out / f"{r}.parquet").exists() for r in others) and time.monotonic() < deadline:
            time.sleep(0.2)
        # ... which records it, then lets go: the pool must not run it again.
        write_result(out, [failed_row(held, RuntimeError("finished by the other sweep"))])
    sweep.join(600)
    summary = box["s"]
    assert (tmp_path / once.run_id).exists() and (tmp_path / always.run_id).exists()  # workers did die
    assert (summary.done, summary.failed, summary.skipped) == (2, 4, 1)
    df, problems = read_results(out)
    assert not problems and df["run_id"].nunique() == 7
    final = df.drop_duplicates("run_id", keep="last").set_index("run_id")  # a run's final row is its last
    assert final.loc[held.run_id, "error"] == "RuntimeError: finished by the other sweep"
    assert final.loc[always.run_id, "status"] == "failed"
    assert "WorkerDied" in final.loc[always.run_id, "error"] and "SIGKILL" in final.loc[always.run_id, "error"]
    assert final.loc[mem.run_id, "error"] == "MemoryError: out of memory"
    assert final.loc[cuda_oom.run_id, "error"] == "OutOfMemoryError: CUDA out of memory."
    assert final.loc[raises.run_id, "error"] == "ValueError: bad thing"
    # The run whose worker died once was redone from scratch, exactly as uninterrupted.
    got = result_set(out)
    for r in (once.run_id, normal.run_id):
        pd.testing.assert_frame_equal(got[got["run_id"] == r].reset_index(drop=True),
                                      reference[reference["run_id"] == r].reset_index(drop=True),
                                      check_exact=True, check_dtype=False)


# --- SIGKILL at random moments --------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses process groups and /proc")
def test_sigkill_at_random_moments_then_restart_gives_the_uninterrupted_results(
        suite_file: Path, reference: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "ftbench.cli", "sweep", "tiny", "--suites", str(suite_file), "--out", str(out),
           "--jobs", "2", "--device", "cpu", "--format", "csv"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    rng = random.Random(5)
    # Trials: kill the whole process group (driver and workers) or one worker only, at random moments.
    for what in ("group", "worker", "group"):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + rng.uniform(2.0, 9.0)
        while time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        if p.poll() is None:
            if what == "group":
                os.killpg(p.pid, signal.SIGKILL)
            else:
                for child in _children(p.pid):  # a worker, not multiprocessing's resource tracker
                    if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
                        os.kill(child, signal.SIGKILL)
                        break
        _, err = p.communicate(timeout=300)
        if what == "group" and p.returncode != -signal.SIGKILL:
            assert p.returncode == 0, err.decode()  # it finished before the kill
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_same(out, reference)
