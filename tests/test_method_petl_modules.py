"""adapter, vpt and ssf (PETL methods that insert new modules): their defining computations on a
bare timm ViT and hand-built layers, and what a user notices on digits from the runner and the CLI."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ftbench.data.base import get_benchmark
from ftbench.errors import UsageError
from ftbench.methods.petl_modules import (
    Adapted,
    Adapter,
    ScaleShift,
    VisualPrompts,
    add_adapters,
    add_prompts,
    add_ssf,
    find_vit,
    merge_ssf,
)
from ftbench.models.base import get_model_entry
from ftbench.train.pretrain import pretrained
from ftbench.models.small import SmallResNet
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.train import loop
from ftbench.execution.runner import fine_tune

DEPTH, DIM, PATCHES = 6, 64, 16


def _vit(seed: int = 0) -> VisionTransformer:
    """The digits-vit architecture as a bare timm model (its own head), in eval mode."""
    torch.manual_seed(seed)
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=DIM, depth=DEPTH,
                             num_heads=4).eval()


def _x(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


# --- identity at init ------------------------------------------------------------------------


@pytest.mark.parametrize("install", [
    lambda m: add_adapters(m, 8, "houlsby"),
    lambda m: add_adapters(m, 8, "pfeiffer", act="relu"),
    lambda m: add_ssf(m),
], ids=["adapter-houlsby", "adapter-pfeiffer", "ssf"])
def test_vit_output_is_bit_identical_after_inserting_modules(install) -> None:
    vit = _vit()
    x = _x()
    before = vit(x)
    install(vit)
    assert torch.equal(vit(x), before)


@pytest.mark.parametrize("install", [lambda m, x: add_adapters(m, 4, sample=x), lambda m, x: add_ssf(m)],
                         ids=["adapter", "ssf"])
def test_cnn_output_is_bit_identical_after_inserting_modules(install) -> None:
    torch.manual_seed(0)
    net = SmallResNet(1, 10).eval()
    x = _x()
    before = net(x)
    install(net, x)
    assert torch.equal(net(x), before)
    assert not any(m.training for m in net.modules())  # the sample pass left BatchNorm in eval mode


# --- adapter -------------------------------------------------------------------------------


def test_adapter_is_x_plus_up_act_down_x_on_a_hand_worked_case() -> None:
    """down = [1, -1], up = [[2], [0]] + [0, 1]: x = [3, 1] -> down 2 -> relu 2 -> up [4, 1] -> x + up = [7, 2]."""
    a = Adapter(2, 1, act="relu")
    with torch.no_grad():
        a.down.weight.copy_(torch.tensor([[1.0, -1.0]]))
        a.down.bias.zero_()
        a.up.weight.copy_(torch.tensor([[2.0], [0.0]]))
        a.up.bias.copy_(torch.tensor([0.0, 1.0]))
    assert a(torch.tensor([[3.0, 1.0]])).tolist() == [[7.0, 2.0]]
    assert a(torch.tensor([[1.0, 3.0]])).tolist() == [[1.0, 4.0]]  # down -2 -> relu 0 -> up bias only


def test_adapter_init_zero_up_and_houlsby_near_identity() -> None:
    a = Adapter(DIM, 8)
    a.init("zero", torch.Generator().manual_seed(0))
    assert not a.up.weight.any() and not a.up.bias.any() and a.down.weight.abs().sum() > 0
    a.init("houlsby", torch.Generator().manual_seed(0))
    for w in (a.down.weight, a.up.weight):
        assert 0 < w.abs().max() <= 2e-3  # N(0, 1e-3²) truncated at 2σ


def test_houlsby_places_adapters_after_attention_and_mlp_pfeiffer_after_mlp_only() -> None:
    vit = _vit()
    adapters = add_adapters(vit, 8, "houlsby", generator=torch.Generator().manual_seed(0))
    assert len(adapters) == 2 * DEPTH
    blk = vit.blocks[0]
    assert isinstance(blk.attn, Adapted) and isinstance(blk.mlp, Adapted)
    with torch.no_grad():  # make both adapters do something
        for a in (blk.attn.adapter, blk.mlp.adapter):
            a.up.weight.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 1 + PATCHES, DIM, generator=torch.Generator().manual_seed(3))
    # Houlsby: the adapter acts on the sub-layer's output, before the residual addition.
    x1 = x + blk.attn.adapter(blk.attn.inner(blk.norm1(x)))
    expected = x1 + blk.mlp.adapter(blk.mlp.inner(blk.norm2(x1)))
    # The same modules applied in the same order: equal up to a reordered residual sum (a few u).
    assert torch.allclose(blk(x), expected, atol=1e-6)
    x1 = x + blk.attn.inner(blk.norm1(x))
    assert not torch.allclose(blk(x), x1 + blk.mlp.inner(blk.norm2(x1)))  # (the adapters do act)

    vit = _vit()
    assert len(add_adapters(vit, 8, "pfeiffer")) == DEPTH
    assert not isinstance(vit.blocks[0].attn, Adapted) and isinstance(vit.blocks[0].mlp, Adapted)


def test_cnn_adapters_follow_each_residual_unit_with_its_channel_count() -> None:
    net = SmallResNet(1, 10).eval()
    adapters = add_adapters(net, 4, sample=_x(2))
    assert [a.down.in_channels for a in adapters] == [16, 32, 64]
    assert all(isinstance(getattr(net, f"stage{i}"), Adapted) for i in (1, 2, 3))
    with pytest.raises(UsageError, match="placement"):
        add_adapters(SmallResNet(1, 10), 4, "pfeiffer", sample=_x(2))
    with pytest.raises(UsageError, match="neither"):
        add_adapters(nn.Sequential(nn.Linear(2, 2)), 4)


# --- SSF -----------------------------------------------------------------------------------


def test_ssf_wraps_exactly_the_papers_layers_of_a_vit() -> None:
    vit = _vit()
    add_ssf(vit)
    wrapped = {n for n, m in vit.named_modules() if isinstance(m, ScaleShift)}
    per_block = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    assert wrapped == {"patch_embed.proj", "norm"} | {f"blocks.{i}.{p}" for i in range(DEPTH) for p in per_block}
    assert isinstance(vit.head, nn.Linear)  # the classifier is not wrapped: it trains itself


def test_ssf_merge_into_a_linear_layer_by_hand() -> None:
    """W = [[1, 2], [3, 4]], b = [1, -1], γ = [2, 0.5], β = [1, 1], x = [1, 1]:
    Wx + b = [4, 6] -> γ ⊙ · + β = [9, 4]; merged W' = [[2, 4], [1.5, 2]], b' = [3, 0.5]."""
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        lin.bias.copy_(torch.tensor([1.0, -1.0]))
    w = ScaleShift(lin, 2, -1)
    with torch.no_grad():
        w.scale.copy_(torch.tensor([2.0, 0.5]))
        w.shift.copy_(torch.tensor([1.0, 1.0]))
    x = torch.tensor([[1.0, 1.0]])
    assert w(x).tolist() == [[9.0, 4.0]]
    merged = w.merged()
    assert merged is lin
    assert lin.weight.tolist() == [[2.0, 4.0], [1.5, 2.0]] and lin.bias.tolist() == [3.0, 0.5]
    assert lin(x).tolist() == [[9.0, 4.0]]


@pytest.mark.parametrize("make, shape, dim", [
    (lambda: nn.Conv2d(3, 4, 3, bias=False), (2, 3, 5, 5), 1),
    (lambda: nn.LayerNorm(4), (2, 7, 4), -1),
    (lambda: nn.LayerNorm(4, elementwise_affine=False), (2, 7, 4), -1),
    (lambda: nn.BatchNorm2d(4).eval(), (2, 4, 3, 3), 1),
    (lambda: nn.GroupNorm(2, 4), (2, 4, 3, 3), 1),
], ids=["conv-no-bias", "layernorm", "layernorm-no-affine", "batchnorm", "groupnorm"])
def test_ssf_merged_layer_equals_the_ssf_forward(make, shape, dim) -> None:
    torch.manual_seed(0)
    layer = make()
    if isinstance(layer, nn.BatchNorm2d):
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2)
    w = ScaleShift(layer, 4, dim)
    w.init(0.5, torch.Generator().manual_seed(0))
    x = torch.randn(shape)
    y = w(x)
    # Merging folds scale and shift into the layer's weights: one more product per weight and the
    # layer's sum (<= 64 terms of N(0, 1) inputs) in another order, ~sqrt(64) u x 5 ~ 2e-6.
    assert torch.allclose(w.merged()(x), y, atol=1e-5)


def test_ssf_merge_of_a_whole_vit_keeps_its_function_and_parameter_count() -> None:
    vit = _vit()
    n0 = sum(p.numel() for p in vit.parameters())
    add_ssf(vit, init_std=0.1, generator=torch.Generator().manual_seed(0))
    x = _x()
    y = vit(x)
    assert merge_ssf(vit) == 2 + 6 * DEPTH
    assert not any(isinstance(m, ScaleShift) for m in vit.modules())
    assert sum(p.numel() for p in vit.parameters()) == n0
    # Every layer merged, as above (~2e-6 each), through 6 blocks whose LayerNorms rescale: ~1e-6 at the
    # logits; 1e-5 leaves 10x.
    assert torch.allclose(vit(x), y, atol=1e-5)


# --- VPT -----------------------------------------------------------------------------------


def _vpt_reference(vit: VisionTransformer, prompts: torch.Tensor, x: torch.Tensor, deep: bool) -> torch.Tensor:
    """VPT's forward written out (block.forward skips the hooks): [cls, P, patches] through the blocks."""
    p = prompts.shape[1]
    t = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    for i, blk in enumerate(vit.blocks):
        if i == 0 or deep:  # insert (block 0) or replace the previous layer's prompt outputs (deep)
            rest = t[:, 1 + (p if i > 0 else 0):]
            t = torch.cat([t[:, :1], prompts[i].expand(len(x), -1, -1), rest], dim=1)
        t = blk.forward(t)
    t = torch.cat([t[:, :1], t[:, 1 + p:]], dim=1)  # prompts removed before the head
    return vit.forward_head(vit.norm(t))


@pytest.mark.parametrize("mode", ["shallow", "deep"])
def test_vpt_forward_equals_the_papers_computation(mode: str) -> None:
    vit = _vit()
    x = _x()
    before = vit(x)
    vp = add_prompts(vit, 4, mode, generator=torch.Generator().manual_seed(0))
    assert vp.prompts.shape == ((DEPTH if mode == "deep" else 1), 4, DIM)
    # The reference runs the same modules on the same tokens: only a concatenation order differs.
    assert torch.allclose(vit(x), _vpt_reference(vit, vp.prompts, x, mode == "deep"), atol=1e-6)
    assert not torch.allclose(vit(x), before)
    vp.detach()  # the hooks are the only change to the ViT's computation
    assert torch.equal(vit(x), before)


@pytest.mark.parametrize("mode", ["shallow", "deep"])
def test_vpt_token_counts_and_which_prompts_each_block_sees(mode: str) -> None:
    vit = _vit()
    vp = add_prompts(vit, 3, mode, generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    for blk in vit.blocks:  # registered after VPT's pre-hooks: sees the block's real input
        blk.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach()))
    features = vit.forward_features(_x(2))
    assert features.shape == (2, 1 + PATCHES, DIM)  # prompts removed after the last block
    assert [s.shape[1] for s in seen] == [1 + 3 + PATCHES] * DEPTH  # cls + prompts + patches everywhere
    for i, s in enumerate(seen):
        slot = s[:, 1:4]  # the prompt positions, right after the class token
        if mode == "deep" or i == 0:
            assert torch.equal(slot, vp.prompts[i if mode == "deep" else 0].expand(2, -1, -1))
        else:  # shallow: later blocks see the previous block's outputs at the prompt positions
            assert not torch.allclose(slot, vp.prompts[0].expand(2, -1, -1))
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(2, -1, -1)[:, 0]
    assert torch.equal(seen[0][:, 0], cls)  # the class token stays first


def test_petl_shallow_prompts_act_in_the_first_block_only() -> None:
    """PETL_Vision's shallow VPT (model/vision_transformer.py: prepend before block 0, drop the prompt
    outputs after it): blocks 1.. see 1 + N tokens, and the output equals running block 0 on the
    prompted sequence and the rest of the ViT unprompted. The VPT paper's shallow differs (tested above)."""
    vit = _vit()
    x = _x(2)
    vp = add_prompts(vit, 3, "petl-shallow", generator=torch.Generator().manual_seed(0))
    assert vp.prompts.shape == (1, 3, DIM)
    seen: list[int] = []
    for blk in vit.blocks:
        blk.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[1]))
    out = vit(x)
    assert seen == [1 + 3 + PATCHES] + [1 + PATCHES] * (DEPTH - 1)
    vp.detach()
    with torch.no_grad():
        t = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        t = vit.blocks[0](torch.cat([t[:, :1], vp.prompts[0].expand(2, -1, -1), t[:, 1:]], dim=1))
        t = torch.cat([t[:, :1], t[:, 4:]], dim=1)
        for blk in vit.blocks[1:]:
            t = blk(t)
        ref = vit.forward_head(vit.norm(t))
    assert torch.allclose(out, ref, atol=1e-6)  # same float32 ops in the same order, up to kernel rounding


def test_vpt_prompts_are_xavier_uniform_as_released() -> None:
    vit = _vit()
    vp = add_prompts(vit, 50, "deep", generator=torch.Generator().manual_seed(0))
    bound = (6.0 / (1 * 2 * 2 + DIM)) ** 0.5  # in_chans · patch² + D
    assert vp.bound() == pytest.approx(bound)
    assert vp.prompts.abs().max() <= bound and vp.prompts.abs().max() > 0.9 * bound
    # uniform(-b, b) has std b/√3 ~ 0.12; of n = 6 * 50 * 64 = 19,200 draws, the sample std's standard
    # error is (b/√3) sqrt(0.8 / (4 n)) ~ 4e-4: 0.01 is 25 of them.
    assert abs(float(vp.prompts.detach().std()) - bound / 3**0.5) < 0.01


def test_vpt_refuses_a_model_without_a_vit() -> None:
    assert find_vit(SmallResNet(1, 10)) is None
    with pytest.raises(UsageError, match="needs a ViT"):
        add_prompts(SmallResNet(1, 10), 4)
    with pytest.raises(UsageError, match="digits-vit"):
        resolve(RunSpec(method="vpt"))  # at resolution: before any (pre)training


# --- the methods on digits -----------------------------------------------------------------


def _pretrained_state(spec: RunSpec) -> dict[str, torch.Tensor]:
    spec = resolve(spec)
    model = pretrained(spec.model, get_benchmark(spec.benchmark).source(spec), torch.device("cpu"))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _new_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The inserted parameters by name: adapters, SSF scales/shifts, VPT prompts."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (Adapter, VisualPrompts)):
            out.update({f"{name}.{k}": p for k, p in m.named_parameters()})
        elif isinstance(m, ScaleShift):
            out.update({f"{name}.scale": m.scale, f"{name}.shift": m.shift})
    return out


def _check_frozen(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every pretrained tensor (parameters and buffers) bit-identical except the head; return the new ones."""
    new = _new_parameters(model)
    state = {k.replace(".inner", ""): v for k, v in model.state_dict().items() if k not in new}
    assert set(state) == set(before)
    for k, v in state.items():
        same = torch.equal(v, before[k])
        assert same != k.startswith("head."), f"{k}: {'unchanged' if not same else 'changed'}"
    return new


@pytest.mark.parametrize("method, options", [
    ("adapter", ()), ("adapter", (("placement", "pfeiffer"),)),
    ("vpt", (("mode", "shallow"),)), ("vpt", (("mode", "deep"),)), ("vpt", (("mode", "petl-shallow"),)), ("ssf", ()),
])
def test_vit_backbone_stays_bit_identical_and_new_parameters_train(method: str, options: tuple) -> None:
    spec = RunSpec(method=method, model="digits-vit", steps=3, options=options)
    before = _pretrained_state(spec)
    tr = fine_tune(spec, "cpu")
    new = _check_frozen(tr.model, before)
    assert new and all(p.device.type == "cpu" for p in new.values())
    if method == "adapter":  # the up-projections left zero
        assert all(p.any() for k, p in new.items() if k.endswith("up.weight"))
    elif method == "ssf":
        assert all(not torch.equal(p, torch.ones_like(p)) for k, p in new.items() if k.endswith(".scale"))
    else:  # the prompts left their (reproducible) initial values
        (prompts,) = new.values()
        b = (6.0 / (4 + DIM)) ** 0.5
        init = torch.empty(prompts.shape).uniform_(-b, b, generator=torch.Generator().manual_seed(spec.seed))
        assert not torch.equal(prompts.detach(), init)
    assert tr.ctx.metrics["n_trainable"] == sum(p.numel() for p in new.values()) + 64 * 10 + 10


@pytest.mark.parametrize("method", ["adapter", "ssf"])
def test_cnn_backbone_and_batchnorm_statistics_stay_bit_identical(method: str) -> None:
    spec = RunSpec(method=method, steps=3)
    before = _pretrained_state(spec)
    tr = fine_tune(spec, "cpu")
    new = _check_frozen(tr.model, before)  # includes BatchNorm running_mean/var: eval mode throughout
    assert any("running_mean" in k for k in before)
    assert all(p.requires_grad for p in new.values())
    assert sum(p.numel() for p in new.values()) + 64 * 10 + 10 == tr.ctx.metrics["n_trainable"]


def test_ssf_merge_option_gives_the_same_predictions_with_the_pretrained_parameter_count() -> None:
    plain = fine_tune(RunSpec(method="ssf", steps=3), "cpu")
    merged = fine_tune(RunSpec(method="ssf", steps=3, options=(("merge", True),)), "cpu")
    x = merged.target.test.x[:256]
    # Training is the same computation for both (the merge happens after it), so only the merged
    # forward differs: per convolution a sum of <= 576 terms (3x3 x 64 channels) reordered, ~sqrt(576)
    # u ~ 1.4e-6 of its size, over ~10 layers, at logits up to ~20: ~3e-5; 1e-4 leaves 3x for the
    # worst case of correlated roundings.
    assert torch.allclose(merged.model(x), plain.model(x), atol=1e-4)
    assert not any(isinstance(m, ScaleShift) for m in merged.model.modules())
    # Same parameters as the pretrained model, plus a bias for each convolution that had none (it takes
    # the shift β of the SSF after it).
    original = pretrained("digits-resnet", merged.task.pretraining, torch.device("cpu"))
    biasless = sum(m.out_channels for m in original.modules() if isinstance(m, nn.Conv2d) and m.bias is None)
    assert biasless > 0
    n = sum(p.numel() for p in merged.model.parameters())
    assert n == sum(p.numel() for p in original.parameters()) + biasless


def test_ssf_scales_and_shifts_get_no_weight_decay(monkeypatch) -> None:
    made: list[torch.optim.Optimizer] = []
    original = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    tr = fine_tune(RunSpec(method="ssf", steps=2, wd=0.5), "cpu")
    (opt,) = made
    ssf = {id(p) for m in tr.model.modules() if isinstance(m, ScaleShift) for p in (m.scale, m.shift)}
    decay = {id(g["params"][0]): g["weight_decay"] for g in opt.param_groups}
    assert {d for i, d in decay.items() if i in ssf} == {0.0}
    assert {d for i, d in decay.items() if i not in ssf} == {0.5}  # the head keeps --wd


# --- CLI -------------------------------------------------------------------------------------


def test_cli_vpt_deep_on_digits_vit_reports_the_true_trainable_count(cli, tmp_path) -> None:
    r = cli("run", "--model", "digits-vit", "--method", "vpt", "--set", "mode=deep", "--set", "prompts=4",
            "--steps", "5", "--out", tmp_path)
    assert r.code == 0, r.err
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[0]
    prompts, head = DEPTH * 4 * DIM, DIM * 10 + 10
    assert row.status == "ok" and row.method == "vpt"
    assert row.n_trainable == prompts + head
    n_vit = sum(p.numel() for p in get_model_entry("digits-vit").build(1, 10).parameters())
    assert row.n_params == n_vit + prompts
    assert row.trainable_fraction == pytest.approx((prompts + head) / row.n_params)
    assert f"{prompts + head:,}/" in r.out


@pytest.mark.parametrize("args, message", [
    (("--method", "vpt"), "vpt needs a ViT"),
    (("--model", "digits-vit", "--method", "vpt", "--set", "mode=medium"), "mode"),
    (("--model", "digits-vit", "--method", "vpt", "--set", "prompts=0"), "prompts"),
    (("--model", "digits-vit", "--method", "vpt", "--set", "dropout=1"), "dropout"),
    (("--method", "adapter", "--set", "placement=pfeiffer"), "placement"),
    (("--method", "adapter", "--set", "bottleneck=0"), "bottleneck"),
    (("--method", "adapter", "--set", "act=tanh"), "act"),
    (("--method", "ssf", "--set", "init_std=-1"), "init_std"),
    (("--method", "ssf", "--block", "1"), "takes no --block"),
])
def test_cli_bad_options_exit_2_with_one_error_line(cli, tmp_path, args: tuple, message: str) -> None:
    r = cli("run", *args, "--steps", "1", "--out", tmp_path)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.err
    assert not list(tmp_path.glob("*.parquet"))


def test_deep_copy_keeps_prompts_working() -> None:
    """Hooks are bound methods of the prompts module: a deep copy uses its own copied prompts."""
    vit = _vit()
    add_prompts(vit, 2, "deep", generator=torch.Generator().manual_seed(0))
    twin = copy.deepcopy(vit)
    x = _x()
    assert torch.equal(twin(x), vit(x))
    with torch.no_grad():
        twin.vpt.prompts.normal_(generator=torch.Generator().manual_seed(5))  # (a constant shift would be
        # invisible: every token is LayerNorm-ed before attention and prompt outputs are dropped)
    assert not torch.allclose(twin(x), vit(x))
