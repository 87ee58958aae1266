"""WiSE-FT: the weight-space interpolation, the alpha grid option, and its end-to-end invariants
(alpha = 0 is the pretrained model, i.e. method `none`; alpha = 1 is method `full`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from ftbench.errors import UsageError
from ftbench.methods.base import Method
from ftbench.methods.wiseft import interpolate, parse_alphas, snapshot
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.execution.runner import _evaluate, execute, fine_tune

ACCS = ("id_acc", "source_val_acc", "val_acc", "ood_acc")
SPEC = RunSpec(shift="corruption", method="wise-ft", steps=3, lr=1e-2, seed=1)
# The runner evaluates a method's extra states (Method.extra_states) once the lead's hook is in.
needs_runner_hook = pytest.mark.skipif(not hasattr(Method, "extra_states"),
                                       reason="runner does not evaluate Method.extra_states yet")


# --- interpolation on a tiny hand-built module ------------------------------------------------
def _tiny() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _endpoints() -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = _tiny()
    with torch.no_grad():
        model[0].weight[0, 0] = -0.0  # a negative zero must survive alpha = 0 bit for bit
    pre = snapshot(model)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):  # a few steps: weights and BatchNorm statistics move
        opt.zero_grad()
        model(torch.randn(8, 3)).sum().backward()
        opt.step()
    with torch.no_grad():
        model[3].bias[0] = pre["3.bias"][0]  # one element left where it was
    ft = snapshot(model)
    assert int(ft["1.num_batches_tracked"]) == 3 and int(pre["1.num_batches_tracked"]) == 0
    return model, pre, ft


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def test_alpha_0_and_1_are_the_endpoints_bit_for_bit() -> None:
    model, pre, ft = _endpoints()
    for alpha, want in ((0.0, pre), (1.0, ft)):
        interpolate(model, pre, ft, alpha)
        for k, v in model.state_dict().items():
            expected = ft[k] if k.endswith("num_batches_tracked") else want[k]
            assert torch.equal(_bits(v), _bits(expected)), (alpha, k)
    interpolate(model, pre, ft, 0.0)
    assert str(model[0].weight[0, 0].item()) == "-0.0"


def test_midpoint_interpolates_parameters_and_batchnorm_buffers() -> None:
    model, pre, ft = _endpoints()
    interpolate(model, pre, ft, 0.5)
    state = model.state_dict()
    for k in ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "1.running_mean", "1.running_var"):
        assert not torch.equal(pre[k], ft[k]), k  # the test would be vacuous otherwise
        # (1 - a) pre + a ft at a = 1/2 against (pre + ft) / 2: two roundings of values <= ~3: < 1e-6.
        torch.testing.assert_close(state[k], (pre[k] + ft[k]) / 2, rtol=0, atol=1e-6)
    # Integer buffers take the fine-tuned value; unchanged elements keep their exact value.
    assert int(state["1.num_batches_tracked"]) == 3
    assert torch.equal(_bits(state["3.bias"][:1]), _bits(pre["3.bias"][:1]))
    interpolate(model, pre, ft, 0.25)
    # assert_close's float32 default (rtol 1.3e-6, atol 1e-5): the same two-term blend, a few u.
    torch.testing.assert_close(model.state_dict()["1.running_var"], 0.75 * pre["1.running_var"] + 0.25 * ft["1.running_var"])


# --- the alphas option ------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("0,0.25,0.5,0.75,1", (0.0, 0.25, 0.5, 0.75, 1.0)),
    (" 0 , .5 ,1.0 ", (0.0, 0.5, 1.0)),
    ("0.5", (0.5,)),
    ("1e-1,1", (0.1, 1.0)),
    ([0, 0.5, 1], (0.0, 0.5, 1.0)),  # a list, as a suite's options table may give it
])
def test_alphas_accepted(text: object, expected: tuple[float, ...]) -> None:
    assert parse_alphas(text) == expected


@pytest.mark.parametrize("text, why", [
    ("", "an empty value"),
    ("0,,1", "an empty value"),
    ("0,a,1", "'a' is not a number"),
    ("0,1.5", "1.5 is outside [0, 1]"),
    ("-0.1,1", "-0.1 is outside [0, 1]"),
    ("0,nan", "nan is outside [0, 1]"),
    ("0.5,0.25,1", "0.25 is smaller than 0.5 before it"),
    ("0,0.5,0.5,1", "0.5 is repeated"),
])
def test_alphas_rejected_with_a_clear_message(text: str, why: str) -> None:
    spec = dataclasses.replace(SPEC, options=(("alphas", text),))
    with pytest.raises(UsageError) as e:
        resolve(spec)
    msg = str(e.value)
    assert msg.startswith(f"option alphas={text!r} of method 'wise-ft': {why}; expected ")
    assert "comma-separated numbers in [0, 1], ascending, without repeats" in msg


def test_equal_grids_share_a_run_id_and_the_grid_is_not_a_variant() -> None:
    default = resolve(SPEC)
    assert default.options_dict == {"alphas": "0,0.25,0.5,0.75,1", "bn": "frozen", "decay": "coupled"}
    same = resolve(dataclasses.replace(SPEC, options=(("alphas", " 0, .25,0.5 ,0.75,1.0"),)))
    assert same.run_id == default.run_id
    other = resolve(dataclasses.replace(SPEC, options=(("alphas", "0,0.5,1"),)))
    assert other.run_id != default.run_id
    from ftbench.methods.wiseft import WiseFT

    assert WiseFT(other).variant() == ""
    assert WiseFT(resolve(dataclasses.replace(SPEC, options=(("alphas", "0,1"), ("bn", "train"))))).variant() == "bn=train"


def test_cli_rejects_a_bad_grid_in_one_line(cli, tmp_path: Path) -> None:
    r = cli("run", "--method", "wise-ft", "--set", "alphas=0,2", "--steps", "1", "--out", tmp_path)
    assert r.code == 2
    assert r.err.strip().count("\n") == 0 and "alphas='0,2'" in r.err and "2 is outside [0, 1]" in r.err
    assert not list(tmp_path.glob("*.parquet"))


# --- end to end on digits: alpha = 0 is `none`, alpha = 1 is `full` -----------------------------
def _accs(row: dict) -> dict[str, float]:
    return {k: row[k] for k in ACCS}


def test_alpha_0_is_none_and_alpha_1_is_full() -> None:
    tr = fine_tune(SPEC, "cpu")
    states = []
    for cols in tr.method.extra_states(tr.ctx):  # what the runner does with Method.extra_states
        states.append({**cols, **_evaluate(tr.model, tr.task)})
    assert [s["alpha"] for s in states] == [0.0, 0.25, 0.5, 0.75]
    none = execute(dataclasses.replace(SPEC, method="none", options=()), "cpu")[-1]
    full = execute(dataclasses.replace(SPEC, method="full", options=()), "cpu")[-1]
    assert _accs(states[0]) == _accs(none)
    # After the extra states the model is the fine-tuned one again, identical to `full`'s.
    assert _accs(_evaluate(tr.model, tr.task)) == _accs(full)
    assert tr.ctx.metrics == {"alpha": 1.0}
    # Fine-tuning moved the model (else the two invariants above say nothing).
    assert _accs(none) != _accs(full)


@needs_runner_hook
def test_rows_one_per_alpha_final_is_alpha_1(tmp_path: Path) -> None:
    rows = execute(SPEC, "cpu")
    assert [r["alpha"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [r["final"] for r in rows] == [False] * 4 + [True]
    assert len({r["run_id"] for r in rows}) == 1 and {r["step"] for r in rows} == {3}
    assert {r["variant"] for r in rows} == {""} and {r["method"] for r in rows} == {"wise-ft"}
    none = execute(dataclasses.replace(SPEC, method="none", options=()), "cpu")[-1]
    full = execute(dataclasses.replace(SPEC, method="full", options=()), "cpu")[-1]
    assert _accs(rows[0]) == _accs(none) and _accs(rows[-1]) == _accs(full)

    # Stored and selected like checkpoint rows: --checkpoint best picks alpha on target validation,
    # --checkpoint final is the fine-tuned model.
    from ftbench.report.table import select
    from ftbench.results.store import read_results, write_result

    write_result(tmp_path, rows)
    df, problems = read_results(tmp_path)
    assert not problems and len(df) == 5 and df["alpha"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    best = select(df, "target-val", "best").iloc[0]
    assert best["val_acc"] == df["val_acc"].max()
    assert select(df, "target-val", "final").iloc[0]["alpha"] == 1.0


@needs_runner_hook
def test_grid_without_1_still_ends_with_the_fine_tuned_row() -> None:
    rows = execute(dataclasses.replace(SPEC, options=(("alphas", "0.5"),)), "cpu")
    assert [(r["alpha"], r["final"]) for r in rows] == [(0.5, False), (1.0, True)]
