"""Progress of long steps inside a run (ftbench/status.py): where it goes, and that it changes nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from ftbench import status
from ftbench.data.base import get_benchmark
from ftbench.models.base import get_model_entry
from ftbench.train.pretrain import _train_recipe
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.sweep.progress import Progress


def _pretrain(monkeypatch: pytest.MonkeyPatch, mode: str) -> dict[str, torch.Tensor]:
    monkeypatch.setenv("FTBENCH_PROGRESS", mode)
    source = get_benchmark("digits").source(resolve(RunSpec()))
    net = get_model_entry("digits-resnet").build(source.train.channels, source.num_classes)
    torch.set_num_threads(1)
    return {k: v.clone() for k, v in _train_recipe(net, source, torch.device("cpu"), "digits-resnet").state_dict().items()}


def test_reporting_progress_changes_no_weight(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The source model trained while reporting (lines) is bit for bit the one trained silently."""
    quiet = _pretrain(monkeypatch, "off")
    assert capsys.readouterr().err == ""
    loud = _pretrain(monkeypatch, "lines")
    err = capsys.readouterr().err.splitlines()
    assert quiet.keys() == loud.keys() and all(torch.equal(quiet[k], loud[k]) for k in quiet)
    # lines mode: what is trained and how long it is, then (a few seconds' work) the end.
    assert err[0].startswith("source model digits-resnet: 360 steps (40 epochs); training on 629 source images")
    assert err[-1].startswith("source model digits-resnet: done in ")


def test_a_sink_gets_the_progress_and_the_end(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    got: list[str] = []
    monkeypatch.setenv("FTBENCH_PROGRESS", "lines")  # a sink wins over the environment
    with status.sink(got.append):
        task = status.Task("source model m", 100, per_unit=10)
        for t in range(task.every, 101, task.every):
            task.update(t, 0.5)
        task.close()
    assert capsys.readouterr().err == ""
    assert got[0].startswith("source model m: epoch 1/10, loss 0.500, ETA ")
    assert got[-2].startswith("source model m: epoch 10/10") and got[-1] == ""


def test_a_sweep_log_gets_a_status_line_at_most_every_few_seconds() -> None:
    log = io.StringIO()
    with Progress(3, rich=False, stream=log) as bar:
        bar.status("source model m: epoch 1/40")
        bar.status("source model m: epoch 2/40")  # within STATUS_EVERY_S of the first: not printed
        bar.status("")
    assert log.getvalue() == "source model m: epoch 1/40\n"


def test_an_unknown_mode_falls_back_to_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTBENCH_PROGRESS", "loud")
    assert status.mode() in ("bar", "lines")
    monkeypatch.setenv("FTBENCH_PROGRESS", "OFF")
    assert status.mode() == "off"


def test_pool_workers_send_their_progress_to_the_sweep(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    """A worker training a source model (empty model cache) reports it to the driver, which shows it
    (here: a log, so a line), instead of the sweep sitting at "1 running" in silence."""
    from ftbench.sweep.pool import run_pool

    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "cache"))  # the workers inherit it
    specs = [resolve(RunSpec(steps=2, seed=s)) for s in (0, 1)]
    summary = run_pool(specs, tmp_path / "out", "cpu", jobs=2, progress=False)
    assert summary.done == 2 and summary.failed == 0
    err = capfd.readouterr().err
    assert "source model digits-resnet: epoch " in err


def test_caches_follow_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from ftbench.data.fetch import data_root
    from ftbench.environment import cache_dir

    monkeypatch.delenv("FTBENCH_CACHE", raising=False)
    monkeypatch.delenv("FTBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "ftbench" and data_root(None) == tmp_path / "ftbench" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: relative paths are ignored
    assert cache_dir() == Path.home() / ".cache" / "ftbench"
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "mine"))  # ftbench's own variable wins
    assert cache_dir() == tmp_path / "mine"
