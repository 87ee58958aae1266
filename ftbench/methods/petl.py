"""Parameter-efficient transfer learning that selects or low-rank-updates existing weights.

* ``bitfit`` — Ben Zaken et al. 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
  Transformer-based Masked Language-models": only the bias terms train.
* ``ln-tune`` — the "LayerNorm" baseline of Mai et al. 2024, "Lessons Learned from a Unifying
  Empirical Study of Parameter-Efficient Transfer Learning (PETL) in Visual Recognition": only the
  normalisation layers' affine weights and biases train.
* ``lora`` — Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models": a frozen linear
  layer ``W`` becomes ``W + (alpha/r)·B·A`` with trainable ``A`` (r×in) and ``B`` (out×r, zero at
  init), injected with the ``peft`` library.

**CLIP towers.** ``lora``, ``adapter`` and ``vpt`` attach to timm's ViT layout (``blocks.i.attn.qkv``,
``blocks.i.attn``/``mlp``, the blocks' token sequence). open_clip's ViT tower (``clip-vit-b16``, the
other ``clip-vit-*``, ``digits-clip``) has another: its attention is ``nn.MultiheadAttention``, which
reads ``in_proj_weight`` directly instead of calling a ``Linear`` (no layer for LoRA to wrap) and
returns a tuple (no output for an adapter to follow). So these three methods first rebuild such a
tower as a timm ``VisionTransformer`` with the same weights (:func:`attach_view`;
``ClipClassifier.use_timm_tower``, ftbench/models/clip.py): the model the PETL study's release
adapts is exactly that (experiment/build_model.py:114-124 builds ``vit_base_patch16_clip_224_petl``,
a timm VisionTransformer, from timm's conversion of OpenAI's weights), and one attachment code
serves timm ViTs and CLIP towers alike, instead of a second implementation of LoRA, adapters and
prompts inside ``nn.MultiheadAttention``. The rebuilt tower computes the same function (tested:
equal up to the rounding of a different summation order), its frozen weights are the same bits
under timm's names, and it keeps the block partition (same parameters per block) and the
parameter count. It is made at install time, on the run's own model only: the pretrained model, its
cache and every other method see open_clip's tower, so their numbers do not move; a resumed run
rebuilds it before loading its saved state (the method runs again from the start).

As in the PETL study's code (``TUNE_MODULES`` always holds ``head``), each method also trains the
classifier head (and with ``--set proj=train`` CLIP's image projection ``visual.proj``, which the release's
head holds: ``Sequential(proj, fc)``, experiment/build_model.py:122-124); every other parameter stays
bit-identical, and the frozen backbone runs in eval mode
(BatchNorm running statistics are kept). Each returns the true ``n_trainable`` (which overrides the
runner's per-block count: these methods train parts of blocks) and ``trainable_fraction`` =
``n_trainable / n_params``, both counted on the model as trained (LoRA's new matrices included).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ftbench.errors import UsageError
from ftbench.methods.base import METHODS, PROJ_OPTION, Method, Option
from ftbench.spec import RunSpec

if TYPE_CHECKING:
    from ftbench.train.context import TrainContext

# Normalisation layers whose affine parameters ``ln-tune`` trains (LayerNorm subclasses such as
# timm's LayerNorm2d included). BatchNorm counts too, so that on a CNN the method is norm-layer
# tuning rather than a head-only run (docs/methods.md#ln-tune).
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm)

# ``--set targets=...`` of lora -> the module-name suffixes (of nn.Linear layers) that get LoRA.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "qkv": ("attn.qkv",),
    "qkv,proj": ("attn.qkv", "attn.proj"),
    "mlp": ("mlp.fc1", "mlp.fc2"),
    "all-linear": (),  # every nn.Linear except the classifier head
}


def _head_ids(model: nn.Module) -> set[int]:
    head = getattr(model, "head", None)
    return {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()


def bias_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every parameter registered under the name ``bias`` (Linear, Conv, LayerNorm, BatchNorm …),
    the classifier head's excluded; ``(qualified name, parameter)`` in model order."""
    head = _head_ids(model)
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias" and id(p) not in head]


def norm_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The affine weights and biases of every normalisation layer (:data:`NORM_TYPES`)."""
    out = []
    for prefix, m in model.named_modules():
        if isinstance(m, NORM_TYPES):
            out += [(f"{prefix}.{n}", p) for n, p in m.named_parameters(recurse=False)]
    return out


def lora_target_names(model: nn.Module, targets: str) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers that ``targets`` (a :data:`LORA_TARGETS` key) selects.

    The classifier ``head`` is never a target (it trains in full anyway).
    """
    suffixes = LORA_TARGETS[targets]
    head = getattr(model, "head", None)
    names = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear) or m is head:
            continue
        if not suffixes or any(name == s or name.endswith("." + s) for s in suffixes):
            names.append(name)
    return names


def clip_projection(model: nn.Module) -> nn.Parameter | None:
    """CLIP's image projection ``visual.proj`` of ``model`` (a CLIP ViT classifier's, in either tower form),
    or None for a model without one (a CLIP ResNet, a timm ViT, a CNN)."""
    p = getattr(getattr(model, "visual", None), "proj", None)
    return p if isinstance(p, nn.Parameter) else None


def projection_problem(method: str, model_name: str) -> str:
    """The refusal of option ``proj=train`` of ``method`` on model ``model_name``, which has no projection."""
    return (f"option proj=train of method {method!r} trains CLIP's image projection visual.proj, which model "
            f"{model_name!r} does not have (a CLIP ViT has it: clip-vit-b16, digits-clip); use such a model or "
            "--set proj=frozen")


def check_projection(method: str, spec: RunSpec) -> None:
    """Refuse (one UsageError) ``proj=train`` on a model without CLIP's projection, before any run (the
    model built on the meta device; one that cannot be built so is checked when the run starts)."""
    if spec.options_dict.get("proj", PROJ_OPTION.default) != "train" or not spec.model:
        return
    model = meta_model(spec.model, 1)
    if model is not None and clip_projection(model) is None:
        raise UsageError(projection_problem(method, spec.model))


def trained_projection(method: str, spec: RunSpec, model: nn.Module) -> list[nn.Parameter]:
    """``[visual.proj]`` of ``model`` when ``spec`` has ``proj=train``, else ``[]`` (call after any change of
    the tower's form: the timm form holds its own copy of the projection)."""
    if spec.options_dict.get("proj", PROJ_OPTION.default) != "train":
        return []
    p = clip_projection(model)
    if p is None:
        raise UsageError(projection_problem(method, spec.model))
    return [p]


def attach_view(model: nn.Module) -> nn.Module:
    """``model`` in the layout ``lora``, ``adapter`` and ``vpt`` attach to: a CLIP classifier's open_clip
    ViT tower is replaced, in place, by its timm form (see the module docstring); any other model is
    returned as it is."""
    convert = getattr(model, "use_timm_tower", None)
    if callable(convert):
        convert()
    return model


def inject_lora(model: nn.Module, names: list[str], r: int, alpha: float, dropout: float,
                seed: int) -> list[nn.Parameter]:
    """Wrap the ``nn.Linear`` layers ``names`` of ``model`` with peft LoRA layers, in place; return the
    new ``A``/``B`` parameters.

    peft's init (as the paper and the PETL study): ``A`` Kaiming-uniform (a=√5), ``B`` zero, so the
    model computes exactly what it did before. ``A`` is drawn from the CPU generator seeded with
    ``seed`` (peft builds it on the CPU, then moves it to the layer's device), so it is the same on
    every device and does not depend on the global RNG state.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(names), bias="none",
                        init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model)  # in place: the runner evaluates this same object
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return [p for m in layers for d in (m.lora_A, m.lora_B) for p in d.parameters()]


class _PETLMethod(Method):
    """Shared run: freeze everything, train the selected parameters + the head (+ CLIP's projection with
    ``proj=train``), report the true count."""

    takes_blocks = False
    options = {"proj": PROJ_OPTION}

    @classmethod
    def resolve(cls, spec: RunSpec, block_names: tuple[str, ...]) -> RunSpec:
        spec = super().resolve(spec, block_names)
        check_projection(cls.name, spec)
        return spec

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(block_names)  # the selected parameters may lie in any block

    def select(self, ctx: TrainContext) -> list[nn.Parameter]:
        """The parameters this method trains besides the head (may insert modules first)."""
        raise NotImplementedError

    def train_modes(self, ctx: TrainContext) -> None:
        """Put modules that must be in train mode while fitting (e.g. LoRA dropout) in train mode."""

    def fit_options(self) -> dict[str, Any]:
        """Extra keyword arguments of ``ctx.fit`` (e.g. a ``before_step`` hook); default none."""
        return {}

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        model = ctx.model
        model.requires_grad_(False)
        model.eval()  # frozen backbone: BatchNorm running statistics stay as pretrained
        selected = self.select(ctx)
        if not selected:
            raise UsageError(f"method {self.name!r} finds nothing to train in model {self.spec.model!r}")
        proj = trained_projection(self.name, self.spec, model)  # after select: it may rebuild the tower
        trainable = list({id(p): p for p in [*selected, *proj, *model.head.parameters()]}.values())
        for p in trainable:
            p.requires_grad_(True)
        model.head.train()
        self.train_modes(ctx)
        n_params = sum(p.numel() for p in model.parameters())
        ctx.fit(trainable, **self.fit_options())
        n_trainable = sum(p.numel() for p in trainable)
        return {"n_trainable": n_trainable, "trainable_fraction": n_trainable / n_params}


@METHODS.register("bitfit")
class BitFit(_PETLMethod):
    """Bias terms + head."""

    name = "bitfit"
    help = "every bias term (Linear, Conv, LayerNorm and BatchNorm biases) + the classifier head"
    paper = "Ben Zaken et al. 2022, BitFit: Simple Parameter-efficient Fine-tuning (as in Mai et al. 2024, PETL study)"
    order = 70

    def select(self, ctx: TrainContext) -> list[nn.Parameter]:
        return [p for _, p in bias_parameters(ctx.model)]


@METHODS.register("ln-tune")
class LNTune(_PETLMethod):
    """Normalisation-layer affine parameters + head."""

    name = "ln-tune"
    help = "LayerNorm (and BatchNorm/GroupNorm) affine weights and biases + the classifier head"
    paper = "Mai et al. 2024, Lessons Learned from a Unifying Empirical Study of PETL in Visual Recognition (LayerNorm)"
    order = 71

    def select(self, ctx: TrainContext) -> list[nn.Parameter]:
        return [p for _, p in norm_parameters(ctx.model)]


@METHODS.register("lora")
class LoRA(_PETLMethod):
    """Low-rank updates ``(alpha/r)·B·A`` of chosen linear layers (peft) + head."""

    name = "lora"
    help = "low-rank updates W + (alpha/r)·B·A of the attention qkv (peft LoRA; --set targets=...) + the head"
    paper = "Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models (as in Mai et al. 2024, PETL study)"
    order = 75
    options = {
        "r": Option(4, "rank of the update (rows of A, columns of B)", minimum=1,
                     maximum=1_024),  # 16x the LoRA paper's largest rank, 64 (docs/methods.md#limits)
        "alpha": Option(4.0, "scale numerator: the update is (alpha/r)·B·A (must be > 0)", minimum=0),
        "dropout": Option(0.1, "dropout on the LoRA branch's input (the PETL study's 0.1), in [0, 1)", minimum=0),
        "targets": Option("qkv", "linear layers that get LoRA: 'qkv' = attention qkv (the PETL study), "
                          "'qkv,proj' = + attention output, 'mlp' = fc1 and fc2, 'all-linear' = every Linear "
                          "but the head", tuple(LORA_TARGETS)),
        "proj": PROJ_OPTION,
    }

    @classmethod
    def resolve(cls, spec: RunSpec, block_names: tuple[str, ...]) -> RunSpec:
        spec = super().resolve(spec, block_names)
        opts = dict(spec.options)
        if not opts["alpha"] > 0:
            raise UsageError(f"option alpha={opts['alpha']!r} of method 'lora' must be a positive number")
        if not opts["dropout"] < 1:
            raise UsageError(f"option dropout={opts['dropout']!r} of method 'lora' must be in [0, 1)")
        model = _meta_model(spec)
        if model is not None and not lora_target_names(model, opts["targets"]):
            raise UsageError(f"method 'lora' with targets={opts['targets']} finds no such linear layer in "
                             f"model {spec.model!r}; use a transformer, e.g. --model digits-vit")
        return spec

    def select(self, ctx: TrainContext) -> list[nn.Parameter]:
        o = self.opts
        names = lora_target_names(attach_view(ctx.model), o["targets"])
        if not names:
            return []
        return inject_lora(ctx.model, names, o["r"], o["alpha"], o["dropout"], self.spec.seed)

    def train_modes(self, ctx: TrainContext) -> None:
        from peft.tuners.lora import LoraLayer

        for m in ctx.model.modules():
            if isinstance(m, LoraLayer):
                m.lora_dropout.train()  # only the LoRA branch's dropout; the frozen layer stays in eval

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        out = super().run(ctx)
        out["lora_scaling"] = self.opts["alpha"] / self.opts["r"]
        return out


@functools.lru_cache(maxsize=64)
def meta_model(name: str, channels: int, attach: bool = False) -> nn.Module | None:
    """Model ``name`` for ``channels`` inputs and 2 classes on the meta device, shared: do not modify.
    ``attach``: in the layout ``lora``, ``adapter`` and ``vpt`` attach to (:func:`attach_view`)."""
    from ftbench.models.base import get_model_entry

    entry = get_model_entry(name)  # an unknown name is a UsageError (not cached)
    try:
        with torch.device("meta"):
            model = entry.build(channels, 2)
            return attach_view(model) if attach else model
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked at run time
        return None


def _meta_model(spec: RunSpec) -> nn.Module | None:
    """The spec's model built on the meta device (no memory, no pretraining), to check its layer
    names before any run; None when it cannot be built so (then the check happens at run time)."""
    if not spec.model:
        return None
    return meta_model(spec.model, 1, True)  # one build per model name (read only)
