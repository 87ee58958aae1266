"""What each method trains and what it leaves bit-identical, on the real digits benchmark."""

from __future__ import annotations

import pytest
import torch

from ftbench.train.pretrain import pretrained
from ftbench.data.base import get_benchmark
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.execution.runner import fine_tune

BLOCKS = ["1", "2", "3", "last"]


def _before_after(spec: RunSpec) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], object]:
    spec = resolve(spec)
    bench = get_benchmark(spec.benchmark)
    before = {k: v.clone() for k, v in pretrained(spec.model, bench.source(spec), torch.device("cpu")).state_dict().items()}
    tr = fine_tune(spec, "cpu")
    return before, tr.model.state_dict(), tr.model


def _owner(model, key: str) -> str:
    """Which block a state_dict entry belongs to."""
    for name, mods in model.blocks().items():
        for m in mods:
            prefix = next(n for n, mm in model.named_modules() if mm is m)
            if key.startswith(prefix + "."):
                return name
    raise AssertionError(f"{key} belongs to no block")


def _changed(before, after, model, params_only: bool):
    names = {n for n, _ in model.named_parameters()}
    out = {}
    for k in before:
        if params_only and k not in names:
            continue
        if k.endswith("num_batches_tracked"):
            continue
        out[k] = not torch.equal(before[k], after[k])
    return out


@pytest.mark.parametrize("blocks", [["1"], ["2"], ["3"], ["last"], ["1", "3"]])
@pytest.mark.parametrize("shift", ["corruption", "label-flip"])
def test_surgical_trains_exactly_the_chosen_blocks(blocks: list[str], shift: str) -> None:
    before, after, model = _before_after(RunSpec(shift=shift, method="surgical", blocks=tuple(blocks), steps=3, lr=1e-2))
    for key, changed in _changed(before, after, model, params_only=False).items():
        block = _owner(model, key)
        is_param = key in dict(model.named_parameters())
        if block in blocks:
            if is_param:
                assert changed, f"{key} in tuned block {block} did not change"
        else:
            assert not changed, f"{key} in frozen block {block} changed"


def test_surgical_bn_statistics_update_only_when_asked() -> None:
    key = "stage2.bn1.running_mean"
    before, after, model = _before_after(RunSpec(method="surgical", blocks=("2",), steps=3, lr=1e-2,
                                                 options=(("bn", "train"),)))
    assert not torch.equal(before[key], after[key]), "bn=train must update the tuned block's running stats"
    before, after, model = _before_after(RunSpec(method="surgical", blocks=("2",), steps=3, lr=1e-2, options=(("bn", "frozen"),)))
    assert torch.equal(before[key], after[key]), "bn=frozen must keep running stats"
    assert not torch.equal(before["stage2.conv1.weight"], after["stage2.conv1.weight"])


@pytest.mark.parametrize("method", ["surgical", "full", "lp-ft", "auto-rgn", "wise-ft"])
def test_by_default_no_batchnorm_statistic_moves(method: str) -> None:
    """The surgical and LP-FT releases train with the model in eval mode (issue 14): a default run must
    not re-estimate BatchNorm statistics, which would be test-time adaptation of a size that differs by
    block. (Fails with the former default bn=train.)"""
    spec = RunSpec(method=method, blocks=("2",) if method == "surgical" else (), steps=3, lr=1e-2)
    before, after, _ = _before_after(spec)
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats), \
        [k for k in stats if not torch.equal(before[k], after[k])]


def test_full_trains_every_parameter() -> None:
    before, after, model = _before_after(RunSpec(method="full", steps=3, lr=1e-2))
    changed = _changed(before, after, model, params_only=True)
    assert all(changed.values()), [k for k, c in changed.items() if not c]


def test_none_changes_nothing() -> None:
    before, after, model = _before_after(RunSpec(method="none"))
    assert not any(_changed(before, after, model, params_only=False).values())


def test_linear_probe_changes_only_the_head_and_converges() -> None:
    spec = RunSpec(shift="label-flip", method="linear-probe", wd=1e-3, options=(("select", "fixed"),))
    before, after, model = _before_after(spec)
    for key, changed in _changed(before, after, model, params_only=False).items():
        assert changed == key.startswith("head."), key
    # Converged: the gradient of the convex objective at the solution is ~0.
    tr = fine_tune(spec, "cpu")
    feats = tr.model.features(tr.target.train.x).detach()
    w = tr.model.head.weight.detach().clone().requires_grad_(True)
    b = tr.model.head.bias.detach().clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(feats @ w.T + b, tr.target.train.y) + 0.5 * 1e-3 * (w * w).sum()
    gw, gb = torch.autograd.grad(loss, [w, b])
    # At the optimum of this convex objective the gradient is 0 up to L-BFGS's stopping tolerance and
    # float32 rounding (measured: 5e-6); the unfitted pretrained head's is 0.39. 1e-3 separates them.
    assert gw.abs().max() < 1e-3 and gb.abs().max() < 1e-3


def test_lp_ft_probes_then_trains_everything() -> None:
    spec = RunSpec(shift="label-flip", method="lp-ft", steps=2, lr=1e-3)
    before, after, model = _before_after(spec)
    assert all(_changed(before, after, model, params_only=True).values())
    tr = fine_tune(spec, "cpu")
    lp, ft = tr.ctx.fits  # the L-BFGS stage, then the fine-tuning stage
    assert lp.kind == "lbfgs" and 0 < lp.steps <= 200 * 50 and ft.steps == 2  # 50 warm-started solves


def test_lp_ft_head_starts_from_the_probe() -> None:
    """With zero fine-tuning learning signal (lr tiny), LP-FT's head equals the linear probe's."""
    probe = fine_tune(RunSpec(shift="label-flip", method="linear-probe", wd=1e-3, options=(("select", "fixed"),)),
                      "cpu").model
    lpft = fine_tune(RunSpec(shift="label-flip", method="lp-ft", steps=1, lr=1e-12,
                             options=(("lp_l2", 1e-3), ("lp_select", "fixed"))), "cpu").model
    assert torch.allclose(probe.head.weight, lpft.head.weight, atol=1e-6)
    # The default (the release's C sweep): LP-FT starts from exactly the linear probe's chosen head,
    # as the release loads the linear probe's weights (baseline_train.py:225-250).
    probe = fine_tune(RunSpec(shift="corruption", method="linear-probe"), "cpu")
    lpft = fine_tune(RunSpec(shift="corruption", method="lp-ft", steps=1, lr=1e-12), "cpu")
    assert probe.ctx.metrics["lp_c"] == lpft.ctx.metrics["lp_c"]
    assert torch.allclose(probe.model.head.weight, lpft.model.head.weight, atol=1e-6)


def test_the_probe_sweeps_c_and_keeps_the_first_best_on_validation() -> None:
    """log_reg_sk.py: C over logspace(-7, 2, 50), warm-started refits, the first C of the best val
    accuracy. The former default (one fixed lp_l2 the report never selects) fails this."""
    import numpy as np

    from ftbench.methods.linear import c_grid, sweep_probe

    assert resolve(RunSpec(method="lp-ft")).options_dict["lp_select"] == "val"
    assert resolve(RunSpec(method="linear-probe")).wd is None  # the sweep, not --wd, sets the strength
    grid = c_grid(1e-7, 1e2, 50)
    assert len(grid) == 50 and np.allclose(grid, np.logspace(-7, 2, 50), rtol=1e-12)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 6))
    y, yv = rng.integers(0, 4, 80), rng.integers(0, 4, 200)
    z, zv = centres[y] + rng.normal(0, 1.5, (80, 6)), centres[yv] + rng.normal(0, 1.5, (200, 6))
    choice = sweep_probe(z, y, zv, yv, 4, grid[::7], 200)
    accs = choice.val_accs
    assert choice.index == int(np.argmax(accs)) and accs[choice.index] == max(accs)
    pred = (zv @ choice.w.numpy().T + choice.b.numpy()).argmax(1)
    assert float((pred == yv).mean()) * 100 == pytest.approx(accs[choice.index])


def test_the_chosen_probe_is_recorded_and_maps_back_to_the_raw_features() -> None:
    tr = fine_tune(RunSpec(method="linear-probe"), "cpu")
    m = tr.ctx.metrics
    n = len(tr.target.train)
    assert 1e-7 <= m["lp_c"] <= 1e2 and m["lp_l2"] == pytest.approx(1 / (m["lp_c"] * n))
    feats = tr.model.features(tr.target.val.x)  # raw features: the head undoes the standardisation
    acc = float((tr.model.head(feats).argmax(1) == tr.target.val.y).float().mean()) * 100
    assert acc == pytest.approx(m["lp_probe_val_acc"], abs=1e-4)


def test_trainable_parameter_counts_are_reported(cli, tmp_path) -> None:
    import pandas as pd

    r = cli("run", "--method", "surgical", "--block", "last", "--steps", "2", "--out", tmp_path)
    assert r.code == 0, r.err
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[0]
    assert row.n_trainable == 64 * 10 + 10 and row.n_params > row.n_trainable


def test_builtin_method_table_is_the_registry() -> None:
    """ftbench.methods.BUILTIN_ORDER lets report order rows without importing the methods (and torch):
    it must name every built-in method with its own order."""
    from ftbench.methods import BUILTIN_ORDER
    from ftbench.methods.base import all_methods

    assert BUILTIN_ORDER == {m.name: m.order for m in all_methods()}


def test_builtin_method_modules_are_where_each_method_registers() -> None:
    """get_method imports only BUILTIN_MODULE[name] (a warm run should not import every method):
    each entry must be the module that defines the method, and every built-in method has one."""
    from ftbench.methods import BUILTIN_MODULE
    from ftbench.methods.base import all_methods

    assert {m.name: m.__module__ for m in all_methods()} == {
        n: f"ftbench.methods.{mod}" for n, mod in BUILTIN_MODULE.items()}
