"""What a model is to ftbench: a backbone whose parameters are partitioned into named blocks.

Block names are what ``--block`` takes: ``"1"``, ``"2"``, … in input-to-output order, and ``"last"``
for the classifier layer, as the surgical fine-tuning paper numbers them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ftbench.data.preprocess import InputTransform
from ftbench.registry import Registry


class BlockModel(nn.Module):
    """A classifier that names its blocks.

    Subclasses implement :meth:`blocks` (block name -> modules, in input-to-output order; together
    they cover every parameter exactly once), :meth:`features` (input -> penultimate features) and
    expose the classifier as ``self.head`` (the ``"last"`` block).
    """

    head: nn.Linear

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        raise NotImplementedError

    def features(self, x):
        raise NotImplementedError

    def forward(self, x):
        return self.head(self.features(x))

    def residual_units(self) -> list[tuple[str, str]]:
        """The residual units SpotTune may route, input-to-output order: ``(module path, block name)``.

        A unit maps its input to an output of the same kind (``x -> x + f(x)``-style), so a frozen
        and a fine-tuned copy of it can be mixed per input. The path is relative to the model
        (for ``get_submodule``/``set_submodule``). Models without residual units return ``[]``.
        """
        return []

    # Optional: cutting the forward pass at a block boundary, for the frozen-prefix fast path
    # (ftbench/train/prefix.py). A model that overrides both, for every block name but the first,
    # gets the fast path; ``forward_from(b, forward_to(b, x))`` must run exactly ``forward(x)``'s ops.
    def forward_to(self, block: str, x):
        """Input -> the activations entering ``block`` (the output of every block before it)."""
        raise NotImplementedError

    def forward_from(self, block: str, h):
        """The activations entering ``block`` -> logits (runs ``block`` and every block after it)."""
        raise NotImplementedError

    def block_names(self) -> list[str]:
        return list(self.blocks())

    def block_parameters(self, name: str) -> list[nn.Parameter]:
        return [p for m in self.blocks()[name] for p in m.parameters()]


class ParamView(nn.Module):
    """Parameters held directly by a module, seen as one module for :meth:`BlockModel.blocks`.

    Built afresh on each ``blocks()`` call and never registered as a submodule, so the parameters stay their
    owner's: one ``state_dict`` key each, counted once (timm ViTs' and CLIP towers' embeddings).
    """

    def __init__(self, owner: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        for n in names:
            self.register_parameter(n.replace(".", "_"), getattr(owner, n))


class PiecewiseForward:
    """``forward_to``/``forward_from`` from a list of the forward pass's pieces, one per block.

    A :class:`BlockModel` subclass that lists its forward pass as ``_pieces()`` — ``(block name,
    function)`` pairs in order, together running exactly ``forward(x)``'s ops — inherits this
    mixin (before ``BlockModel``) and so gets the frozen-prefix fast path.
    """

    def _pieces(self) -> list[tuple[str, Callable]]:
        raise NotImplementedError

    def forward_to(self, block: str, x):
        for name, piece in self._pieces():
            if name == block:
                return x
            x = piece(x)
        raise KeyError(block)

    def forward_from(self, block: str, h):
        pieces = self._pieces()
        start = [name for name, _ in pieces].index(block)
        for _, piece in pieces[start:]:
            h = piece(h)
        return h


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it and the names of its blocks (known before building)."""

    build: Callable[[int, int], BlockModel]  # (in_channels, num_classes) -> model
    block_names: tuple[str, ...]
    help: str
    # Its own pretrained weights (timm's, from the hub), if any: (in_channels, num_classes) -> (model
    # with them, their identity, whether its classifier came with them). None: trained on the source
    # split (ftbench/train/pretrain.py).
    weights: Callable[[int, int], tuple[BlockModel, str, bool]] | None = None
    native: tuple[int, int] = (1, 10)  # (in_channels, num_classes) it is made for; `ftbench list models` counts
    # It has a text tower and so a zero-shot head for a task's class prompts (CLIP: ftbench/models/clip.py).
    zero_shot: bool = False
    recipe: dict[str, Any] | None = None  # keys of the source split's pretraining recipe this model overrides
    # The input transform its pretraining defines (open_clip's preprocess config, timm's pretrained_cfg:
    # ftbench/data/preprocess.py), applied to a benchmark's images where a run starts from those
    # weights (applied_transform); None: the benchmark's own transform.
    transform: InputTransform | None = None


def applied_transform(entry: ModelEntry, weights: str | None, bench: Any = None) -> InputTransform | None:
    """The input transform a run of ``entry`` with resolved ``weights`` on benchmark ``bench`` gives its
    images: the entry's, where the run starts from the weights it describes — a CLIP tower with its hub
    weights or an open_clip state dict of them (``--weights FILE``), a timm model with its hub weights —
    else None (the benchmark's own: ``--weights scratch``, or a timm state dict of unknown pretraining).

    A CLIP model's transform applies on every benchmark (the CLIP papers feed CLIP's preprocessing to
    every dataset, WILDS and CIFAR included). A timm model's applies only where ``bench.timm_transform``
    says the benchmark's images are ImageNet-style photographs (ImageNet, its OOD sets, BREEDS); on WILDS
    and CIFAR the benchmark's own transform is the published protocol for ImageNet-pretrained networks
    (WILDS' 448 px iWildCam, 96 px Camelyon17 patches, 224 px FMoW; CIFAR upsampled whole, never
    centre-cropped), so it stays."""
    if entry.transform is None or weights == "scratch" or (weights is not None and not entry.zero_shot):
        return None
    if not entry.zero_shot and not getattr(bench, "timm_transform", False):
        return None
    return entry.transform


def set_input_stats(model: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
    """The benchmark normalises images with ``mean``/``std``: keep them for :func:`model_input`, and the
    per-channel affine map to the model transform's statistics, x' = (x·std + mean − m) / s, as the
    non-persistent buffers ``in_scale``/``in_shift`` (None: the same statistics, no transform, either
    missing, or other channel counts: a grey benchmark on a tower adapted to one channel)."""
    t = getattr(model, "input_transform", None)
    model.input_stats = None if mean is None or std is None else (tuple(mean), tuple(std))
    model.in_scale = model.in_shift = None
    if t is None or mean is None or std is None or len(mean) != len(t.mean):
        return
    import torch

    m, s = torch.tensor(t.mean, dtype=torch.float32), torch.tensor(t.std, dtype=torch.float32)
    bm, bs = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    if torch.equal(bm, m) and torch.equal(bs, s):
        return
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.in_scale = (bs / s).view(1, -1, 1, 1).to(dev)
    model.in_shift = ((bm - m) / s).view(1, -1, 1, 1).to(dev)


def model_input(model: nn.Module, x):
    """A benchmark's batch ``x`` as ``model.input_transform`` gives it to the model (ftbench/data/preprocess.py
    :func:`~ftbench.data.preprocess.adapt`); ``x`` itself when the model has no transform."""
    t = getattr(model, "input_transform", None)
    if t is None:
        return x
    from ftbench.data.preprocess import adapt

    mean, std = model.input_stats if getattr(model, "input_stats", None) is not None else (None, None)
    return adapt(x, t, mean, std, model.in_scale, model.in_shift)


# The module of ftbench.models that registers each built-in model, so that a run imports only its
# own (a digits-resnet run needs neither timm nor torchvision); checked by tests/test_models.py.
BUILTIN_MODULE = {
    "digits-resnet": "small", "digits-vit": "vit", "resnet26-cifar": "cifar", "wrn-28-10": "cifar",
    "resnet50": "timm_models", "vit-b16": "timm_models", "convnext-tiny": "timm_models",
    "digits-clip": "clip", "clip-vit-b16": "clip", "clip-vit-b32": "clip", "clip-vit-l14": "clip", "clip-rn50": "clip",
}
MODELS: Registry[ModelEntry] = Registry("model", "ftbench.models", BUILTIN_MODULE)
BUILD_SEED = 0  # models are built under a fixed seed, so a build does not depend on the global RNG


def register_builtin_models() -> None:
    """Import every module that registers built-in models (for listings of all of them)."""
    MODELS.import_builtins()


def get_model_entry(name: str) -> ModelEntry:
    """The model registered as ``name``, or any timm model as ``timm/NAME`` (UsageError listing names)."""
    MODELS.import_builtin(name)
    if name in MODELS:
        return MODELS.get(name)
    register_builtin_models()
    return MODELS.lookup(name)  # any timm model as timm/NAME (a family timm_models adds), or the error naming all


def block_parameter_counts(entry: ModelEntry) -> dict[str, int]:
    """Parameters per block of ``entry`` for its native input channels and classes (built on the meta device)."""
    import torch

    with torch.device("meta"):
        model = entry.build(*entry.native)
    return {b: sum(p.numel() for p in model.block_parameters(b)) for b in model.block_names()}


# ftbench's limit of a model's size (docs/cli.md#limits): 4.7x the papers' largest, CLIP ViT-L/14 (428 M
# parameters with its text tower; WiSE-FT, FLYP, AutoFT), so a typo in a timm setting (embed_dim=99999999)
# is refused on the meta device instead of allocating its weights.
MAX_MODEL_PARAMETERS = 2_000_000_000

# What a forward pass says when an image is too small for a model, or of a size it was not built for.
_SIZE_WORDS = ("size", "Kernel", "kernel", "Input height", "Input width", "divisible", "shape", "patch")


def check_input_fits(name: str, channels: int, size: tuple[int, int], benchmark: str) -> None:
    """One ``error:`` line, before any data is trained on, when model ``name`` cannot take the
    benchmark's ``channels``×H×W images: a forward pass on the meta device (shapes only, no
    arithmetic, no weights) finds it in well under a second. Errors that are not about sizes (an
    operation the meta device lacks) are left to the real run."""
    import torch

    from ftbench.errors import UsageError

    entry = get_model_entry(name)
    h, w = size
    params = 0
    try:
        with torch.device("meta"):
            net = entry.build(channels, 2).eval()
            params = sum(p.numel() for p in net.parameters())
            if params <= MAX_MODEL_PARAMETERS:
                net(torch.empty(2, channels, h, w))
    except (RuntimeError, AssertionError, ValueError, TypeError) as e:
        reason = " ".join(str(e).split())
        if isinstance(e, ValueError | TypeError) and not any(word in reason for word in _SIZE_WORDS) and ":" in name:
            # a value given after ':' that the model takes when built and refuses when run
            raise UsageError(f"model {name!r} cannot run with the options given after ':' "
                             f"({type(e).__name__}: {reason[:160]})") from None
        if not any(word in reason for word in _SIZE_WORDS):
            return
        base = name.split(":")[0]
        if entry.zero_shot:
            raise UsageError(f"model {name!r} cannot take the {benchmark} benchmark's {channels}x{h}x{w} images "
                             f"({reason[:160]}); its image tower is built for the images it was pretrained on; on the "
                             "embedded benchmark use digits-clip") from None
        vit = any(k in base for k in ("vit", "deit", "eva", "beit", "swin", "patch")) or "patch" in reason.lower()
        if vit:
            patch = h // 4 if h == w and h % 4 == 0 and h >= 8 else 1
            hint = (f"build the ViT for this size: {base}:img_size={h},patch_size={patch} (any patch_size that "
                    f"divides {h}), or {base}:dynamic_img_size=True,patch_size={patch}")
        else:
            hint = ("its downsampling leaves too few pixels of an image this small; use a model made for small "
                    "images (digits-resnet, resnet26-cifar, timm/resnet18) or a benchmark with larger images")
        raise UsageError(f"model {name!r} cannot take the {benchmark} benchmark's {channels}x{h}x{w} images ({reason[:160]}); "
                         f"{hint}") from None
    if params > MAX_MODEL_PARAMETERS:
        raise UsageError(f"model {name!r} has {params:,} parameters, more than ftbench's limit of "
                         f"{MAX_MODEL_PARAMETERS:,} (docs/cli.md#limits); check its key=value settings")
