"""digits-vit: a timm ViT with named blocks. Its partition covers every parameter once, its parts
are where the docs say, and the default methods run on it from the CLI."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

from ftbench.data.base import get_benchmark
from ftbench.train import pretrain
from ftbench.models.base import get_model_entry
from ftbench.train.pretrain import pretrained
from ftbench.models.vit import DigitsViT
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.train.loop import accuracy
from ftbench.execution.runner import fine_tune


@pytest.fixture
def quick_pretraining(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests of what trains: a 2-epoch source model (its own cache entry; the recipe is in the key)."""
    monkeypatch.setitem(pretrain.RECIPE, "epochs", 2)


@pytest.fixture
def vit() -> DigitsViT:
    torch.manual_seed(0)
    return get_model_entry("digits-vit").build(1, 10)


def test_blocks_cover_every_parameter_exactly_once(vit: DigitsViT) -> None:
    owned = [id(p) for name in vit.block_names() for p in vit.block_parameters(name)]
    assert len(owned) == len(set(owned)), "a parameter is in two blocks"
    assert set(owned) == {id(p) for p in vit.parameters()}
    assert vit.block_names() == list(get_model_entry("digits-vit").block_names) == ["1", "2", "3", "last"]


def test_blocks_hold_the_documented_parts(vit: DigitsViT) -> None:
    names = {id(p): n for n, p in vit.named_parameters()}
    per_block = {b: {names[id(p)] for p in vit.block_parameters(b)} for b in vit.block_names()}
    assert per_block["last"] == {"head.weight", "head.bias"}
    assert {"vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight"} <= per_block["1"]
    assert "vit.norm.weight" in per_block["3"]  # the final LayerNorm is part of the feature extractor
    for b, idx in (("1", (0, 1)), ("2", (2, 3)), ("3", (4, 5))):
        tblocks = {int(n.split(".")[2]) for n in per_block[b] if n.startswith("vit.blocks.")}
        assert tblocks == set(idx), (b, tblocks)
    assert isinstance(vit.head, nn.Linear) and vit.head.out_features == 10


def test_features_are_the_input_to_the_head(vit: DigitsViT) -> None:
    x = torch.rand(5, 1, 8, 8)
    vit.eval()
    f = vit.features(x)
    assert f.shape == (5, 64)
    assert torch.equal(vit(x), vit.head(f))
    # The class token after the final LayerNorm: no other pooling in between.
    tokens = vit.vit.forward_features(x)
    assert tokens.shape == (5, 17, 64)  # 16 patches of 2x2 + the class token
    assert torch.equal(f, tokens[:, 0])


def test_residual_units_are_the_transformer_blocks(vit: DigitsViT) -> None:
    units = vit.residual_units()
    assert units == [(f"vit.blocks.{i}", str(1 + i // 2)) for i in range(6)]
    x = torch.rand(3, 17, 64)
    for path, block in units:
        m = vit.get_submodule(path)
        assert isinstance(m, Block) and m in vit.blocks()[block]
        assert m(x).shape == x.shape


def test_reset_parameters_redraws_the_token_parameters_under_the_seed(vit: DigitsViT) -> None:
    torch.manual_seed(3)
    vit.reset_parameters()
    a = (vit.vit.cls_token.clone(), vit.vit.pos_embed.clone())
    torch.manual_seed(3)
    vit.reset_parameters()
    assert torch.equal(a[0], vit.vit.cls_token) and torch.equal(a[1], vit.vit.pos_embed)
    assert 0.01 < float(vit.vit.pos_embed.detach().std()) < 0.03


def test_models_are_listed(cli) -> None:
    r = cli("list", "models")
    assert r.code == 0, r.err
    assert "digits-vit" in r.out and "digits-resnet" in r.out


@pytest.mark.parametrize("method, blocks", [("surgical", ["1"]), ("surgical", ["3"]), ("full", []),
                                            ("linear-probe", []), ("lp-ft", [])])
def test_default_methods_run_on_the_vit_from_the_cli(cli, tmp_path, quick_pretraining, method: str,
                                                       blocks: list[str]) -> None:
    args = [a for b in blocks for a in ("--block", b)]
    steps = [] if method == "linear-probe" else ["--steps", "2"]  # an L-BFGS probe takes no --steps (refused)
    r = cli("run", "--model", "digits-vit", "--method", method, *args, *steps, "--out", tmp_path)
    assert r.code == 0, r.err
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[0]
    assert row.model == "digits-vit" and row.status == "ok" and row.n_params == 302_154
    expected = {"1": 64 * 4 + 64 + 17 * 64 + 64 + 2 * 49_984, "3": 2 * 49_984 + 128}.get(blocks[0] if blocks else "")
    if method == "surgical":  # 49,984 params per transformer block; 64 + 17x64 token parameters; final norm 128
        assert row.n_trainable == expected
    elif method == "linear-probe":
        assert row.n_trainable == 650


def test_surgical_block_1_trains_the_embeddings_and_first_two_blocks_only(quick_pretraining) -> None:
    spec = resolve(RunSpec(model="digits-vit", method="surgical", blocks=("1",), steps=2, lr=1e-2))
    before = pretrained("digits-vit", get_benchmark("digits").source(spec), torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in before.named_parameters()}
    model = fine_tune(spec, "cpu").model
    for n, p in model.named_parameters():
        in_block_1 = n in ("vit.cls_token", "vit.pos_embed") or n.startswith(("vit.patch_embed.", "vit.blocks.0.",
                                                                            "vit.blocks.1."))
        assert torch.equal(before[n], p.detach()) != in_block_1, n


@pytest.mark.slow  # full pretraining recipe: ~20 s on one idle CPU core
def test_pretrained_vit_is_a_good_source_model() -> None:
    spec = resolve(RunSpec(model="digits-vit", method="none"))
    source = get_benchmark("digits").source(spec)
    model = pretrained("digits-vit", source, torch.device("cpu"))
    assert accuracy(model, source.test) > 90.0
