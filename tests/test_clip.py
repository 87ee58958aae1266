"""CLIP through open_clip (ftbench/models/clip.py, ftbench/methods/flyp.py), on tiny random configs
(no download): block partitions, the text tower's place, the zero-shot head against open_clip's own
zero-shot classifier, ``--weights PATH`` with a saved open_clip model, the hub error offline, and
the methods of the ID→OOD protocol on ``digits-clip`` landing as rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from ftbench.data.prompts import DIGITS, Prompts  # noqa: E402
from ftbench.errors import UsageError  # noqa: E402
from ftbench.models.clip import DIGITS_CLIP, ClipClassifier, from_open_clip  # noqa: E402
from ftbench.spec import RunSpec  # noqa: E402

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}


def _tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    vision = ({"layers": 6, "width": 32, "patch_size": 4, "image_size": 16, "head_width": 16} if kind == "vit"
              else {"layers": [1, 1, 1, 1], "width": 8, "image_size": 32, "head_width": 8})
    return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=TEXT).eval()


@pytest.mark.parametrize("kind, names", [("vit", ["1", "2", "3", "last"]), ("rn", ["1", "2", "3", "4", "last"])])
def test_every_image_parameter_is_in_exactly_one_block(kind: str, names: list[str]) -> None:
    clip = _tiny(kind)
    v = clip.visual
    model = from_open_clip(clip, 3, 5)
    assert model.block_names() == names
    seen = [id(p) for b in model.block_names() for p in model.block_parameters(b)]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.parameters()}
    assert model.block_parameters("last") == list(model.head.parameters())
    # The text tower is in no block and not among the classifier's parameters.
    assert not {id(p) for p in model.text_parameters()} & set(seen)
    if kind == "vit":  # a third of the 6 transformer blocks each; embeddings first, final norm and proj last
        one = {id(p) for p in model.block_parameters("1")}
        three = {id(p) for p in model.block_parameters("3")}
        assert id(v.class_embedding) in one and id(v.positional_embedding) in one
        assert {id(p) for p in v.transformer.resblocks[1].parameters()} <= one
        assert {id(p) for p in v.transformer.resblocks[2].parameters()} <= {id(p) for p in model.block_parameters("2")}
        assert id(v.proj) in three and {id(p) for p in v.ln_post.parameters()} <= three


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_the_zero_shot_head_gives_open_clips_zero_shot_logits(kind: str) -> None:
    """Logits of the zero-shot classifier = logit_scale * normalise(encode_image) @ open_clip's
    build_zero_shot_classifier(model, tokenizer, classes, OpenAI's ImageNet templates)."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    clip = _tiny(kind)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")  # the bundled BPE vocabulary: no download
    classes = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
    size = 16 if kind == "vit" else 32
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = clip.logit_scale.exp() * F.normalize(clip.encode_image(x), dim=-1) @ build_zero_shot_classifier(
            clip, tokenizer, classes, OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=5, device="cpu")
        model = from_open_clip(clip, 3, 2, "ViT-B-16")
        model.set_zero_shot_head(Prompts(tuple(classes), tuple(OPENAI_IMAGENET_TEMPLATES)))
        ours = model.eval()(x)
    assert ours.shape == (4, len(classes))
    assert float(model.head.bias.detach().abs().max()) == 0.0
    # The same float32 operations but for the class batching (all classes in one text batch here, 5
    # there, which only splits the text encoder's batch) and one matrix product associated
    # differently: rounding of a few 2^-24 relative on logits of magnitude <= logit_scale (14.3 at
    # initialisation).
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(clip.logit_scale.exp().detach()))


def test_the_text_tower_moves_and_is_saved_with_the_model() -> None:
    from ftbench.models.base import get_model_entry

    entry = get_model_entry("digits-clip")
    a, b = entry.build(1, 10), entry.build(1, 10)
    with torch.no_grad():
        for p in a.text_parameters():
            p.add_(0.5)
    sd = a.state_dict()
    text_keys = [k for k in sd if k.startswith("text.")]
    assert "text.token_embedding.weight" in text_keys and "text.logit_scale" in text_keys
    assert b.load_state_dict(sd) is not None
    assert all(torch.equal(p, q) for p, q in zip(a.text_parameters(), b.text_parameters()))
    b = b.to(torch.float64)
    assert {p.dtype for p in b.text_parameters()} == {torch.float64}


def _save_tiny_open_clip(path: Path) -> torch.nn.Module:
    torch.manual_seed(3)
    clip = open_clip.CLIP(**DIGITS_CLIP)  # an open_clip model of digits-clip's architecture, RGB input
    torch.save(clip.state_dict(), path)
    return clip


def test_weights_file_of_an_open_clip_model_loads_both_towers(tmp_path: Path) -> None:
    """An open_clip state dict (``visual.*`` and the text keys at the top) loads into digits-clip: the
    image tower as saved, its RGB patch filters summed for grey digits; the text tower as saved."""
    from ftbench.models.base import get_model_entry
    from ftbench.models.weights import load_weights

    clip = _save_tiny_open_clip(tmp_path / "clip.pt")
    model = get_model_entry("digits-clip").build(1, 10)
    assert load_weights(model, tmp_path / "clip.pt", "digits-clip") is False  # no classifier in the file
    sd = clip.state_dict()
    torch.testing.assert_close(model.visual.conv1.weight, sd["visual.conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.visual.transformer.resblocks[2].mlp.c_fc.weight,
                       sd["visual.transformer.resblocks.2.mlp.c_fc.weight"])
    assert torch.equal(model.text.token_embedding.weight, sd["token_embedding.weight"])
    assert torch.equal(model.text.logit_scale, sd["logit_scale"])
    tokens = model.tokenize(DIGITS.captions(3))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), F.normalize(clip.encode_text(tokens), dim=-1))


def test_hub_weights_offline_are_one_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from ftbench.models.base import get_model_entry

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-ftbench-hf-home")
    with pytest.raises(UsageError) as e:
        get_model_entry("clip-vit-b16").weights(3, 10)
    msg = str(e.value)
    assert "\n" not in msg and "--weights PATH" in msg and "ViT-B-16" in msg and "HF_HUB_OFFLINE" in msg


def test_hub_and_file_weights_build_the_same_quick_gelu_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenAI's tags were trained with QuickGELU. open_clip >= 2.29 builds its built-in config with
    nn.GELU for them and only warns, so the hub path must ask for QuickGELU as the ``--weights`` path
    does: the same weights served through open_clip's own download hook and given as a file build
    the same activations and give the same image and text features (no network: the hook is patched)."""
    from open_clip import factory, pretrained
    from open_clip.transformer import QuickGELU

    from ftbench.models.clip import _hub_weights, build
    from ftbench.models.weights import load_weights

    arch, tag = "FTB-Tiny-ViT", "openai"
    cfg = {"embed_dim": 16, "vision_cfg": {"layers": 2, "width": 32, "patch_size": 4, "image_size": 16,
                                           "head_width": 16}, "text_cfg": TEXT}
    monkeypatch.setitem(factory._MODEL_CONFIGS, arch, cfg)
    monkeypatch.setitem(pretrained._PRETRAINED, arch, {tag: {"url": "", "hf_hub": "", "quick_gelu": True}})
    torch.manual_seed(5)
    trained = open_clip.CLIP(**cfg, quick_gelu=True).eval()  # as OpenAI's were trained
    path = tmp_path / "openai.pt"
    torch.save(trained.state_dict(), path)
    monkeypatch.setattr(factory, "download_pretrained", lambda *a, **k: str(path))

    hub, source, _ = _hub_weights("tiny", arch, tag)(3, 10)
    assert source == f"hub:open_clip:{arch}.{tag}"
    given = build(arch, 3, 10, tag=tag)
    load_weights(given, path, "tiny")

    def activations(m: torch.nn.Module) -> set[str]:
        return {type(x).__name__ for x in m.modules() if isinstance(x, (torch.nn.GELU, QuickGELU))}

    assert activations(hub.visual) == activations(given.visual) == {"QuickGELU"}
    assert activations(hub.text) == activations(given.text) == {"QuickGELU"}
    x = torch.randn(2, 3, 16, 16)
    tokens = hub.tokenize(["a photo of a cat", "a photo of a dog"])
    with torch.no_grad():
        assert torch.equal(hub.eval().visual(x), given.eval().visual(x))
        assert torch.equal(hub.visual(x), trained.visual(x))
        assert torch.equal(hub.encode_text(tokens), given.encode_text(tokens))


@pytest.mark.parametrize("method, extra", [("zero-shot", ()), ("flyp", ()),
                                           ("autoft", (("terms", "ce,flyp"),))])
def test_methods_of_the_text_tower_refuse_models_without_one(method: str, extra: tuple) -> None:
    from ftbench.plan.resolve import resolve

    with pytest.raises(UsageError, match="needs a model with a text tower.*digits-clip"):
        resolve(RunSpec(model="digits-resnet", method=method, protocol="id-ood", options=extra))


SPEC = RunSpec(benchmark="digits", model="digits-clip", protocol="id-ood", steps=6, batch_size=32, method="full")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.pt"
    _save_tiny_open_clip(path)
    return str(path)


def _accs(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if k.endswith("_acc")}


def test_zero_shot_trains_nothing_and_its_head_is_the_text_towers(weights: str) -> None:
    from ftbench.execution.runner import fine_tune

    before = torch.load(weights, weights_only=True)
    tr = fine_tune(dataclasses.replace(SPEC, method="zero-shot", weights=weights), "cpu")
    m = tr.model
    assert tr.ctx.fits == [] and tr.ctx.metrics["head_init"] == "zero-shot"
    assert torch.equal(m.text.token_embedding.weight, before["token_embedding.weight"])
    with torch.no_grad():
        expected = m.logit_scale() * m.class_embeddings(DIGITS)
    assert torch.equal(m.head.weight, expected)


def test_flyp_trains_both_towers_and_rebuilds_the_head(weights: str) -> None:
    from ftbench.execution.runner import fine_tune

    before = torch.load(weights, weights_only=True)
    tr = fine_tune(dataclasses.replace(SPEC, method="flyp", weights=weights), "cpu")
    m = tr.model
    assert tr.ctx.fits[0].steps == 6
    assert not torch.equal(m.text.token_embedding.weight, before["token_embedding.weight"])
    assert not torch.equal(m.text.transformer.resblocks[0].attn.in_proj_weight,
                           before["transformer.resblocks.0.attn.in_proj_weight"])
    assert not torch.equal(m.visual.transformer.resblocks[0].attn.in_proj_weight,
                           before["visual.transformer.resblocks.0.attn.in_proj_weight"])
    assert float(m.text.logit_scale) != float(before["logit_scale"])
    with torch.no_grad():  # the head: the fine-tuned text tower's embeddings of the class prompts
        torch.testing.assert_close(m.head.weight, m.logit_scale() * m.class_embeddings(DIGITS))
    assert not any(p.requires_grad for p in m.text_parameters())
    assert tr.ctx.metrics["flyp_text_params"] == sum(p.numel() for p in m.text_parameters())


def test_autoft_with_the_flyp_term_trains_the_text_tower(weights: str) -> None:
    from ftbench.execution.runner import fine_tune

    before = torch.load(weights, weights_only=True)
    spec = dataclasses.replace(SPEC, method="autoft", weights=weights,
                               options=(("inner_steps", 2), ("terms", "ce,flyp"), ("trials", 2)))
    tr = fine_tune(spec, "cpu")
    assert "autoft_w_flyp" in tr.ctx.metrics and tr.ctx.metrics["autoft_w_flyp"] > 0
    assert not torch.equal(tr.model.text.token_embedding.weight, before["token_embedding.weight"])
    assert tr.ctx.metrics["head_init"] == "zero-shot"
    # Without the term the text tower stays as loaded (only the image classifier trains).
    spec = dataclasses.replace(spec, options=(("inner_steps", 2), ("terms", "ce"), ("trials", 2)))
    tr = fine_tune(spec, "cpu")
    assert "autoft_w_flyp" not in tr.ctx.metrics
    assert torch.equal(tr.model.text.token_embedding.weight, before["token_embedding.weight"])


def test_wise_ft_interpolates_from_the_zero_shot_model(weights: str) -> None:
    from ftbench.execution.runner import execute

    rows = execute(dataclasses.replace(SPEC, method="wise-ft", weights=weights), "cpu")
    zero = execute(dataclasses.replace(SPEC, method="zero-shot", weights=weights), "cpu")[-1]
    assert rows[0]["alpha"] == 0.0 and _accs(rows[0]) == _accs(zero)
    assert rows[-1]["head_init"] == "zero-shot"


def test_head_init_chooses_how_a_method_that_trains_the_classifier_starts(weights: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``--head-init zero-shot`` makes full fine-tuning start from the zero-shot head (WiSE-FT's, FLYP's and
    AutoFT's "standard fine-tuning"); by default it starts fresh (LP-FT's baseline). Asking for a
    method's own default gives the same run id as not asking."""
    from ftbench.plan.resolve import resolve
    from ftbench.train import context
    from ftbench.execution.runner import fine_tune

    seen: list[torch.Tensor] = []
    real = context.TrainContext.fit

    def fit(self, params, **kw):  # noqa: ANN001, ANN202
        seen.append(self.model.head.weight.detach().clone())
        return real(self, params, **kw)

    monkeypatch.setattr(context.TrainContext, "fit", fit)
    zero_shot = fine_tune(dataclasses.replace(SPEC, method="zero-shot", weights=weights), "cpu").model.head.weight
    tr = fine_tune(dataclasses.replace(SPEC, method="full", weights=weights, head_init="zero-shot"), "cpu")
    assert torch.equal(seen[-1], zero_shot) and tr.ctx.metrics["head_init"] == "zero-shot"
    assert tr.spec.head_init == "zero-shot"
    tr = fine_tune(dataclasses.replace(SPEC, method="full", weights=weights), "cpu")
    assert not torch.equal(seen[-1], zero_shot) and "head_init" not in tr.ctx.metrics
    autoft = dataclasses.replace(SPEC, method="autoft", weights=weights)
    assert resolve(dataclasses.replace(autoft, head_init="zero-shot")).run_id == resolve(autoft).run_id
    assert resolve(dataclasses.replace(autoft, head_init="fresh")).head_init == "fresh"
    full = dataclasses.replace(SPEC, weights=weights)
    assert resolve(dataclasses.replace(full, head_init="fresh")).run_id == resolve(full).run_id


def test_the_id_ood_methods_land_as_rows(cli, tmp_path: Path, weights: str) -> None:
    """The issue's list: zero-shot, linear-probe, full, lp-ft, wise-ft, flyp and autoft with the FLYP term,
    each a run of the CLI on digits-clip with a saved open_clip model, read back by report."""
    out = tmp_path / "res"
    runs = [("zero-shot",), ("linear-probe", "--set", "c_steps=3"), ("full",), ("lp-ft", "--set", "lp_c_steps=3"),
            ("wise-ft", "--set", "alphas=0,0.5,1"), ("flyp",),
            ("autoft", "--set", "terms=ce,flyp", "--set", "trials=2", "--set", "inner_steps=2")]
    for method, *rest in runs:
        loop = () if method in ("zero-shot", "linear-probe") else ("--steps", "4", "--batch-size", "32")  # else refused
        r = cli("run", "--model", "digits-clip", "--weights", weights, "--protocol", "id-ood", "--method", method,
                *loop, "--out", out, *rest)
        assert r.code == 0, r.err
    from ftbench.results.store import read_results

    df, problems = read_results(out)
    assert not problems
    final = df[df["final"]]
    assert sorted(final["method"]) == sorted(m for m, *_ in runs)
    assert set(final["protocol"]) == {"id-ood"} and final["ood.style_acc"].notna().all()
    r = cli("report", out)
    assert r.code == 0 and "zero-shot" in r.out and "flyp" in r.out


def test_a_benchmark_s_normalisation_is_mapped_to_the_one_openai_s_towers_expect() -> None:
    """clip-* towers were pretrained on images normalised with OpenAI's statistics; a benchmark that
    normalises with ImageNet's gives the tower the same pixels after set_input_stats."""
    from ftbench.data.imagenet import MEAN, STD
    from ftbench.models.clip import OPENAI_MEAN, OPENAI_STD

    m = from_open_clip(_tiny("vit"), 3, 10, "ViT-B-16")  # a tower that expects OpenAI's statistics
    assert isinstance(m, ClipClassifier) and m.expects == (OPENAI_MEAN, OPENAI_STD)
    px = torch.rand(4, 3, 16, 16)
    as_openai = (px - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    as_imagenet = (px - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    m.eval()
    want = m.features(as_openai)
    m.set_input_stats(MEAN, STD)
    torch.testing.assert_close(m.features(as_imagenet), want, atol=1e-5, rtol=1e-5)
    assert "in_scale" not in m.state_dict()  # not a weight: never saved or interpolated
    m.set_input_stats(OPENAI_MEAN, OPENAI_STD)
    assert m.in_scale is None  # the tower's own statistics: nothing to map


def test_openai_towers_resize_other_image_sizes_to_their_own() -> None:
    """A clip-* tower (pretrained at one size) takes images of another size resized to its own; without
    a benchmark's statistics to undo (no set_input_stats) bicubically as they are (with them: as PIL
    resizes the uint8 pixels, tests/test_preprocess.py); digits-clip, built for 8 px digits, is left alone."""
    m = from_open_clip(_tiny("vit"), 3, 10, "ViT-B-16").eval()  # pretrained size 16
    small = torch.rand(2, 3, 8, 8)
    big = F.interpolate(small, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(m.features(small), m.features(big))
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)  # shrunk too
    d = from_open_clip(open_clip.CLIP(**DIGITS_CLIP), 1, 10, "digits-clip")
    assert d.expects is None
    with pytest.raises(RuntimeError):
        d(torch.rand(2, 1, 16, 16))  # no silent resize for a model trained on the benchmark's own images


def _flyp_on_a_tiny_resnet(options: tuple = ()) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """One FLYP run of 2 steps on a tiny open_clip ModifiedResNet (random 32 px images, digits' prompts):
    the image tower's BatchNorm buffers before, and the model after."""
    from ftbench.data.base import Split
    from ftbench.methods.flyp import Flyp
    from ftbench.protocols.base import Task
    from ftbench.plan.resolve import resolve
    from ftbench.train.context import TrainContext

    model = from_open_clip(_tiny("rn"), 3, 10, "digits-clip")
    g = torch.Generator().manual_seed(0)
    data = Split(torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 10)
    task = Task(protocol="id-ood", num_classes=10, train=data, val=data, search=None, id_test=data, test=data,
                scored=(), prompts=DIGITS)
    spec = resolve(dataclasses.replace(SPEC, method="flyp", steps=2, batch_size=8, options=options))
    bn = {k: v.clone() for k, v in model.visual.state_dict().items() if "running_" in k}
    assert bn, "the tower has BatchNorm"
    Flyp(spec).run(TrainContext(spec, model, task, torch.Generator().manual_seed(0)))
    return bn, model


def test_flyp_trains_batchnorm_as_the_releases_model_train() -> None:
    """locuslab/FLYP src/models/flyp_loss.py:57, 80: model.train() — a ResNet tower (clip-rn50) normalises
    with batch statistics and updates its running statistics; --set bn=frozen keeps them (and the run ids
    of flyp runs made before the option, which ran so)."""
    from ftbench.plan.resolve import resolve

    bn, model = _flyp_on_a_tiny_resnet()
    after = model.visual.state_dict()
    assert all(not torch.equal(after[k], v) for k, v in bn.items() if "running_mean" in k)
    assert int(after["bn1.num_batches_tracked"]) == 2
    bn, model = _flyp_on_a_tiny_resnet((("bn", "frozen"),))
    after = model.visual.state_dict()
    assert all(torch.equal(after[k], v) for k, v in bn.items())
    flyp = dataclasses.replace(SPEC, method="flyp", steps=None, batch_size=64)
    default, frozen = resolve(flyp), resolve(dataclasses.replace(flyp, options=(("bn", "frozen"),)))
    assert default.options_dict["bn"] == "train" and frozen.run_id == "ea9e60d2b363dfb1" != default.run_id  # digits id-ood data version 2


def test_features_raw_probes_encode_image_s_raw_output(weights: str) -> None:
    """``--set features=raw`` (LP-FT's clip_model.py): the probe is fitted on the image tower's raw
    output, not on unit vectors; the default stays unit-normalised, with the run id it had; the row
    says which (its options); and it is refused where it cannot mean that."""
    from ftbench.plan.resolve import resolve
    from ftbench.execution.runner import execute, fine_tune

    probe = dataclasses.replace(SPEC, method="linear-probe", weights=weights, options=(("c_steps", 2),))
    raw = dataclasses.replace(probe, options=(("c_steps", 2), ("features", "raw")))
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        unit = fine_tune(probe, "cpu").model.eval()
        norms = unit.features(x).norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones(4))
        m = fine_tune(raw, "cpu").model.eval()
        f = m.features(x)
        torch.testing.assert_close(f, m.visual(x))
        assert not torch.allclose(f.norm(dim=-1), torch.ones(4), atol=1e-3)
    assert resolve(dataclasses.replace(probe, options=(("c_steps", 2), ("features", "unit")))).run_id \
        == resolve(probe).run_id != resolve(raw).run_id
    assert dict(execute(raw, "cpu")[-1]["options"])["features"] == "raw"
    for bad in (dataclasses.replace(raw, protocol="few-shot"), dataclasses.replace(raw, model="digits-resnet"),
                dataclasses.replace(SPEC, method="full", weights=weights, head_init="zero-shot",
                                    options=(("features", "raw"),))):
        with pytest.raises(UsageError, match="features=raw"):
            resolve(bad)
