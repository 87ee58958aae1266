"""Sweeps: run what is missing, skip what is done, record failures, never half-write a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftbench.results.store import read_results
from ftbench.spec import RunSpec
from ftbench.plan.suites import expand_suite
from ftbench.plan.resolve import resolve
from ftbench.sweep.local import run_sweep

SUITE = """
[suites.tiny]
benchmark = "digits"
shift = ["corruption", "label-flip"]
method = ["surgical", "linear-probe"]
block = [1, "last"]
lr = 1e-2
steps = 5
seed = 0
"""


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    f = tmp_path / "benchmarks.toml"
    f.write_text(SUITE)
    return f


def test_sweep_runs_then_skips_finished_runs(cli, tmp_path: Path, suite_file: Path) -> None:
    out = tmp_path / "results"
    r = cli("sweep", "tiny", "--suites", suite_file, "--out", out, "--format", "markdown")
    assert r.code == 0, r.err
    files = sorted(out.glob("*.parquet"))
    assert len(files) == 6  # 2 shifts x (2 surgical blocks + 1 linear probe)
    assert "| block 1 |" in r.out and "| last layer |" in r.out and "| linear-probe |" in r.out
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    r = cli("sweep", "tiny", "--suites", suite_file, "--out", out, "--format", "markdown")
    assert r.code == 0
    assert "6 already in" in r.err and "0 to run" in r.err
    assert {f: f.stat().st_mtime_ns for f in sorted(out.glob("*.parquet"))} == mtimes
    df, problems = read_results(out)
    assert not problems and len(df) == 6 and df["run_id"].is_unique


def test_dry_run_counts_done_and_todo(cli, tmp_path: Path, suite_file: Path) -> None:
    out = tmp_path / "results"
    specs = expand_suite("tiny", suite_file)
    run_sweep(specs[:2], out, "cpu", progress=False)
    r = cli("sweep", "tiny", "--suites", suite_file, "--out", out, "--dry-run")
    assert r.code == 0
    assert "6 runs, 2 done, 4 to do" in r.out
    assert len(list(out.glob("*.parquet"))) == 2  # a dry run writes nothing


def test_a_corrupt_result_is_redone(tmp_path: Path, suite_file: Path) -> None:
    out = tmp_path / "results"
    specs = expand_suite("tiny", suite_file)[:2]
    run_sweep(specs, out, "cpu", progress=False)
    victim = out / f"{specs[0].run_id}.parquet"
    victim.write_bytes(victim.read_bytes()[:40])  # truncated, as by a crash mid-copy
    summary = run_sweep(specs, out, "cpu", progress=False)
    assert summary.skipped == 1 and summary.done == 1
    df, problems = read_results(out)
    assert not problems and len(df) == 2


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path, suite_file: Path, monkeypatch) -> None:
    specs = expand_suite("tiny", suite_file)[:3]
    from ftbench.execution import runner

    real = runner.execute

    def flaky(spec: RunSpec, device: str = "auto", workdir=None):
        if spec.run_id == specs[1].run_id:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(spec, device, workdir)

    monkeypatch.setattr(runner, "execute", flaky)
    out = tmp_path / "results"
    summary = run_sweep(specs, out, "cpu", progress=False)
    assert (summary.done, summary.failed) == (2, 1)
    df, _ = read_results(out)
    failed = df[df["status"] == "failed"]
    assert len(failed) == 1 and "out of memory" in failed.iloc[0]["error"]
    assert len(df) == 3


def test_no_temporary_files_are_left(tmp_path: Path, suite_file: Path) -> None:
    out = tmp_path / "results"
    run_sweep(expand_suite("tiny", suite_file)[:2], out, "cpu", progress=False)
    # Only the runs' scratch folder (claim locks) is hidden there; no temporary file anywhere.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".work"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_diverging_run_is_marked(tmp_path: Path) -> None:
    spec = resolve(RunSpec(method="full", lr=1e6, steps=20, optimizer="sgd", wd=0.0))
    summary = run_sweep([spec], tmp_path, "cpu", progress=False)
    df, _ = read_results(tmp_path)
    assert df.iloc[0]["status"] == "diverged" and summary.failed == 1


def test_retry_failed_reruns_only_failed_runs(tmp_path: Path, suite_file: Path, monkeypatch) -> None:
    from ftbench.execution import runner

    specs = expand_suite("tiny", suite_file)[:2]
    real = runner.execute
    monkeypatch.setattr(runner, "execute", lambda s, d="auto", w=None: (_ for _ in ()).throw(RuntimeError("transient"))
                        if s.run_id == specs[0].run_id else real(s, d))
    out = tmp_path / "results"
    run_sweep(specs, out, "cpu", progress=False)
    monkeypatch.setattr(runner, "execute", real)
    assert run_sweep(specs, out, "cpu", progress=False).skipped == 2  # failed counts as done by default
    summary = run_sweep(specs, out, "cpu", progress=False, retry_failed=True)
    assert (summary.skipped, summary.done) == (1, 1)
    df, _ = read_results(out)
    assert list(df["status"]) == ["ok", "ok"]


def test_suite_options_apply_to_the_methods_that_take_them(tmp_path: Path) -> None:
    f = tmp_path / "b.toml"
    f.write_text('[suites.s]\nmethod = ["none", "surgical", "linear-probe"]\nblock = 1\noptions = { bn = "train" }\n'
                 '[suites.bad]\nmethod = ["none", "linear-probe"]\noptions = { bn = "train" }\n')
    specs = {s.method: s for s in expand_suite("s", f)}
    assert specs["surgical"].options_dict == {"bn": "train", "proj": "frozen"}
    assert specs["none"].options == () and specs["linear-probe"].options_dict == {
        "c_max": 100.0, "c_min": 1e-07, "c_steps": 50, "max_iter": 200, "select": "val", "features": "unit"}
    from ftbench.errors import UsageError

    with pytest.raises(UsageError, match="option 'bn' is taken by none of its methods"):
        expand_suite("bad", f)


def test_progress_shows_done_running_failed_and_the_latest_result(monkeypatch) -> None:
    import io
    import re

    from ftbench.sweep.progress import Progress
    from ftbench.sweep.task import Outcome

    a, b = RunSpec(shift="corruption", method="surgical", blocks=("1",)), RunSpec(shift="corruption", method="full", seed=3)
    plain = io.StringIO()
    with Progress(2, rich=False, stream=plain) as bar:
        bar.running(2)
        bar.advance(a, Outcome(a.run_id, "ok", 91.25, 70.5))
        bar.advance(b, Outcome(b.run_id, "failed", error="MemoryError: out of memory"))
    lines = plain.getvalue().splitlines()
    assert lines[0].startswith("[1/2] digits/corruption surgical block 1 ") and lines[0].endswith(": OOD 70.5 ID 91.2")
    assert lines[1].startswith("[2/2] digits/corruption full ") and lines[1].endswith("failed (MemoryError: out of memory)")
    term = io.StringIO()
    monkeypatch.setenv("COLUMNS", "140")
    with Progress(3, rich=True, stream=term) as bar:
        bar.running(2)
        bar.advance(b, Outcome(b.run_id, "failed", error="boom"))
        bar.advance(a, Outcome(a.run_id, "ok", 91.25, 70.5))
        bar._p.refresh()
        shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", term.getvalue())  # without the terminal codes
    assert "2/3" in shown and "2 running" in shown and "1 failed" in shown and "OOD 70.5 ID 91.2 · digits/corruption surgical" in shown


BASELINE_SMOKE = Path(__file__).parent / "data" / "baseline_smoke"


@pytest.mark.parametrize("fmt, marker", [("terminal", "block 1"), ("markdown", "| block 1 |"),
                                         ("latex", "\\begin{tabular}"), ("html", "<table"), ("csv", "block 1,"),
                                         ("json", '"rows"')])
def test_sweep_prints_its_table_in_every_format(cli, tmp_path: Path, fmt: str, marker: str) -> None:
    """Never exit 0 silently: the table, in the format asked for, on stdout (every run done already)."""
    import shutil

    shutil.copytree(BASELINE_SMOKE, tmp_path / "out")  # the smoke suite's results: nothing to run
    r = cli("sweep", "smoke", "--out", tmp_path / "out", "--format", fmt)
    assert r.code == 0, r.err
    assert "0 to run" in r.err and marker in r.out, r.out


def test_a_dry_run_asked_for_a_table_says_why_there_is_none(cli, tmp_path: Path) -> None:
    r = cli("sweep", "smoke", "--out", tmp_path / "out", "--dry-run", "--format", "latex")
    assert r.code == 0 and "4 runs, 0 done, 4 to do" in r.out
    assert "prints no table" in r.err and "ftbench report" in r.err and "--format latex" in r.err
