"""Caches, resume state and run identity are checked, never believed as written (issue 27, section
1, "Caches trusted without checking"): a cached source model, a catalog entry, a resume state or an
AutoFT journal that is not what ftbench wrote for this very key is recomputed with a notice; resume
state lives until its run's row is written; equal runs get one run id."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve

# --- run identity: -0.0 is 0.0 --------------------------------------------------------------------


@pytest.mark.parametrize("a, b", [
    (RunSpec(wd=-0.0), RunSpec(wd=0.0)),
    (RunSpec(method="wise-ft", options=(("alphas", "-0,0.5"),)),
     RunSpec(method="wise-ft", options=(("alphas", "0,0.5"),))),
    (RunSpec(method="wise-ft", options=(("alphas", [-0.0, 1.0]),)),
     RunSpec(method="wise-ft", options=(("alphas", "0,1"),))),
    (RunSpec(method="autoft", options=(("wd_min", -0.0),)), RunSpec(method="autoft", options=(("wd_min", 0.0),))),
])
def test_minus_zero_and_zero_are_one_run(a: RunSpec, b: RunSpec) -> None:
    ra, rb = resolve(a), resolve(b)
    assert ra.run_id == rb.run_id
    assert ra == rb  # the rows show one value too


def test_a_grid_of_zero_and_minus_zero_is_one_run(cli, tmp_path: Path) -> None:
    suites = tmp_path / "suites.toml"
    suites.write_text('[suites.z]\ndescription = "z"\nmethod = ["surgical"]\nsteps = 2\nwd = [0.0, -0.0]\n')
    r = cli("sweep", "z", "--suites", suites, "--dry-run", "--out", tmp_path / "out")
    assert r.code == 0, r.err
    assert "1 runs, 0 done, 1 to do" in r.out and "wd=-0" not in r.out


# --- the source-model cache ------------------------------------------------------------------------


def _source(monkeypatch: pytest.MonkeyPatch, cache: Path):
    import torch

    from ftbench.data.base import get_benchmark
    from ftbench.train import pretrain

    monkeypatch.setenv("FTBENCH_CACHE", str(cache))
    spec = resolve(RunSpec())
    return pretrain, spec.model, get_benchmark("digits").source(spec), torch.device("cpu")


def test_a_cached_source_model_replaced_by_another_valid_state_dict_is_rebuilt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from ftbench.models.base import get_model_entry
    from ftbench.train.loop import accuracy

    pretrain, model, source, cpu = _source(monkeypatch, tmp_path)
    good = pretrain.pretrained(model, source, cpu)
    path = pretrain.cache_path(model, source, cpu)
    torch.manual_seed(1)
    torch.save(get_model_entry(model).build(source.train.channels, source.num_classes).state_dict(), path)
    calls: list[int] = []
    real = pretrain._train
    monkeypatch.setattr(pretrain, "_train", lambda *a: calls.append(1) or real(*a))
    got = pretrain.pretrained(model, source, cpu)
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]  # one line
    assert calls == [1] and str(path) in warning and "does not match" in warning and "rebuilding" in warning
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), good.state_dict().values()))
    assert accuracy(got, source.test) > 90.0  # not the random model's 10 %
    again = pretrain.pretrained(model, source, cpu)  # rebuilt and recorded: believed now, silently
    assert calls == [1] and "warning" not in capsys.readouterr().err
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), good.state_dict().values()))


def test_a_cached_source_model_without_a_recorded_hash_or_of_another_key_is_rebuilt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from ftbench import integrity
    from ftbench.integrity import sidecar

    pretrain, model, source, cpu = _source(monkeypatch, tmp_path)
    calls: list[int] = []
    monkeypatch.setattr(pretrain, "_train", lambda net, *a: calls.append(1) or net)  # rebuilding is not the point
    pretrain.pretrained(model, source, cpu)
    path = pretrain.cache_path(model, source, cpu)
    sidecar(path).unlink()  # as an older ftbench left it
    pretrain.pretrained(model, source, cpu)
    assert calls == [1, 1] and "no content hash recorded" in capsys.readouterr().err
    # Another key's file and its record (a source model fit on given weights), copied in.
    other = tmp_path / "other.pt"
    shutil.copy(path, other)
    integrity.record(other, pretrain.cache_key(model, source, cpu, weights="sha256:0123"))
    shutil.copy(other, path)
    shutil.copy(sidecar(other), sidecar(path))
    pretrain.pretrained(model, source, cpu)
    assert calls == [1, 1, 1] and "written for something else" in capsys.readouterr().err


# --- resume state: checked, bound to its run, kept until the row is written ------------------------


class Killed(BaseException):
    """Stands for SIGKILL (not an Exception: nothing catches it)."""


def _interrupted_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A checkpointed run killed right after its second resume state (step 10 of 20) was written."""
    from ftbench.execution import runner
    from ftbench.train.resume import Resume

    spec = resolve(RunSpec(method="surgical", blocks=("1",), steps=20, lr=1e-2, checkpoints=4))
    real = Resume.save
    count = [0]

    def save(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.path.exists():
            count[0] += 1
            if count[0] == 2:
                raise Killed

    with monkeypatch.context() as m:
        m.setattr(Resume, "save", save)
        with pytest.raises(Killed):
            runner.execute(spec, "cpu", tmp_path)
    assert Resume.open(tmp_path, spec.run_id).resumed_step == 10
    return spec


def test_an_edited_resume_state_is_not_believed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from ftbench import integrity
    from ftbench.train.resume import STATE_FILE, Resume

    spec = _interrupted_state(tmp_path, monkeypatch)
    path = tmp_path / STATE_FILE
    state = torch.load(path, weights_only=True)
    # A valid state of this very run, edited: every field there, the right run id and version.
    state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}
    torch.save(state, path)
    capsys.readouterr()
    assert Resume.open(tmp_path, spec.run_id).saved is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match" in err and "starts over" in err, err
    integrity.sidecar(path).unlink()  # as an older ftbench left it: not believed either
    assert Resume.open(tmp_path, spec.run_id).saved is None
    assert "no content hash recorded" in capsys.readouterr().err


def test_resume_state_outlives_training_until_the_row_is_written(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill after training, before the result is written (here: the write itself dies), leaves the
    resume state: the next sweep resumes at the last checkpoint instead of training from step 0."""
    from ftbench.sweep import task
    from ftbench.execution import runner
    from ftbench.train.resume import STATE_FILE

    spec = resolve(RunSpec(method="wise-ft", steps=20, lr=1e-2, checkpoints=4,
                           options=(("alphas", "0,0.5,1"),)))
    out = tmp_path / "out"
    work = runner.work_dir(out, spec.run_id)
    with monkeypatch.context() as m:
        m.setattr(task, "write_result", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            task.run_task(spec, out, "cpu")
    assert (work / STATE_FILE).is_file() and not list(out.glob("*.parquet"))
    evaluations: list[int] = []
    real_evaluate = runner._evaluate
    monkeypatch.setattr(runner, "_evaluate", lambda *a: evaluations.append(1) or real_evaluate(*a))
    outcome = task.run_task(spec, out, "cpu")
    assert outcome.status == "ok"
    resumed = len(evaluations)
    assert not work.exists()  # gone once the row is written
    fresh = runner.execute(spec, "cpu", tmp_path / "fresh")
    # Resumed at step 20 of 20: its checkpoints were not evaluated again (nor trained). Trained
    # again from step 0 (today's code before the fix), it would evaluate as many times as a fresh run.
    assert resumed + 3 <= len(evaluations) - resumed
    import pandas as pd

    got = pd.read_parquet(out / f"{spec.run_id}.parquet")
    assert list(got.id_acc) == [r["id_acc"] for r in fresh] and list(got.ood_acc) == [r["ood_acc"] for r in fresh]


def test_a_failed_runs_state_is_kept_for_retry_and_a_finished_runs_is_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ftbench.sweep import task
    from ftbench.execution import runner

    spec = resolve(RunSpec(method="surgical", blocks=("1",), steps=20, lr=1e-2, checkpoints=4))
    out = tmp_path / "out"
    work = runner.work_dir(out, spec.run_id)
    work.mkdir(parents=True)
    (work / "autoft-journal.log").write_text("left by an earlier attempt\n")

    def boom(*a, **k):
        raise RuntimeError("out of luck")

    assert task.run_task(spec, out, "cpu", execute=boom).status == "failed"
    assert (work / "autoft-journal.log").is_file()  # --retry-failed may resume from it (checked first)
    assert task.run_task(spec, out, "cpu", retry_failed=True).status == "ok"
    assert not work.exists()


# --- AutoFT's search journal ---------------------------------------------------------------------


def _search(work: Path, run_id: str, stop_after: int | None = None):
    from ftbench.methods import autoft

    space = autoft.Space(autoft.TERMS, lr=(1e-5, 1e-1), wd=(1e-2, 0.3))

    def stop(record) -> None:
        if stop_after is not None and record.index == stop_after - 1:
            raise Killed

    return autoft.run_search(space, 4, lambda config, k: float(k), 0, work, callbacks=[stop], run_id=run_id)


def test_a_forged_autoft_trial_is_not_believed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import re

    from ftbench.methods.autoft import JOURNAL

    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not the point: faster
    work = tmp_path / "work"
    with pytest.raises(Killed):
        _search(work, "r1", stop_after=2)
    journal = work / JOURNAL
    text = journal.read_text()
    with pytest.raises(Killed):  # untouched, it is resumed (and interrupted again at once)
        _search(work, "r1", stop_after=3)
    journal.write_text(text)  # (its bytes as before, but with the record of 3 trials: not believed)
    capsys.readouterr()
    records, reused = _search(work, "r1")
    assert reused == 0 and "does not match" in capsys.readouterr().err
    # A trial's score forged (99), the journal otherwise as written: the search starts over.
    with pytest.raises(Killed):
        _search(tmp_path / "w2", "r1", stop_after=2)
    forged = tmp_path / "w2" / JOURNAL
    assert re.search(r'"values": ?\[', forged.read_text())
    forged.write_text(re.sub(r'"values": ?\[[^\]]*\]', '"values":[99.0]', forged.read_text(), count=1))
    records, reused = _search(tmp_path / "w2", "r1")
    err = capsys.readouterr().err
    assert reused == 0 and max(r.value for r in records) == 3.0, records
    assert err.count("warning") == 1 and "AutoFT's search journal" in err and "starts over" in err, err
    # Another run's journal is not this run's.
    with pytest.raises(Killed):
        _search(tmp_path / "w3", "r1", stop_after=2)
    assert _search(tmp_path / "w3", "r2")[1] == 0 and "written for something else" in capsys.readouterr().err
    with pytest.raises(Killed):
        _search(tmp_path / "w4", "r1", stop_after=2)
    assert _search(tmp_path / "w4", "r1")[1] == 2  # untouched and this run's: resumed


def test_a_finished_autoft_runs_journal_is_removed(tmp_path: Path) -> None:
    from ftbench.sweep import task
    from ftbench.execution import runner

    spec = resolve(RunSpec(method="autoft", steps=3, options=(("trials", 2), ("inner_steps", 2))))
    out = tmp_path / "out"
    assert task.run_task(spec, out, "cpu").status == "ok"
    assert not runner.work_dir(out, spec.run_id).exists()


# --- the catalog cache -----------------------------------------------------------------------------


@pytest.fixture
def catalog_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process uses the catalog cache (as a fresh ``ftbench`` process does), in its own folder."""
    from ftbench import catalog

    cache = tmp_path / "cache"
    monkeypatch.setenv("FTBENCH_CACHE", str(cache))
    monkeypatch.delenv("FTBENCH_NO_CATALOG", raising=False)
    monkeypatch.setattr(catalog, "_FRESH", [True])
    return cache


def _entry(cache: Path, kind: str) -> Path:
    import json

    (path,) = [p for p in (cache / "catalog").glob("*.json") if json.loads(p.read_text())["key"][:2] == kind]
    return path


def _rewrite(path: Path, edit, rehash: bool) -> None:
    """Edit a catalog entry's value; with ``rehash``, as a careful forger would, its hash too."""
    import json

    from ftbench import catalog

    record = json.loads(path.read_text())
    record["value"] = edit(record["value"])
    if rehash:
        record["sha256"] = catalog._digest(record["key"], record["value"], record["deps"])
    path.write_text(json.dumps(record))


def _edit_spec(**change):
    return lambda value: [{**d, **change} for d in value]


SUITE_EDITS = {
    "another method": (_edit_spec(method="full", blocks=[]), False),
    "other steps": (_edit_spec(steps=7), False),
    "another seed": (_edit_spec(seed=3), False),
    "steps a string": (_edit_spec(steps="5"), True),
    "seed a bool": (_edit_spec(seed=True), True),
    "unknown RunSpec key": (_edit_spec(colour="red"), True),
    "a field missing": (lambda v: [{k: x for k, x in d.items() if k != "seed"} for d in v], True),
    "blocks of numbers": (_edit_spec(blocks=[1]), True),
    "not a list": (lambda v: {"runs": v}, True),
    "options a list": (_edit_spec(options=[["bn", "train"]]), True),
}


@pytest.mark.parametrize("edit", list(SUITE_EDITS), ids=list(SUITE_EDITS))
def test_an_edited_or_malformed_suite_entry_is_computed_again(cli, catalog_on: Path, tmp_path: Path,
                                                              edit: str) -> None:
    args = ("sweep", "smoke", "--dry-run", "--out", tmp_path / "out")
    first = cli(*args)
    assert first.code == 0, first.err
    change, rehash = SUITE_EDITS[edit]
    _rewrite(_entry(catalog_on, ["suite", "smoke"]), change, rehash)
    again = cli(*args)
    assert again.code == 0 and "Traceback" not in again.err, again.err
    assert again.out == first.out  # the suite's own runs, not the edited ones
    assert again.err.count("notice: ignored the catalog cache entry") == 1, again.err
    assert cli(*args).err.count("notice") == 0  # written again, correctly: believed now


LIST_EDITS = {
    "an edited line": (lambda v: [v[0] + " (edited)", *v[1:]], False),
    "malformed rich markup": (lambda v: ["[/bold] closing tag with no opening", *v], True),
    "a line not a string": (lambda v: [1, *v], True),
    "not a list": (lambda v: {"lines": v}, True),
}


@pytest.mark.parametrize("edit", list(LIST_EDITS), ids=list(LIST_EDITS))
def test_an_edited_or_malformed_listing_is_computed_again(cli, catalog_on: Path, edit: str) -> None:
    first = cli("list", "methods")
    assert first.code == 0, first.err
    change, rehash = LIST_EDITS[edit]
    _rewrite(_entry(catalog_on, ["list", "methods"]), change, rehash)
    again = cli("list", "methods")
    assert again.code == 0 and "Traceback" not in again.err, again.err
    assert again.out == first.out and "notice: ignored the catalog cache entry" in again.err


def test_a_catalog_entry_that_is_not_ftbenchs_is_computed_again(catalog_on: Path) -> None:
    from ftbench import catalog

    calls: list[int] = []

    def compute() -> list[str]:
        calls.append(1)
        return ["a"]

    assert catalog.cached(("k",), compute) == ["a"]
    path = _entry(catalog_on, ["k"])
    for text in ["[" * 100_000, '{"key": ["k"], "value": ["b"]}', "null", '{"key": ["k"], "value": ["b"], '
                 '"deps": [[1]], "sha256": "x"}', "\udcff".encode("utf-8", "surrogateescape").decode("latin-1")]:
        path.write_text(text)
        assert catalog.cached(("k",), compute) == ["a"]
    assert len(calls) == 6


def test_a_re_pointed_weights_symlink_is_a_catalog_miss(cli, catalog_on: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite's ``weights = "cur.pt"``, a symlink re-pointed from a.pt to b.pt: the sweep trains from
    b.pt, as without the catalog (before: the cached expansion still said a.pt)."""
    import torch

    from ftbench.models.base import get_model_entry

    monkeypatch.chdir(tmp_path)
    for name, seed in (("a.pt", 0), ("b.pt", 1)):
        torch.manual_seed(seed)
        torch.save(get_model_entry("digits-resnet").build(1, 10).state_dict(), tmp_path / name)
    (tmp_path / "cur.pt").symlink_to("a.pt")
    suites = tmp_path / "suites.toml"
    suites.write_text('[suites.w]\ndescription = "w"\nmethod = ["surgical"]\nsteps = 2\nweights = "cur.pt"\n')
    args = ("sweep", "w", "--suites", suites, "--dry-run", "--out", tmp_path / "out")
    on_a = cli(*args)
    assert on_a.code == 0, on_a.err
    (tmp_path / "cur.pt").unlink()
    (tmp_path / "cur.pt").symlink_to("b.pt")
    on_b = cli(*args)
    assert on_b.code == 0, on_b.err
    monkeypatch.setenv("FTBENCH_NO_CATALOG", "1")
    assert on_b.out == cli(*args).out != on_a.out
    from ftbench.plan.suites import expand_suite_cached

    monkeypatch.delenv("FTBENCH_NO_CATALOG")
    (spec,) = expand_suite_cached("w", suites)
    assert spec.weights == str(tmp_path / "b.pt")


def test_the_catalog_schema_knows_every_runspec_field() -> None:
    """A field added to RunSpec and not to the catalog's schema would make every cached suite entry
    look malformed: recomputed, with a notice, on every command."""
    import dataclasses

    from ftbench.plan.suites import _FIELD_TYPES
    from ftbench.spec import RunSpec

    assert set(_FIELD_TYPES) == {f.name for f in dataclasses.fields(RunSpec)}


def test_a_cached_suite_whose_weights_file_is_gone_is_expanded_again(cli, catalog_on: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog holds the expansion of a suite with ``weights = "w.pt"``; once w.pt is gone the entry
    is a miss (the file's identity changed), so the sweep expands again and says the file is missing."""
    import torch

    from ftbench.models.base import get_model_entry

    monkeypatch.chdir(tmp_path)
    torch.save(get_model_entry("digits-resnet").build(1, 10).state_dict(), tmp_path / "w.pt")
    suites = tmp_path / "suites.toml"
    suites.write_text('[suites.w]\nmethod = "surgical"\nsteps = 2\nweights = "w.pt"\n')
    args = ("sweep", "w", "--suites", suites, "--dry-run", "--out", tmp_path / "out")
    assert cli(*args).code == 0
    (tmp_path / "w.pt").unlink()
    gone = cli(*args)
    assert gone.code == 2 and "weights file" in gone.err and "not found" in gone.err, gone.err
