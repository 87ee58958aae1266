"""auto-rgn (per-tensor learning rates from relative gradient norms) and l2-sp / l1-sp (penalties
towards the pretrained weights): their defining computations on hand-built modules, and what a
user notices on the digits benchmark and from the CLI."""

from __future__ import annotations

from collections import OrderedDict

import pandas as pd
import pytest
import torch
from torch import nn

from ftbench.data.base import Split, get_benchmark
from ftbench.methods.regularizers import L1SP, L2SP, SPPenalty
from ftbench.methods.rgn import RGNSchedule, is_batchnorm, relative_gradient_norms
from ftbench.models.base import BlockModel
from ftbench.train.pretrain import pretrained
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.train import loop
from ftbench.train.context import TrainContext
from ftbench.execution.runner import execute, fine_tune

# Tolerances: relative gradient norms, learning rates and penalties here are a few float operations
# on small exact numbers (0.6, 0.8, 0.1, ...): pytest.approx's default (1e-6 relative) and allclose's
# (rtol 1e-5) hold whatever order they are computed in (float32: u = 6e-8 per rounding).


def _pretrained_state(spec: RunSpec) -> dict[str, torch.Tensor]:
    spec = resolve(spec)
    model = pretrained(spec.model, get_benchmark(spec.benchmark).source(spec), torch.device("cpu"))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _backbone_distance(model: BlockModel, before: dict[str, torch.Tensor]) -> float:
    """||w - w0||₂ over every parameter outside the classifier."""
    sq = sum(float(((p.detach() - before[n]) ** 2).sum()) for n, p in model.named_parameters() if not n.startswith("head."))
    return sq**0.5


def _per_tensor_groups(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam([{"params": [p]} for p in params], lr=lr)


# --- auto-rgn: the defining computation ------------------------------------------------------


def test_rgn_multipliers_equal_hand_computed_values() -> None:
    """θ1 = [3, 4], g1 = [0.6, 0.8] -> RGN 0.2; θ2 = [1, 0], g2 = [0.5, 0] -> RGN 0.5; normalised: 0.4, 1."""
    t1 = nn.Parameter(torch.tensor([3.0, 4.0]))
    t2 = nn.Parameter(torch.tensor([1.0, 0.0]))
    g1, g2 = torch.tensor([0.6, 0.8]), torch.tensor([0.5, 0.0])
    (t1 @ g1 + t2 @ g2).backward()  # a linear loss: the gradients are exactly g1 and g2
    assert torch.allclose(relative_gradient_norms([t1, t2]), torch.tensor([0.2, 0.5], dtype=torch.float64))
    opt = _per_tensor_groups([t1, t2], lr=0.1)
    RGNSchedule(base_lr=0.1)(opt, 1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * 0.4, 0.1 * 1.0])


def test_rgn_excluded_tensors_get_zero_and_do_not_enter_the_maximum() -> None:
    t1 = nn.Parameter(torch.tensor([3.0, 4.0]))
    t2 = nn.Parameter(torch.tensor([1.0, 0.0]))
    (t1 @ torch.tensor([0.6, 0.8]) + t2 @ torch.tensor([0.5, 0.0])).backward()
    opt = _per_tensor_groups([t1, t2], lr=0.1)
    RGNSchedule(base_lr=0.1, excluded={id(t2)})(opt, 1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.0])  # t1 is now the maximum


def test_rgn_zero_weight_tensor_is_guarded() -> None:
    """A zero tensor (e.g. a zero-initialised bias) gives finite multipliers: it gets the base lr."""
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    b = nn.Parameter(torch.zeros(2))
    (w @ torch.tensor([0.6, 0.8]) + b @ torch.tensor([1.0, 0.0])).backward()
    opt = _per_tensor_groups([w, b], lr=0.1)
    RGNSchedule(base_lr=0.1)(opt, 1)
    lrs = [g["lr"] for g in opt.param_groups]
    assert all(torch.isfinite(torch.tensor(lrs))) and lrs[1] == 0.1 and 0 <= lrs[0] < 1e-9
    # No gradient at all: every RGN is 0, all equal to the maximum -> all get the base lr.
    for p in (w, b):
        p.grad = torch.zeros_like(p)
    RGNSchedule(base_lr=0.1)(opt, 1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]


def test_rgn_recomputes_every_k_steps_and_keeps_rates_in_between() -> None:
    """Through the real loop on a tiny net: one optimizer, rates change only at steps 1, 3, 5."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = Split(torch.randn(32, 1, 2, 2), torch.randint(0, 3, (32,)))
    schedule = RGNSchedule(base_lr=0.05, every=2)
    seen: list[tuple[int, list[float], int]] = []

    def hook(opt: torch.optim.Optimizer, t: int) -> None:
        schedule(opt, t)
        steps = {int(s["step"]) for s in opt.state.values()} or {0}
        seen.append((id(opt), [g["lr"] for g in opt.param_groups], max(steps)))

    loop.fit(model, list(model.parameters()), data, lr=0.05, wd=0.0, steps=5, batch_size=8, optimizer="adam",
             generator=torch.Generator().manual_seed(0), before_step=hook)
    assert len({o for o, _, _ in seen}) == 1, "the optimizer must not be rebuilt"
    assert [s for _, _, s in seen] == [0, 1, 2, 3, 4], "Adam's state must persist across recomputations"
    assert schedule.recomputed_at == [1, 3, 5]
    lrs = [lr for _, lr, _ in seen]
    assert lrs[0] == lrs[1] and lrs[2] == lrs[3] and lrs[1] != lrs[2] and lrs[3] != lrs[4]
    assert all(max(lr) == pytest.approx(0.05) for lr in lrs)
    # The recorded mean multiplier is the mean over steps of lr / base lr.
    expected = torch.tensor(lrs, dtype=torch.float64).mean(dim=0) / 0.05
    assert torch.allclose(schedule.mean_multipliers(), expected)


# --- auto-rgn on digits --------------------------------------------------------------------


def test_auto_rgn_keeps_one_optimizer_whose_state_persists(monkeypatch) -> None:
    spec = RunSpec(method="auto-rgn", steps=5, options=(("every", 2),))
    _pretrained_state(spec)  # the source model is cached before we count optimizers
    made: list[torch.optim.Optimizer] = []
    original = loop.make_optimizer

    def recording(*args: object, **kwargs: object) -> torch.optim.Optimizer:
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(loop, "make_optimizer", recording)
    fine_tune(spec, "cpu")
    assert len(made) == 1
    (opt,) = made
    assert {int(s["step"]) for s in opt.state.values()} == {5}  # never reset by a rebuild
    lrs = [g["lr"] for g in opt.param_groups]
    assert max(lrs) == pytest.approx(1e-3) and min(lrs) < 1e-3 / 2  # per-tensor rates, the largest = --lr


def _bn_param_names(model: nn.Module) -> set[str]:
    prefix = {id(m): n for n, m in model.named_modules()}
    return {f"{prefix[id(m)]}.{k}" for m in model.modules() if is_batchnorm(m) for k, _ in m.named_parameters(recurse=False)}


@pytest.mark.parametrize("exclude_bn", [False, True])
def test_auto_rgn_trains_every_parameter_unless_batchnorm_is_excluded(exclude_bn: bool) -> None:
    spec = RunSpec(method="auto-rgn", steps=3, options=(("exclude_bn", exclude_bn), ("bn", "train")))
    before = _pretrained_state(spec)
    model = fine_tune(spec, "cpu").model
    bn = _bn_param_names(model)
    assert bn and len(bn) < len(dict(model.named_parameters()))
    for name, p in model.named_parameters():
        same = torch.equal(before[name], p.detach())
        if exclude_bn and name in bn:
            assert same, f"BatchNorm parameter {name} changed with exclude_bn=True"
        else:
            assert not same, f"{name} did not change"
    # BatchNorm running statistics still update with bn=train (only the affine parameters are excluded).
    assert not torch.equal(before["stem.1.running_mean"], model.state_dict()["stem.1.running_mean"])


def test_auto_rgn_block_columns_land_in_the_parquet_row(cli, tmp_path) -> None:
    r = cli("run", "--method", "auto-rgn", "--steps", "3", "--out", tmp_path)
    assert r.code == 0, r.err
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[0]
    values = [row[f"rgn_block_{b}"] for b in ("1", "2", "3", "last")]
    assert all(0 < v <= 1 for v in values), values
    assert row.status == "ok" and row.rgn_top and not row.rgn_top.startswith("stem.1")  # stem.1: BatchNorm
    # BatchNorm affine parameters are excluded by default (the release): they are not trained
    assert row.n_trainable < row.n_params


def test_auto_rgn_excludes_batchnorm_by_default_and_its_diagnostic_ignores_it() -> None:
    """Issue 14: with BatchNorm included, a BatchNorm bias (norm near 0) sets the maximum RGN and every
    convolution runs at a fraction of lr. The release excludes BatchNorm (main.py:46, 212); so does
    the default now, and rgn_block_* is normalised over the same non-BatchNorm tensors either way."""
    default = resolve(RunSpec(method="auto-rgn"))
    assert default.options_dict["exclude_bn"] is True  # fails with the former default
    tops, cols = {}, {}
    for exclude in (True, False):
        tr = fine_tune(RunSpec(method="auto-rgn", steps=4, options=(("exclude_bn", exclude),)), "cpu")
        bn = _bn_param_names(tr.model)
        tops[exclude], cols[exclude] = tr.ctx.metrics["rgn_top"] in bn, tr.ctx.metrics
    assert tops == {True: False, False: True}  # included, a BatchNorm tensor takes the full lr
    for b in ("1", "2", "3", "last"):  # the diagnostic is over weight tensors either way: in (0, 1]
        assert 0 < cols[True][f"rgn_block_{b}"] <= 1 and 0 < cols[False][f"rgn_block_{b}"] <= 1


# --- l2-sp / l1-sp: the defining computation ---------------------------------------------


class _Tiny(BlockModel):
    """Block "1" = a 2x2 linear layer, "last" = a 2x2 classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.head = nn.Linear(2, 2)

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict([("1", [self.body]), ("last", [self.head])])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _captured_penalty(method_cls: type[L2SP | L1SP], alpha: float, beta: float) -> tuple[_Tiny, SPPenalty]:
    """Run the method on a hand-built model with the loop replaced; return the extra_loss it passed."""
    model = _Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # the "pretrained" values w0 are all zero
    spec = resolve(RunSpec(method=method_cls.name, options=(("alpha", alpha), ("beta", beta))))
    ctx = TrainContext(spec, model, target=None, generator=torch.Generator())  # type: ignore[arg-type]
    captured: dict = {}
    ctx.fit = lambda params, **kw: captured.update(params=params, **kw)  # type: ignore[method-assign]
    method_cls(spec).run(ctx)
    assert {id(p) for p in captured["params"]} == {id(p) for p in model.parameters()}, "all parameters train"
    return model, captured["extra_loss"]


@pytest.mark.parametrize("method_cls, expected", [(L2SP, 0.1 / 2 * 5), (L1SP, 0.1 * 3)])
def test_sp_penalty_equals_the_formula_and_excludes_the_head(method_cls: type[L2SP | L1SP], expected: float) -> None:
    model, penalty = _captured_penalty(method_cls, alpha=0.1, beta=0.0)
    assert penalty().item() == 0.0  # at w = w0
    with torch.no_grad():
        model.body.weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 0.0]]))  # w - w0 = [1, -2, 0, 0, 0, 0]
        model.head.weight.fill_(7.0)
        model.head.bias.fill_(-3.0)  # the head is not part of the SP term
    assert penalty().item() == pytest.approx(expected)
    # The gradient reaches the backbone only.
    model.zero_grad()
    penalty().backward()
    assert model.head.weight.grad is None or not model.head.weight.grad.any()
    assert model.body.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method_cls, sp", [(L2SP, 0.1 / 2 * 5), (L1SP, 0.1 * 3)])
def test_sp_beta_penalises_the_classifier(method_cls: type[L2SP | L1SP], sp: float) -> None:
    model, penalty = _captured_penalty(method_cls, alpha=0.1, beta=0.5)
    with torch.no_grad():
        model.body.weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 0.0]]))
        model.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        model.head.bias.copy_(torch.tensor([0.0, 1.0]))  # ||w_head||² = 1 + 4 + 1 = 6
    assert penalty().item() == pytest.approx(sp + 0.5 / 2 * 6)


def test_sp_penalty_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError):
        SPPenalty([], [], "l3", alpha=1.0)


# --- l2-sp / l1-sp on digits ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["l2-sp", "l1-sp"])
def test_large_alpha_keeps_the_backbone_closer_to_pretrained_than_full(method: str) -> None:
    common: dict = {"shift": "label-flip", "steps": 5, "lr": 1e-2, "seed": 1}
    before = _pretrained_state(RunSpec(method="full", **common))
    full = _backbone_distance(fine_tune(RunSpec(method="full", **common), "cpu").model, before)
    sp = _backbone_distance(fine_tune(RunSpec(method=method, options=(("alpha", 100.0),), **common), "cpu").model, before)
    assert sp < 0.5 * full, (method, sp, full)


@pytest.mark.parametrize("method", ["l2-sp", "l1-sp"])
def test_sp_trains_every_parameter(method: str) -> None:
    spec = RunSpec(method=method, steps=3, lr=1e-2)
    before = _pretrained_state(spec)
    model = fine_tune(spec, "cpu").model
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged
    (row,) = execute(spec, "cpu")
    assert row["n_trainable"] == row["n_params"] and row["status"] == "ok"


# --- CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, sets", [
    ("auto-rgn", ["every=2", "exclude_bn=false"]),
    ("l2-sp", ["alpha=0.1", "beta=0.01"]),
    ("l1-sp", ["alpha=0.001"]),
])
def test_methods_run_from_the_cli_and_label_their_options(cli, tmp_path, method: str, sets: list[str]) -> None:
    args = [a for s in sets for a in ("--set", s)]
    r = cli("run", "--method", method, "--steps", "3", "--wd", "0", *args, "--out", tmp_path)
    assert r.code == 0, r.err
    assert method in r.out and "77,754/77,754 params trained" in r.out
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[0]
    assert row.method == method and row.status == "ok"
    for s in sets:
        assert s.split("=")[0] in row.variant


def test_methods_are_listed_with_their_options(cli) -> None:
    r = cli("list", "methods")
    assert r.code == 0, r.err
    for text in ["auto-rgn: trains all blocks", "--set every=1", "--set exclude_bn=True",
                 "l2-sp: trains all blocks", "l1-sp: trains all blocks", "--set alpha=0.01", "--set beta=0.0",
                 "Li et al. 2018", "Auto-RGN"]:
        assert text in r.out, text
    order = [line.split(":")[0].split(" ")[0] for line in r.out.splitlines() if not line.startswith(" ")]
    assert order.index("full") < order.index("auto-rgn") < order.index("l2-sp") < order.index("l1-sp") < order.index("lp-ft")


@pytest.mark.parametrize("args, message", [
    (["--method", "auto-rgn", "--set", "every=0"], "option every=0 of method 'auto-rgn' must be a positive integer"),
    (["--method", "auto-rgn", "--set", "every=1.5"], "option every='1.5' of method 'auto-rgn'"),
    (["--method", "l2-sp", "--set", "alpha=-1"], "option alpha=-1.0 of method 'l2-sp' must be a non-negative number"),
    (["--method", "l1-sp", "--set", "beta=nan"], "option beta=nan of method 'l1-sp' must be a non-negative number"),
    (["--method", "l2-sp", "--block", "1"], "method 'l2-sp' takes no --block"),
])
def test_bad_options_are_one_line_errors(cli, tmp_path, args: list[str], message: str) -> None:
    r = cli("run", *args, "--out", tmp_path)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not list(tmp_path.glob("*.parquet"))
