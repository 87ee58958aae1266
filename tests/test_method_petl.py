"""bitfit, ln-tune and lora: which parameters train and which stay bit-identical, LoRA's defining
computation (zero update at init, the (alpha/r)·B·A scaling, merging), and runs from the CLI."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from ftbench.data.base import get_benchmark
from ftbench.methods.petl import LORA_TARGETS, inject_lora, lora_target_names
from ftbench.train import pretrain
from ftbench.models.base import get_model_entry
from ftbench.train.pretrain import pretrained
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.execution.runner import fine_tune


@pytest.fixture(scope="module", autouse=True)
def quick_pretraining():
    """Which parameters a method changes does not depend on how well the source model was trained:
    pretrain for 2 epochs (a separate cache entry, since the recipe is part of the key)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(pretrain.RECIPE, "epochs", 2)
        yield


def _pretrained_state(spec: RunSpec) -> dict[str, torch.Tensor]:
    spec = resolve(spec)
    model = pretrained(spec.model, get_benchmark(spec.benchmark).source(spec), torch.device("cpu"))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _changes(spec: RunSpec) -> tuple[dict[str, bool], nn.Module, dict[str, torch.Tensor]]:
    """{pretrained state_dict key: changed?} after fine-tuning, the trained model and the state before.

    LoRA wraps a layer as ``<name>.base_layer``; its keys are mapped back to the pretrained names.
    """
    before = _pretrained_state(spec)
    model = fine_tune(spec, "cpu").model
    after = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert set(after) == set(before)
    return {k: not torch.equal(before[k], after[k]) for k in before if not k.endswith("num_batches_tracked")}, \
        model, before


def _is_norm(model: nn.Module, key: str) -> bool:
    owner = model.get_submodule(key.rsplit(".", 1)[0])
    return isinstance(owner, (nn.LayerNorm, nn.BatchNorm2d))


# --- bitfit / ln-tune --------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["digits-vit", "digits-resnet"])
def test_bitfit_trains_exactly_the_biases_and_the_head(model: str) -> None:
    changed, net, _ = _changes(RunSpec(model=model, method="bitfit", steps=3, lr=1e-2))
    params = dict(net.named_parameters())
    for key, c in changed.items():
        trains = key.startswith("head.") or (key in params and key.endswith(".bias"))
        assert c == trains, f"{key}: changed={c}, should train={trains}"
    if model == "digits-resnet":  # its convolutions have no bias: "bias" = BatchNorm's β
        biases = [k for k in params if k.endswith(".bias") and not k.startswith("head.")]
        assert biases and all(isinstance(net.get_submodule(k[: -len(".bias")]), nn.BatchNorm2d) for k in biases)
        assert not changed["stem.1.running_mean"], "frozen backbone: BatchNorm statistics stay"


@pytest.mark.parametrize("model", ["digits-vit", "digits-resnet"])
def test_ln_tune_trains_exactly_the_norm_layers_and_the_head(model: str) -> None:
    changed, net, _ = _changes(RunSpec(model=model, method="ln-tune", steps=3, lr=1e-2))
    params = dict(net.named_parameters())
    assert sum(1 for k in params if _is_norm(net, k)) >= 4
    for key, c in changed.items():
        trains = key.startswith("head.") or (key in params and _is_norm(net, key))
        assert c == trains, f"{key}: changed={c}, should train={trains}"


# --- lora ---------------------------------------------------------------------------------------


def _vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return get_model_entry("digits-vit").build(1, 10).eval()


def test_lora_targets_select_the_named_linear_layers() -> None:
    vit = _vit()
    got = {t: lora_target_names(vit, t) for t in LORA_TARGETS}
    assert got["qkv"] == [f"vit.blocks.{i}.attn.qkv" for i in range(6)]
    assert len(got["qkv,proj"]) == 12 and len(got["mlp"]) == 12 and len(got["all-linear"]) == 24
    assert "head" not in got["all-linear"]
    assert lora_target_names(get_model_entry("digits-resnet").build(1, 10), "all-linear") == []


def test_lora_at_init_computes_exactly_the_pretrained_function() -> None:
    vit = _vit()
    x = torch.rand(16, 1, 8, 8)
    before = vit(x)
    new = inject_lora(vit, lora_target_names(vit, "qkv"), r=4, alpha=4.0, dropout=0.1, seed=0)
    vit.eval()
    assert len(new) == 12 and all(p.shape in {(4, 64), (192, 4)} for p in new)
    assert all(not p.any() for p in new if p.shape == (192, 4)), "B starts at zero"
    assert torch.equal(vit(x), before)


def test_lora_init_depends_on_the_seed_only() -> None:
    a, b, c = _vit(0), _vit(1), _vit(0)
    torch.manual_seed(123)  # the global RNG state does not matter
    pa = inject_lora(a, ["vit.blocks.0.attn.qkv"], 4, 4.0, 0.0, seed=7)
    pb = inject_lora(b, ["vit.blocks.0.attn.qkv"], 4, 4.0, 0.0, seed=7)
    pc = inject_lora(c, ["vit.blocks.0.attn.qkv"], 4, 4.0, 0.0, seed=8)
    assert torch.equal(pa[0], pb[0]) and not torch.equal(pa[0], pc[0])


def test_lora_scaling_and_merge_by_hand() -> None:
    """alpha=8, r=4: the layer computes W x + b + 2·B A x, and merging W <- W + 2·B·A gives the same."""
    vit = _vit()
    inject_lora(vit, lora_target_names(vit, "qkv"), r=4, alpha=8.0, dropout=0.1, seed=0)
    layer = vit.get_submodule("vit.blocks.2.attn.qkv")
    assert isinstance(layer, LoraLayer)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        B.copy_(torch.randn_like(B))  # as if trained
    vit.eval()  # dropout off
    W, b = layer.base_layer.weight.detach().clone(), layer.base_layer.bias.detach().clone()
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = x @ W.T + b + 2.0 * (x @ A.T) @ B.T
        # Sums of 64 products of N(0, 1) inputs with weights ~1/8: the two orders differ by ~sqrt(64) u
        # times the sum of |terms| (~5), ~2e-6; 1e-5 leaves 5x.
        assert torch.allclose(layer(x), expected, atol=1e-5)
        img = torch.rand(8, 1, 8, 8)
        unmerged = vit(img)
        layer.merge()
        # The merged weight is W + 2 B A computed once more (rank-r sums of small products): a few u.
        assert torch.allclose(layer.base_layer.weight, W + 2.0 * B @ A, atol=1e-6)
        # One merged layer changes the logits (<= ~3 in size) by rounding only: ~sqrt(64) u per layer,
        # carried through the later layers' LayerNorms (which do not amplify): ~1e-6; 1e-5 leaves 10x.
        assert torch.allclose(vit(img), unmerged, atol=1e-5)


def test_lora_trains_only_a_b_and_the_head_and_keeps_blocks_usable() -> None:
    spec = RunSpec(model="digits-vit", method="lora", steps=3, lr=1e-2, options=(("r", 2),))
    changed, model, before = _changes(spec)
    for key, c in changed.items():
        assert c == key.startswith("head."), f"{key}: changed={c}"
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(lora) == 12 and all(p.any() for n, p in lora.items() if "lora_B" in n), "B must have moved off zero"
    # The block partition still covers every parameter once, LoRA matrices in their transformer's block.
    owned = [id(p) for b in model.block_names() for p in model.block_parameters(b)]
    assert len(owned) == len(set(owned)) == len(list(model.parameters()))
    block2 = {id(p) for p in model.block_parameters("2")}
    assert id(model.get_submodule("vit.blocks.3.attn.qkv").lora_A["default"].weight) in block2


# --- CLI ----------------------------------------------------------------------------------------


VIT_PARAMS = 302_154
HEAD = 64 * 10 + 10


@pytest.mark.parametrize("model, method, sets, n_trainable, n_added", [
    # r=4 on each of 6 qkv layers: A 4x64 + B 192x4.
    ("digits-vit", "lora", ["r=4"], 6 * 4 * (64 + 192) + HEAD, 6 * 4 * (64 + 192)),
    # r=2 on qkv (A 2x64, B 192x2) and proj (A 2x64, B 64x2).
    ("digits-vit", "lora", ["r=2", "alpha=8", "targets=qkv,proj"], 6 * 2 * (256 + 128) + HEAD, 6 * 2 * (256 + 128)),
    # Biases of 6 blocks (qkv 192, proj 64, fc1 256, fc2 64, two LayerNorms 64 each), patch embedding, final norm.
    ("digits-vit", "bitfit", [], 6 * (192 + 64 + 256 + 64 + 2 * 64) + 64 + 64 + HEAD, 0),
    ("digits-vit", "ln-tune", [], 13 * 2 * 64 + HEAD, 0),  # 13 LayerNorms, weight and bias
    ("digits-resnet", "bitfit", [], None, 0),
    ("digits-resnet", "ln-tune", [], None, 0),
])
def test_methods_run_from_the_cli_and_report_the_true_trainable_count(
    cli, tmp_path, model: str, method: str, sets: list[str], n_trainable: int | None, n_added: int
) -> None:
    args = [a for s in sets for a in ("--set", s)]
    r = cli("run", "--model", model, "--method", method, "--steps", "2", *args, "--out", tmp_path)
    assert r.code == 0, r.err
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[0]
    assert row.method == method and row.status == "ok"
    if n_trainable is not None:
        assert row.n_trainable == n_trainable and row.n_params == VIT_PARAMS + n_added
    assert row.trainable_fraction == pytest.approx(row.n_trainable / row.n_params) and row.trainable_fraction < 0.1
    assert f"{row.n_trainable:,}/{row.n_params:,} params trained" in r.out
    for s in sets:
        if s != "r=4":  # the default is not part of the label
            assert s in row.variant
    if method == "lora":
        assert row.lora_scaling == (4 / 4 if sets == ["r=4"] else 8 / 2)


def test_methods_are_listed(cli) -> None:
    r = cli("list", "methods")
    assert r.code == 0, r.err
    for text in ["bitfit: trains", "ln-tune: trains", "lora: trains", "--set r=4", "--set alpha=4.0",
                 "--set targets=qkv {qkv, qkv,proj, mlp, all-linear}", "Ben Zaken", "Hu et al. 2021"]:
        assert text in r.out, text


@pytest.mark.parametrize("args, message", [
    (["--method", "lora", "--set", "r=0"], "option r=0 of method 'lora' must be a positive integer"),
    (["--method", "lora", "--set", "r=2.5"], "option r='2.5' of method 'lora' must be a int"),
    (["--method", "lora", "--set", "alpha=0"], "option alpha=0.0 of method 'lora' must be a positive number"),
    (["--method", "lora", "--set", "dropout=1"], "option dropout=1.0 of method 'lora' must be in [0, 1)"),
    (["--method", "lora", "--set", "targets=fc"], "unknown value for option targets of method 'lora': 'fc'"),
    (["--method", "lora", "--model", "digits-resnet"], "finds no such linear layer in model 'digits-resnet'"),
    (["--method", "bitfit", "--block", "1"], "method 'bitfit' takes no --block"),
    (["--method", "ln-tune", "--set", "r=4"], "method 'ln-tune' has no option 'r'"),
])
def test_bad_options_are_one_line_errors(cli, tmp_path, args: list[str], message: str) -> None:
    model = [] if "--model" in args else ["--model", "digits-vit"]
    r = cli("run", *model, *args, "--out", tmp_path)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not list(tmp_path.glob("*.parquet"))
