"""timm backbones: any timm model by name, with named blocks (the CIFAR networks of the papers are in
:mod:`ftbench.models.cifar`, weight files in :mod:`ftbench.models.weights`).

Block partitions, named the way the papers name them (``"last"`` is always exactly the linear
classifier, ``model.head``):

* **ResNet** (timm's ``ResNet`` class: ``resnet18/26/50/101``, ``wide_resnet50_2``, ResNeXt, SE-ResNet,
  …): 1 = stem (``conv1``, ``bn1``) + ``layer1``, 2 = ``layer2``, 3 = ``layer3``, 4 = ``layer4``.
* **ViT** (timm's ``VisionTransformer``): 1 = patch embedding + class/register tokens + position
  embedding + the first third of the transformer blocks, 2 = the second third, 3 = the last third +
  the final norm (``norm``/``fc_norm``/attention pool): the convention of ``digits-vit``
  (``ftbench/models/vit.py``), where the final norm ends the feature extractor.
* **ConvNeXt**: 1 = stem + ``stages.0``, 2/3/4 = ``stages.1/2/3`` (4 also takes the head's norm).
* **Any other timm model**: blocks derived from its top-level stages — timm's own coarse
  ``group_matcher`` (the grouping timm uses for layer-wise learning-rate decay): the stem goes with
  the first stage and whatever follows the last stage (a final norm or conv) with the last one;
  without a ``group_matcher``, the stage modules named in its ``feature_info``. An isotropic
  transformer outside the ``VisionTransformer`` class (BEiT, EVA, DINOv3) — one stage per transformer
  block — is grouped in thirds as a ViT. A model that has none gets a clear error.

Names: ``timm/NAME`` is any timm model (``timm/resnet18``, ``timm/convnext_atto``,
``timm/resnet50.tv_in1k``), optionally with keyword arguments for ``timm.create_model``:
``timm/vit_tiny_patch16_224:img_size=32,patch_size=8``. Registered names: ``resnet50``, ``vit-b16``,
``convnext-tiny``.

Weights (docs/models.md): a timm model with weights on the Hugging Face hub starts from them
(``pretrained=True``); ``--weights PATH`` (alias ``--checkpoint``) loads a local state dict instead
(``torch.load(weights_only=True)``, :mod:`ftbench.models.weights`); ``--weights scratch`` trains it from random initialisation on
the benchmark's source split, which is what models without hub weights (the CIFAR ones, digits) do
by default. See :func:`ftbench.train.pretrain.pretrained` for what becomes the source model.
"""

from __future__ import annotations

import ast
import difflib
import functools
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.models import ConvNeXt, ResNet, VisionTransformer
from torch import nn

from ftbench.data.preprocess import INTERPOLATIONS, InputTransform
from ftbench.errors import UsageError
from ftbench.models.base import BUILD_SEED, MODELS, BlockModel, ModelEntry, PiecewiseForward, model_input, set_input_stats
from ftbench.models.base import ParamView as _ParamView

PREFIX = "timm/"


# ---------------------------------------------------------------------------------------------
# Partitions: parameter -> block, then the fewest whole modules that hold each block


@dataclass(frozen=True)
class Partition:
    """Which modules (paths relative to the model) and loose parameters make up each block.

    ``items[block]`` lists, in module order, ``(path, None)`` for a whole module and
    ``(owner path, (parameter names))`` for parameters held directly by a module whose other
    parameters belong to other blocks (a ViT's class token and position embedding).
    """

    kind: str  # resnet | vit | convnext | transformer (other isotropic ViTs) | derived
    items: tuple[tuple[str, tuple[tuple[str, tuple[str, ...] | None], ...]], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b for b, _ in self.items) + ("last",)


def _modules_of(root: nn.Module, prefix: str, block_of: dict[int, str], order: list[str]) -> Partition:
    """The fewest whole modules (plus loose parameters) covering ``block_of``'s assignment."""
    items: dict[str, list[tuple[str, tuple[str, ...] | None]]] = {b: [] for b in order}
    seen: set[int] = set()  # parameters already placed: a module shared by two parents is listed once

    def visit(m: nn.Module, path: str) -> None:
        params = list(m.parameters())
        fresh = [p for p in params if id(p) not in seen]
        if not fresh:
            return
        owners = {block_of[id(p)] for p in params}
        if len(owners) == 1 and len(fresh) == len(params):
            items[owners.pop()].append((path, None))
            seen.update(id(p) for p in params)
            return
        loose: dict[str, list[str]] = {}
        for n, p in m.named_parameters(recurse=False):
            if id(p) not in seen:
                loose.setdefault(block_of[id(p)], []).append(n)
                seen.add(id(p))
        for b, names in loose.items():
            items[b].append((path, tuple(names)))
        for c, child in m.named_children():
            visit(child, f"{path}.{c}" if path else c)

    visit(root, prefix)
    empty = [b for b in order if not items[b]]
    if empty:
        raise UsageError(f"block partition leaves block(s) {', '.join(empty)} empty")
    return Partition("", tuple((b, tuple(items[b])) for b in order))


def _resolve_items(model: nn.Module, partition: Partition) -> OrderedDict[str, list[nn.Module]]:
    out: OrderedDict[str, list[nn.Module]] = OrderedDict()
    for block, items in partition.items:
        mods = []
        for path, names in items:
            m = model.get_submodule(path)
            mods.append(m if names is None else _ParamView(m, names))
        out[block] = mods
    return out


def _stage_rules(net: nn.Module) -> tuple[str, Callable[[str], str | None], list[str]] | None:
    """The paper-named partition of a known family: (kind, parameter name -> block, block order)."""
    if isinstance(net, ResNet):
        def resnet(n: str) -> str | None:
            if re.match(r"(conv1|bn1|layer1)\.", n):
                return "1"
            m = re.match(r"layer([234])\.", n)
            return m.group(1) if m else None

        return "resnet", resnet, ["1", "2", "3", "4"]
    if isinstance(net, VisionTransformer):
        depth = len(net.blocks)
        if depth < 3:
            return None

        def vit(n: str) -> str | None:
            if re.match(r"(cls_token|reg_token|pos_embed|patch_embed\.|norm_pre\.)", n):
                return "1"
            m = re.match(r"blocks\.(\d+)\.", n)
            if m:
                return str(1 + int(m.group(1)) * 3 // depth)
            if re.match(r"(norm|fc_norm|attn_pool)\.", n):
                return "3"
            return None

        return "vit", vit, ["1", "2", "3"]
    if isinstance(net, ConvNeXt):
        k = len(net.stages)

        def convnext(n: str) -> str | None:
            if re.match(r"(stem|stages\.0)\.", n):
                return "1"
            m = re.match(r"stages\.(\d+)\.", n)
            if m:
                return str(int(m.group(1)) + 1)
            if re.match(r"(norm_pre|head)\.", n):  # the classifier itself is no longer in ``net``
                return str(k)
            return None

        return "convnext", convnext, [str(i + 1) for i in range(k)]
    return None


def _derived(net: nn.Module, arch: str) -> tuple[dict[int, str], list[str]]:
    """Blocks from timm's coarse ``group_matcher``: stem with the first stage, tail with the last."""
    from timm.models._manipulate import group_with_matcher

    try:
        matcher = net.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError, AssertionError):  # none, or no coarse grouping (RDNet)
        matcher = None
    if not matcher:
        stages = _feature_info_stages(net)
        if stages is not None:
            return stages
        raise UsageError(
            f"timm model {arch!r} ({type(net).__name__}) has no known block partition and none can be derived "
            "(it defines no stage grouping, timm's group_matcher); ftbench partitions the resnet, vit and "
            "convnext families and every timm model that groups its stages"
        )
    named = list(net.named_parameters())
    groups = group_with_matcher(iter(named), matcher)
    lists = [list(groups[k]) for k in sorted(groups)]
    if isinstance(matcher, dict):
        stem = matcher.get("stem")
        if stem and len(lists) > 1 and all(re.match(stem, n) for n in lists[0]):
            lists[1] = lists[0] + lists[1]
            del lists[0]
        specs = [s for s in matcher.values() if s]
        pats = [re.compile(p if isinstance(p, str) else p[0])
                for s in specs for p in ([s] if isinstance(s, str) else s)]
        if len(lists) > 1 and not any(p.match(n) for n in lists[-1] for p in pats):
            lists[-2] += lists[-1]  # unmatched params after the last stage (a final norm): its features
            del lists[-1]
    if len(lists) < 2:
        raise UsageError(f"timm model {arch!r}: its stage grouping gives a single block; no partition to tune")
    params = dict(named)
    order = [str(i + 1) for i in range(len(lists))]
    return {id(params[n]): b for b, names in zip(order, lists) for n in names}, order


def _feature_info_stages(net: nn.Module) -> tuple[dict[int, str], list[str]] | None:
    """Blocks from the stage modules timm names in ``feature_info`` (for models without a
    ``group_matcher``): a parameter outside every stage goes with the next stage in module order
    (the stem with the first; a downsampling layer with the stage it feeds), or the last stage if
    none follows (a final norm)."""
    paths = []
    for f in getattr(net, "feature_info", None) or []:
        path = f.get("module") if isinstance(f, dict) else None
        try:
            if path and path not in paths and any(True for _ in net.get_submodule(path).parameters()):
                paths.append(path)
        except AttributeError:
            return None
    if len(paths) < 2:
        return None
    named = list(net.named_parameters())
    stage = [next((i for i, sp in enumerate(paths) if n.startswith(sp + ".")), None) for n, _ in named]
    nxt: int | None = None
    for j in range(len(named) - 1, -1, -1):  # fill the gaps from the following stage
        if stage[j] is None:
            stage[j] = nxt
        else:
            nxt = stage[j]
    last = next((s for s in reversed(stage) if s is not None), len(paths) - 1)
    order = [str(i + 1) for i in range(len(paths))]
    return {id(p): order[s if s is not None else last] for (_, p), s in zip(named, stage)}, order


def _isotropic(blocks: list[nn.Module]) -> bool:
    """Transformer blocks of one kind and one size (not stages of different widths, as EfficientNet's)."""
    kinds = {type(b) for b in blocks}
    sizes = {sum(p.numel() for p in b.parameters()) for b in blocks}
    return len(kinds) == 1 and len(sizes) == 1 and not issubclass(kinds.pop(), (nn.Sequential, nn.ModuleList))


def partition_timm(net: nn.Module, arch: str, prefix: str = "net") -> Partition:
    """The block partition of a timm model whose classifier was taken out (see :class:`TimmBlockModel`)."""
    rules = _stage_rules(net)
    if rules is not None:
        kind, rule, order = rules
        named = list(net.named_parameters())
        assigned = {n: rule(n) for n, _ in named}
        if all(assigned.values()):
            block_of = {id(p): assigned[n] for n, p in named}
            return Partition(kind, _modules_of(net, prefix, block_of, order).items)
    # An unknown family, or a variant with parameters the family's rule does not place.
    block_of, order = _derived(net, arch)
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) >= 3 and len(order) == len(blocks) \
            and _isotropic(list(blocks)):
        # An isotropic transformer outside timm's VisionTransformer class (EVA, DINOv3, BEiT, relpos
        # ViTs): one stage per transformer block, grouped in thirds as the ViT partition.
        depth = len(blocks)
        block_of = {i: str(1 + (int(b) - 1) * 3 // depth) for i, b in block_of.items()}
        return Partition("transformer", _modules_of(net, prefix, block_of, ["1", "2", "3"]).items)
    return Partition("derived", _modules_of(net, prefix, block_of, order).items)


# ---------------------------------------------------------------------------------------------
# timm models


def _classifier_path(net: nn.Module, arch: str) -> str:
    path = getattr(net, "pretrained_cfg", {}).get("classifier")
    if isinstance(path, str):
        try:
            if net.get_submodule(path) is not None:
                return path
        except AttributeError:
            pass
    clf = net.get_classifier() if hasattr(net, "get_classifier") else None
    for name, m in net.named_modules():
        if clf is not None and m is clf and name:
            return name
    raise UsageError(f"timm model {arch!r} has no single classifier layer ftbench can use as its 'last' block")


class TimmBlockModel(BlockModel):
    """A timm model whose classifier is ``self.head`` and whose other parameters are partitioned.

    ``self.net`` is the timm model with its classifier replaced by ``Identity`` (so every parameter
    has one owner and one ``state_dict`` key: ``net.*`` and ``head.*``); ``features(x)`` is timm's
    ``forward_head(forward_features(x), pre_logits=True)`` and ``forward(x) = head(features(x))``,
    which is exactly the timm model's own forward.
    """

    def __init__(self, net: nn.Module, head: nn.Linear, classifier_path: str, partition: Partition, arch: str,
                 head_loaded: bool = False) -> None:
        super().__init__()
        self.net = net
        self.head = head
        self.arch = arch
        self.classifier_path = classifier_path  # where the head sits in timm's own state dict (``fc``, ``head.fc``)
        self.head_loaded = head_loaded  # built with hub weights whose classifier fits num_classes
        self.partition = partition
        # The hub weights' input transform (timm's pretrained_cfg), set by the runner for a run that
        # starts from them (ftbench/models/base.py applied_transform); None: the benchmark's images as they are.
        self.input_transform: InputTransform | None = None
        self.input_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self.register_buffer("in_scale", None, persistent=False)
        self.register_buffer("in_shift", None, persistent=False)

    def set_input_stats(self, mean, std) -> None:  # noqa: ANN001
        set_input_stats(self, mean, std)

    @property
    def kind(self) -> str:
        return self.partition.kind

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        out = _resolve_items(self, self.partition)
        out["last"] = [self.head]
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(model_input(self, x)), pre_logits=True)

    def residual_units(self) -> list[tuple[str, str]]:
        net, kind = self.net, self.kind
        if kind == "resnet":
            return [(f"net.layer{s}.{i}", str(s)) for s in range(1, 5) for i in range(len(getattr(net, f"layer{s}")))]
        if kind == "vit":
            depth = len(net.blocks)
            return [(f"net.blocks.{i}", str(1 + i * 3 // depth)) for i in range(depth)]
        if kind == "convnext":
            return [(f"net.stages.{s}.blocks.{i}", str(s + 1))
                    for s in range(len(net.stages)) for i in range(len(net.stages[s].blocks))]
        return []

    def reset_parameters(self) -> None:
        """Re-draw the ViT tokens and position embedding as timm initialises them.

        Source pretraining (``--weights scratch``) re-initialises every module with
        ``reset_parameters`` under the recipe's seed; these are parameters of the ViT itself, with
        no module of their own to reset (as in ``digits-vit``).
        """
        with torch.no_grad():
            for name, std in (("pos_embed", 0.02), ("cls_token", 1e-6), ("reg_token", 1e-6)):
                p = getattr(self.net, name, None)
                if isinstance(p, nn.Parameter):
                    (nn.init.trunc_normal_ if name == "pos_embed" else nn.init.normal_)(p, std=std)

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keys of a timm model's own state dict (``conv1.weight``, ``fc.weight``) -> this model's."""
        clf = self.classifier_path + "."
        out = {("head." + k[len(clf):]) if k.startswith(clf) else "net." + k: v for k, v in sd.items()}
        w = out.get("head.weight")
        if w is not None and w.dim() == 4 and w.shape[2:] == (1, 1):  # a 1×1 convolution classifier
            out["head.weight"] = w.flatten(1)
        return out

    def first_conv(self) -> str | None:
        path = getattr(self.net, "pretrained_cfg", {}).get("first_conv")
        return f"net.{path}.weight" if isinstance(path, str) else None


class _CuttableTimm(PiecewiseForward, TimmBlockModel):
    """A known family, cut at block boundaries for the frozen-prefix fast path (train/prefix.py).

    Each piece runs exactly the ops of timm's ``forward_features`` + ``forward_head`` for its block.
    """

    def _pieces(self) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        net = self.net
        head = [("last", lambda h: self.head(h))]
        if self.kind == "resnet":
            return [
                ("1", lambda x: net.layer1(net.maxpool(net.act1(net.bn1(net.conv1(model_input(self, x))))))),
                ("2", lambda h: net.layer2(h)),
                ("3", lambda h: net.layer3(h)),
                ("4", lambda h: net.forward_head(net.layer4(h), pre_logits=True)),
            ] + head
        if self.kind == "vit":
            depth = len(net.blocks)
            cut = [next(i for i in range(depth) if 1 + i * 3 // depth == b) for b in (1, 2, 3)] + [depth]
            return [
                ("1", lambda x: net.blocks[cut[0]:cut[1]](net.norm_pre(net.patch_drop(net._pos_embed(
                    net.patch_embed(model_input(self, x))))))),
                ("2", lambda h: net.blocks[cut[1]:cut[2]](h)),
                ("3", lambda h: net.forward_head(net.norm(net.blocks[cut[2]:cut[3]](h)), pre_logits=True)),
            ] + head
        # convnext
        k = len(net.stages)
        pieces = [("1", lambda x: net.stages[0](net.stem(model_input(self, x))))]
        pieces += [(str(i + 1), functools.partial(lambda i, h: net.stages[i](h), i)) for i in range(1, k - 1)]
        pieces += [(str(k), lambda h: net.forward_head(net.norm_pre(net.stages[k - 1](h)), pre_logits=True))]
        return pieces + head



def parse_name(name: str) -> tuple[str, dict[str, Any]]:
    """``timm/ARCH[:k=v,...]`` -> (ARCH, kwargs for ``timm.create_model``)."""
    body = name[len(PREFIX):] if name.startswith(PREFIX) else name
    arch, _, rest = body.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise UsageError(f"model {name!r}: expected timm/NAME:key=value,... after ':', got {item!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    for key, value in kwargs.items():  # timm reads them only in forward: a bad one would stop a run midway
        if "drop" in key and key.endswith("rate") and (isinstance(value, bool) or not isinstance(value, int | float)
                                                       or not 0 <= value <= 1):
            raise UsageError(f"model {name!r}: {key} must be a number in [0, 1] (a dropout probability), got {value!r}")
    for reserved in ("pretrained", "num_classes", "in_chans"):
        if reserved in kwargs:
            raise UsageError(f"model {name!r}: {reserved} is set by ftbench (use --weights, the benchmark's classes/channels)")
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(PREFIX + c for c in close)}" if close else ""
        raise UsageError(f"unknown timm model {arch!r}{hint} (python -c 'import timm; print(timm.list_models())' lists them)")
    return arch, kwargs


def create(arch: str, in_chans: int, num_classes: int, pretrained: bool = False, **kwargs: Any) -> TimmBlockModel:
    """Build timm model ``arch`` as a :class:`TimmBlockModel` (with hub weights when ``pretrained``).

    The build runs under a fixed seed, so random initialisation does not depend on the global RNG.
    """
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BUILD_SEED)
            net = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as e:  # an unknown keyword argument
        raise UsageError(f"timm model {arch!r}: {e}") from None
    # timm loads the hub classifier only when it fits num_classes; otherwise it is re-initialised.
    head_loaded = bool(pretrained) and net.pretrained_cfg.get("num_classes") == num_classes
    path = _classifier_path(net, arch)
    head = net.get_submodule(path)
    if isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.stride == (1, 1) and head.groups == 1:
        # A 1×1 convolution on the pooled 1×1 map (BiT's ResNetV2, DLA, ...) is a linear layer.
        lin = nn.Linear(head.in_channels, head.out_channels, bias=head.bias is not None,
                        device=head.weight.device, dtype=head.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(head.weight.flatten(1))
            if head.bias is not None:
                lin.bias.copy_(head.bias)
        head = lin
    if not isinstance(head, nn.Linear):
        raise UsageError(f"timm model {arch!r}: its classifier {path!r} is a {type(head).__name__}, "
                         "not a linear layer; ftbench needs a linear 'last' block")
    net.set_submodule(path, nn.Identity())  # the head lives on the wrapper: one owner per parameter
    partition = partition_timm(net, arch)
    cls = _CuttableTimm if partition.kind in FAMILY_BLOCKS else TimmBlockModel
    return cls(net, head, path, partition, arch, head_loaded)


def hub_offline(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (None: it can): ``HF_HUB_OFFLINE`` set, or no TCP
    connection to ``$HF_ENDPOINT`` (default huggingface.co) within ``timeout`` seconds. Asked once
    before loading, so that an offline machine gets its answer in seconds instead of after
    huggingface_hub's retries (45 s of warnings, measured)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"no connection to {host}:{port} ({type(e).__name__})"
    return None


def _hub_weights(arch: str, kwargs: dict[str, Any]) -> Callable[[int, int], tuple[BlockModel, str, bool]]:
    def load(in_chans: int, num_classes: int) -> tuple[BlockModel, str, bool]:
        import huggingface_hub.constants as hub

        offline = hub_offline()
        where = "the local hub cache (offline)" if offline else "the Hugging Face hub"
        print(f"note: loading pretrained weights of timm model {arch!r} from {where}", file=sys.stderr)
        was = hub.HF_HUB_OFFLINE
        hub.HF_HUB_OFFLINE = bool(offline) or was  # offline: read the local cache only, no retries
        try:
            model = create(arch, in_chans, num_classes, pretrained=True, **kwargs)
        except UsageError:
            raise
        except Exception as e:  # offline: huggingface_hub's LocalEntryNotFoundError, OSError, ...
            why = offline or f"{type(e).__name__}"
            raise UsageError(
                f"cannot load pretrained weights of timm model {arch!r} from the hub ({why}; not in the local hub "
                "cache, $HF_HOME or ~/.cache/huggingface either); no network: use --weights PATH (a local state dict "
                "of the model), or --weights scratch to train it from random initialisation on the source split"
            ) from None
        finally:
            hub.HF_HUB_OFFLINE = was
        cfg = model.net.pretrained_cfg
        return model, f"hub:{cfg.get('architecture', arch)}.{cfg.get('tag') or ''}", model.head_loaded

    return load


FAMILY_BLOCKS = {"resnet": ("1", "2", "3", "4", "last"), "vit": ("1", "2", "3", "last"),
                 "convnext": ("1", "2", "3", "4", "last")}


def _entry(arch: str, kwargs: dict[str, Any], help: str, block_names: tuple[str, ...] | None = None,
           native: tuple[int, int] = (3, 1000)) -> ModelEntry:
    if block_names is None:  # from a build on the meta device: no memory, no initialisation
        with torch.device("meta"):
            block_names = create(arch, native[0], native[1], **kwargs).block_names()
    hub = timm.models.is_model_pretrained(arch)
    return ModelEntry(
        build=lambda cin, n: create(arch, cin, n, **kwargs),
        block_names=tuple(block_names),
        help=help,
        weights=_hub_weights(arch, kwargs) if hub else None,
        native=native,
        transform=timm_transform(arch, kwargs) if hub else None,
    )


def timm_transform(arch: str, kwargs: dict[str, Any] | None = None) -> InputTransform | None:
    """The evaluation transform of ``arch``'s hub weights, from timm's ``pretrained_cfg`` (read without
    the weights; the default tag's, as ``create_model(pretrained=True)`` loads): ``input_size``,
    ``crop_pct``, ``interpolation``, ``crop_mode``, ``mean``, ``std`` — what
    ``timm.data.create_transform(**resolve_data_config(model=...))`` builds for evaluation. An
    ``img_size`` given after ``:`` is the size the model is built for, and replaces ``input_size``."""
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        return None
    size = tuple(int(v) for v in cfg.input_size[-2:])
    img = (kwargs or {}).get("img_size")
    if isinstance(img, int) and not isinstance(img, bool):
        size = (img, img)
    elif isinstance(img, tuple | list) and len(img) == 2:
        size = (int(img[0]), int(img[1]))
    interp = cfg.interpolation if cfg.interpolation in INTERPOLATIONS else "bicubic"
    name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture)
    return InputTransform(size=(size[0], size[1]), crop_pct=float(cfg.crop_pct or 0.875), interpolation=interp,
                          mean=tuple(float(v) for v in cfg.mean), std=tuple(float(v) for v in cfg.std),
                          crop_mode="squash" if cfg.crop_mode == "squash" else "center",
                          source=f"timm {name} pretrained_cfg")


@functools.lru_cache(maxsize=None)
def timm_entry(name: str) -> ModelEntry:
    """The entry of ``timm/ARCH[:k=v,...]``: blocks found by building it on the meta device."""
    arch, kwargs = parse_name(name)
    try:
        with torch.device("meta"):
            probe = create(arch, 3, 10, **kwargs)
    except UsageError:
        raise
    except Exception as e:  # a model timm cannot build with these arguments
        raise UsageError(f"cannot build timm model {name!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    kind = {"derived": "derived from its stages", "transformer": "thirds of its transformer blocks"}.get(probe.kind, probe.kind)
    return _entry(arch, kwargs, f"timm {arch} ({kind} partition)", probe.block_names())


MODELS.add_family(PREFIX, lambda name: timm_entry(name), f"or {PREFIX}NAME for any timm model (e.g. {PREFIX}resnet18)")


# ---------------------------------------------------------------------------------------------
# Registered models

MODELS.register("resnet50")(_entry(
    "resnet50.tv_in1k", {}, "timm resnet50.tv_in1k, torchvision's ImageNet weights (block 1 = stem + layer1)",
    FAMILY_BLOCKS["resnet"]))
MODELS.register("vit-b16")(_entry(
    "vit_base_patch16_224.augreg2_in21k_ft_in1k", {}, "timm ViT-B/16, 224 px, ImageNet-21k -> 1k "
    "(blocks 1 = embeddings + transformer blocks 0-3, 2 = 4-7, 3 = 8-11 + final norm)", FAMILY_BLOCKS["vit"]))
MODELS.register("convnext-tiny")(_entry(
    "convnext_tiny.fb_in1k", {}, "timm ConvNeXt-T, ImageNet-1k (block 1 = stem + stage 0, block 4 ends with the head's norm)",
    FAMILY_BLOCKS["convnext"]))
