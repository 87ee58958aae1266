"""auto-snr (train only the tensors whose gradient signal-to-noise ratio passes a rule) and
gradual-unfreeze (blocks unfrozen one per stage, from either end): their defining computations on
hand-built cases, which parameters change and which stay bit-identical on digits, and the CLI."""

from __future__ import annotations

from collections import OrderedDict

import pandas as pd
import pytest
import torch
from torch import nn

from ftbench.data.base import Split, TargetTask, get_benchmark
from ftbench.methods.gradual import GradualUnfreeze, stage_steps, unfreeze_order
from ftbench.methods.snr import (
    AutoSNR,
    element_snr,
    gradient_moments,
    normalise,
    per_example_gradients,
    select,
    tensor_snr,
)
from ftbench.models.base import BlockModel
from ftbench.train.pretrain import pretrained
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.train import loop
from ftbench.train.context import TrainContext
from ftbench.execution.runner import execute, fine_tune

# Tolerances: the hand-worked gradient moments are a few float32 operations on exact values (0.5,
# 1/12, ...): pytest.approx's default (1e-6 relative) and allclose's (rtol 1e-5) hold; vectorised
# vs per-example gradients are stated where compared.

BLOCKS = ["1", "2", "3", "last"]


def _pretrained_state(spec: RunSpec) -> dict[str, torch.Tensor]:
    spec = resolve(spec)
    model = pretrained(spec.model, get_benchmark(spec.benchmark).source(spec), torch.device("cpu"))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _block_of(model: BlockModel) -> dict[str, str]:
    """state_dict key -> block name."""
    out = {}
    for name, mods in model.blocks().items():
        for m in mods:
            prefix = next(n for n, mm in model.named_modules() if mm is m)
            for k in m.state_dict():
                out[f"{prefix}.{k}"] = name
    return out


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not k.endswith("num_batches_tracked") and not torch.equal(before[k], after[k])}


# --- auto-snr: the defining computation --------------------------------------------------------

# Three examples through a 2-class linear layer with zero weights and bias: the softmax is uniform,
# so the per-example gradients are dL/db = p - e_y = ±[-0.5, 0.5] and dL/dW = (p - e_y) xᵀ.
X = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
Y = torch.tensor([0, 0, 1])
# By hand (unbiased variance over the 3 examples), per element mean² / var:
#   b:      [-.5, -.5, .5]  -> mean -1/6, var 1/3  -> 1/12 (both elements)
#   W[:,0]: [-.5, -1, .5]   -> mean -1/3, var 7/12 -> 4/21;  W[:,1]: [0, 0, .5] -> mean 1/6, var 1/12 -> 1/3
#   per tensor (mean over elements): W = (4/21 + 1/3) / 2 = 11/42,  b = 1/12;  normalised: W 1, b 7/22.
SNR_W, SNR_B = 11 / 42, 1 / 12


def _zero_linear() -> nn.Linear:
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    return head


def test_per_example_gradients_are_the_closed_form() -> None:
    g = per_example_gradients(_zero_linear(), ["weight", "bias"], X, Y)
    err = torch.full((3, 2), 0.5) - nn.functional.one_hot(Y, 2)
    assert torch.allclose(g["bias"], err)
    assert torch.allclose(g["weight"], err[:, :, None] * X[:, None, :])


@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_snr_equals_the_hand_worked_values(chunk: int | None) -> None:
    mean, var = gradient_moments(_zero_linear(), ["weight", "bias"], X, Y, chunk=chunk)
    assert torch.allclose(var["weight"], torch.tensor([[7 / 12, 1 / 12], [7 / 12, 1 / 12]]))
    snr = tensor_snr(mean, var, ["weight", "bias"])
    assert snr.tolist() == pytest.approx([SNR_W, SNR_B])
    assert normalise(snr).tolist() == pytest.approx([1.0, 7 / 22])


def test_snr_edge_cases_and_selection_rules() -> None:
    # 0/0 -> 0 (no signal), x/0 -> inf (noiseless signal), else mean²/var.
    assert element_snr(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, 4.0])).tolist() == [0.0, float("inf"), 1.0]
    d = torch.float64
    assert normalise(torch.zeros(2, dtype=d)).tolist() == [1.0, 1.0]  # no tensor has signal: all equal the max
    assert normalise(torch.tensor([float("inf"), 2.0], dtype=d)).tolist() == [1.0, 0.0]
    n = normalise(torch.tensor([float("nan"), 2.0, 1.0], dtype=d))
    assert n.isnan()[0] and n[1:].tolist() == [1.0, 0.5]
    scores = torch.tensor([0.5, 1.0, 0.95, 0.94, float("nan")], dtype=d)
    assert select(scores, "threshold", 0.95, 0.0).tolist() == [False, True, True, False, False]
    assert select(scores, "threshold", 0.0, 0.0).tolist() == [True, True, True, True, False]  # NaN never
    assert select(scores, "top", 0.0, 0.4).tolist() == [False, True, True, False, False]  # ceil(0.4·5) = 2
    assert select(scores, "top", 0.0, 0.01).tolist() == [False, True, False, False, False]  # at least one
    ties = torch.tensor([0.5, 1.0, 0.5], dtype=d)
    assert select(ties, "top", 0.0, 0.5).tolist() == [True, True, False]  # ties: model order


def test_snr_runs_in_eval_mode_matches_a_loop_and_leaves_the_model_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.train()
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    mean, var = gradient_moments(model, names, x, y)
    assert all(m.training for m in model.modules()), "modes are restored"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), "running stats untouched"
    # Reference: a Python loop of per-example autograd passes in eval mode.
    model.eval()
    grads = [torch.autograd.grad(nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), list(model.parameters()))
             for i in range(6)]
    for j, name in enumerate(names):
        g = torch.stack([gs[j] for gs in grads])
        # Batched per-example gradients against a loop of single-example passes: each gradient entry is
        # a sum over the network in another order (~10 u of gradients <= ~1), then a mean or variance of
        # 6 of them: < 1e-6.
        assert torch.allclose(mean[name], g.mean(0), atol=1e-6)
        assert torch.allclose(var[name], g.var(0), atol=1e-6)


# --- auto-snr: the method on a hand-built model -------------------------------------------------


class _Tiny(BlockModel):
    """Block "1" = identity-initialised 2x2 linear layer, "last" = zero 2x2 classifier: the head's
    per-example gradients are the hand-worked ones above, the body's are all 0 (W = 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.head = _zero_linear()
        with torch.no_grad():
            self.body.weight.copy_(torch.eye(2))
            self.body.bias.zero_()

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict([("1", [self.body]), ("last", [self.head])])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))


def _run_tiny(options: tuple = ()) -> tuple[_Tiny, dict[str, torch.Tensor], dict, AutoSNR]:
    model = _Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = resolve(RunSpec(method="auto-snr", steps=3, lr=0.1, options=options))
    split = Split(X[:, None, None, :], Y)
    ctx = TrainContext(spec, model, TargetTask(2, split, split, split), torch.Generator().manual_seed(0))
    method = AutoSNR(spec)
    cols = method.run(ctx)
    return model, before, cols, method


@pytest.mark.parametrize("options, selected", [
    ((), {"head.weight"}),  # normalised: head.weight 1, head.bias 7/22, body 0 and 0
    ((("rule", "top"), ("fraction", 0.5)), {"head.weight", "head.bias"}),
    ((("threshold", 0.3),), {"head.weight", "head.bias"}),
])
def test_only_selected_tensors_train_on_a_hand_worked_model(options: tuple, selected: set[str]) -> None:
    model, before, cols, method = _run_tiny(options)
    assert method.selector is not None
    first = method.selector.history[0][1]
    assert first.snr.tolist() == pytest.approx([0.0, 0.0, SNR_W, SNR_B])  # body.weight, body.bias, head.*
    for name, p in model.named_parameters():
        assert torch.equal(before[name], p.detach()) != (name in selected), name
    assert cols["snr_selected"] == len(selected)
    assert cols["snr_selected_params"] == sum(dict(model.named_parameters())[n].numel() for n in selected)
    assert cols["snr_block_1"] == 0.0 and cols["snr_block_last"] == len(selected) / 2
    assert method.trainable_blocks(["1", "last"]) == ["last"]


# --- auto-snr on digits -----------------------------------------------------------------------


def test_auto_snr_on_digits_leaves_unselected_tensors_and_unselected_blocks_bit_identical() -> None:
    spec = RunSpec(method="auto-snr", steps=3, lr=1e-2, options=(("rule", "top"), ("fraction", 0.2)))
    before = _pretrained_state(spec)
    tr = fine_tune(spec, "cpu")
    sel = tr.method.selector
    chosen = set(sel.current.chosen())
    assert len(chosen) == -(-len(sel.names) // 5)  # ceil(20 % of the tensors)
    after = tr.model.state_dict()
    for name, _ in tr.model.named_parameters():
        assert torch.equal(before[name], after[name]) != (name in chosen), name
    # A block with no selected tensor is frozen whole: its BatchNorm statistics too.
    block = _block_of(tr.model)
    trained = set(tr.method.trainable_blocks(BLOCKS))
    assert trained == {block[n] for n in chosen}
    assert all(block[k] in trained for k in _changed(before, after))
    row = execute(spec, "cpu")[-1]
    assert row["snr_selected"] == len(chosen)
    assert sum(row[f"snr_block_{b}"] * sum(1 for _ in tr.model.block_parameters(b)) for b in BLOCKS) == pytest.approx(len(chosen))


def test_auto_snr_every_k_recomputes_with_one_optimizer(monkeypatch) -> None:
    spec = RunSpec(method="auto-snr", steps=5, lr=1e-2, options=(("every", 2), ("exclude_bn", True)))
    before = _pretrained_state(spec)
    made: list[torch.optim.Optimizer] = []
    original = loop.make_optimizer

    def recording(*args: object, **kwargs: object) -> torch.optim.Optimizer:
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(loop, "make_optimizer", recording)
    tr = fine_tune(spec, "cpu")
    sel = tr.method.selector
    assert [t for t, _ in sel.history] == [1, 3, 5] and len(made) == 1
    ever = {n for n, e in zip(sel.names, sel.ever.tolist()) if e}
    bn = {n for n, m in tr.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert ever and not any(n.rsplit(".", 1)[0] in bn for n in ever)
    for name, p in tr.model.named_parameters():
        if name not in ever:
            assert torch.equal(before[name], p.detach()), f"{name} was never selected but changed"
    # Tensors get optimizer state only for the steps they were selected.
    params = dict(tr.model.named_parameters())
    for n in set(sel.names) - ever:
        assert params[n] not in made[0].state


def test_auto_snr_cli_run_columns_and_listing(cli, tmp_path) -> None:
    r = cli("run", "--method", "auto-snr", "--steps", "3", "--out", tmp_path)
    assert r.code == 0, r.err
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[0]
    assert row.method == "auto-snr" and row.status == "ok"
    assert all(0 <= row[f"snr_block_{b}"] <= 1 for b in BLOCKS)
    assert row.snr_selected >= 1 and 0 < row.snr_selected_params <= row.n_trainable < row.n_params
    r = cli("list", "methods")
    for text in ["auto-snr: trains", "--set rule=threshold", "--set threshold=0.95", "--set fraction=0.25",
                 "--set every=0", "--set examples=256", "gradual-unfreeze: trains all blocks",
                 "--set direction=last-to-first {last-to-first, first-to-last}", "Auto-SNR", "ULMFiT"]:
        assert text in r.out, text


def test_auto_snr_unused_option_does_not_change_the_run_id() -> None:
    """The option the rule does not use is refused when given (issue 25 §1), and in a suite, which crosses
    it with both rules, dropped: it changes neither result nor run id."""
    from ftbench.errors import UsageError
    from ftbench.plan.suites import _resolve_in_suite

    base = resolve(RunSpec(method="auto-snr"))
    with pytest.raises(UsageError, match="option fraction of method 'auto-snr' applies only with rule=top"):
        resolve(RunSpec(method="auto-snr", options=(("fraction", 0.5),)))
    assert _resolve_in_suite(RunSpec(method="auto-snr", options=(("fraction", 0.5),))).run_id == base.run_id
    top = resolve(RunSpec(method="auto-snr", options=(("rule", "top"),)))
    assert _resolve_in_suite(RunSpec(method="auto-snr", options=(("rule", "top"), ("threshold", 0.2)))).run_id \
        == top.run_id
    assert top.run_id != base.run_id


# --- gradual-unfreeze: the schedule -------------------------------------------------------------


def test_stage_steps_and_order() -> None:
    assert stage_steps(50, 4) == [13, 13, 12, 12]  # the remainder goes to the first stages
    assert stage_steps(8, 4) == [2, 2, 2, 2]
    assert stage_steps(3, 4) == [1, 1, 1, 0]  # the last stage never runs
    assert unfreeze_order(BLOCKS, "last-to-first") == ["last", "3", "2", "1"]
    assert unfreeze_order(BLOCKS, "first-to-last") == BLOCKS


@pytest.mark.parametrize("direction, first", [("last-to-first", "last"), ("first-to-last", "1")])
def test_with_one_step_only_the_first_unfrozen_block_changes(direction: str, first: str) -> None:
    spec = RunSpec(method="gradual-unfreeze", steps=1, lr=1e-2, options=(("direction", direction),))
    before = _pretrained_state(spec)
    model = fine_tune(spec, "cpu").model
    after = model.state_dict()
    block = _block_of(model)
    changed = _changed(before, after)
    assert {block[k] for k in changed} == {first}
    assert {n for n, _ in model.named_parameters() if block[n] == first} <= changed


def _stage_snapshots(monkeypatch, spec: RunSpec) -> tuple[list[dict[str, torch.Tensor]], object]:
    """Parameters before training, at the end of each stage (seen from the hook of the next stage's
    first step, before its update), and after training."""
    snaps: list[dict[str, torch.Tensor]] = []
    seen: list[object] = []
    original = GradualUnfreeze.__call__

    def recording(self: GradualUnfreeze, opt: torch.optim.Optimizer, t: int) -> None:
        if t == 1 or t - 1 in self.ends:
            model_params = [p for ms in self.blocks.values() for m in ms for p in m.parameters()]
            snaps.append({str(i): p.detach().clone() for i, p in enumerate(model_params)})
            seen.append(self)
        original(self, opt, t)

    monkeypatch.setattr(GradualUnfreeze, "__call__", recording)
    tr = fine_tune(spec, "cpu")
    final = [p for ms in tr.model.blocks().values() for m in ms for p in m.parameters()]
    snaps.append({str(i): p.detach().clone() for i, p in enumerate(final)})
    return snaps, tr


@pytest.mark.parametrize("direction", ["last-to-first", "first-to-last"])
def test_each_block_trains_from_its_stage_on(monkeypatch, direction: str) -> None:
    spec = RunSpec(method="gradual-unfreeze", steps=8, lr=1e-2, options=(("direction", direction),))
    snaps, tr = _stage_snapshots(monkeypatch, spec)
    assert len(snaps) == 5  # before, after stages 1..4 (the last one = the final model)
    order = unfreeze_order(BLOCKS, direction)
    index: dict[str, list[str]] = {b: [] for b in BLOCKS}
    i = 0
    for b, ms in tr.model.blocks().items():
        for m in ms:
            for _ in m.parameters():
                index[b].append(str(i))
                i += 1
    for stage in range(1, 5):
        start, end = snaps[stage - 1], snaps[stage]
        for j, b in enumerate(order):
            moved = any(not torch.equal(start[k], end[k]) for k in index[b])
            assert moved == (j < stage), f"{direction}: block {b} {'did not move' if j < stage else 'moved'} in stage {stage}"
    # In first-to-last, the classifier trains only in the final stage; in last-to-first, block 1 does.
    final_only = order[-1]
    assert all(torch.equal(snaps[0][k], snaps[3][k]) for k in index[final_only])
    assert all(not torch.equal(snaps[3][k], snaps[4][k]) for k in index[final_only])


def test_one_optimizer_persists_and_unfrozen_blocks_join_it_at_their_stage(monkeypatch) -> None:
    made: list[torch.optim.Optimizer] = []
    original = loop.make_optimizer

    def recording(*args: object, **kwargs: object) -> torch.optim.Optimizer:
        made.append(original(*args, **kwargs))
        return made[-1]

    spec = RunSpec(method="gradual-unfreeze", steps=8, lr=1e-2)
    _pretrained_state(spec)
    monkeypatch.setattr(loop, "make_optimizer", recording)
    model = fine_tune(spec, "cpu").model
    assert len(made) == 1
    # Adam's per-parameter step count starts when the block's stage starts (as add_param_group).
    expected = {"last": 8, "3": 6, "2": 4, "1": 2}
    for b, n in expected.items():
        assert {int(made[0].state[p]["step"]) for p in model.block_parameters(b)} == {n}, b


def test_gradual_checkpoints_count_steps_across_stages() -> None:
    rows = execute(RunSpec(method="gradual-unfreeze", steps=8, checkpoints=4), "cpu")
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert rows[-1]["train_steps"] == 8 and rows[-1]["gradual_stage_steps"] == "2,2,2,2"
    plain = execute(RunSpec(method="gradual-unfreeze", steps=8), "cpu")[-1]
    assert plain["ood_acc"] == rows[-1]["ood_acc"]  # evaluating at checkpoints does not perturb training


def test_gradual_bn_frozen_keeps_every_running_statistic() -> None:
    spec = RunSpec(method="gradual-unfreeze", steps=4, lr=1e-2, options=(("bn", "frozen"),))
    before = _pretrained_state(spec)
    model = fine_tune(spec, "cpu").model
    changed = _changed(before, model.state_dict())
    params = {n for n, _ in model.named_parameters()}
    assert changed == params  # every parameter trained, no buffer moved


def test_gradual_cli_first_to_last(cli, tmp_path) -> None:
    r = cli("run", "--method", "gradual-unfreeze", "--set", "direction=first-to-last", "--steps", "6", "--out", tmp_path)
    assert r.code == 0, r.err
    assert "77,754/77,754 params trained" in r.out
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[0]
    assert row.status == "ok" and row.variant == "direction=first-to-last" and row.gradual_stage_steps == "2,2,1,1"


@pytest.mark.parametrize("args, message", [
    (["--method", "gradual-unfreeze", "--set", "direction=sideways"],
     "unknown value for option direction of method 'gradual-unfreeze': 'sideways'"),
    (["--method", "gradual-unfreeze", "--block", "1"], "method 'gradual-unfreeze' takes no --block"),
    (["--method", "auto-snr", "--set", "threshold=1.5"], "option threshold=1.5 of method 'auto-snr' must be in [0, 1]"),
    (["--method", "auto-snr", "--set", "rule=top", "--set", "fraction=0"], "option fraction=0.0 of method 'auto-snr' must be in (0, 1]"),
    (["--method", "auto-snr", "--set", "rule=bottom"], "unknown value for option rule of method 'auto-snr': 'bottom'"),
    (["--method", "auto-snr", "--set", "examples=1"], "option examples=1 of method 'auto-snr' must be"),
])
def test_bad_options_are_one_line_errors(cli, tmp_path, args: list[str], message: str) -> None:
    r = cli("run", *args, "--out", tmp_path)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not list(tmp_path.glob("*.parquet"))

