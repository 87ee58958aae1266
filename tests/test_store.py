"""The parquet store and the pretrained-model cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ftbench.data.base import get_benchmark
from ftbench.train import pretrain
from ftbench.results.store import completed_ids, read_results, write_result
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve


def test_write_is_atomic_and_overwrites_in_place(tmp_path: Path, monkeypatch) -> None:
    row = {"run_id": "abc", "benchmark": "digits", "shift": "corruption", "method": "none", "blocks": "",
           "seed": 0, "status": "ok", "id_acc": 1.0, "ood_acc": 2.0, "val_acc": 3.0}
    write_result(tmp_path, row)
    # A crash during the write leaves the previous file intact and no temporary behind.
    import pyarrow.parquet as pq

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        write_result(tmp_path, {**row, "ood_acc": 99.0})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc.parquet"]
    df, problems = read_results(tmp_path)
    assert not problems and df.iloc[0]["ood_acc"] == 2.0
    assert completed_ids(tmp_path) == {"abc"}


def test_hidden_and_temporary_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / ".abc.parquet.123.tmp").write_bytes(b"partial")
    (tmp_path / ".hidden.parquet").write_bytes(b"partial")
    assert completed_ids(tmp_path) == set()
    df, problems = read_results(tmp_path)
    assert df.empty and not problems


def test_pretrained_model_is_cached_and_rebuilt_when_corrupt(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path))
    spec = resolve(RunSpec(shift="subpopulation"))
    source = get_benchmark("digits").source(spec)
    first = pretrain.pretrained(spec.model, source, torch.device("cpu"))
    path = pretrain.cache_path(spec.model, source, torch.device("cpu"))
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".sha256"]
    calls = []
    real_train = pretrain._train
    monkeypatch.setattr(pretrain, "_train", lambda *a: calls.append(1) or real_train(*a))
    again = pretrain.pretrained(spec.model, source, torch.device("cpu"))
    assert calls == []  # reused, not retrained
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    path.write_bytes(b"not a checkpoint")
    rebuilt = pretrain.pretrained(spec.model, source, torch.device("cpu"))
    assert calls == [1] and "rebuilding" in capsys.readouterr().err
    # Pretraining is deterministic: the rebuilt model equals the first one.
    for a, b in zip(first.state_dict().values(), rebuilt.state_dict().values()):
        assert torch.equal(a, b)
    # The source model is actually good on its own task.
    from ftbench.train.loop import accuracy

    assert accuracy(rebuilt, source.test) > 90.0


# --- what "done" means: a readable ftbench row of that run id ---------------------------------

SMALL = Path(__file__).parent / "data" / "results_small"


def _with_column(path: Path, name: str, values: list) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    if name in t.column_names:
        t = t.set_column(t.column_names.index(name), name, pa.array(values))
    else:
        t = t.append_column(name, pa.array(values))
    pq.write_table(t, path)


def _copy_small(dest: Path) -> list[Path]:
    import shutil

    shutil.copytree(SMALL, dest)
    return sorted(dest.glob("*.parquet"))


def test_done_means_a_readable_ftbench_row_of_that_run_id(tmp_path: Path) -> None:
    """A footer-readable parquet without ftbench columns, another run's rows, or strings where
    accuracies belong, under a run id's name: not done, and not read (the two always agree)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    files = _copy_small(tmp_path / "r")
    foreign, other, strings, empty = files[0], files[1], files[2], files[3]
    pq.write_table(pa.table({"a": [1, 2]}), foreign)
    shutil.copy(files[4], other)  # run files[4]'s rows under files[1]'s name
    _with_column(strings, "ood_acc", ["x"] * pq.read_metadata(strings).num_rows)
    pq.write_table(pq.read_table(empty).slice(0, 0), empty)
    bad = {f.stem for f in (foreign, other, strings, empty)}
    df, problems = read_results(tmp_path / "r")
    assert {p.path.stem for p in problems} == bad
    reasons = {p.path.stem: p.reason for p in problems}
    assert "not an ftbench results file" in reasons[foreign.stem]
    assert f"holds rows of run {files[4].stem}, not of run {other.stem}" in reasons[other.stem]
    assert "column 'ood_acc' holds string values, expected numbers" in reasons[strings.stem]
    assert reasons[empty.stem] == "no rows"
    done = completed_ids(tmp_path / "r")
    assert done == set(df["run_id"]) == {f.stem for f in files} - bad
    from ftbench.sweep.task import has_result

    assert not any(has_result(tmp_path / "r", b) for b in bad)
    assert all(has_result(tmp_path / "r", d) for d in done)


def test_sweep_reruns_a_run_whose_file_is_not_an_ftbench_row(tmp_path: Path, monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ftbench.sweep.local import run_sweep
    from ftbench.execution import runner

    spec = resolve(RunSpec(steps=5))
    ran = []

    def fake(s, device, workdir):
        ran.append(s.run_id)
        return [{**s.columns(), "status": "ok", "id_acc": 1.0, "ood_acc": 2.0, "val_acc": 3.0}]

    monkeypatch.setattr(runner, "execute", fake)
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"a": [1]}), out / f"{spec.run_id}.parquet")
    summary = run_sweep([spec], out, "cpu", progress=False)
    assert ran == [spec.run_id] and summary.skipped == 0
    df, problems = read_results(out)
    assert not problems and list(df["run_id"]) == [spec.run_id]
    assert run_sweep([spec], out, "cpu", progress=False).skipped == 1 and ran == [spec.run_id]


@pytest.mark.parametrize("metric", ["ood_acc", "ood_worst_acc"])
def test_a_metric_column_of_the_wrong_type_is_skipped_with_a_warning(cli, tmp_path: Path, metric: str) -> None:
    import pyarrow.parquet as pq

    files = _copy_small(tmp_path / "r")
    for f in files:  # every file has the metric (a benchmark metric like ood_worst_acc too); one as strings
        n = pq.read_metadata(f).num_rows
        if f == files[0] or metric not in pq.read_schema(f).names:
            _with_column(f, metric, ["70.0"] * n if f == files[0] else [70.0] * n)
    r = cli("report", tmp_path / "r", "--metric", metric, "--format", "csv")
    assert r.code == 0, r.err
    assert f"warning: skipped {files[0]}: column {metric!r} holds string values, expected numbers" in r.err
    assert "Traceback" not in r.err
    r = cli("report", files[0], "--metric", metric)
    assert r.code == 2 and r.err.count("\n") == 1 and str(files[0]) in r.err and "string values" in r.err


def test_model_cache_temp_files_of_killed_writers_are_removed(tmp_path: Path, monkeypatch) -> None:
    """A dead PID's temp file silent for a minute goes; a live writer's stays unless untouched for
    an hour (a reused PID); other files stay. Checked where every run passes: pretrained()."""
    import os
    import subprocess
    import sys
    import time

    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its PID is free now (reuse within this test is vanishingly unlikely)
    models = tmp_path / "models"
    models.mkdir()
    old = time.time() - 2 * pretrain.TMP_SILENT_S
    ancient = time.time() - 2 * pretrain.TMP_MAX_AGE_S
    files = {
        f".a.pt.{dead.pid}.tmp": (old, False),  # killed writer
        f".b.pt.{dead.pid}.tmp": (time.time(), True),  # just written: maybe another host's live writer
        f".c.pt.{os.getpid()}.tmp": (old, True),  # a live writer (this process)
        f".d.pt.{os.getpid()}.tmp": (ancient, False),  # live PID but untouched for hours
        "e.pt": (ancient, True),  # a cache entry
    }
    for name, (mtime, _) in files.items():
        (models / name).write_bytes(b"x")
        os.utime(models / name, (mtime, mtime))
    spec = resolve(RunSpec())
    monkeypatch.setattr(pretrain, "_train", lambda net, source, device, name="": net)
    pretrain.pretrained(spec.model, get_benchmark("digits").source(spec), torch.device("cpu"))
    left = {p.name for p in models.iterdir()}
    assert {n for n, (_, keep) in files.items() if keep} <= left
    assert not {n for n, (_, keep) in files.items() if not keep} & left
    assert not [n for n in left if n.endswith(".tmp") and n not in files]  # its own temp file renamed


def test_a_failed_cache_write_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    import errno

    from ftbench.errors import DiskError

    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path))
    spec = resolve(RunSpec())
    monkeypatch.setattr(pretrain, "_train", lambda net, source, device, name="": net)

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskError, match="no space left") as e:
        pretrain.pretrained(spec.model, get_benchmark("digits").source(spec), torch.device("cpu"))
    assert str(tmp_path / "models") in str(e.value)
    assert list((tmp_path / "models").iterdir()) == []
