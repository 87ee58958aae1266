"""AutoFT: the loss terms on hand-worked cases, the search (sampled lr really used, seeded, resumable
after an interrupt or a SIGKILL), the final fine-tune, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ftbench.methods.autoft as autoft
from ftbench.data.base import get_benchmark
from ftbench.errors import UsageError
from ftbench.methods.autoft import TERMS, AutoFT, AutoFTLoss, Space, best_of, loss_terms, run_search
from ftbench.train.pretrain import pretrained
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.train import loop
from ftbench.execution.runner import execute, fine_tune

# Tolerances: the hand-worked cases compare float32 losses of a few operations (log-softmax of 2-5
# logits: <= ~10 roundings of u = 2^-24 on values <= 2, ~1e-6) with exact values; abs/rel 1e-6 and
# allclose's default (rtol 1e-5) are above that. Search results are compared exactly (seeded).

LN3 = math.log(3.0)


def _opts(**kw: object) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(kw.items()))


def _pretrained_state(spec: RunSpec) -> dict[str, torch.Tensor]:
    spec = resolve(spec)
    model = pretrained(spec.model, get_benchmark(spec.benchmark).source(spec), torch.device("cpu"))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- the loss terms, by hand -----------------------------------------------------------------


def test_prediction_terms_equal_hand_computed_values() -> None:
    """Two classes, p1 = [3/4, 1/4] (label 0: right), p2 = [1/4, 3/4] (label 0: wrong)."""
    logits = torch.tensor([[LN3, 0.0], [0.0, LN3]])
    y = torch.tensor([0, 0])
    t = loss_terms(logits, y)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # entropy of both rows
    uniform_ce = -0.5 * (math.log(0.75) + math.log(0.25))  # −(1/C) Σ_k log p_k, both rows
    expected = {
        "ce": (-math.log(0.75) - math.log(0.25)) / 2,
        "hinge": (0.0 + (1 + LN3 - 0.0)) / 2,  # row 1: max(0, 1 + 0 − ln 3) = 0; row 2: 1 + ln 3 − 0
        "entropy": h,
        "ls": uniform_ce,
        "dcm": (0.0 + uniform_ce) / 2,  # only the misclassified row 2 counts
    }
    for k, v in expected.items():
        assert t[k].item() == pytest.approx(v, abs=1e-6), k


def test_hinge_is_the_multiclass_margin_sum() -> None:
    """z = [2, 1, 0], y = 0: both margins satisfied -> 0; z = [0, 1, 3], y = 0: (1+1) + (1+3) = 6."""
    t = loss_terms(torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]]), torch.tensor([0, 0]))
    assert t["hinge"].item() == pytest.approx(3.0)


def test_dcm_pulls_misclassified_predictions_towards_uniform_only() -> None:
    logits = torch.tensor([[LN3, 0.0], [0.0, LN3]], requires_grad=True)
    loss_terms(logits, torch.tensor([0, 0]))["dcm"].backward()
    # Row 1 is right: no gradient. Row 2: d/dz [−(1/C) Σ log p] = p − 1/C = [1/4 − 1/2, 3/4 − 1/2], / batch 2.
    assert torch.allclose(logits.grad, torch.tensor([[0.0, 0.0], [-0.125, 0.125]]), atol=1e-6)


def test_ce_plus_ls_is_label_smoothing() -> None:
    """w_ce·CE + w_ls·LS = (w_ce + w_ls)·CE with label smoothing ε = w_ls / (w_ce + w_ls)."""
    torch.manual_seed(0)
    logits, y = torch.randn(7, 5), torch.randint(0, 5, (7,))
    out = AutoFTLoss({"ce": 2.0, "ls": 0.5}, [])(logits, y)
    ref = 2.5 * F.cross_entropy(logits, y, label_smoothing=0.5 / 2.5)
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)


def test_weight_terms_and_the_weighted_sum() -> None:
    theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.0, 3.0]))
    anchor = torch.tensor([0.0, 0.0, 0.0, 1.0])  # θ − θ0 = [1, −2, 0, 2]
    loss = AutoFTLoss({"ce": 2.0, "hinge": 0.5, "l2init": 3.0, "l1zero": 0.1}, [theta], anchor)
    p = loss.param_terms()
    assert {k: v.item() for k, v in p.items()} == pytest.approx(
        {"l1init": 5 / 4, "l2init": 9 / 4, "l1zero": 6 / 4, "l2zero": 14 / 4})
    logits, y = torch.tensor([[0.0, 1.0, 3.0]]), torch.tensor([0])
    ce = -math.log(1 / (1 + math.e + math.e**3))
    assert loss(logits, y).item() == pytest.approx(2 * ce + 0.5 * 6 + 3 * 9 / 4 + 0.1 * 6 / 4, rel=1e-6)
    # The weight terms differentiate into the parameters: d/dθ 3·mean(θ − θ0)² = 3·2(θ − θ0)/4, + 0.1·sign(θ)/4.
    loss(logits, y).backward()
    expected = 1.5 * torch.tensor([1.0, -2.0, 0.0, 2.0]) + 0.025 * torch.sign(theta.detach())
    assert torch.allclose(theta.grad, expected)
    with pytest.raises(ValueError):
        AutoFTLoss({"l3": 1.0}, [])


# --- the search ----------------------------------------------------------------------------

SPACE = Space(TERMS, lr=(1e-5, 1e-1), wd=(1e-2, 0.3))


def _synthetic(config: autoft.Config, index: int) -> float:
    """A cheap objective with a known optimum (lr = 1e-3, small hinge weight)."""
    return -(math.log10(config.lr) + 3) ** 2 - math.log10(config.weights["hinge"]) * 0.1


def test_space_takes_exactly_the_trial_values() -> None:
    values = {"lr": 3e-4, "wd": 0.05, **{f"w_{k}": 0.01 * (i + 1) for i, k in enumerate(TERMS)}}
    config = SPACE.sample(optuna.trial.FixedTrial(values))
    assert config.lr == 3e-4 and config.wd == 0.05
    assert config.weights == {k: 0.01 * (i + 1) for i, k in enumerate(TERMS)}
    fixed = Space(("ce", "l2init"), (1e-5, 1e-1), (1e-2, 0.3), fix_ce=True).sample(
        optuna.trial.FixedTrial({"lr": 1e-3, "wd": 0.1, "w_l2init": 2.0}))
    assert fixed.weights == {"ce": 1.0, "l2init": 2.0}


def test_search_is_seeded_and_runs_tpe_past_the_startup_trials() -> None:
    a, _ = run_search(SPACE, 14, _synthetic, seed=3, workdir=None)
    b, _ = run_search(SPACE, 14, _synthetic, seed=3, workdir=None)
    c, _ = run_search(SPACE, 14, _synthetic, seed=4, workdir=None)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert [r.to_dict() for r in a] != [r.to_dict() for r in c]
    assert [r.index for r in a] == list(range(14))
    assert all(1e-5 <= r.config.lr <= 1e-1 and 1e-2 <= r.config.wd <= 0.3 for r in a)
    assert all(1e-4 <= w <= 10 for r in a for w in r.config.weights.values())


class _Stop(Exception):
    pass


@pytest.mark.parametrize("stop_after", [2, 11])
@pytest.mark.parametrize("mid_trial", [False, True])
def test_resumed_search_equals_an_uninterrupted_one(tmp_path: Path, mid_trial: bool, stop_after: int,
                                                    monkeypatch) -> None:
    """Interrupt after 2 (random startup phase) or 11 (TPE phase) complete trials, between trials or
    inside one (left RUNNING in the journal); the resumed study ends with the same trials."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # the journal's durability is not tested here: faster
    whole, _ = run_search(SPACE, 13, _synthetic, seed=0, workdir=tmp_path / "whole")
    work = tmp_path / "cut"
    calls: list[int] = []

    def evaluate(config: autoft.Config, index: int) -> float:
        calls.append(index)
        if mid_trial and index == stop_after and calls.count(index) == 1:
            raise KeyboardInterrupt  # inside the trial: it stays RUNNING in the journal
        return _synthetic(config, index)

    def stop(record: autoft.TrialRecord) -> None:
        if not mid_trial and record.index == stop_after - 1:
            raise _Stop

    with pytest.raises((KeyboardInterrupt, _Stop)):
        run_search(SPACE, 13, evaluate, seed=0, workdir=work, callbacks=[stop])
    resumed, reused = run_search(SPACE, 13, evaluate, seed=0, workdir=work)
    assert reused == stop_after
    assert [r.to_dict() for r in resumed] == [r.to_dict() for r in whole]
    # No complete trial was redone; only the one interrupted inside was.
    assert sorted(calls) == sorted(list(range(13)) + ([stop_after] if mid_trial else []))
    study = optuna.load_study(study_name="autoft", storage=autoft._storage(work))
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 13
    # The trial interrupted inside was begun after the journal's last record: cut off, not kept as FAIL.
    assert states.count(optuna.trial.TrialState.FAIL) == 0
    assert optuna.trial.TrialState.RUNNING not in states
    # Trials already complete are not rerun when the search is asked again.
    assert run_search(SPACE, 13, evaluate, seed=0, workdir=work)[1] == 13 and len(calls) == 13 + mid_trial


def test_best_trial_is_the_highest_value_later_on_ties() -> None:
    recs = [autoft.TrialRecord(i, autoft.Config(1e-3, 0.1, {}), v) for i, v in enumerate([5.0, 7.0, 7.0, 6.0])]
    assert best_of(recs).index == 2


# --- the method on digits ------------------------------------------------------------------

FAST = {"trials": 3, "inner_steps": 4}


def _optimizer_steps(monkeypatch, read) -> list[list]:  # noqa: ANN001
    """Per optimizer the loop makes (each trial's, then the final run's), ``read(group)`` of each of its
    param groups at each step, read inside ``opt.step`` (the values the step takes)."""
    seen: list[list] = []
    original = loop.make_optimizer

    def recording(*args: object, **kwargs: object) -> torch.optim.Optimizer:
        opt = original(*args, **kwargs)
        values: list = []
        seen.append(values)
        step = opt.step

        def spy(*a: object, **k: object) -> object:
            values.extend(read(g) for g in opt.param_groups)
            return step(*a, **k)

        opt.step = spy  # type: ignore[method-assign]
        return opt

    monkeypatch.setattr(loop, "make_optimizer", recording)
    return seen


def test_inner_and_final_runs_use_the_sampled_lr_and_wd_at_every_step(monkeypatch) -> None:
    """The released code's scheduler overwrote the sampled lr every step; here each trial's optimizer
    keeps the trial's lr and wd for all its steps, and the final one the best trial's."""
    spec = RunSpec(method="autoft", steps=6, options=_opts(**FAST, decay="coupled"))
    _pretrained_state(spec)
    seen = _optimizer_steps(monkeypatch, lambda g: (g["lr"], g["weight_decay"]))
    (row,) = execute(spec, "cpu")
    trials = json.loads(row["autoft_trials_json"])
    assert len(seen) == 3 + 1 and [len(s) for s in seen] == [4, 4, 4, 6]
    for steps, t in zip(seen, trials):
        assert set(steps) == {(t["lr"], t["wd"])}
    assert set(seen[-1]) == {(row["autoft_lr"], row["autoft_wd"])}
    assert len({t["lr"] for t in trials}) == 3  # really sampled: three different rates


def test_a_fixed_space_reduces_to_full_fine_tuning_from_the_pretrained_weights() -> None:
    """lr, wd fixed and CE alone with weight 1: the final model is bit for bit the `full` one with
    that lr and wd, whatever the trials did before: the final run starts from the pretrained weights."""
    fixed = _opts(trials=2, inner_steps=3, terms="ce", fix_ce=True, lr_min=3e-3, lr_max=3e-3,
                  wd_min=0.02, wd_max=0.02, decay="coupled")
    tr = fine_tune(RunSpec(method="autoft", steps=5, seed=2, options=fixed), "cpu")
    full = fine_tune(RunSpec(method="full", steps=5, seed=2, lr=3e-3, wd=0.02), "cpu")
    a, b = _state(tr.model), _state(full.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert tr.ctx.metrics["autoft_w_ce"] == 1.0 and tr.ctx.metrics["autoft_w_hinge"] == 0.0


def test_every_parameter_changes_and_a_seed_gives_one_result() -> None:
    spec = RunSpec(method="autoft", steps=5, options=_opts(**FAST))
    before = _pretrained_state(spec)
    first = fine_tune(spec, "cpu")
    unchanged = [n for n, p in first.model.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged
    again = fine_tune(spec, "cpu")
    assert again.ctx.metrics == first.ctx.metrics
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in first.model.state_dict().items())
    other = fine_tune(RunSpec(method="autoft", steps=5, seed=1, options=_opts(**FAST)), "cpu")
    assert other.ctx.metrics["autoft_trials_json"] != first.ctx.metrics["autoft_trials_json"]


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path, monkeypatch) -> None:
    spec = RunSpec(method="autoft", steps=5, options=_opts(trials=4, inner_steps=3))
    whole = fine_tune(spec, "cpu", tmp_path / "whole")
    original = autoft.run_search

    def interrupted(*args: object, **kwargs: object) -> object:
        def stop(record: autoft.TrialRecord) -> None:
            if record.index == 1:
                raise KeyboardInterrupt

        return original(*args, **{**kwargs, "callbacks": [stop]})  # type: ignore[arg-type]

    monkeypatch.setattr(autoft, "run_search", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(spec, "cpu", tmp_path / "cut")
    monkeypatch.setattr(autoft, "run_search", original)
    resumed = fine_tune(spec, "cpu", tmp_path / "cut")
    assert resumed.ctx.metrics["autoft_reused"] == 2 and whole.ctx.metrics["autoft_reused"] == 0
    drop = {"autoft_reused"}
    assert {k: v for k, v in resumed.ctx.metrics.items() if k not in drop} == \
        {k: v for k, v in whole.ctx.metrics.items() if k not in drop}
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in whole.model.state_dict().items())


@pytest.mark.slow  # a second Python process (imports torch): ~5 s idle
def test_sigkill_mid_trial_then_resume(tmp_path: Path, model_cache: Path) -> None:
    """A process killed (SIGKILL) inside its third trial: the rerun counts 2 trials done, redoes the
    third, and ends with exactly the trials and model of an uninterrupted run."""
    spec = RunSpec(method="autoft", steps=4, options=_opts(trials=4, inner_steps=3))
    work = tmp_path / "work"
    script = textwrap.dedent("""
        import json, os, signal, sys
        from pathlib import Path
        from ftbench.spec import RunSpec
        from ftbench.train import loop
        from ftbench.execution.runner import fine_tune
        calls = [0]
        evaluate = loop.evaluate
        def killing(model, data, metrics=None):
            calls[0] += 1
            if calls[0] == 3:  # after trial 3's inner fine-tune, before its value is stored
                os.kill(os.getpid(), signal.SIGKILL)
            return evaluate(model, data, metrics)
        loop.evaluate = killing
        fine_tune(RunSpec.from_dict(json.loads(sys.argv[1])), "cpu", Path(sys.argv[2]))
    """)
    env = {**os.environ, "FTBENCH_CACHE": str(model_cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(spec.to_dict()), str(work)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    study = optuna.load_study(study_name="autoft", storage=autoft._storage(work))
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.RUNNING]
    resumed = fine_tune(spec, "cpu", work)
    whole = fine_tune(spec, "cpu")
    assert resumed.ctx.metrics["autoft_reused"] == 2
    assert resumed.ctx.metrics["autoft_trials_json"] == whole.ctx.metrics["autoft_trials_json"]
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in whole.model.state_dict().items())


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_run_writes_the_search_columns_and_a_rerun_searches_again(cli, tmp_path: Path) -> None:
    args = ["run", "--method", "autoft", "--set", "trials=3", "--set", "inner_steps=5", "--steps", "5",
            "--out", tmp_path]
    r = cli(*args)
    assert r.code == 0, r.err
    assert "77,754/77,754 params trained" in r.out
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[0]
    assert row.method == "autoft" and row.status == "ok"
    assert row.autoft_trials == 3 and row.autoft_reused == 0
    trials = json.loads(row.autoft_trials_json)
    assert [t["index"] for t in trials] == [0, 1, 2]
    best = max(trials, key=lambda t: (t["value"], t["index"]))
    assert row.autoft_best_val == best["value"] and row.autoft_best_trial == best["index"]
    assert row.autoft_lr == best["lr"] and row.autoft_wd == best["wd"]
    for k in TERMS:
        assert row[f"autoft_w_{k}"] == best["weights"][k]
    assert pd.isna(row.lr) and pd.isna(row.wd) and row.batch_size == 64 and row.steps == 5  # lr, wd searched
    # The journal goes once the row is written: a finished run's search is never reused (issue 27).
    assert not (tmp_path / ".work" / row.run_id).exists()
    # The same command again searches again, and finds the same trials and result.
    r2 = cli(*args)
    assert r2.code == 0, r2.err
    again = pd.read_parquet(tmp_path)
    assert len(again) == 1 and again.iloc[0].autoft_reused == 0
    assert again.iloc[0].autoft_trials_json == row.autoft_trials_json and again.iloc[0].ood_acc == row.ood_acc


def test_autoft_is_listed_with_its_options(cli) -> None:
    r = cli("list", "methods")
    assert r.code == 0, r.err
    for text in ["autoft: trains all blocks", "--set trials=16", "--set inner_steps=20", "--set fix_ce=False",
                 "AutoFT: Learning an Objective for Robust Fine-Tuning"]:
        assert text in r.out, text


@pytest.mark.parametrize("sets, message", [
    (["trials=0"], "option trials=0 of method 'autoft' must be a positive integer"),
    (["terms=ce,foo"], "unknown term 'foo'"),
    (["terms=ce,ce"], "a term is repeated"),
    (["lr_min=0"], "option lr_min=0.0 of method 'autoft' must be a positive number"),
    (["lr_min=0.1", "lr_max=0.01"], "must not exceed lr_max=0.01"),
    (["terms=hinge", "fix_ce=true"], "needs 'ce' in terms"),
    (["dcm=ls"], "unknown value for option dcm of method 'autoft': 'ls'; accepted: uniform, entropy"),
    (["lr_mode=searched"], "option lr_mode of method 'autoft': 'searched'; accepted: sampled, fixed"),
    (["search_size=-1"], "option search_size=-1 of method 'autoft' must be a non-negative integer"),
    (["search_size=1.5"], "option search_size='1.5' of method 'autoft' must be a int"),
])
def test_bad_options_are_one_line_errors(cli, tmp_path: Path, sets: list[str], message: str) -> None:
    r = cli("run", "--method", "autoft", *[a for s in sets for a in ("--set", s)], "--out", tmp_path)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not list(tmp_path.glob("*.parquet"))


def test_terms_are_stored_in_one_order() -> None:
    a = resolve(RunSpec(method="autoft", options=_opts(terms="l2init, ce")))
    b = resolve(RunSpec(method="autoft", options=_opts(terms="ce,l2init")))
    assert a.options_dict["terms"] == "ce,l2init" and a.run_id == b.run_id


# --- issue 14: the released search space and optimizer ----------------------------------------


def test_default_space_is_the_releases_uniform_weight_decay_on_0_1() -> None:
    """autoft/src/models/autoft.py:47 (the current release): trial.suggest_float("wd", 0.0, 1.0), no log.
    The former default sampled log-uniform [0.01, 0.3] and fails here."""
    method = AutoFT(resolve(RunSpec(method="autoft")))
    space = method.space()
    assert space.wd == (0.0, 1.0) and not space.wd_log
    records, _ = run_search(space, 12, _synthetic, seed=0, workdir=None)
    wds = [r.config.wd for r in records]
    assert all(0.0 <= w <= 1.0 for w in wds) and max(wds) > 0.3  # uniform: most of the mass above 0.3
    log = AutoFT(resolve(RunSpec(method="autoft", options=_opts(wd_scale="log", wd_min=0.01, wd_max=0.3)))).space()
    assert log.wd_log and log.wd == (0.01, 0.3)  # the former space, one option away
    with pytest.raises(UsageError, match="wd_min=0.0 of method 'autoft' must be a positive number"):
        resolve(RunSpec(method="autoft", options=_opts(wd_scale="log")))


def test_decoupled_decay_is_adamw_bit_for_bit() -> None:
    """Adam(wd=0) + DecoupledDecay(wd) is torch.optim.AdamW(wd): the release's optimizer (autoft.py:110)."""
    torch.manual_seed(0)
    w0 = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(w) for w in w0] for _ in range(6)]
    a = [w.clone().requires_grad_(True) for w in w0]
    b = [w.clone().requires_grad_(True) for w in w0]
    ref = torch.optim.AdamW(a, lr=1e-2, weight_decay=0.4, foreach=True)
    ours = loop.make_optimizer([{"params": [p]} for p in b], "adam", 1e-2, 0.0)
    hook = autoft.DecoupledDecay(0.4)
    for t, gs in enumerate(grads, 1):
        for p, q, g in zip(a, b, gs):
            p.grad, q.grad = g.clone(), g.clone()
        ref.step()
        hook(ours, t)
        ours.step()
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    coupled = [w.clone().requires_grad_(True) for w in w0]
    opt = torch.optim.Adam(coupled, lr=1e-2, weight_decay=0.4)
    for gs in grads:
        for p, g in zip(coupled, gs):
            p.grad = g.clone()
        opt.step()
    assert not torch.allclose(coupled[0], a[0])  # coupled L2 is a different optimizer


def test_default_trials_are_decayed_decoupled_and_scored_by_the_benchmarks_main_metric(monkeypatch) -> None:
    spec = resolve(RunSpec(method="autoft", steps=3, options=_opts(**FAST)))
    assert spec.options_dict["decay"] == "decoupled" and spec.options_dict["objective"] == "main"
    hooks: list[object] = []
    original = loop.fit

    def spy(*args: object, **kwargs: object):
        hooks.append(kwargs.get("before_step"))
        assert kwargs["wd"] == 0.0  # the decay is the hook's, not Adam's coupled L2
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "fit", spy)
    (row,) = execute(spec, "cpu")
    assert len(hooks) == 3 and all(isinstance(h, autoft.DecoupledDecay) for h in hooks)  # the trials' fits
    assert [h.wd for h in hooks[:3]] == [t["wd"] for t in json.loads(row["autoft_trials_json"])]
    assert row["autoft_objective"] == "acc"  # digits has no metric beyond accuracy


def test_objective_is_a_benchmark_metric_and_a_wrong_one_is_one_error_line(cli, tmp_path, monkeypatch, capsys) -> None:
    from ftbench.data import digits

    bench = digits.Digits
    monkeypatch.setattr(bench, "main_metric", "half_acc", raising=False)
    monkeypatch.setattr(bench, "metric_names", ("half_acc",))  # what its metrics compute, declared for resolution
    original = bench.target

    def target(self, spec):  # a benchmark metric: half the accuracy, to tell it from accuracy
        t = original(self, spec)
        import dataclasses

        return dataclasses.replace(t, metrics=lambda pred, split: {
            "half_acc": 50.0 * float((pred == split.y.to(pred.device)).float().mean())})

    monkeypatch.setattr(bench, "target", target)
    spec = RunSpec(method="autoft", steps=2, options=_opts(trials=2, inner_steps=2))
    (row,) = execute(spec, "cpu")
    trials = json.loads(row["autoft_trials_json"])
    assert row["autoft_objective"] == "half_acc" and all(0 <= t["value"] <= 50 for t in trials)
    capsys.readouterr()  # the source model's progress lines, when this session trained it above
    r = cli("run", "--method", "autoft", "--steps", "2", "--set", "trials=1", "--set", "inner_steps=1",
            "--set", "objective=worst_group_acc", "--out", tmp_path / "r")
    assert r.code == 2 and r.err.count("\n") <= 2 and "objective='worst_group_acc'" in r.err
    assert "accepted: main, acc, half_acc" in r.err and not list((tmp_path / "r").glob("*.parquet"))


def test_a_small_search_budget_is_said_where_the_user_sees_it(cli, tmp_path) -> None:
    assert "close to random search" in AutoFT.notice(resolve(RunSpec(method="autoft")))
    assert AutoFT.notice(resolve(RunSpec(method="autoft", options=_opts(trials=100)))) is None
    r = cli("run", "--method", "autoft", "--steps", "1", "--set", "trials=1", "--set", "inner_steps=1",
            "--out", tmp_path)
    assert r.code == 0, r.err
    assert "note: autoft: 1 trials over 11 searched numbers is close to random search" in r.err


# --- issue 22: the release's loss terms, DCM form, search subset and learning rate --------------


def test_dcm_entropy_is_the_releases_entropy_of_the_misclassified() -> None:
    """autoft/src/losses/learnedloss.py:29-32: dcm = mean over the batch of 1[wrong] · H(p). Same two rows
    as above: row 2 is wrong, H = entropy of [3/4, 1/4]; ftbench's form (cross-entropy to uniform) stays."""
    logits = torch.tensor([[LN3, 0.0], [0.0, LN3]])
    y = torch.tensor([0, 0])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    uniform_ce = -0.5 * (math.log(0.75) + math.log(0.25))
    assert float(loss_terms(logits, y, dcm="entropy")["dcm"]) == pytest.approx(h / 2, abs=1e-6)
    assert float(loss_terms(logits, y)["dcm"]) == pytest.approx(uniform_ce / 2, abs=1e-6)
    w = torch.tensor([[1.0], [2.0]], requires_grad=True)
    params = [w]
    loss = AutoFTLoss({"dcm": 1.0}, params, dcm="entropy")
    assert float(loss(logits, y)) == pytest.approx(h / 2, abs=1e-6)
    assert float(AutoFTLoss({"dcm": 1.0}, params)(logits, y)) == pytest.approx(uniform_ce / 2, abs=1e-6)


def test_the_dcm_option_reaches_the_trials_and_the_final_run(monkeypatch) -> None:
    forms: list[str] = []
    original = autoft.AutoFTLoss.__init__

    def spy(self, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        forms.append(self.dcm)

    monkeypatch.setattr(autoft.AutoFTLoss, "__init__", spy)
    fine_tune(RunSpec(method="autoft", steps=2, options=_opts(trials=2, inner_steps=2, dcm="entropy")), "cpu")
    assert forms == ["entropy"] * 3
    forms.clear()
    fine_tune(RunSpec(method="autoft", steps=2, options=_opts(trials=2, inner_steps=2)), "cpu")
    assert forms == ["uniform"] * 3


def test_search_subset_is_a_seeded_draw_without_replacement() -> None:
    a = autoft.search_subset(500, 100, seed=0)
    assert a is not None and len(a) == 100 and len(set(a.tolist())) == 100 and list(a) == sorted(a)
    assert a.min() >= 0 and a.max() < 500
    assert list(autoft.search_subset(500, 100, seed=0)) == list(a)
    assert list(autoft.search_subset(500, 100, seed=1)) != list(a)
    assert autoft.search_subset(500, 0, seed=0) is None and autoft.search_subset(500, 500, seed=0) is None


def test_trials_are_scored_on_a_search_size_subset_of_the_search_split(monkeypatch) -> None:
    """--set search_size=N: every trial is scored on the same N examples of the protocol's search split
    (the release's --num_ood_hp_examples); the default scores on all of it."""
    sizes: list[int] = []
    labels: list[torch.Tensor] = []
    original = loop.evaluate

    def spy(model: nn.Module, split: object, *args: object, **kwargs: object):
        sizes.append(len(split))  # type: ignore[arg-type]
        labels.append(split.y.clone())  # type: ignore[attr-defined]
        return original(model, split, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", spy)
    spec = RunSpec(method="autoft", protocol="id-ood", steps=2, options=_opts(trials=2, inner_steps=2, search_size=37))
    tr = fine_tune(spec, "cpu")
    whole = len(tr.ctx.target.search)
    assert whole > 37 and sizes == [37, 37] and torch.equal(labels[0], labels[1])
    assert tr.ctx.metrics["autoft_search_examples"] == 37
    sizes.clear()
    tr = fine_tune(dataclasses.replace(spec, options=_opts(trials=2, inner_steps=2)), "cpu")
    assert sizes == [whole, whole] and tr.ctx.metrics["autoft_search_examples"] == whole


def test_lr_mode_fixed_trains_every_step_at_lr_whatever_was_sampled(monkeypatch) -> None:
    """The release's cosine_lr(optimizer, args.lr, ...) sets each step's lr from args.lr (finetune.py:92,
    122): with lr_mode=fixed the inner and the final runs train at --lr; the lr is still sampled (and
    recorded), as the release's TPE samples it."""
    spec = RunSpec(method="autoft", steps=5, lr=2e-3, options=_opts(**FAST, lr_mode="fixed"))
    _pretrained_state(spec)
    steps = _optimizer_steps(monkeypatch, lambda g: g["lr"])
    (row,) = execute(spec, "cpu")
    trials = json.loads(row["autoft_trials_json"])
    seen = [set(lrs) for lrs in steps]  # the rates each optimizer stepped with
    assert len(seen) == 4 and all(s == {2e-3} for s in seen)
    assert len({t["lr"] for t in trials}) == 3 and 2e-3 not in {t["lr"] for t in trials}
    assert row["lr"] == 2e-3  # the rate it trained at is the row's lr
    (sampled,) = execute(dataclasses.replace(spec, options=_opts(**FAST)), "cpu")
    assert sampled["lr"] is None or math.isnan(sampled["lr"])  # the default: lr is searched, --lr unused


def test_new_options_keep_the_run_ids_of_earlier_default_runs() -> None:
    """dcm, search_size and lr_mode at their defaults are what autoft did before they existed: the run ids
    of those runs (computed by the code before them) stay valid; another value is another run."""
    default = resolve(RunSpec(method="autoft", protocol="id-ood"))
    assert default.options_dict["dcm"] == "uniform" and default.options_dict["lr_mode"] == "sampled"
    # The ids under the embedded data version 2 (2026-12-07: the bigger ID val split); under version 1
    # the code before the options gave 4206a9f6ac6a4623 and ce595bfab48ac8f1, and this test held them.
    assert default.run_id == "4836cca3ad10bc0c"
    assert resolve(RunSpec(method="autoft", protocol="id-ood", options=_opts(terms="ce,l2init"))).run_id == "f4d3c01438501084"
    older = tuple((k, v) for k, v in default.options if k not in ("dcm", "search_size", "lr_mode"))
    assert dataclasses.replace(default, options=older).run_id == default.run_id  # as if they did not exist
    for opt in (("dcm", "entropy"), ("search_size", 10), ("lr_mode", "fixed")):
        assert resolve(RunSpec(method="autoft", protocol="id-ood", options=(opt,))).run_id != default.run_id


def test_the_recipe_sets_the_releases_terms_flyp_only_with_a_text_tower() -> None:
    """autoft/scripts/iwildcam.sh:14 --losses ce dcm entropy flyp hinge l1init l1zero l2init l2zero (no ls):
    a CLIP model gets all nine, a model without a text tower the eight it can compute."""
    from ftbench.papers.recipes import apply_recipe, get_recipe

    recipe = get_recipe("autoft")
    release = {"ce", "dcm", "entropy", "flyp", "hinge", "l1init", "l1zero", "l2init", "l2zero"}
    for model, terms in (("digits-clip", release), ("digits-resnet", release - {"flyp"}), (None, release - {"flyp"})):
        fields = {"method": "autoft", "protocol": "id-ood", **({"model": model} if model else {})}
        spec = resolve(RunSpec(**apply_recipe(recipe, fields, set())))
        o = spec.options_dict
        assert set(o["terms"].split(",")) == terms, model
        assert (o["dcm"], o["search_size"], o["lr_mode"], spec.lr) == ("entropy", 1000, "fixed", 1e-5)
        assert (spec.schedule, spec.warmup) == ("cosine", 500)  # cosine_lr, warmup_length 500
    # What the user gives wins over the recipe's.
    fields = {"method": "autoft", "model": "digits-clip", "options": (("terms", "ce,hinge"),)}
    assert resolve(RunSpec(**apply_recipe(recipe, fields, set()))).options_dict["terms"] == "ce,hinge"


def test_lr_mode_fixed_schedules_the_inner_runs_as_the_releases_cosine_lr(monkeypatch) -> None:
    """The release calls cosine_lr(optimizer, args.lr, warmup, inner_steps) in every inner run too
    (finetune.py:92): with lr_mode=fixed the run's --schedule/--warmup apply to each inner run over its
    inner_steps (and to the final run); with the default, the inner runs keep the sampled rate, constant."""
    spec = RunSpec(method="autoft", steps=5, lr=2e-3, schedule="cosine", warmup=2,
                   options=_opts(trials=2, inner_steps=4, lr_mode="fixed"))
    _pretrained_state(spec)
    seen: list[list[float]] = []
    original = loop.make_optimizer

    def recording(*args: object, **kwargs: object) -> torch.optim.Optimizer:
        opt = original(*args, **kwargs)
        lrs: list[float] = []
        seen.append(lrs)
        step = opt.step

        def spy(*a: object, **k: object) -> object:
            lrs.append(opt.param_groups[0]["lr"])
            return step(*a, **k)

        opt.step = spy  # type: ignore[method-assign]
        return opt

    monkeypatch.setattr(loop, "make_optimizer", recording)
    execute(spec, "cpu")
    inner, final = loop.lr_factor("cosine", 2, 4), loop.lr_factor("cosine", 2, 5)
    assert len(seen) == 3
    for lrs in seen[:2]:
        # rel 1e-12: float64 rates, the loop's lr times the same factor (a rounding or two, ~1e-16)
        assert lrs == pytest.approx([2e-3 * inner(t) for t in range(4)], rel=1e-12)
    assert seen[2] == pytest.approx([2e-3 * final(t) for t in range(5)], rel=1e-12)
    seen.clear()
    (row,) = execute(dataclasses.replace(spec, options=_opts(trials=2, inner_steps=4)), "cpu")
    trials = json.loads(row["autoft_trials_json"])
    assert [set(lrs) for lrs in seen[:2]] == [{t["lr"]} for t in trials]  # sampled: constant inner runs
