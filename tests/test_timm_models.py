"""Real backbones (ftbench/models/timm_models.py, cifar.py, weights.py): timm models by name, CIFAR networks, block
partitions, --weights files and hub weights, and what `ftbench list models` shows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch

from ftbench.data.base import get_benchmark
from ftbench.errors import UsageError
from ftbench.train import pretrain
from ftbench.models import base as models_base
from ftbench.models import cifar as cifar_nets
from ftbench.models import timm_models as tm
from ftbench.models import weights as weights_mod
from ftbench.models.base import get_model_entry
from ftbench.spec import RunSpec
from ftbench.plan.suites import expand_suite
from ftbench.plan.resolve import resolve
from ftbench.train import prefix

TINY = {  # small variants of each family, fast on a CPU at 32 px
    "resnet": ("resnet18", {}),
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}),
    "convnext": ("convnext_atto", {}),
}


def _names_by_block(model: torch.nn.Module) -> dict[str, set[str]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {b: {name_of[id(p)] for p in model.block_parameters(b)} for b in model.block_names()}


def _covers_once(model: torch.nn.Module) -> None:
    ids = [id(p) for b in model.block_names() for p in model.block_parameters(b)]
    assert len(ids) == len(set(ids)), "a parameter is in two blocks"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter is in no block"


@pytest.mark.parametrize("family", list(TINY))
def test_family_partition_as_the_papers_name_it(family: str) -> None:
    arch, kw = TINY[family]
    model = tm.create(arch, 3, 5, **kw)
    assert model.kind == family and isinstance(model, tm.TimmBlockModel)
    assert tuple(model.block_names()) == tm.FAMILY_BLOCKS[family]
    _covers_once(model)
    blocks = _names_by_block(model)
    assert blocks["last"] == {"head.weight", "head.bias"} and model.blocks()["last"] == [model.head]
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 5

    def starts(block: str, *prefixes: str) -> bool:
        return all(any(n.startswith(f"net.{p}") for p in prefixes) for n in blocks[block])

    if family == "resnet":
        assert starts("1", "conv1.", "bn1.", "layer1.") and {"net.conv1.weight", "net.bn1.weight"} <= blocks["1"]
        assert all(starts(str(k), f"layer{k}.") for k in (2, 3, 4))
    elif family == "vit":  # 12 transformer blocks in thirds; embeddings first, final norm with the last third
        assert {"net.cls_token", "net.pos_embed", "net.patch_embed.proj.weight", "net.blocks.3.mlp.fc2.bias"} <= blocks["1"]
        assert "net.blocks.4.attn.qkv.weight" in blocks["2"] and "net.blocks.7.norm2.weight" in blocks["2"]
        assert {"net.blocks.8.attn.qkv.weight", "net.norm.weight"} <= blocks["3"]
        assert not any(".blocks.4." in n for n in blocks["1"] | blocks["3"])
    else:
        assert starts("1", "stem.", "stages.0.") and starts("2", "stages.1.") and starts("3", "stages.2.")
        assert starts("4", "stages.3.", "head.norm.") and "net.head.norm.weight" in blocks["4"]


def test_cifar_networks_partition_and_size() -> None:
    wrn = cifar_nets.WideResNet(3, 10, depth=10, widen=1)  # the WRN-28-10 architecture at its smallest
    _covers_once(wrn)
    blocks = _names_by_block(wrn)
    assert tuple(blocks) == ("1", "2", "3", "last")
    assert {"conv1.weight", "block1.layer.0.conv1.weight"} <= blocks["1"] and {"bn1.weight", "block3.layer.0.conv2.weight"} <= blocks["3"]
    res = cifar_nets.CifarResNet(3, 10, depth=26)
    _covers_once(res)
    assert len(res.layer1) == len(res.layer2) == len(res.layer3) == 4  # 6n+2 = 26: n = 4 basic blocks per stage
    assert [u for u, _ in res.residual_units()][:5] == ["layer1.0", "layer1.1", "layer1.2", "layer1.3", "layer2.0"]
    # The full models' sizes, counted on the meta device (no memory): WRN-28-10 is the 36.5M network.
    assert models_base.block_parameter_counts(get_model_entry("wrn-28-10")) == {
        "1": 1_641_104, "2": 6_968_000, "3": 27_863_680, "last": 6_410}
    assert sum(models_base.block_parameter_counts(get_model_entry("resnet26-cifar")).values()) == 369_690
    assert sum(models_base.block_parameter_counts(get_model_entry("resnet50")).values()) == 25_557_032


@pytest.mark.parametrize("family", list(TINY))
def test_features_and_head_are_the_timm_models_forward(family: str) -> None:
    arch, kw = TINY[family]
    with torch.random.fork_rng():
        torch.manual_seed(models_base.BUILD_SEED)  # create() builds under this seed: the same initial weights
        ref = timm.create_model(arch, num_classes=5, in_chans=3, **kw).eval()
    model = tm.create(arch, 3, 5, **kw).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = ref(x)
        feats = ref.forward_head(ref.forward_features(x), pre_logits=True)
        assert torch.equal(model.features(x), feats)
        assert torch.equal(model(x), logits) and torch.equal(model.head(model.features(x)), logits)
        # The frozen-prefix fast path cuts the same forward at every block boundary.
        assert prefix.can_cut(model)
        for b in model.block_names():
            assert torch.equal(model.forward_from(b, model.forward_to(b, x)), logits), b
    units = model.residual_units()
    assert units and all(model.get_submodule(path) is not None for path, _ in units)
    assert {b for _, b in units} == set(model.block_names()) - {"last"}


def test_cifar_networks_cut_at_block_boundaries() -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for model in (cifar_nets.WideResNet(3, 10, depth=10, widen=1).eval(), cifar_nets.CifarResNet(3, 10, depth=8).eval()):
        with torch.no_grad():
            y = model(x)
            assert torch.equal(model.head(model.features(x)), y) and prefix.can_cut(model)
            for b in model.block_names():
                assert torch.equal(model.forward_from(b, model.forward_to(b, x)), y), b


def test_derived_partition_from_timm_stages() -> None:
    entry = get_model_entry("timm/regnetx_002")
    assert entry.block_names == ("1", "2", "3", "4", "last") and "derived" in entry.help
    model = entry.build(3, 4).eval()
    assert model.kind == "derived" and not prefix.can_cut(model) and model.residual_units() == []
    _covers_once(model)
    blocks = _names_by_block(model)
    assert {n.split(".")[1] for n in blocks["1"]} == {"stem", "s1"}  # the stem goes with the first stage
    assert all({n.split(".")[1] for n in blocks[str(k)]} == {f"s{k}"} for k in (2, 3, 4))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model.head(model.net.forward_head(model.net.forward_features(x), pre_logits=True)))
    # EfficientNet: what follows the last stage (conv_head, bn2) ends the last block's features.
    eff = get_model_entry("timm/efficientnet_b0")
    assert eff.block_names == ("1", "2", "3", "4", "5", "6", "7", "last")
    with torch.device("meta"):
        m = eff.build(3, 10)
    assert {"net.conv_head.weight", "net.bn2.weight", "net.blocks.6.0.conv_pw.weight"} <= _names_by_block(m)["7"]
    assert "net.conv_stem.weight" in _names_by_block(m)["1"]


def test_stages_from_feature_info_and_conv_classifiers(tmp_path: Path) -> None:
    # MetaFormers define no group_matcher: their stages come from timm's feature_info.
    with torch.device("meta"):
        pool = tm.create("poolformer_s12", 3, 10)
    _covers_once(pool)
    blocks = _names_by_block(pool)
    assert tuple(blocks) == ("1", "2", "3", "4", "last")
    assert {n.split(".")[1] for n in blocks["1"]} == {"stem", "stages"} and all("stages.0." in n for n in blocks["1"] if "stem" not in n)
    assert "net.head.norm.weight" in blocks["4"]  # what follows the last stage ends its features
    # A 1×1 convolution classifier on the pooled map (DLA, BiT's ResNetV2) becomes the linear head.
    with torch.random.fork_rng():
        torch.manual_seed(models_base.BUILD_SEED)
        ref = timm.create_model("dla46_c", num_classes=4).eval()
    model = tm.create("dla46_c", 3, 4).eval()
    assert isinstance(model.head, torch.nn.Linear) and model.head.weight.shape == (4, 256)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # The same weights; the 1x1-convolution classifier becomes a Linear layer, which sums its 256
        # products in another order: ~sqrt(256) u times the sum of |terms| (~5): ~5e-6.
        assert torch.allclose(model(x), ref(x), atol=1e-5)
    native = ref.state_dict()  # timm's own layout: fc.weight is 4×256×1×1
    fresh = tm.create("dla46_c", 3, 4)
    path = tmp_path / "dla.pt"
    torch.save(native, path)
    assert weights_mod.load_weights(fresh, path) is True and torch.equal(fresh.head.weight, ref.fc.weight.flatten(1))


def test_other_isotropic_transformers_in_thirds() -> None:
    # BEiT/EVA/DINOv3 are not timm's VisionTransformer class; their stages are the transformer blocks,
    # grouped in thirds as the ViT partition (not 12 blocks).
    entry = get_model_entry("timm/beit_base_patch16_224")
    assert entry.block_names == ("1", "2", "3", "last") and "thirds" in entry.help
    with torch.device("meta"):
        model = entry.build(3, 10)
    _covers_once(model)
    blocks = _names_by_block(model)
    assert {"net.cls_token", "net.patch_embed.proj.weight", "net.blocks.3.mlp.fc1.weight"} <= blocks["1"]
    assert "net.blocks.4.mlp.fc1.weight" in blocks["2"] and {"net.blocks.11.mlp.fc1.weight", "net.fc_norm.weight"} <= blocks["3"]
    assert model.residual_units() == []  # their blocks take extra arguments (position biases): no SpotTune routing


def test_no_partition_is_a_clear_error() -> None:
    class Flat(torch.nn.Module):  # no stage grouping (no timm group_matcher)
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(4, 4)

    with pytest.raises(UsageError, match="has no known block partition and none can be derived"):
        tm.partition_timm(Flat(), "flat")


def test_timm_names(cli) -> None:
    entry = get_model_entry("timm/vit_tiny_patch16_224:img_size=32,patch_size=8")
    assert entry.block_names == ("1", "2", "3", "last")
    assert entry.build(3, 7).net.patch_embed.grid_size == (4, 4)
    assert tm.parse_name("timm/resnet50.tv_in1k") == ("resnet50.tv_in1k", {})
    r = cli("run", "--model", "timm/resnet5", "--steps", "1")
    assert r.code == 2 and "unknown timm model 'resnet5'; close matches: timm/resnet50" in r.err
    assert len(r.err.strip().splitlines()) == 1
    r = cli("run", "--model", "timm/resnet18:num_classes=3")
    assert r.code == 2 and "num_classes is set by ftbench" in r.err
    r = cli("run", "--model", "resnet-50")
    assert r.code == 2 and "or timm/NAME for any timm model" in r.err
    r = cli("run", "--model", "timm/resnet18", "--block", "5")
    assert r.code == 2 and "accepted: 1, 2, 3, 4, last" in r.err


def test_weights_files(tmp_path: Path) -> None:
    src = tm.create("resnet18", 1, 10)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)  # differ from a fresh build
    ours = tmp_path / "ours.pt"
    torch.save(src.state_dict(), ours)
    fresh = tm.create("resnet18", 1, 10)
    assert weights_mod.load_weights(fresh, ours) is True
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), src.state_dict().values()))
    # timm's own key layout, wrapped and DataParallel-prefixed, with an ImageNet head on RGB input.
    with torch.random.fork_rng():
        torch.manual_seed(1)
        imnet = timm.create_model("resnet18", num_classes=1000, in_chans=3)
    native = tmp_path / "native.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in imnet.state_dict().items()}}, native)
    gray = tm.create("resnet18", 1, 10)
    head_before = gray.head.weight.clone()
    assert weights_mod.load_weights(gray, native) is False  # the 1000-class head does not fit 10 classes
    assert torch.equal(gray.head.weight, head_before)
    assert torch.equal(gray.net.layer3[1].conv2.weight, imnet.layer3[1].conv2.weight)
    assert torch.equal(gray.net.bn1.running_var, imnet.bn1.running_var)
    # First convolution adapted to 1 channel as timm adapts hub weights: the sum over RGB.
    # allclose's default (rtol 1e-5): the same three-term sum.
    assert torch.allclose(gray.net.conv1.weight, imnet.conv1.weight.sum(1, keepdim=True))
    # CIFAR networks: the reference layout's ``fc`` is the head.
    wrn = cifar_nets.WideResNet(3, 10, depth=10, widen=1)
    ref = {("fc." + k[5:]) if k.startswith("head.") else k: v + 1 for k, v in wrn.state_dict().items()}
    torch.save({"model": ref}, tmp_path / "wrn.pt")
    assert weights_mod.load_weights(wrn, tmp_path / "wrn.pt") is True and torch.equal(wrn.head.bias, ref["fc.bias"])

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(UsageError, match="is not a readable PyTorch checkpoint"):
        weights_mod.load_weights(tm.create("resnet18", 1, 10), bad)
    with pytest.raises(UsageError, match=r"does not fit model .*missing"):
        weights_mod.load_weights(cifar_nets.CifarResNet(1, 10, depth=8), ours)


def test_pretrained_from_weights(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "cache"))
    spec = resolve(RunSpec(model="timm/resnet18"))
    source = get_benchmark("digits").source(spec)
    src = tm.create("resnet18", 1, 10)
    with torch.no_grad():
        src.head.weight.mul_(3)
    torch.save(src.state_dict(), tmp_path / "fits.pt")
    # A classifier that fits the source's classes: the file is the source model, nothing is trained or cached.
    got = pretrain.pretrained("timm/resnet18", source, torch.device("cpu"), str(tmp_path / "fits.pt"))
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), src.state_dict().values()))
    assert not (tmp_path / "cache").exists()
    # Another number of classes: the backbone is kept, only the classifier is fit on the source split (cached).
    other = tm.create("resnet18", 1, 1000)
    torch.save(other.state_dict(), tmp_path / "imnet.pt")
    got = pretrain.pretrained("timm/resnet18", source, torch.device("cpu"), str(tmp_path / "imnet.pt"))
    assert torch.equal(got.net.layer2[0].conv1.weight, other.net.layer2[0].conv1.weight)
    assert got.head.out_features == 10
    from ftbench.train.loop import accuracy

    assert accuracy(got, source.test) > 40.0  # fit on the source split: far above chance (10%)
    cached = list((tmp_path / "cache" / "models").glob("*.pt"))
    assert [p.name[:14] for p in cached] == ["timm_resnet18-"]
    calls: list[int] = []
    monkeypatch.setattr(pretrain, "fit_head", lambda *a: calls.append(1))
    again = pretrain.pretrained("timm/resnet18", source, torch.device("cpu"), str(tmp_path / "imnet.pt"))
    assert calls == [] and torch.equal(again.head.weight, got.head.weight)


def test_hub_weights_offline_say_what_to_do(cli, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, as with no network
    assert get_model_entry("timm/resnet18").weights is not None and get_model_entry("resnet26-cifar").weights is None
    r = cli("run", "--model", "timm/resnet18", "--steps", "1")
    assert r.code == 2
    err = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "no network: use --weights PATH" in err[0]


def test_weights_in_run_ids(tmp_path: Path) -> None:
    base = resolve(RunSpec())
    # Models trained from scratch anyway: `scratch` is their default and asks for the same run.
    assert resolve(RunSpec(weights="scratch")).run_id == base.run_id and resolve(RunSpec(weights="scratch")).weights is None
    hub = resolve(RunSpec(model="timm/resnet18"))
    scratch = resolve(RunSpec(model="timm/resnet18", weights="scratch"))
    assert hub.weights is None and scratch.weights == "scratch" and hub.run_id != scratch.run_id
    f = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1)}, f)  # read when resolved: a file that is no state dict is refused then
    filed = resolve(RunSpec(model="timm/resnet18", weights=str(f)))
    assert filed.weights == str(f.resolve()) and filed.run_id not in (hub.run_id, scratch.run_id)
    assert resolve(dataclasses.replace(filed)).run_id == filed.run_id
    with pytest.raises(UsageError, match="weights file 'nope.pt' not found"):
        resolve(RunSpec(weights="nope.pt"))
    suites = tmp_path / "suites.toml"
    suites.write_text('[suites.s]\nmodel = "timm/resnet18"\nweights = ["scratch", "%s"]\nblock = [1, 4]\n' % f)
    specs = expand_suite("s", suites)
    assert {(s.weights, s.blocks) for s in specs} == {(w, (b,)) for w in ("scratch", str(f.resolve())) for b in ("1", "4")}


def test_cli_run_timm_resnet_on_digits(cli, tmp_path: Path) -> None:
    src = tm.create("resnet18", 1, 10)
    ckpt = tmp_path / "resnet18.pt"
    torch.save(src.state_dict(), ckpt)
    out = tmp_path / "res"
    r = cli("run", "--model", "timm/resnet18", "--checkpoint", ckpt, "--method", "surgical", "--block", "2",
            "--steps", "2", "--out", out)
    assert r.code == 0, r.err
    row = pd.read_parquet(next(out.glob("*.parquet"))).iloc[0]
    assert row["model"] == "timm/resnet18" and row["weights"] == str(ckpt.resolve()) and row["status"] == "ok"
    assert row["n_trainable"] == 525_568 and row["n_params"] == 11_175_370  # layer2 of a 1-channel, 10-class resnet18
    # Only block 2 changed; every other parameter is bit-identical to the checkpoint.
    from ftbench.execution.runner import fine_tune

    spec = resolve(RunSpec(model="timm/resnet18", weights=str(ckpt), blocks=("2",), steps=2))
    tuned = fine_tune(spec, "cpu").model
    blocks = _names_by_block(tuned)
    before = src.state_dict()
    for name, p in tuned.named_parameters():
        assert torch.equal(p.detach(), before[name]) == (name not in blocks["2"]), name
    r = cli("run", "--model", "timm/resnet18", "--weights", tmp_path / "missing.pt")
    assert r.code == 2 and "weights file" in r.err and "not found" in r.err
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(ckpt.read_bytes()[:4096])  # a truncated download
    r = cli("run", "--model", "timm/resnet18", "--weights", bad, "--steps", "1", "--out", out)
    assert r.code == 2 and r.err.count("\n") == 1 and "is not a readable PyTorch checkpoint" in r.err


def test_list_models_shows_blocks_with_parameter_counts(cli) -> None:
    r = cli("list", "models")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("wrn-28-10:"))
    assert "blocks: 1, 2, 3, last" in lines[at]
    assert "1 1,641,104, 2 6,968,000, 3 27,863,680, last 6,410; total 36,479,194" in lines[at + 1]
    assert "total 25,557,032; weights: hub" in r.out and "total 77,754; weights: trained on the source split" in r.out
    assert any(line.startswith("timm/NAME") for line in lines)


def test_an_unreachable_hub_is_known_before_loading(cli, monkeypatch, tmp_path: Path) -> None:
    """No network: one connection attempt (here refused at once by a closed local port), then the
    local cache only, without huggingface_hub's retries; the error says why."""
    from ftbench.models.timm_models import hub_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens there
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty local cache
    assert hub_offline(timeout=2.0).startswith("no connection to 127.0.0.1:9 (")
    r = cli("run", "--model", "timm/resnet18", "--steps", "1", "--out", tmp_path / "out")
    assert r.code == 2
    err = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "(no connection to 127.0.0.1:9 (" in err[0] and "--weights scratch" in err[0]
    assert "from the local hub cache (offline)" in r.err  # the note says it did not try the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline() == "HF_HUB_OFFLINE is set"
