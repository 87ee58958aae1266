"""CLIP image classifiers from open_clip, with named blocks, a text tower and zero-shot heads.

**The classifier.** :class:`ClipClassifier` keeps open_clip's image tower (``model.visual``) and a
linear ``head``: ``features(x)`` is the tower's embedding normalised to unit length, as open_clip's
zero-shot evaluation normalises it, and the head maps it to logits. A zero-shot head
(:meth:`ClipClassifier.set_zero_shot_head`) is open_clip's ``build_zero_shot_classifier`` — per
class, the mean over the prompt templates of the normalised text embeddings, normalised again —
times the model's ``logit_scale.exp()`` (100 for OpenAI's weights, as the 100 in open_clip's
zero-shot evaluation), with zero bias.

**The text tower** (the open_clip model without its image tower) rides along but is not part of
the image classifier: it is in no block, not in ``parameters()`` (so ``n_params``, the optimizers of
image-only methods and the block partition see the image classifier alone), but it moves with the
model (``.to``) and is saved and loaded with it (``text.*`` keys of ``state_dict``), so the pretrain
cache, WiSE-FT's interpolation and a resumed run keep it. Methods that train it (``flyp``; AutoFT's
``flyp`` term) take its parameters explicitly (:meth:`ClipClassifier.text_parameters`).

**Blocks**, as timm's ViT partition (docs/models.md): for a ViT tower, 1 = ``conv1`` (patch
embedding) + ``class_embedding`` + ``positional_embedding`` + ``ln_pre`` + the first third of
``transformer.resblocks``, 2 = the second third, 3 = the last third + ``ln_post`` + ``proj`` (the final
norm and projection end the feature extractor), ``last`` = the head. For a ModifiedResNet tower
(RN50): 1 = the three-convolution stem + ``layer1``, 2/3 = ``layer2``/``layer3``, 4 = ``layer4`` +
the attention pool. Every parameter is in exactly one block (tested on tiny random configs).

**The timm form of a ViT tower** (:meth:`ClipClassifier.use_timm_tower`, :class:`TimmTower`): the
same tower rebuilt as timm's ``VisionTransformer`` (``pre_norm``, class-token pooling, the tower's
activation) with the open_clip weights mapped by timm's own ``_convert_openai_clip`` (``conv1`` ->
``patch_embed.proj``, ``in_proj_*`` -> ``attn.qkv``, ``out_proj`` -> ``attn.proj``, ``ln_1/2`` ->
``norm1/2``, ...) and CLIP's projection kept as the tower's ``proj``. It computes the same function
(up to the rounding of a different summation order) with the module layout PETL methods attach to
(``blocks.i.attn.qkv``): the PETL study's release runs exactly this model (its
``vit_base_patch16_clip_224_petl``, model/vision_transformer.py:345-353, a timm VisionTransformer
loaded from timm's conversion of OpenAI's weights). Only ``lora``, ``adapter`` and ``vpt`` switch
to it, when they install (ftbench/methods/petl.py); every other method sees open_clip's tower.
Blocks of the timm form: 1 = ``patch_embed`` + ``cls_token`` + ``pos_embed`` + ``norm_pre`` + the
first third of ``blocks``, 2 = the second third, 3 = the last third + ``norm`` + ``proj``.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ftbench.data.preprocess import InputTransform
from ftbench.errors import UsageError
from ftbench.models.base import BUILD_SEED, MODELS, BlockModel, ModelEntry, ParamView, model_input, set_input_stats

if TYPE_CHECKING:
    from ftbench.data.prompts import Prompts

# ftbench name -> (open_clip architecture, open_clip pretrained tag, what it is): the towers the papers fine-tune.
CLIP_MODELS = {
    "clip-vit-b16": ("ViT-B-16", "openai", "surgical Table 1, AutoFT, WiSE-FT, FLYP, the PETL robustness study"),
    "clip-vit-b32": ("ViT-B-32", "openai", "WiSE-FT"),
    "clip-vit-l14": ("ViT-L-14", "openai", "AutoFT, WiSE-FT"),
    "clip-rn50": ("RN50", "openai", "LP-FT's CLIP ResNet-50, WiSE-FT"),
}
# The embedded benchmark's CLIP: an open_clip CLIP for 8×8 digits (ViT tower, 2×2 patches, 3 layers;
# a 2-layer text transformer over open_clip's own BPE vocabulary), trained contrastively from scratch
# on digits' source pool with its class prompts (ftbench/train/pretrain.py).
DIGITS_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 8, "patch_size": 2, "width": 64, "layers": 3, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TEXT_PREFIX = "text."
# The per-channel statistics OpenAI's CLIP towers were pretrained with (open_clip's OPENAI_DATASET_MEAN/STD).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@functools.cache
def tokenizer_for(arch: str, context_length: int) -> Callable[..., torch.Tensor]:
    """open_clip's tokenizer of ``arch`` (its bundled BPE vocabulary: no download) at ``context_length``."""
    import open_clip

    if arch in open_clip.list_models():
        return open_clip.get_tokenizer(arch, context_length=context_length)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


class TimmTower(nn.Module):
    """An open_clip ViT image tower in timm's layout: ``vit`` (a timm ``VisionTransformer`` without a
    head) followed by CLIP's projection ``proj`` (a bare parameter, as open_clip's). Made by
    :func:`timm_tower`; see the module docstring."""

    def __init__(self, vit: nn.Module, proj: nn.Parameter, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.vit = vit
        self.proj = proj
        self.image_size = image_size
        self.output_dim = int(proj.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x) @ self.proj


def _timm_act(visual: nn.Module) -> str | None:
    """timm's name of the open_clip tower's MLP activation (QuickGELU for OpenAI's weights); None: none."""
    from open_clip.transformer import QuickGELU

    act = visual.transformer.resblocks[0].mlp.gelu
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if type(act) is nn.GELU and act.approximate == "none":
        return "gelu"
    return None


def timm_form_problems(visual: nn.Module) -> list[str]:
    """What an open_clip image tower has that timm's ``VisionTransformer`` lacks (empty: it has a timm
    form). The towers of OpenAI's CLIP ViTs and ``digits-clip`` have none; a ModifiedResNet is no ViT."""
    if not hasattr(visual, "transformer"):
        return ["no transformer (a ModifiedResNet)"]
    blocks = list(visual.transformer.resblocks)
    return [why for why, bad in [
        ("attention pooling", getattr(visual, "attn_pool", None) is not None),
        (f"pool_type {getattr(visual, 'pool_type', 'tok')!r}", getattr(visual, "pool_type", "tok") != "tok"),
        ("a final LayerNorm after pooling", bool(getattr(visual, "final_ln_after_pool", False))),
        ("patch dropout", not isinstance(getattr(visual, "patch_dropout", nn.Identity()), nn.Identity)),
        ("no ln_pre", not isinstance(visual.ln_pre, nn.LayerNorm)),
        ("no projection", getattr(visual, "proj", None) is None),
        ("token outputs", bool(getattr(visual, "output_tokens", False))),
        ("layer scale", any(not isinstance(b.ls_1, nn.Identity) for b in blocks)),
        ("another MLP activation than GELU or QuickGELU", _timm_act(visual) is None),
        ("other attention than nn.MultiheadAttention", any(type(b.attn) is not nn.MultiheadAttention for b in blocks)),
    ] if bad]


def timm_tower(visual: nn.Module) -> TimmTower:
    """The open_clip ``VisionTransformer`` ``visual`` rebuilt as a :class:`TimmTower`: same weights
    (copied, bit for bit, into timm's names by timm's ``_convert_openai_clip``), same device, dtype
    and train/eval mode, same function. Raises ``ValueError`` for a tower that has parts timm's
    ViT lacks (:func:`timm_form_problems`)."""
    from timm.models.vision_transformer import VisionTransformer, _convert_openai_clip

    unlike = timm_form_problems(visual)
    if unlike:
        raise ValueError(f"open_clip tower with {', '.join(unlike)} has no timm VisionTransformer form")
    blocks = list(visual.transformer.resblocks)
    conv = visual.conv1
    width = int(conv.out_channels)
    hidden = int(blocks[0].mlp.c_fc.out_features)
    ref = conv.weight
    with torch.device("meta"):
        vit = VisionTransformer(
            img_size=tuple(visual.image_size), patch_size=tuple(conv.kernel_size), in_chans=int(conv.in_channels),
            num_classes=0, global_pool="token", embed_dim=width, depth=len(blocks),
            num_heads=int(blocks[0].attn.num_heads), mlp_ratio=hidden / width, qkv_bias=True, class_token=True,
            pre_norm=True, act_layer=_timm_act(visual), weight_init="skip",
            # the PETL release's choice too (model/vision_transformer.py:349: norm_layer=nn.LayerNorm)
            norm_layer=functools.partial(nn.LayerNorm, eps=float(visual.ln_pre.eps)))
    state = _convert_openai_clip({"visual." + k: v for k, v in visual.state_dict().items()}, vit)
    proj = state.pop("head.weight").T  # timm puts CLIP's projection in a Linear head; here it stays a matrix
    state.pop("head.bias")  # the zero bias timm adds for that head
    trains = {p.requires_grad for p in visual.parameters()}
    if len(trains) > 1:
        raise ValueError("convert the tower before choosing which of its parameters train")
    vit = vit.to_empty(device=ref.device).to(ref.dtype)
    vit.load_state_dict(state, strict=True)  # copies: the same bits under timm's names
    tower = TimmTower(vit, nn.Parameter(proj.detach().clone()), (int(visual.image_size[0]), int(visual.image_size[1])))
    return tower.requires_grad_(trains.pop()).train(visual.training)


class ClipClassifier(BlockModel):
    """open_clip's image tower, unit-normalised, and a linear head; the text tower alongside (see
    the module docstring)."""

    def __init__(self, visual: nn.Module, embed_dim: int, num_classes: int, text: nn.Module | None = None,
                 arch: str = "") -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, num_classes)
        object.__setattr__(self, "_text", text)  # not a submodule: see the module docstring
        self.arch = arch
        # features() as unit-length embeddings (open_clip's zero-shot evaluation) or, False, encode_image's
        # raw output (LP-FT's clip_model.py; a method's --set features=raw). Not saved: set per run.
        self.unit_features = True
        # The input transform the tower was pretrained with (open_clip's preprocess config of OpenAI's
        # weights, for the clip-* towers: ftbench/data/preprocess.py; None: the benchmark's own, as
        # digits-clip is trained on it). Images of its size are only re-normalised (set_input_stats:
        # one per-channel affine map, not a parameter, not saved); others are resized to it first.
        self.input_transform: InputTransform | None = None
        self.input_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self.register_buffer("in_scale", None, persistent=False)
        self.register_buffer("in_shift", None, persistent=False)

    @property
    def expects(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The per-channel mean and std the tower was pretrained with (None: the benchmark's own)."""
        t = self.input_transform
        return None if t is None else (t.mean, t.std)

    def set_input_stats(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        set_input_stats(self, mean, std)

    # --- the text tower --------------------------------------------------------------------
    @property
    def text(self) -> nn.Module:
        if self._text is None:
            raise ValueError("this CLIP classifier has no text tower")
        return self._text

    @property
    def has_text(self) -> bool:
        return self._text is not None

    def text_parameters(self) -> list[nn.Parameter]:
        """The text tower's parameters, ``logit_scale`` included."""
        return list(self.text.parameters())

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        ctx = int(self.text.positional_embedding.shape[0])
        return tokenizer_for(self.arch, ctx)(list(captions)).to(self.text.positional_embedding.device)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-length text embeddings of token rows (gradients flow: FLYP trains through this)."""
        return F.normalize(self.text.encode_text(tokens), dim=-1)

    def class_embeddings(self, prompts: Prompts) -> torch.Tensor:
        """C×D unit rows: per class, the mean over the templates of the normalised caption embeddings,
        normalised again — ``build_zero_shot_classifier``'s computation, with gradients."""
        caps = [c for i in range(len(prompts.classnames)) for c in prompts.captions(i)]
        e = self.encode_text(self.tokenize(caps))
        return F.normalize(e.view(len(prompts.classnames), len(prompts.templates), -1).mean(1), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.text.logit_scale.exp()

    def set_zero_shot_head(self, prompts: Prompts) -> None:
        """A new head: ``logit_scale.exp() ×`` the class embeddings of ``prompts``, zero bias (in eval
        mode, without gradients: open_clip's ``build_zero_shot_classifier``)."""
        was = self.text.training
        self.text.eval()
        with torch.no_grad():
            w = self.class_embeddings(prompts)
            head = nn.Linear(w.shape[1], w.shape[0]).to(w.device)
            head.weight.copy_(self.logit_scale() * w)
            head.bias.zero_()
        self.text.train(was)
        self.head = head

    # --- the text tower travels with the model ---------------------------------------------
    def _apply(self, fn: Callable, recurse: bool = True) -> ClipClassifier:  # .to(), .float(), ...
        super()._apply(fn, recurse)
        if self._text is not None:
            self._text._apply(fn, recurse)
        return self

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._text is not None:
            self._text.state_dict(destination=destination, prefix=prefix + TEXT_PREFIX, keep_vars=keep_vars)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        tp = prefix + TEXT_PREFIX
        text = {k[len(tp):]: v for k, v in state_dict.items() if k.startswith(tp)}
        for k in [k for k in state_dict if k.startswith(tp)]:
            del state_dict[k]  # load_state_dict passes its own copy: the image keys go on as usual
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self._text is not None:
            res = self._text.load_state_dict(text, strict=False)
            missing_keys += [tp + k for k in res.missing_keys]
            unexpected_keys += [tp + k for k in res.unexpected_keys]
        else:
            unexpected_keys += [tp + k for k in text]

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """open_clip's layout (``visual.*`` and the text tower's keys at the top) -> this model's."""
        return {k if k.startswith(("visual.", "head.", TEXT_PREFIX)) else TEXT_PREFIX + k: v for k, v in sd.items()}

    def first_conv(self) -> str:
        return "visual.vit.patch_embed.proj.weight" if isinstance(self.visual, TimmTower) else "visual.conv1.weight"

    def use_timm_tower(self) -> bool:
        """Replace an open_clip ViT image tower by its timm form (:func:`timm_tower`), in place; True
        when the tower is now a :class:`TimmTower`, False for one that has no timm form (a ModifiedResNet:
        :func:`timm_form_problems`), left as it is. The head, the text tower and the input transform
        are untouched."""
        if isinstance(self.visual, TimmTower):
            return True
        if timm_form_problems(self.visual):
            return False
        self.visual = timm_tower(self.visual)
        return True

    # --- the image classifier --------------------------------------------------------------
    @property
    def native_size(self) -> tuple[int, int] | None:
        """H, W the tower was pretrained at (224 for OpenAI's towers); None: any."""
        s = getattr(self.visual, "image_size", None)
        if s is None:
            return None
        return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            # OpenAI's towers take their pretraining size and statistics: images of another size (CIFAR's
            # 32 px) are resized as CLIP's preprocessing resizes them (PIL bicubic on the uint8 pixels).
            x = model_input(self, x)
        f = self.visual(x)
        return F.normalize(f, dim=-1) if self.unit_features else f

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        v = self.visual
        if isinstance(v, TimmTower):  # the timm form (module docstring): the same partition in timm's names
            vit = v.vit
            res = list(vit.blocks)
            d = len(res)
            parts: list[list[nn.Module]] = [[], [], []]
            for i, blk in enumerate(res):
                parts[3 * i // d].append(blk)
            return OrderedDict([("1", [vit.patch_embed, ParamView(vit, ("cls_token", "pos_embed")), vit.norm_pre,
                                       *parts[0]]), ("2", parts[1]),
                                ("3", [*parts[2], vit.norm, ParamView(v, ("proj",))]), ("last", [self.head])])
        if hasattr(v, "transformer"):  # VisionTransformer
            res = list(v.transformer.resblocks)
            d = len(res)
            thirds: list[list[nn.Module]] = [[], [], []]
            for i, blk in enumerate(res):
                thirds[3 * i // d].append(blk)
            embed = ParamView(v, tuple(n for n in ("class_embedding", "positional_embedding")
                                       if getattr(v, n, None) is not None))
            tail = [v.ln_post] + ([ParamView(v, ("proj",))] if getattr(v, "proj", None) is not None else [])
            return OrderedDict([("1", [v.conv1, embed, v.ln_pre, *thirds[0]]), ("2", thirds[1]),
                                ("3", [*thirds[2], *tail]), ("last", [self.head])])
        if hasattr(v, "attnpool"):  # ModifiedResNet
            stem = [v.conv1, v.bn1, v.conv2, v.bn2, v.conv3, v.bn3]
            return OrderedDict([("1", [*stem, v.layer1]), ("2", [v.layer2]), ("3", [v.layer3]),
                                ("4", [v.layer4, v.attnpool]), ("last", [self.head])])
        raise ValueError(f"no block partition for open_clip image tower {type(v).__name__}")


def _in_channels(visual: nn.Module, channels: int) -> None:
    """Give the tower's first convolution ``channels`` inputs (digits are grey: 1), its weights adapted as
    timm adapts hub weights (summed over RGB for 1 channel; repeated and rescaled by 3/channels for more)."""
    c = visual.conv1
    if c.in_channels == channels:
        return
    new = nn.Conv2d(channels, c.out_channels, c.kernel_size, c.stride, c.padding, bias=c.bias is not None)
    with torch.no_grad():
        w = c.weight
        if channels == 1:
            new.weight.copy_(w.sum(dim=1, keepdim=True))
        else:
            reps = -(-channels // w.shape[1])
            new.weight.copy_(w.repeat(1, reps, 1, 1)[:, :channels] * (w.shape[1] / channels))
    visual.conv1 = new


def from_open_clip(clip: nn.Module, in_channels: int, num_classes: int, arch: str = "") -> ClipClassifier:
    """Split an open_clip ``CLIP`` into a :class:`ClipClassifier`: its image tower, a new head of
    ``num_classes`` outputs, and the rest of it as the text tower."""
    visual = clip.visual
    clip.visual = None  # what is left is the text tower (token embedding, transformer, projection, scale)
    _in_channels(visual, in_channels)
    net = ClipClassifier(visual, int(visual.output_dim), num_classes, text=clip, arch=arch)
    if arch != "digits-clip":
        net.input_transform = clip_transform(arch, CLIP_TAG, net.native_size)
    return net


CLIP_TAG = "openai"  # the pretrained tag of every clip-* model (CLIP_MODELS)


def clip_transform(arch: str, tag: str = CLIP_TAG, size: tuple[int, int] | None = None) -> InputTransform:
    """open_clip's evaluation transform of ``arch``'s ``tag`` weights (its ``PreprocessCfg``: the
    pretrained config's mean, std, interpolation and resize mode over PreprocessCfg's defaults, the
    architecture's image size), without weights: ``image_transform(is_train=False)`` resizes the
    shorter side to the size (``shortest``; ``squash``: both sides) and centre-crops it. ``size``: the
    tower's own (a test's tiny tower), else the architecture's."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    base = PreprocessCfg()
    pre = open_clip.get_pretrained_cfg(arch, tag) if arch in open_clip.list_models() else {}
    if size is None:
        s = (open_clip.get_model_config(arch) or {}).get("vision_cfg", {}).get("image_size", base.size)
        size = (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))
    mode = pre.get("resize_mode", base.resize_mode)
    return InputTransform(size=size, crop_pct=1.0, interpolation=pre.get("interpolation", base.interpolation),
                          mean=tuple(pre.get("mean", base.mean)), std=tuple(pre.get("std", base.std)),
                          crop_mode="squash" if mode == "squash" else "center",
                          source=f"open_clip {arch} {tag!r} preprocess config")


def trained_with_quick_gelu(arch: str, tag: str) -> bool:
    """Whether open_clip's ``arch`` weights tagged ``tag`` were trained with QuickGELU (OpenAI's were).

    open_clip ≥ 2.29 builds its built-in configs with ``nn.GELU`` even for the ``openai`` tag and only
    warns about the mismatch, so both of ftbench's load paths ask this and build that network."""
    import open_clip

    return bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", tag == "openai"))


def _config(arch: str, tag: str = "") -> dict[str, Any]:
    import open_clip

    if arch == "digits-clip":
        return {**DIGITS_CLIP}
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise UsageError(f"open_clip has no architecture {arch!r}")
    return {**cfg, "quick_gelu": trained_with_quick_gelu(arch, tag)}


def build(arch: str, in_channels: int, num_classes: int, tag: str = "") -> ClipClassifier:
    """A randomly initialised CLIP classifier of open_clip architecture ``arch`` (under BUILD_SEED),
    with the activation the weights tagged ``tag`` were trained with (QuickGELU for ``openai``)."""
    import open_clip

    cfg = _config(arch, tag)
    for key in ("custom_text", "hf_model_name", "multimodal_cfg"):
        if cfg.get(key) or cfg.get("text_cfg", {}).get(key):
            raise UsageError(f"open_clip architecture {arch!r} is not a plain CLIP; ftbench supports plain CLIP towers")
    cfg.pop("custom_text", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILD_SEED)
        clip = open_clip.CLIP(**cfg)
    return from_open_clip(clip, in_channels, num_classes, arch)


def _hub_weights(name: str, arch: str, tag: str) -> Callable[[int, int], tuple[BlockModel, str, bool]]:
    def load(in_channels: int, num_classes: int) -> tuple[BlockModel, str, bool]:
        import huggingface_hub.constants as hub
        import open_clip

        from ftbench.models.timm_models import hub_offline

        offline = hub_offline()
        where = "the local hub cache (offline)" if offline else "the Hugging Face hub"
        print(f"note: loading open_clip's {arch} {tag!r} weights for {name} from {where}", file=sys.stderr)
        was = hub.HF_HUB_OFFLINE
        hub.HF_HUB_OFFLINE = bool(offline) or was
        logging.disable(logging.ERROR)  # open_clip logs its failed download at ERROR: the one line below says it
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(BUILD_SEED)
                clip = open_clip.create_model(arch, pretrained=tag, require_pretrained=True,
                                             force_quick_gelu=trained_with_quick_gelu(arch, tag))
        except Exception as e:
            why = offline or type(e).__name__
            raise UsageError(
                f"cannot load open_clip's {arch} {tag!r} weights for model {name!r} ({why}; not in the local hub cache "
                "either); no network: save an open_clip model's state dict elsewhere "
                f"(open_clip.create_model({arch!r}, pretrained={tag!r}).state_dict()) and use --weights PATH") from None
        finally:
            hub.HF_HUB_OFFLINE = was
            logging.disable(logging.NOTSET)
        model = from_open_clip(clip, in_channels, num_classes, arch)
        return model, f"hub:open_clip:{arch}.{tag}", False

    return load


MODELS.register("digits-clip")(ModelEntry(
    build=lambda cin, n: build("digits-clip", cin, n),
    block_names=("1", "2", "3", "last"),
    help="open_clip CLIP for 8x8 digits (ViT 2x2 patches, 3 layers; 2-layer text tower), trained contrastively "
         "on the source split with the class prompts; zero-shot head; blocks 1, 2, 3 (a transformer layer each), last",
    native=(1, 10),
    zero_shot=True,
    # Adam at digits' 3e-3 leaves both transformers at chance (loss ln 10 throughout, measured); 3e-4 learns.
    recipe={"lr": 3e-4},
))
for _name, (_arch, _tag, _used) in CLIP_MODELS.items():
    MODELS.register(_name)(ModelEntry(
        build=functools.partial(build, _arch, tag=_tag),
        block_names=("1", "2", "3", "4", "last") if _arch.startswith("RN") else ("1", "2", "3", "last"),
        help=f"open_clip {_arch} with OpenAI's weights ({_tag!r}), image tower + zero-shot head ({_used})",
        weights=_hub_weights(_name, _arch, _tag),
        native=(3, 1000),
        zero_shot=True,
        transform=clip_transform(_arch, _tag),
    ))
