"""The Slurm executor against a real single-node Slurm on 127.0.0.1 (tests/services/slurm.sh).

Skipped, with the reason, only where Slurm is not installed or cannot start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from sweep_support import reference_results, result_set, write_suite

from ftbench.spec import expand_suite

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "services" / "slurm.sh"
SUITE = """
[suites.tiny]
benchmark = "digits"
shift = ["corruption", "label-flip"]
method = "surgical"
block = [1, "last"]
lr = 1e-2
steps = 12
checkpoints = 3
seed = 0

[suites.tiny.slurm]
time = 10
cpus_per_job = 1

[suites.bad]
method = "surgical"
[suites.bad.slurm]
time = 10
queue = "gpu"
"""


@pytest.fixture(scope="module")
def slurm() -> str:
    """SLURM_CONF of a running single-node cluster: the one tests/services/slurm.sh started (by
    .ci/run, or here; then stopped at the end)."""
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed (apt-get install -y slurm-wlm munge)")
    pytest.importorskip("submitit")
    was_up = subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0
    r = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        reason = (r.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"Slurm could not start here: {reason}")
    conf = r.stdout.strip().splitlines()[-1].split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    if not was_up:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_suite(tmp_path_factory, SUITE)


@pytest.fixture(scope="module")
def reference(suite_file: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return reference_results(suite_file, tmp_path_factory)


def test_job_array_end_to_end(cli, slurm: str, suite_file: Path, reference: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "results"
    r = cli("sweep", "tiny", "--suites", suite_file, "--out", out, "--executor", "slurm", "--runs-per-job", "2",
            "--device", "cpu", "--format", "markdown")
    assert r.code == 0, r.err
    assert "ran 4 runs" in r.err and "[4/4]" in r.err and "| block 1 |" in r.out
    pd.testing.assert_frame_equal(result_set(out), reference, check_exact=True)
    jobs = set(json.loads((out / ".slurm" / "submitted.json").read_text()).values())
    assert len(jobs) == 2 and all("_" in j for j in jobs)  # one array, two tasks of two runs each
    r = cli("sweep", "tiny", "--suites", suite_file, "--out", out, "--executor", "slurm")
    assert r.code == 0 and "0 to run" in r.err


def test_bad_slurm_settings_are_usage_errors(cli, suite_file: Path, tmp_path: Path) -> None:
    r = cli("sweep", "bad", "--suites", suite_file, "--out", tmp_path, "--executor", "slurm")
    assert r.code == 2 and r.err.startswith("error: ") and ":20: suite 'bad': unknown slurm setting 'queue'" in r.err
    r = cli("sweep", "tiny", "--suites", suite_file, "--out", tmp_path, "--executor", "slurm", "--runs-per-job", "0")
    assert r.code == 2 and "--runs-per-job must be a positive integer, got 0" in r.err
    r = cli("sweep", "tiny", "--suites", suite_file, "--out", tmp_path, "--partition", "gpu")
    assert r.code == 2 and "--partition: not an option of --executor local" in r.err


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_each_run_recorded_once(slurm: str, suite_file: Path,
                                                                 reference: pd.DataFrame, tmp_path: Path) -> None:
    import submitit

    from ftbench.sweep.slurm import SlurmOptions, run_slurm

    out = tmp_path / "results"
    specs = expand_suite("tiny", suite_file)
    run_slurm(specs, out, "cpu", opts=SlurmOptions(time=60, runs_per_job=4, wait=False), progress=False)
    (job_id,) = set(json.loads((out / ".slurm" / "submitted.json").read_text()).values())
    # Wait until the job claims its first run (submitit's signal handler is installed by then).
    deadline = time.monotonic() + 300
    while not list(out.glob(".work/*.lock")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(out.glob(".work/*.lock")), "the job never started a run"
    submitit.SlurmJob(folder=out / ".slurm" / "%j", job_id=job_id)._interrupt()  # preemption: TERM, then USR2
    # Rerunning the command follows the requeued job instead of submitting its runs again.
    summary = run_slurm(specs, out, "cpu", opts=SlurmOptions(time=60, runs_per_job=4), progress=False)
    assert summary.failed == 0 and summary.done + summary.skipped == 4
    assert set(json.loads((out / ".slurm" / "submitted.json").read_text()).values()) == {job_id}
    show = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert "Restarts=1" in show
    log = next((out / ".slurm" / job_id).glob("*_log.out")).read_text()
    assert "this job is preempted" in log and f"Requeued job {job_id}" in log  # submitit's words
    pd.testing.assert_frame_equal(result_set(out), reference, check_exact=True)
