"""Files ftbench reads back from disk are data, never code: every ``torch.load`` refuses a planted
pickle (results folders and model caches are shared between people and CI).

Each case plants, where ftbench reads a ``.pt`` file, a pickle whose ``__reduce__`` would create a
marker folder when unpickled, and checks that ftbench goes on (or refuses) without creating it.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve

ROOT = Path(__file__).resolve().parents[1]


class Plant:
    """Unpickling this runs ``os.mkdir(marker)``: what a hostile file in a shared folder could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant(path: Path, marker: Path, **fields: object) -> None:
    """Write a torch.save file at ``path`` that looks like ftbench's own but holds a Plant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**fields, "payload": Plant(marker)}, path)


def test_the_planted_pickle_does_run_when_fully_unpickled(tmp_path: Path) -> None:
    """The probe itself works: without weights_only it creates the marker (so the tests below can fail)."""
    marker = tmp_path / "pwned"
    plant(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.is_dir()


def test_a_planted_resume_state_is_not_executed_and_the_run_starts_over(cli, tmp_path: Path) -> None:
    from ftbench.train.resume import STATE_FILE, VERSION
    from ftbench.execution.runner import work_dir

    spec = resolve(RunSpec(steps=20, checkpoints=4))
    out, marker = tmp_path / "out", tmp_path / "pwned"
    # Shaped like a real resume state of this very run, so only the payload could stop it being used.
    plant(work_dir(out, spec.run_id) / STATE_FILE, marker, version=VERSION, run_id=spec.run_id, fit=0, step=10,
          global_step=10, evals={}, train_seconds=0.0)
    r = cli("run", "--steps", "20", "--checkpoints", "4", "--out", out)
    assert r.code == 0, r.err
    assert not marker.exists()
    assert "resume state" in r.err and "starts over" in r.err  # said, not silent
    assert spec.run_id in r.out and (out / f"{spec.run_id}.parquet").is_file()


def test_a_planted_model_cache_file_is_not_executed_and_is_rebuilt(tmp_path: Path, monkeypatch, capsys) -> None:
    from ftbench.data.base import get_benchmark
    from ftbench.train import pretrain

    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrain, "_train", lambda net, source, device, name="": net)  # the rebuild itself is not the point
    spec = resolve(RunSpec())
    source = get_benchmark("digits").source(spec)
    path = pretrain.cache_path(spec.model, source, torch.device("cpu"))
    marker = tmp_path / "pwned"
    plant(path, marker)
    pretrain.pretrained(spec.model, source, torch.device("cpu"))
    assert not marker.exists()
    assert "rebuilding" in capsys.readouterr().err
    assert isinstance(torch.load(path, weights_only=True), dict)  # replaced by a plain state dict


def test_a_planted_weights_file_is_refused_not_executed(cli, tmp_path: Path) -> None:
    weights, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    plant(weights, marker, **{"net.fc.weight": torch.zeros(1)})
    r = cli("run", "--weights", weights, "--steps", "5", "--out", tmp_path / "out")
    assert r.code == 2 and r.err.count("\n") == 1 and "holds Python objects" in r.err, r.err
    assert not marker.exists() and not (tmp_path / "out").exists()


def _torch_load_calls() -> list[tuple[str, int, ast.Call]]:
    calls = []
    for folder in ("ftbench", "benchmarks"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                    calls.append((str(f.relative_to(ROOT)), node.lineno, node))
    return calls


def test_every_torch_load_in_the_code_is_weights_only() -> None:
    """The audit, kept: a new ``torch.load`` without ``weights_only=True`` fails here (and each
    existing one has its planted-pickle case above: resume.py, pretrain.py, weights.py)."""
    calls = _torch_load_calls()
    assert {f for f, _, _ in calls} == {"ftbench/train/resume.py", "ftbench/train/pretrain.py",
                                        "ftbench/models/weights.py"}
    for f, line, call in calls:
        kw = {k.arg: k.value for k in call.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, f"{f}:{line}"


@pytest.mark.parametrize("numpy_metrics", [False, True])
def test_resume_state_is_plain_data(tmp_path: Path, monkeypatch, numpy_metrics: bool) -> None:
    """What Resume.save writes loads with weights_only=True (also WILDS-style numpy metric values)."""
    import numpy as np

    from ftbench.execution import runner
    from ftbench.train.resume import STATE_FILE, Resume

    class Stop(BaseException):
        pass

    real = Resume.save

    def save(self, ctx, step, evals, seconds):
        # numpy scalars, as benchmark metrics may return them, must not make the state unloadable
        evals = {k: {**v, "ood_worst": np.float64(1.5)} for k, v in evals.items()} if numpy_metrics else evals
        real(self, ctx, step, evals, seconds)
        if self.path.exists():
            raise Stop

    monkeypatch.setattr(Resume, "save", save)
    spec = resolve(RunSpec(steps=20, checkpoints=4))
    with pytest.raises(Stop):
        runner.execute(spec, "cpu", tmp_path)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["run_id"] == spec.run_id and state["global_step"] == 5
    assert Resume.open(tmp_path, spec.run_id).resumed_step == 5
