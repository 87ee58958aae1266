"""Parameter-efficient transfer learning by inserting new modules: adapters, visual prompts, SSF.

* ``adapter`` — Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP": a bottleneck
  ``x + up(act(down(x)))`` after each attention and each MLP sub-layer of every transformer block.
* ``vpt`` — Jia et al. 2022, "Visual Prompt Tuning": learnable tokens inserted after the class token,
  at the input of the first block (shallow) or of every block (deep).
* ``ssf`` — Lian et al. 2022, "Scaling & Shifting Your Features": a per-channel scale ``γ`` and shift
  ``β`` after every linear, convolution and normalisation layer; mergeable into the layer before it.

Each method freezes the whole pretrained model (parameters and BatchNorm statistics), inserts its
modules into ``ctx.model`` in place (on the model's device), and trains only them and the
classifier head. Adapters and SSF also apply to CNNs; VPT needs a timm ``VisionTransformer``.
Adapters and VPT attach to a CLIP model's open_clip ViT tower through its timm form (the PETL
study's release adapts that very model: ftbench/methods/petl.py explains why and how); SSF wraps
open_clip's own layers, as before.

How the modules get in (docs/methods.md#adapter, #vpt, #ssf):

* SSF and adapters *wrap* a module where it sits (peft style): ``blocks.0.attn.qkv`` becomes a
  :class:`ScaleShift` whose ``inner`` is the original ``Linear``; ``blocks.0.attn`` becomes an
  :class:`Adapted` whose ``inner`` is the original attention. The pretrained modules are the
  same objects, so the model's block partition and its parameters are untouched.
* VPT changes the token sequence, which no single module wrapper can do inside timm's
  ``forward_features``, so it uses hooks on the transformer blocks: a forward *pre*-hook inserts
  the prompts after the prefix (class/register) tokens, and a forward hook drops the prompt
  positions from the output. Shallow: insert before block 0, drop after the last block. Deep:
  insert before and drop after every block, which equals VPT's "replace the previous layer's
  prompt outputs with new prompts". The pooling/head code of timm then sees the usual sequence.
  The prompts live in a :class:`VisualPrompts` module registered on the ViT as ``vpt``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ftbench.errors import UsageError
from ftbench.methods.base import METHODS, PROJ_OPTION, Option
from ftbench.methods.petl import _PETLMethod, attach_view, meta_model
from ftbench.spec import RunSpec

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

    from ftbench.train.context import TrainContext


# --- locating things in a model ------------------------------------------------------------


def find_vit(model: nn.Module) -> VisionTransformer | None:
    """The one timm ``VisionTransformer`` in ``model`` (``model`` itself included), else None."""
    from timm.models.vision_transformer import VisionTransformer

    found = [m for m in model.modules() if isinstance(m, VisionTransformer)]
    return found[0] if len(found) == 1 else None


def _vit_blocks(vit: VisionTransformer) -> list[nn.Module]:
    return list(vit.blocks)


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` where ``root.get_submodule(path)`` is (works for Sequential indices too)."""
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _place(module: nn.Module, like: nn.Module) -> nn.Module:
    """``module`` moved to the device and floating dtype of ``like``'s parameters."""
    p = next(like.parameters(), None)
    return module if p is None else module.to(device=p.device, dtype=p.dtype)


def _excluded(model: nn.Module) -> set[int]:
    """Ids of the classifier head's modules: never wrapped (the head itself trains)."""
    head = getattr(model, "head", None)
    return {id(m) for m in head.modules()} if isinstance(head, nn.Module) else set()


# --- adapters ----------------------------------------------------------------------------


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}
ADAPTER_INITS = ("zero", "houlsby", "xavier")
# PETL_Vision's "xavier" adapter init gives the biases N(0, (1e-6)²) (model/utils.py:18-22).
XAVIER_BIAS_STD = 1e-6


class Adapter(nn.Module):
    """Bottleneck adapter ``x + scale·up(drop(act(down(x))))`` over the channel dimension.

    Token inputs (``…×dim``, last dim) use linear layers; image inputs (``N×dim×H×W``, ``conv=True``)
    use 1×1 convolutions, i.e. the same map applied at every position. ``scale`` is PETL_Vision's
    ``adapter_scaler`` (model/adapter.py:26, 44); 1 is Houlsby et al.'s adapter.
    """

    def __init__(self, dim: int, bottleneck: int, act: str = "gelu", dropout: float = 0.0, conv: bool = False,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.down: nn.Linear | nn.Conv2d = nn.Conv2d(dim, bottleneck, 1) if conv else nn.Linear(dim, bottleneck)
        self.act = ACTIVATIONS[act]()
        self.drop = nn.Dropout(dropout)
        self.up: nn.Linear | nn.Conv2d = nn.Conv2d(bottleneck, dim, 1) if conv else nn.Linear(bottleneck, dim)
        self.scale = float(scale)

    @torch.no_grad()
    def init(self, kind: str = "zero", generator: torch.Generator | None = None) -> None:
        """``zero``: down as ``nn.Linear``'s default (Kaiming-uniform), up and biases 0 — the adapter is
        exactly the identity. ``houlsby``: both weights ~ N(0, 1e-3²) truncated at 2σ, biases 0
        (near-identity, as the adapter-bert code). ``xavier``: both weights Xavier-uniform, biases
        N(0, 1e-6²) — PETL_Vision's ``adapter_init: xavier`` (model/utils.py:18-22), not the identity:
        its small ``scale`` keeps the adapter near it."""
        if kind == "xavier":
            nn.init.xavier_uniform_(self.down.weight, generator=generator)
            nn.init.xavier_uniform_(self.up.weight, generator=generator)
            nn.init.normal_(self.down.bias, std=XAVIER_BIAS_STD, generator=generator)
            nn.init.normal_(self.up.bias, std=XAVIER_BIAS_STD, generator=generator)
            return
        if kind == "zero":
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)
            nn.init.zeros_(self.up.weight)
        elif kind == "houlsby":
            for w in (self.down.weight, self.up.weight):
                nn.init.trunc_normal_(w, std=1e-3, a=-2e-3, b=2e-3, generator=generator)
        else:
            raise ValueError(kind)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.up(self.drop(self.act(self.down(x))))
        return x + (up if self.scale == 1.0 else up * self.scale)


class Adapted(nn.Module):
    """``adapter(inner(...))``: a pretrained module followed by an adapter (all arguments pass through)."""

    def __init__(self, inner: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.inner = inner
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.inner(*args, **kwargs))


PLACEMENTS = {"houlsby": ("attn", "mlp"), "pfeiffer": ("mlp",)}


def _output_channels(model: nn.Module, paths: list[str], sample: torch.Tensor) -> dict[str, int]:
    """Channel count (dim 1) of each module's output, from one forward pass of ``sample`` in eval mode."""
    out: dict[str, int] = {}
    handles = [model.get_submodule(p).register_forward_hook(
        lambda _m, _a, y, p=p: out.__setitem__(p, int(y.shape[1]))) for p in paths]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()  # BatchNorm statistics are not touched
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.train(training)
    return out


def add_adapters(model: nn.Module, bottleneck: int, placement: str = "houlsby", act: str = "gelu",
                 dropout: float = 0.0, init: str = "zero", sample: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, scale: float = 1.0) -> list[Adapter]:
    """Insert adapters into ``model`` in place; return them, in input-to-output order.

    ViT (a timm ``VisionTransformer`` inside ``model``): every block's ``attn`` and ``mlp``
    (``houlsby``) or only ``mlp`` (``pfeiffer``) is wrapped, so the adapter acts on the sub-layer's
    output before LayerScale, drop-path and the residual addition (PETL_Vision's ``sequential_after``
    mode, model/block.py:108-110 and 150-152, where LayerScale is absent and drop-path is 0). CNN (a
    ``BlockModel`` with ``residual_units()``): each residual unit's output gets a 1×1-convolution
    adapter; ``sample`` (a batch of inputs) is needed to learn the units' channel counts. Raises ``UsageError`` when
    neither applies.
    """
    vit = find_vit(model)
    if vit is not None:
        adapters = []
        for blk, part in [(blk, part) for blk in _vit_blocks(vit) for part in PLACEMENTS[placement]]:
            a = Adapter(vit.embed_dim, bottleneck, act, dropout, scale=scale)
            a.init(init, generator)
            a = _place(a, blk).train(blk.training)  # the mode of where it goes
            inner = getattr(blk, part)
            setattr(blk, part, Adapted(inner, a).train(inner.training))
            adapters.append(a)
        return adapters
    units = [path for path, _ in getattr(model, "residual_units", lambda: [])()]
    if not units:
        raise UsageError("adapter needs a ViT (timm VisionTransformer) or a model with residual units; "
                         f"{type(model).__name__} has neither")
    if placement != "houlsby":
        raise UsageError(f"adapter placement={placement!r} applies to transformer blocks only; "
                         "on a CNN adapters follow each residual unit (use the default)")
    if sample is None:
        raise ValueError("adapters on a CNN need a sample batch to learn channel counts")
    channels = _output_channels(model, units, sample)
    adapters = []
    for path in units:
        a = Adapter(channels[path], bottleneck, act, dropout, conv=True, scale=scale)
        a.init(init, generator)
        inner = model.get_submodule(path)
        a = _place(a, inner).train(inner.training)
        _replace(model, path, Adapted(inner, a).train(inner.training))
        adapters.append(a)
    return adapters


# --- SSF -----------------------------------------------------------------------------------


def _ssf_channels(m: nn.Module) -> tuple[int, int] | None:
    """``(channels, channel dim)`` of the output of a layer SSF follows, or None for other modules."""
    if isinstance(m, nn.Linear):
        return m.out_features, -1
    if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
        return m.out_channels, 1
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        return m.normalized_shape[0], -1
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.num_features, 1
    if isinstance(m, nn.GroupNorm):
        return m.num_channels, 1
    return None


class ScaleShift(nn.Module):
    """SSF: ``γ ⊙ inner(x) + β`` with one ``γ`` and ``β`` per output channel of ``inner``.

    ``channel_dim`` is -1 for token layouts (Linear, LayerNorm: ``…×C``) and 1 for image layouts
    (Conv, BatchNorm, GroupNorm: ``N×C×…``).
    """

    def __init__(self, inner: nn.Module, channels: int, channel_dim: int) -> None:
        super().__init__()
        self.inner = inner
        self.channel_dim = channel_dim
        # On the wrapped layer's device and dtype (it stays where it is; only these are new).
        ref = next(inner.parameters(), None)
        kw: dict[str, Any] = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        self.scale = nn.Parameter(torch.ones(channels, **kw))
        self.shift = nn.Parameter(torch.zeros(channels, **kw))

    @torch.no_grad()
    def init(self, std: float = 0.0, generator: torch.Generator | None = None) -> None:
        """``γ ~ N(1, std²)``, ``β ~ N(0, std²)``; std 0 (the default) gives exactly the identity."""
        self.scale.fill_(1.0)
        self.shift.zero_()
        if std > 0:
            self.scale.add_(torch.randn(self.scale.shape, generator=generator).mul_(std).to(self.scale))
            self.shift.add_(torch.randn(self.shift.shape, generator=generator).mul_(std).to(self.shift))

    def _view(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        if self.channel_dim == -1 or ndim <= 2:
            return t
        return t.view(1, -1, *([1] * (ndim - 2)))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.inner(*args, **kwargs)
        return y * self._view(self.scale, y.ndim) + self._view(self.shift, y.ndim)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """``inner`` with ``γ`` and ``β`` folded in (same function, no extra parameters).

        Linear/Conv: ``W' = diag(γ) W``, ``b' = γ ⊙ b + β``. Norms: ``w' = γ ⊙ w``, ``b' = γ ⊙ b + β``
        (an affine-less norm gets ``w' = γ``, ``b' = β``). A layer without a bias gets one.
        """
        m, g, s = self.inner, self.scale, self.shift
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            m.weight.mul_(g.view(-1, *([1] * (m.weight.ndim - 1))).to(m.weight))
            bias = m.bias if m.bias is not None else torch.zeros_like(s)
            m.bias = nn.Parameter((g * bias + s).to(m.weight), requires_grad=m.weight.requires_grad)
        elif getattr(m, "weight", None) is None:  # affine-less norm
            m.weight = nn.Parameter(g.detach().clone(), requires_grad=False)
            m.bias = nn.Parameter(s.detach().clone(), requires_grad=False)
            for flag in ("elementwise_affine", "affine"):
                if hasattr(m, flag):
                    setattr(m, flag, True)
        else:
            bias = m.bias if m.bias is not None else torch.zeros_like(m.weight)
            m.weight.mul_(g.to(m.weight))
            m.bias = nn.Parameter((g * bias + s).to(m.weight), requires_grad=m.weight.requires_grad)
        return m


def add_ssf(model: nn.Module, init_std: float = 0.0, generator: torch.Generator | None = None) -> list[ScaleShift]:
    """Wrap every linear, (non-transposed) convolution and normalisation layer of ``model`` except the
    classifier head in a :class:`ScaleShift`, in place; return the wrappers (module order).

    On a timm ViT this is exactly SSF's set: patch embedding, ``qkv``, attention ``proj``, ``fc1``,
    ``fc2``, ``norm1``, ``norm2`` and the final norm (and ``patch_embed.norm``/``fc_norm`` where
    they are real layers). On a CNN: every convolution and BatchNorm.
    """
    skip = _excluded(model)
    # nn.MultiheadAttention reads its projections' weights directly instead of calling them.
    skip |= {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.modules()}
    targets = [(name, m, info) for name, m in model.named_modules()
               if id(m) not in skip and (info := _ssf_channels(m)) is not None]
    wrappers = []
    for name, m, (channels, dim) in targets:
        w = ScaleShift(m, channels, dim).train(m.training)
        w.init(init_std, generator)
        _replace(model, name, w)
        wrappers.append(w)
    return wrappers


def merge_ssf(model: nn.Module) -> int:
    """Fold every :class:`ScaleShift` in ``model`` into the layer it wraps, in place; return how many."""
    found = [name for name, m in model.named_modules() if isinstance(m, ScaleShift)]
    for name in reversed(found):  # inner-most first (wrappers do not nest, but be safe)
        _replace(model, name, model.get_submodule(name).merged())
    return len(found)


# --- VPT -----------------------------------------------------------------------------------

# "shallow": the VPT paper (prompts enter at block 0 and travel through every block); "petl-shallow":
# PETL_Vision's shallow (model/vpt.py:15-16 builds one prompt layer; model/vision_transformer.py:225-241
# prepends it before block 0 and drops its outputs right after block 0, so it acts in block 0 only).
VPT_MODES = ("deep", "shallow", "petl-shallow")


class VisualPrompts(nn.Module):
    """VPT prompt tokens for a timm ViT and the hooks that put them into the token sequence.

    ``prompts`` has shape ``(layers, P, D)``: one set for the first block (shallow) or one per block
    (deep). Inserted right after the ViT's prefix tokens (class token, register tokens), with no
    position embedding, and removed from the last block's output (shallow) or from every block's
    output (deep) — see the module docstring.
    """

    def __init__(self, vit: VisionTransformer, num_prompts: int, mode: str = "deep", dropout: float = 0.0) -> None:
        super().__init__()
        if mode not in VPT_MODES:
            raise ValueError(mode)
        self.mode = mode
        self.num_prompts = num_prompts
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        depth = len(_vit_blocks(vit))
        self.prompts = nn.Parameter(torch.zeros(depth if mode == "deep" else 1, num_prompts, vit.embed_dim))
        self.dropout = nn.Dropout(dropout)
        proj = vit.patch_embed.proj
        self.patch_numel = int(proj.in_channels * math.prod(proj.kernel_size))
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def bound(self) -> float:
        """VPT's Xavier-uniform bound ``sqrt(6 / (C·p_h·p_w + D))`` (fan-in of a patch, fan-out D)."""
        return math.sqrt(6.0 / (self.patch_numel + self.prompts.shape[-1]))

    @torch.no_grad()
    def init(self, generator: torch.Generator | None = None) -> None:
        """Uniform on ``[-bound, bound]``, as VPT's released code."""
        b = self.bound()
        data = torch.empty(self.prompts.shape).uniform_(-b, b, generator=generator)
        self.prompts.copy_(data.to(self.prompts))

    def attach(self, blocks: list[nn.Module]) -> None:
        """Register the insert/remove hooks on the transformer blocks (input-to-output order)."""
        self.detach()
        last = len(blocks) - 1
        for i, blk in enumerate(blocks):
            if self.mode == "deep" or i == 0:
                self._handles.append(blk.register_forward_pre_hook(functools.partial(self._insert, i)))
            if self.mode == "deep" or (self.mode == "shallow" and i == last) or (self.mode == "petl-shallow" and i == 0):
                self._handles.append(blk.register_forward_hook(self._remove))

    def detach(self) -> None:
        """Remove the hooks: the ViT computes exactly what it did before :meth:`attach`."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _insert(self, layer: int, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        n = self.num_prefix_tokens
        p = self.dropout(self.prompts[layer]).to(x.dtype).expand(x.shape[0], -1, -1)
        return (torch.cat([x[:, :n], p, x[:, n:]], dim=1), *args[1:])

    def _remove(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        n = self.num_prefix_tokens
        return torch.cat([out[:, :n], out[:, n + self.num_prompts:]], dim=1)


def add_prompts(model: nn.Module, num_prompts: int, mode: str = "deep", dropout: float = 0.0,
                generator: torch.Generator | None = None) -> VisualPrompts:
    """Give the timm ViT inside ``model`` VPT prompts (registered as ``vit.vpt``) and hook them in."""
    vit = find_vit(model)
    if vit is None:
        raise UsageError(f"vpt needs a ViT (timm VisionTransformer); {type(model).__name__} has none "
                         "(try --model digits-vit)")
    vp = VisualPrompts(vit, num_prompts, mode, dropout)
    vp.init(generator)
    vp = _place(vp, vit).train(vit.training)
    vit.add_module("vpt", vp)
    vp.attach(_vit_blocks(vit))
    return vp


# --- the methods ---------------------------------------------------------------------------


def _probe_model(spec: RunSpec) -> nn.Module | None:
    """The spec's model built on the meta device (no memory, no weights): to check applicability
    before any pretraining. None when the spec names no model or it cannot be built so. Read only:
    one build per model name serves every spec of a suite (a 0.07 s build per spec made `list
    suites` take 17 s)."""
    if not spec.model:
        return None
    return meta_model(spec.model, 3, True)  # a CLIP tower in its timm form, as the methods attach to it


class _InsertedModules(_PETLMethod):
    """PETL by inserted modules: :meth:`install` them, train them + the head (``_PETLMethod.run``)."""

    # Install into a CLIP tower's timm form (ftbench/methods/petl.py: attach_view); False: as it is.
    timm_view: ClassVar[bool] = True

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return ["last"]  # of the partition, only the head trains; the new modules are in no block

    @classmethod
    def resolve(cls, spec: RunSpec, block_names: tuple[str, ...]) -> RunSpec:
        spec = super().resolve(spec, block_names)
        opts = dict(spec.options)
        if "dropout" in opts and not opts["dropout"] < 1:
            raise UsageError(f"option dropout={opts['dropout']!r} of method {cls.name!r} must be in [0, 1)")
        cls.check_model(spec)
        return spec

    @classmethod
    def check_model(cls, spec: RunSpec) -> None:
        """Raise ``UsageError`` if the method cannot apply to ``spec.model`` (before any training)."""

    def install(self, ctx: TrainContext, generator: torch.Generator) -> tuple[list[nn.Parameter], list[nn.Module]]:
        """Insert the method's modules into ``ctx.model``; return the new parameters and the wholly new
        modules (put in train mode for their dropout; a wrapped pretrained layer stays in eval mode)."""
        raise NotImplementedError

    def before_step(self) -> Callable[[torch.optim.Optimizer, int], None] | None:
        """An optional ``before_step`` hook for the loop (see :func:`ftbench.train.loop.fit`)."""
        return None

    def select(self, ctx: TrainContext) -> list[nn.Parameter]:
        if self.timm_view:
            attach_view(ctx.model)
        # New parameters are drawn on the CPU from the run's seed, then moved: same init on any device.
        new, self._inserted = self.install(ctx, torch.Generator().manual_seed(self.spec.seed))
        return new

    def train_modes(self, ctx: TrainContext) -> None:
        for m in self._inserted:
            m.train()

    def fit_options(self) -> dict[str, Any]:
        hook = self.before_step()
        return {"before_step": hook} if hook is not None else {}


@METHODS.register("adapter")
class AdapterMethod(_InsertedModules):
    """Houlsby bottleneck adapters (+ head) on a frozen backbone."""

    name = "adapter"
    help = "bottleneck adapters x + up(act(down(x))) after attention and MLP (ViT) or residual units (CNN), + head"
    paper = "Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP"
    order = 72
    options = {
        "bottleneck": Option(8, "adapter hidden width (down-projection size)", minimum=1,
                             maximum=4_096),  # 16x Houlsby et al.'s largest, 256 (docs/methods.md#limits)
        "placement": Option("houlsby", "ViT: 'houlsby' = after attention and after MLP; 'pfeiffer' = after MLP only",
                            tuple(PLACEMENTS)),
        "act": Option("gelu", "non-linearity between down- and up-projection", tuple(ACTIVATIONS)),
        "dropout": Option(0.0, "dropout after the non-linearity, in [0, 1)", minimum=0),
        "init": Option("zero", "'zero' = up-projection 0 (exact identity at init); "
                       "'houlsby' = all weights N(0, 1e-3²) (near identity, as the paper); 'xavier' = both "
                       "weights Xavier-uniform, biases N(0, 1e-6²) (the PETL study's rand_h_adapter)", ADAPTER_INITS),
        "scale": Option(1.0, "multiplier of the adapter's output, x + scale·up(...) (> 0; the PETL study's "
                        "adapter_scaler: 0.01 in its rand_h_adapter_32)", minimum=0),
        "proj": PROJ_OPTION,
    }

    @classmethod
    def resolve(cls, spec: RunSpec, block_names: tuple[str, ...]) -> RunSpec:
        spec = super().resolve(spec, block_names)
        if not spec.options_dict["scale"] > 0:
            raise UsageError(f"option scale={spec.options_dict['scale']!r} of method 'adapter' must be a positive "
                             "number (0 would switch the adapters off)")
        return spec

    @classmethod
    def check_model(cls, spec: RunSpec) -> None:
        net = _probe_model(spec)
        if net is None or find_vit(net) is not None:
            return
        if not getattr(net, "residual_units", lambda: [])():
            raise UsageError(f"adapter needs a ViT or a model with residual units; {spec.model!r} has neither")
        if dict(spec.options).get("placement", "houlsby") != "houlsby":
            raise UsageError(f"adapter placement={dict(spec.options)['placement']!r} applies to ViT blocks only; "
                             f"{spec.model!r} is a CNN (adapters follow each residual unit)")

    def install(self, ctx: TrainContext, generator: torch.Generator) -> tuple[list[nn.Parameter], list[nn.Module]]:
        o = self.opts
        adapters = add_adapters(ctx.model, o["bottleneck"], o["placement"], o["act"], o["dropout"], o["init"],
                                sample=next(iter(ctx.target.train.batches(2))), generator=generator,
                                scale=o["scale"])
        return [p for a in adapters for p in a.parameters()], list(adapters)


@METHODS.register("vpt")
class VPTMethod(_InsertedModules):
    """Visual prompt tuning (+ head) on a frozen ViT."""

    name = "vpt"
    help = "learnable prompt tokens after the class token, at the first block (shallow) or every block (deep), + head"
    paper = "Jia et al. 2022, Visual Prompt Tuning"
    order = 73
    options = {
        "prompts": Option(4, "prompt tokens per prompted layer", minimum=1,
                          maximum=1_024),  # 5x the VPT paper's largest, 200 (docs/methods.md#limits)
        "mode": Option("deep", "'deep' = new prompts at every block's input (the PETL study's ImageNet rows: "
                       "deep, 50 prompts); 'shallow' = prompts at the first block's input, through every block "
                       "(the VPT paper); 'petl-shallow' = PETL_Vision's shallow: removed after the first block",
                       VPT_MODES),
        "dropout": Option(0.0, "dropout on the prompt tokens, in [0, 1)", minimum=0),
        "proj": PROJ_OPTION,
    }

    @classmethod
    def check_model(cls, spec: RunSpec) -> None:
        net = _probe_model(spec)
        if net is not None and find_vit(net) is None:
            raise UsageError(f"vpt needs a ViT (a timm VisionTransformer or a CLIP ViT tower); model {spec.model!r} "
                             "is not one (try --model digits-vit or digits-clip)")

    def install(self, ctx: TrainContext, generator: torch.Generator) -> tuple[list[nn.Parameter], list[nn.Module]]:
        o = self.opts
        vp = add_prompts(ctx.model, o["prompts"], o["mode"], o["dropout"], generator)
        return [vp.prompts], [vp]


@METHODS.register("ssf")
class SSFMethod(_InsertedModules):
    """Scale-and-shift features (+ head) on a frozen backbone."""

    name = "ssf"
    help = "per-channel scale and shift after every linear, conv and norm layer (mergeable), + head"
    paper = "Lian et al. 2022, Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning"
    order = 74
    timm_view = False  # wraps open_clip's own layers (its MultiheadAttention projections excepted)
    options = {
        "init_std": Option(0.0, "scale ~ N(1, std²), shift ~ N(0, std²); 0 = exact identity at init, "
                           "0.02 = the released code", minimum=0),
        "merge": Option(False, "after training, fold scale and shift into the preceding layers "
                        "(same function, no extra parameters at evaluation)"),
        "proj": PROJ_OPTION,
    }

    def install(self, ctx: TrainContext, generator: torch.Generator) -> tuple[list[nn.Parameter], list[nn.Module]]:
        wrappers = add_ssf(ctx.model, self.opts["init_std"], generator)
        if not wrappers:
            raise UsageError(f"ssf found no linear, convolution or normalisation layer in {self.spec.model!r}")
        new = [p for w in wrappers for p in (w.scale, w.shift)]
        self._ssf_ids = {id(p) for p in new}
        # No module is wholly new: the wrapped layers keep their (eval) modes; SSF has no dropout.
        return new, []

    def before_step(self) -> Callable[[torch.optim.Optimizer, int], None] | None:
        ids = self._ssf_ids

        def no_decay(opt: torch.optim.Optimizer, t: int) -> None:
            # SSF's code (timm's optimizer factory) exempts 1-D tensors from weight decay: decaying a
            # scale towards 0 would pull the model away from the pretrained function, not towards it.
            if t == 1:
                for g in opt.param_groups:
                    if id(g["params"][0]) in ids:
                        g["weight_decay"] = 0.0

        return no_decay

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        out = super().run(ctx)
        if self.opts["merge"]:
            merge_ssf(ctx.model)
        return out
