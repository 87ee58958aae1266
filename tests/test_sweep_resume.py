"""A run with checkpoints, interrupted mid-training, resumes from its last checkpoint and ends with
exactly the uninterrupted run's result."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.execution import runner
from ftbench.train.resume import STATE_FILE, Resume

ACCS = ("id_acc", "ood_acc", "val_acc", "source_val_acc")


class Killed(BaseException):
    """Stands for SIGKILL right after a checkpoint was written (not an Exception: nothing catches it)."""


def interrupted(monkeypatch: pytest.MonkeyPatch, after_saves: int) -> None:
    real = Resume.save
    count = [0]

    def save(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.path.exists():  # a state was written
            count[0] += 1
            if count[0] == after_saves:
                raise Killed

    monkeypatch.setattr(Resume, "save", save)


def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the model evaluations a run makes (one per checkpoint, one for the final row)."""
    calls: list[int] = []
    real = runner._evaluate

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_evaluate", spy)
    return calls


@pytest.mark.parametrize("spec", [
    RunSpec(method="surgical", blocks=("1",), steps=20, lr=1e-2, checkpoints=4),
    RunSpec(method="surgical", blocks=("last",), steps=20, lr=1e-2, checkpoints=4, shift="label-flip"),  # frozen prefix
    RunSpec(method="full", steps=20, lr=1e-2, optimizer="sgd", checkpoints=4),
    RunSpec(method="lp-ft", steps=20, checkpoints=4, shift="label-flip"),  # a probe, then fine-tuning
], ids=["surgical-1", "surgical-last", "full-sgd", "lp-ft"])
def test_interrupted_run_resumes_from_its_last_checkpoint(spec: RunSpec, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    spec = resolve(spec)
    plain = runner.execute(spec, "cpu", tmp_path / "plain")
    assert [r["step"] for r in plain] == [5, 10, 15, 20]
    # Kept until the row is written (runner.discard_work, by whoever writes it; test_caches_checked.py).
    assert (tmp_path / "plain" / STATE_FILE).is_file()

    work = tmp_path / "work"
    with monkeypatch.context() as m:
        interrupted(m, after_saves=2)  # killed right after the checkpoint at step 10 was written
        with pytest.raises(Killed):
            runner.execute(spec, "cpu", work)
    saved = Resume.open(work, spec.run_id)
    assert saved.resumed_step == 10 and sorted(saved.evals) == [5, 10]

    calls = evaluations(monkeypatch)
    rows = runner.execute(spec, "cpu", work)
    assert len(calls) == 2  # step 15 and the end: steps 1-10 were not trained or evaluated again
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for got, want in zip(rows, plain, strict=True):
        assert {k: got[k] for k in ACCS} == {k: want[k] for k in ACCS}, got["step"]
        assert (got["status"], got["train_steps"]) == (want["status"], want["train_steps"])


def test_a_resume_state_of_another_run_or_version_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = resolve(RunSpec(method="surgical", blocks=("1",), steps=20, lr=1e-2, checkpoints=4))
    other = resolve(dataclasses.replace(spec, seed=1))
    with monkeypatch.context() as m:
        interrupted(m, after_saves=1)
        with pytest.raises(Killed):
            runner.execute(other, "cpu", tmp_path)
    assert Resume.open(tmp_path, spec.run_id).saved is None  # written for `other`: not for `spec`
    (tmp_path / STATE_FILE).write_bytes(b"truncated")
    assert Resume.open(tmp_path, other.run_id).saved is None  # unreadable: start over
    calls = evaluations(monkeypatch)
    runner.execute(other, "cpu", tmp_path)
    assert len(calls) == 4


def test_a_fit_whose_hook_keeps_its_own_state_is_not_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto-rgn's schedule keeps multipliers and running means: no resume state is written, so an
    interrupted run starts over (and still gets the uninterrupted result)."""
    spec = resolve(RunSpec(method="auto-rgn", steps=20, lr=1e-3, checkpoints=4))
    with monkeypatch.context() as m:
        interrupted(m, after_saves=1)
        rows = runner.execute(spec, "cpu", tmp_path)  # not interrupted: no state is ever written
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert not (tmp_path / STATE_FILE).exists()
