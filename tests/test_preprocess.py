"""A model's own input transform (ftbench/data/preprocess.py; issue 22 §2): PIL's resize on the device,
open_clip's and timm's evaluation transforms read without weights, a CLIP tower given CIFAR-sized
images as CLIP's preprocessing gives them, photographs resized and cropped by the model's transform
as they are decoded, the run id, and ``ftbench list models NAME``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ftbench.data.preprocess import InputTransform, model_transform, photo_transform, pil_resize

OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
CIFAR = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))


def _pil(img: torch.Tensor, size: tuple[int, int], how: int) -> torch.Tensor:
    """PIL's resize of a uint8 C×H×W tensor to ``size`` (H, W)."""
    out = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((size[1], size[0]), how)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("shape, size", [((32, 32), (224, 224)), ((500, 375), (298, 224)), ((96, 96), (224, 224))])
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_pil_resize_is_pil_s_resize(shape: tuple[int, int], size: tuple[int, int], mode: str) -> None:
    """Within one grey level of PIL (its coefficients are fixed-point; ours float32: an exact tie can
    round the other way), on random pixels, the hardest case for a cubic kernel's overshoot; torch's
    plain bicubic on floats (a = −0.75, no rounding between the passes) is not it."""
    img = torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    want = _pil(img, size, Image.BICUBIC if mode == "bicubic" else Image.BILINEAR).int()
    got = pil_resize(img, size, mode).int()
    assert got.shape == want.shape and int((got - want).abs().max()) <= 1
    if mode == "bicubic" and shape == (32, 32):
        plain = F.interpolate(img[None].float(), size=size, mode="bicubic", align_corners=False)[0]
        assert float((plain.round().clamp(0, 255) - want).abs().max()) > 10


def test_the_transforms_are_open_clip_s_and_timm_s_without_weights() -> None:
    """open_clip's preprocess config of OpenAI's weights and timm's pretrained_cfg, read offline."""
    from ftbench.models.base import get_model_entry

    clip = get_model_entry("clip-vit-b16").transform
    assert clip == InputTransform((224, 224), 1.0, "bicubic", *OPENAI, "center", clip.source)
    tv = get_model_entry("resnet50").transform  # resnet50.tv_in1k: 256 bilinear, crop 224
    assert (tv.size, tv.crop_pct, tv.interpolation, tv.mean) == ((224, 224), 0.875, "bilinear", (0.485, 0.456, 0.406))
    assert tv.scale_size(375, 500) == (256, 341)
    assert get_model_entry("timm/vit_tiny_patch16_224:img_size=32").transform.size == (32, 32)
    for name in ("digits-resnet", "digits-clip", "resnet26-cifar"):
        assert get_model_entry(name).transform is None


def _recording_tower(m: torch.nn.Module) -> list[torch.Tensor]:
    """Replace a ClipClassifier's image tower by one that records its input."""
    seen: list[torch.Tensor] = []

    class Tower(torch.nn.Module):
        image_size = m.visual.image_size

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x.flatten(1)[:, :8] + 1

    m.visual = Tower()
    return seen


def test_a_clip_tower_gets_cifar_sized_images_as_clip_s_preprocessing_makes_them() -> None:
    """A CIFAR batch (uint8 pixels normalised with CIFAR's statistics) reaches an OpenAI tower as
    CLIP's preprocessing makes it from the uint8 image: PIL bicubic (a = −0.5) to the tower's size,
    OpenAI's statistics. Bound: PIL's one grey level, / 255 / the smallest OpenAI std (0.2613)."""
    import open_clip

    from ftbench.models.clip import from_open_clip

    vision = {"layers": 2, "width": 32, "patch_size": 4, "image_size": 16, "head_width": 16}
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    m = from_open_clip(open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text), 3, 10, "ViT-B-16").eval()
    m.set_input_stats(*CIFAR)
    seen = _recording_tower(m)
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cm, cs = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR)
    om, os_ = (torch.tensor(v).view(1, 3, 1, 1) for v in OPENAI)
    with torch.no_grad():
        m.features((img.float() / 255 - cm) / cs)
    want = (torch.stack([_pil(i, (16, 16), Image.BICUBIC) for i in img]).float() / 255 - om) / os_
    bound = 1 / 255 / min(OPENAI[1]) + 1e-5
    assert seen[0].shape == want.shape and float((seen[0] - want).abs().max()) <= bound
    assert float((seen[0] - want).abs().mean()) < bound / 20  # almost every pixel exact


def _gradient_jpeg(path: Path, w: int, h: int) -> None:
    x = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 1))
    y = np.linspace(0, 255, h)[:, None, None] * np.ones((1, w, 1))
    Image.fromarray(np.concatenate([x, y, 255 - x], axis=2).astype(np.uint8)).save(path, quality=95)


def test_photographs_are_resized_by_the_models_transform_keeping_their_aspect(tmp_path: Path) -> None:
    """A benchmark's photographs (here an iWildCam-shaped 3:2 image, which WILDS' transform squashes)
    go through the run's model's transform instead: shorter side to 16 (bicubic, as PIL), centre
    crop — the aspect ratio kept — and through the benchmark's own outside a run that sets one."""
    from ftbench.data.stream import ImageFiles, decode
    from ftbench.data.wilds_data import WildsTransform

    _gradient_jpeg(tmp_path / "cam.jpg", 48, 32)
    own = WildsTransform("resize", 16)
    t = InputTransform((16, 16), 1.0, "bicubic", *OPENAI)
    with model_transform(t):
        files = ImageFiles([tmp_path / "cam.jpg"], photo_transform(own))
    assert files.transform is t and photo_transform(own) is own
    img = decode(tmp_path / "cam.jpg")
    want = _pil(img, (16, 24), Image.BICUBIC)[:, :, 4:20]  # 24 wide: the central 16
    got = files[0]
    assert got.shape == (3, 16, 16) and int((got.int() - want.int()).abs().max()) <= 1
    squashed = own(img)
    assert int((squashed.int() - want.int()).abs().max()) > 10


@pytest.fixture(scope="module")
def _imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_imagenet_data import make_root
    from test_ood_sets import make_imagenet_ood

    root = tmp_path_factory.mktemp("imagenet-preprocess")
    make_imagenet_ood(root, make_root(root))
    return root


@pytest.fixture
def imagenet_ood_data(_imagenet_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from ftbench.data import imagenet

    monkeypatch.setenv("FTBENCH_DATA", str(_imagenet_root))
    monkeypatch.setenv("FTBENCH_WORKERS", "0")
    monkeypatch.setattr(imagenet, "IMAGE_SIZE", 16)
    monkeypatch.setattr(imagenet, "RESIZE", 18)
    return _imagenet_root


def _fake_hub_entry(t: InputTransform):  # noqa: ANN202
    """A timm resnet18 whose 'hub weights' are its random initialisation and whose pretrained_cfg is ``t``."""
    from ftbench.models.base import ModelEntry
    from ftbench.models.timm_models import FAMILY_BLOCKS, create

    return ModelEntry(build=lambda cin, n: create("resnet18", cin, n), block_names=FAMILY_BLOCKS["resnet"],
                      help="test", weights=lambda cin, n: (create("resnet18", cin, n), "hub:test", False),
                      transform=t)


def test_a_run_from_hub_weights_takes_its_images_through_their_transform(imagenet_ood_data, monkeypatch) -> None:
    """On ImageNet (id-ood): a model with hub weights and a transform gets ImageNet's and the OOD sets'
    photographs through it (not the benchmark's 256/224-style resize), ImageNet-C's fixed crops
    through the benchmark's; the model resizes other sizes itself; the run id says so. Models
    without one (digits) keep their ids: their spec has no input_transform."""
    from ftbench.data.stream import resize_center_crop
    from ftbench.models.base import MODELS
    from ftbench.spec import RunSpec
    from ftbench.plan.resolve import resolve
    from ftbench.execution.runner import load

    t = InputTransform((16, 16), 1.0, "bicubic", *OPENAI, source="test")
    monkeypatch.setitem(MODELS._items, "test-hub", _fake_hub_entry(t))
    spec = resolve(RunSpec(benchmark="imagenet", protocol="id-ood", model="test-hub", method="linear-probe"))
    assert spec.input_transform == t.key()
    model, task = load(spec, torch.device("cpu"))
    assert model.input_transform is t and model.in_scale is not None  # ImageNet's statistics -> t's
    roles = {s.prefix: s.split for s in task.scored}
    for prefix in ("id", "ood.imagenet-v2", "ood.imagenet-r"):
        assert roles[prefix].images.transform is t, prefix
    assert task.train.images.transform is t
    assert isinstance(roles["ood_val"].images.transform, resize_center_crop)  # ImageNet-C: 16 px crops as they are
    with torch.no_grad():  # a batch of another size is resized by the model to t's 16 px
        assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 1000)
    for plain in (RunSpec(), RunSpec(model="digits-clip", protocol="id-ood", method="full")):
        assert resolve(plain).input_transform is None


def test_list_models_name_shows_the_input_transform(cli) -> None:
    r = cli("list", "models", "clip-vit-b16")
    assert r.code == 0, r.err
    assert "open_clip ViT-B-16 'openai' preprocess config" in r.out and "shorter side to 224 px (bicubic" in r.out
    assert "mean: 0.48145466, 0.4578275, 0.40821073" in r.out
    r = cli("list", "models", "timm/resnet50.tv_in1k")
    assert r.code == 0, r.err
    assert "timm resnet50.tv_in1k pretrained_cfg" in r.out and f"shorter side to {math.floor(224 / 0.875)} px" in r.out
    assert "crop_pct: 0.875" in r.out and "interpolation: bilinear" in r.out
    r = cli("list", "models", "digits-resnet")
    assert r.code == 0 and "input transform: none" in r.out


def test_a_timm_model_with_a_transform_resizes_in_every_forward_path() -> None:
    """The frozen-prefix fast path (forward_to/forward_from) runs the transform too: the same logits."""
    from ftbench.models.timm_models import create

    m = create("resnet18", 3, 10).eval()
    m.input_transform = InputTransform((16, 16), 0.875, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    m.set_input_stats(*CIFAR)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(m.forward_from("2", m.forward_to("2", x)), m(x))
        resized = m(x)
        m.input_transform = None
        assert m(x).shape == resized.shape and not torch.allclose(m(x), resized)  # 8 px as they are: other logits


@pytest.mark.parametrize("model, bench, applies", [
    ("resnet50", "imagenet", True), ("resnet50", "living17", True), ("resnet50", "imagenet-c", True),
    ("resnet50", "iwildcam", False), ("resnet50", "camelyon17", False), ("resnet50", "fmow", False),
    ("resnet50", "cifar10-c", False), ("vit-b16", "waterbirds", False),
    ("clip-vit-b16", "iwildcam", True), ("clip-vit-b16", "cifar10-c", True), ("clip-vit-b16", "imagenet", True),
])
def test_a_timm_model_s_transform_replaces_only_the_imagenet_benchmarks(model: str, bench: str, applies: bool) -> None:
    """A CLIP tower's preprocessing applies on every benchmark (the CLIP releases feed it everywhere); a
    timm model's pretrained_cfg only on ImageNet-style photographs: on WILDS and CIFAR the benchmark's
    transform is the published protocol for ImageNet-pretrained networks (iWildCam at 448 px, Camelyon17
    patches at 96 px, CIFAR upsampled whole, never centre-cropped)."""
    from ftbench.data.base import get_benchmark
    from ftbench.models.base import applied_transform, get_model_entry

    entry = get_model_entry(model)
    got = applied_transform(entry, None, get_benchmark(bench))
    assert (got is not None) == applies and (got is None or got == entry.transform)
    assert applied_transform(entry, "scratch", get_benchmark(bench)) is None
