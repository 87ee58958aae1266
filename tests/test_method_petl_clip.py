"""lora, adapter and vpt on CLIP ViT towers (ftbench/methods/petl.py: attach_view; ftbench/models/clip.py:
the timm form of an open_clip tower), on tiny random configs (no download): the timm form computes the
open_clip tower's function from the same bits, the methods attach to it as PETL_Vision attaches them,
a few training steps leave every pretrained tensor bit-identical, and the trained-parameter counts are
the release's formulas (docs/methods.md#petl-on-clip-towers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from ftbench.execution.runner import fine_tune, load  # noqa: E402
from ftbench.methods.petl import attach_view, inject_lora, lora_target_names  # noqa: E402
from ftbench.methods.petl_modules import Adapter, add_adapters, add_prompts  # noqa: E402
from ftbench.models.clip import DIGITS_CLIP, TimmTower, from_open_clip  # noqa: E402
from ftbench.plan.resolve import resolve  # noqa: E402
from ftbench.spec import RunSpec  # noqa: E402

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
VISION = {"layers": 6, "width": 32, "patch_size": 4, "image_size": 16, "head_width": 16, "mlp_ratio": 2.0}
DEPTH, WIDTH = 6, 32
# In float64 the timm form and open_clip's tower compute the same sums in other orders (fused qkv vs
# in_proj, timm's attention vs nn.MultiheadAttention): each of the ~3 matrix products per sub-layer
# rounds at most ~K·u of its terms' magnitude (K <= 64 terms, u = 2^-53 = 1.1e-16), LayerNorm keeps the
# activations O(1), 6 blocks: ~6·3·64·1.1e-16 ≈ 1.3e-13 of outputs of size O(1). 1e-10 leaves 1000x for
# unlucky accumulation, while any real mismatch (GELU for QuickGELU differs by up to 0.02 per unit, a
# transposed or missing weight by O(weights) = O(0.1)) moves the outputs by far more than 1e-4.
TOL = 1e-10


def _tiny(quick_gelu: bool, seed: int = 0) -> torch.nn.Module:
    """A CLIP classifier on a tiny random open_clip config, in float64 and eval mode."""
    torch.manual_seed(seed)
    clip = open_clip.CLIP(embed_dim=16, vision_cfg=VISION, text_cfg=TEXT, quick_gelu=quick_gelu)
    return from_open_clip(clip, 3, 5).double().eval()


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _values(params) -> torch.Tensor:
    """Every value of ``params``, sorted: equal iff the same bits, whatever their names and layout."""
    return torch.sort(torch.cat([p.detach().flatten() for p in params])).values


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["quickgelu-openai", "gelu"])
def test_the_timm_form_is_the_open_clip_tower_with_the_same_bits(quick_gelu: bool) -> None:
    model = _tiny(quick_gelu)
    x = _x()
    with torch.no_grad():
        features, logits = model.visual(x), model(x)
    per_block = {b: _values(model.block_parameters(b)) for b in model.block_names()}
    visual = model.visual
    assert model.use_timm_tower() and isinstance(model.visual, TimmTower)
    vit = model.visual.vit
    with torch.no_grad():
        assert (model.visual(x) - features).abs().max() <= TOL * features.abs().max()
        assert (model(x) - logits).abs().max() <= TOL * logits.abs().max()
    # Same parameters, bit for bit, in the same blocks (block 3 ends with the final norm and CLIP's projection).
    assert model.block_names() == list(per_block)
    for b, values in per_block.items():
        assert torch.equal(_values(model.block_parameters(b)), values), b
    owned = [id(p) for b in model.block_names() for p in model.block_parameters(b)]
    assert len(owned) == len(set(owned)) == len(list(model.parameters()))
    # timm's names for open_clip's tensors (spot checks of the mapping; the function check covers the rest)
    assert torch.equal(vit.blocks[4].attn.qkv.weight, visual.transformer.resblocks[4].attn.in_proj_weight)
    assert torch.equal(vit.blocks[4].attn.proj.bias, visual.transformer.resblocks[4].attn.out_proj.bias)
    assert torch.equal(model.visual.proj, visual.proj) and torch.equal(vit.pos_embed[0], visual.positional_embedding)
    assert type(vit.blocks[0].mlp.act).__name__ == ("QuickGELU" if quick_gelu else "GELU")
    assert not any(p.requires_grad != q.requires_grad for p, q in zip(model.visual.parameters(), visual.parameters()))


def test_a_resnet_tower_has_no_timm_form_and_stays_as_it_is() -> None:
    torch.manual_seed(0)
    rn = {"layers": [1, 1, 1, 1], "width": 8, "image_size": 32, "head_width": 8}
    model = from_open_clip(open_clip.CLIP(embed_dim=16, vision_cfg=rn, text_cfg=TEXT), 3, 5)
    visual = model.visual
    assert model.use_timm_tower() is False and model.visual is visual
    assert lora_target_names(attach_view(model), "qkv") == []  # lora then refuses it: no such layer


def test_the_timm_form_saves_and_loads_as_a_resumed_run_needs() -> None:
    """A resumed run converts its fresh model, then loads the saved state: every key (text tower included) fits."""
    a, b = _tiny(True, seed=0), _tiny(True, seed=1)
    a.use_timm_tower()
    b.use_timm_tower()
    sd = a.state_dict()
    assert "visual.vit.blocks.0.attn.qkv.weight" in sd and "text.logit_scale" in sd
    b.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert torch.equal(a(_x()), b(_x()))


def _release_vpt(v, head, prompts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PETL_Vision's deep VPT on open_clip's own tower ``v``: each block's prompts *prepended* before the
    class token and dropped after the block (model/vision_transformer.py:224-241), then CLIP's pooling."""
    t = v.conv1(x).flatten(2).transpose(1, 2)
    t = torch.cat([v.class_embedding.expand(t.shape[0], 1, -1), t], dim=1) + v.positional_embedding
    t = v.ln_pre(t)
    n = prompts.shape[1]
    for i, blk in enumerate(v.transformer.resblocks):
        t = torch.cat([prompts[i].expand(t.shape[0], -1, -1), t], dim=1)
        t = blk(t) if v.transformer.batch_first else blk(t.transpose(0, 1)).transpose(0, 1)
        t = t[:, n:]
    return head(F.normalize(v.ln_post(t[:, 0]) @ v.proj, dim=-1))


@pytest.mark.parametrize("method", ["lora", "adapter", "vpt"])
def test_methods_attach_to_a_clip_tower_as_the_release_does(method: str) -> None:
    """At initialisation LoRA (B = 0) and a zero-initialised adapter compute the un-adapted open_clip
    model's function; deep VPT computes the release's (prompts before the class token: the same function
    as ftbench's after it, for attention without position embeddings on the prompts is order-free)."""
    model = _tiny(True)
    x = _x()
    with torch.no_grad():
        before = model(x)
    reference = model.visual  # open_clip's tower (the timm form replaces it below)
    attach_view(model)
    g = torch.Generator().manual_seed(0)
    if method == "lora":
        names = lora_target_names(model, "qkv")
        assert names == [f"visual.vit.blocks.{i}.attn.qkv" for i in range(DEPTH)]
        new = inject_lora(model, names, r=4, alpha=4.0, dropout=0.1, seed=0)
        assert sum(p.numel() for p in new) == DEPTH * 4 * (WIDTH + 3 * WIDTH)  # A r×D, B 3D×r, no biases
    elif method == "adapter":
        new = [p for a in add_adapters(model, 8, act="relu", generator=g) for p in a.parameters()]
        assert sum(p.numel() for p in new) == DEPTH * 2 * (2 * WIDTH * 8 + 8 + WIDTH)
    else:
        vp = add_prompts(model, 3, "deep", generator=g)
        assert vp.prompts.shape == (DEPTH, 3, WIDTH)
        with torch.no_grad():
            before = _release_vpt(reference, model.head, vp.prompts.double(), x)
    model = model.double().eval()
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max() <= TOL * before.abs().max()


def test_the_release_adapter_is_x_plus_scale_times_the_bottleneck_with_xavier_init() -> None:
    a = Adapter(64, 32, act="relu", dropout=0.1, scale=0.01)
    a.init("xavier", torch.Generator().manual_seed(0))
    bound = (6 / (64 + 32)) ** 0.5  # Xavier-uniform: fan_in + fan_out of either projection
    for w in (a.down.weight, a.up.weight):
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    for b in (a.down.bias, a.up.bias):  # N(0, 1e-6²) (model/utils.py:18-22): all within 6σ, not all zero
        assert b.abs().max() < 6e-6 and b.abs().max() > 0
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    a.eval()
    with torch.no_grad():
        assert torch.equal(a(x), x + a.up(torch.relu(a.down(x))) * 0.01)


# --- runs on digits-clip (a saved random open_clip model: no pretraining) ---------------------------------


SPEC = RunSpec(benchmark="digits", model="digits-clip", protocol="id-ood", steps=3, batch_size=32, head_init="zero-shot")
D, LAYERS, HEAD = DIGITS_CLIP["vision_cfg"]["width"], DIGITS_CLIP["vision_cfg"]["layers"], DIGITS_CLIP["embed_dim"] * 10 + 10


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.pt"
    torch.manual_seed(3)
    torch.save(open_clip.CLIP(**DIGITS_CLIP).state_dict(), path)
    return str(path)


# The release's variants (recipe petl) and their trained-parameter formulas on digits-clip's tower.
RELEASE = [
    ("lora", (("alpha", 32.0), ("dropout", 0.1), ("r", 32)), LAYERS * 32 * (D + 3 * D)),  # model/lora.py:11-14
    ("adapter", (("act", "relu"), ("bottleneck", 32), ("dropout", 0.1), ("init", "xavier"), ("scale", 0.01)),
     LAYERS * 2 * (D * 32 + 32 + 32 * D + D)),  # two adapters per block, Linear down and up with biases
    ("vpt", (("dropout", 0.1), ("mode", "deep"), ("prompts", 50)), LAYERS * 50 * D),  # model/vpt.py:26-27
]


@pytest.mark.parametrize("method, options, n_new", RELEASE, ids=[m for m, *_ in RELEASE])
def test_a_few_steps_train_only_the_new_parameters_and_the_head(weights: str, method: str, options: tuple,
                                                                 n_new: int) -> None:
    spec = resolve(dataclasses.replace(SPEC, method=method, options=options, weights=weights))
    source, _ = load(spec, torch.device("cpu"))
    source.use_timm_tower()  # the pretrained model in the layout the method trains it in
    before = {k: v.clone() for k, v in source.state_dict().items()}
    tr = fine_tune(spec, "cpu")
    assert isinstance(tr.model.visual, TimmTower)
    new = {n for n, _ in tr.model.named_parameters() if any(s in n for s in ("lora_", ".adapter.", ".vpt."))}
    after = {k.replace(".base_layer.", ".").replace(".inner.", "."): v for k, v in tr.model.state_dict().items()
             if k not in new}
    assert set(after) == set(before)
    for k, v in after.items():  # the text tower too
        assert torch.equal(v, before[k]) != k.startswith("head."), k
    params = dict(tr.model.named_parameters())
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in new), "all new ones train"
    if method == "lora":  # B left zero
        assert all(params[n].abs().sum() > 0 for n in new if "lora_B" in n)
    if method == "vpt":  # the prompts left their initial values (uniform, drawn from the run's seed)
        (name,) = new
        b = (6.0 / (1 * 2 * 2 + D)) ** 0.5  # fan-in of a grey 2×2 patch, fan-out the width
        init = torch.empty(params[name].shape).uniform_(-b, b, generator=torch.Generator().manual_seed(spec.seed))
        assert not torch.equal(params[name].detach(), init)
    assert tr.ctx.metrics["n_trainable"] == n_new + HEAD == sum(p.numel() for n, p in tr.model.named_parameters()
                                                              if n in new) + HEAD


def test_lora_on_digits_clip_runs_from_the_cli_in_the_id_ood_protocol(cli, tmp_path: Path, weights: str) -> None:
    r = cli("run", "--model", "digits-clip", "--weights", weights, "--protocol", "id-ood", "--method", "lora",
            "--set", "r=32", "--set", "alpha=32", "--head-init", "zero-shot", "--steps", "2", "--batch-size", "32",
            "--out", tmp_path)
    assert r.code == 0, r.err
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[0]
    lora = LAYERS * 32 * (D + 3 * D)
    n_clip = sum(p.numel() for p in from_open_clip(open_clip.CLIP(**DIGITS_CLIP), 1, 10, "digits-clip").parameters())
    assert row.status == "ok" and row.protocol == "id-ood" and row.head_init == "zero-shot"
    assert (row.n_trainable, row.n_params, row.lora_scaling) == (lora + HEAD, n_clip + lora, 1.0)
    assert "r=32" in row.variant and pd.notna(row["ood.style_acc"])


# proj=train: CLIP's projection trains with the head, as the release's head Sequential(proj, fc) does
# (experiment/build_model.py:122-124); the "linear" row is surgical on block last.
PROJ_RUNS = [("surgical", ("last",), ()), ("ln-tune", (), ()), ("vpt", (), (("prompts", 2),))]


@pytest.mark.parametrize("method, blocks, options", PROJ_RUNS, ids=[m for m, *_ in PROJ_RUNS])
def test_proj_train_trains_clip_projection_and_leaves_every_other_frozen_tensor_alone(
        weights: str, method: str, blocks: tuple, options: tuple) -> None:
    from ftbench.execution.runner import _result_rows
    from ftbench.methods.petl import norm_parameters

    counts = {}
    for proj in ("frozen", "train"):
        spec = resolve(dataclasses.replace(SPEC, method=method, blocks=blocks, options=(*options, ("proj", proj)),
                                           weights=weights))
        source, _ = load(spec, torch.device("cpu"))
        if method == "vpt":
            source.use_timm_tower()  # the layout vpt trains in (its own copy of the projection)
        before = {k: v.clone() for k, v in source.state_dict().items()}
        tr = fine_tune(spec, "cpu")
        after = {k: v for k, v in tr.model.state_dict().items() if ".vpt." not in k}
        assert set(after) == set(before)
        changed = {k for k in after if not torch.equal(after[k], before[k])}
        assert ("visual.proj" in changed) == (proj == "train"), proj
        assert {k for k in changed if k.startswith("head.")} == {"head.weight", "head.bias"}
        may_train = {n for n, _ in norm_parameters(tr.model)} if method == "ln-tune" else set()
        assert changed - {"visual.proj", "head.weight", "head.bias"} <= may_train, proj
        (row,) = [r for r in _result_rows(tr) if r["final"]]
        counts[proj] = row["n_trainable"]
    assert counts["train"] - counts["frozen"] == DIGITS_CLIP["vision_cfg"]["width"] * DIGITS_CLIP["embed_dim"]
