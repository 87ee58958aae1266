"""A disk that fills up or turns read-only during a sweep stops it at once: one ``error:`` line
naming the path and what was kept, exit 2, no respawned workers, no traceback, no temp files.

The errors are injected where ftbench writes (pyarrow's write, the run-lock file, a worker's run),
with the errno the kernel gives; where this process may mount a tmpfs (root on Linux), one test
also fills a real 64 KiB tmpfs with a real sweep.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sweep_support import write_suite

from ftbench.errors import UsageError
from ftbench.results.store import read_results
from ftbench.spec import RunSpec
from ftbench.plan.suites import expand_suite

REPO = Path(__file__).resolve().parents[1]
SUITE = """
[suites.six]
benchmark = "digits"
shift = ["corruption", "label-flip"]
method = "surgical"
block = [1, 2, "last"]
lr = 1e-2
steps = 2
seed = 0
"""


@pytest.fixture
def suite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_suite(tmp_path_factory, SUITE)


def fake_rows(spec: RunSpec, device: str, workdir) -> list[dict]:
    """A finished run without training (what is tested here is writing, not training)."""
    return [{**spec.columns(), "status": "ok", "id_acc": 90.0, "ood_acc": 80.0, "val_acc": 85.0}]


def no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on the device"),
                                         (errno.EROFS, "the file system is read-only"),
                                         (errno.EDQUOT, "disk quota exceeded")])
def test_a_full_or_read_only_disk_stops_a_sweep_at_once(cli, suite_file: Path, tmp_path: Path, monkeypatch,
                                                        code: int, words: str) -> None:
    import pyarrow.parquet as pq

    from ftbench.execution import runner

    monkeypatch.setattr(runner, "execute", fake_rows)
    real, writes = pq.write_table, []

    def write_table(table, where, *a, **k):
        writes.append(where)
        if len(writes) > 2:  # the disk is full from the third result on
            Path(where).write_bytes(b"PAR1 partial")  # as a real failed write leaves it
            raise OSError(code, os.strerror(code))
        return real(table, where, *a, **k)

    monkeypatch.setattr(pq, "write_table", write_table)
    out = tmp_path / "out"
    r = cli("sweep", "six", "--suites", suite_file, "--out", out, "--format", "csv")
    assert r.code == 2
    line = one_error_line(r.err)
    specs = expand_suite("six", suite_file)
    third = specs[2].run_id
    assert f"cannot write {out / (third + '.parquet')}: {words}" in line
    assert f"2 of {len(specs)} runs are done and kept in {out}" in line and "run the same command again" in line
    assert len(writes) == 3  # stopped at once: no other run was tried
    assert "failed" not in r.err.replace("error:", "")  # nothing recorded as a failed run
    df, problems = read_results(out)
    assert not problems and len(df) == 2 and no_temp_files(out)


def test_a_read_only_results_folder_mid_sweep_names_the_lock_file(cli, suite_file: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """The first write of a run is its lock file: that one fails when the folder turns read-only."""
    from ftbench.sweep import task
    from ftbench.execution import runner

    monkeypatch.setattr(runner, "execute", fake_rows)
    real_open, opened = os.open, []

    def ro_open(path, flags, *a, **k):
        if str(path).endswith(".lock"):
            opened.append(path)
            if len(opened) > 1:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(task.os, "open", ro_open)
    out = tmp_path / "out"
    r = cli("sweep", "six", "--suites", suite_file, "--out", out)
    assert r.code == 2
    line = one_error_line(r.err)
    assert f"cannot write {opened[1]}: the file system is read-only" in line and "1 of 6 runs are done" in line


def _full_after(n: int, marker_dir: str, spec: RunSpec, device: str, workdir) -> list[dict]:
    """In a worker: the first ``n`` runs finish, then every write fails as on a full disk."""
    done = Path(marker_dir)
    if len(list(done.iterdir())) >= n:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(workdir) / "resume.pt"))
    (done / spec.run_id).touch()
    return fake_rows(spec, device, workdir)


def test_a_full_disk_in_a_worker_stops_the_pool_without_respawning(suite_file: Path, tmp_path: Path,
                                                                   capsys) -> None:
    from ftbench.sweep.pool import run_pool

    specs = expand_suite("six", suite_file)
    (tmp_path / "done").mkdir()
    out = tmp_path / "out"
    with pytest.raises(UsageError) as e:
        run_pool(specs, out, "cpu", jobs=2, progress=False,
                 execute=functools.partial(_full_after, 2, str(tmp_path / "done")))
    msg = str(e.value)
    df, problems = read_results(out)
    # A run in flight when the disk filled is stopped too (and redone by the next sweep).
    assert "no space left on the device" in msg and "resume.pt" in msg
    assert len(df) >= 1 and f"{len(df)} of {len(specs)} runs are done and kept in {out}" in msg
    assert "running it again" not in capsys.readouterr().err  # no worker died, none was respawned
    assert not problems and no_temp_files(out)


def _can_mount_tmpfs(where: Path) -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True, check=False).returncode == 0
    return ok


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_real_tmpfs_filling_up_mid_sweep(suite_file: Path, tmp_path: Path, jobs: str) -> None:
    """The issue's case: a small tmpfs, a real sweep; each result file is ~11 KB, so 64 KiB hold a few."""
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs root on Linux to mount a tmpfs")
    try:
        out = disk / "results"
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        r = subprocess.run([sys.executable, "-m", "ftbench.cli", "sweep", "six", "--suites", str(suite_file),
                            "--out", str(out), "--jobs", jobs, "--device", "cpu"],
                           env=env, capture_output=True, text=True, timeout=600, check=False)
        assert r.returncode == 2, r.stderr
        line = one_error_line(r.stderr)
        assert "no space left on the device" in line and f"kept in {out}" in line
        assert "running it again" not in r.stderr
        df, problems = read_results(out)
        assert not problems and 0 < len(df) < 6 and f"{len(df)} of 6 runs are done" in line
        assert no_temp_files(out)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, check=False)
