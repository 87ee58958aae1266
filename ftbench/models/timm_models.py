"""Real backbones: any timm model by name, and the CIFAR networks of the papers, with named blocks.

Block partitions, named the way the papers name them (``"last"`` is always exactly the linear
classifier, ``model.head``):

* **ResNet** (timm's ``ResNet`` class: ``resnet18/26/50/101``, ``wide_resnet50_2``, ResNeXt, SE-ResNet,
  …): 1 = stem (``conv1``, ``bn1``) + ``layer1``, 2 = ``layer2``, 3 = ``layer3``, 4 = ``layer4``.
* **ViT** (timm's ``VisionTransformer``): 1 = patch embedding + class/register tokens + position
  embedding + the first third of the transformer blocks, 2 = the second third, 3 = the last third +
  the final norm (``norm``/``fc_norm``/attention pool): the convention of ``digits-vit``
  (``ftbench/models/vit.py``), where the final norm ends the feature extractor.
* **ConvNeXt**: 1 = stem + ``stages.0``, 2/3/4 = ``stages.1/2/3`` (4 also takes the head's norm).
* **CIFAR ResNet-26** (``resnet26-cifar``) and **WideResNet-28-10** (``wrn-28-10``), defined here:
  1 = stem convolution + stage 1, 2 = stage 2, 3 = stage 3 (+ WRN's final BatchNorm).
* **Any other timm model**: blocks derived from its top-level stages — timm's own coarse
  ``group_matcher`` (the grouping timm uses for layer-wise learning-rate decay): the stem goes with
  the first stage and whatever follows the last stage (a final norm or conv) with the last one;
  without a ``group_matcher``, the stage modules named in its ``feature_info``. An isotropic
  transformer outside the ``VisionTransformer`` class (BEiT, EVA, DINOv3) — one stage per transformer
  block — is grouped in thirds as a ViT. A model that has none gets a clear error.

Names: ``timm/NAME`` is any timm model (``timm/resnet18``, ``timm/convnext_atto``,
``timm/resnet50.tv_in1k``), optionally with keyword arguments for ``timm.create_model``:
``timm/vit_tiny_patch16_224:img_size=32,patch_size=8``. Registered names: ``resnet26-cifar``,
``wrn-28-10``, ``resnet50``, ``vit-b16``, ``convnext-tiny``.

Weights (docs/models.md): a timm model with weights on the Hugging Face hub starts from them
(``pretrained=True``); ``--weights PATH`` (alias ``--checkpoint``) loads a local state dict instead
(``torch.load(weights_only=True)``); ``--weights scratch`` trains it from random initialisation on
the benchmark's source split, which is what models without hub weights (the CIFAR ones, digits) do
by default. See :func:`ftbench.models.pretrain.pretrained` for what becomes the source model.
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import os
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models import ConvNeXt, ResNet, VisionTransformer
from torch import nn

from ftbench.data.base import SourceTask
from ftbench.errors import UsageError
from ftbench.models.base import MODELS, BlockModel, ModelEntry, PiecewiseForward
from ftbench.train.loop import autocast

PREFIX = "timm/"
SCRATCH = "scratch"  # --weights scratch: random initialisation, trained on the source split
BUILD_SEED = 0  # models are built under a fixed seed, so a build does not depend on the global RNG


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


class _ParamView(nn.Module):
    """Parameters held directly by a module, seen as one module for :meth:`BlockModel.blocks`.

    Built afresh on each ``blocks()`` call and never registered as a submodule (as ``digits-vit``'s
    embedding view), so the parameters stay their owner's: one ``state_dict`` key each, counted once.
    """

    def __init__(self, owner: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        for n in names:
            self.register_parameter(n.replace(".", "_"), getattr(owner, n))


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

    @property
    def kind(self) -> str:
        return self.partition.kind

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        out = _resolve_items(self, self.partition)
        out["last"] = [self.head]
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

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
                ("1", lambda x: net.layer1(net.maxpool(net.act1(net.bn1(net.conv1(x)))))),
                ("2", lambda h: net.layer2(h)),
                ("3", lambda h: net.layer3(h)),
                ("4", lambda h: net.forward_head(net.layer4(h), pre_logits=True)),
            ] + head
        if self.kind == "vit":
            depth = len(net.blocks)
            cut = [next(i for i in range(depth) if 1 + i * 3 // depth == b) for b in (1, 2, 3)] + [depth]
            return [
                ("1", lambda x: net.blocks[cut[0]:cut[1]](net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x)))))),
                ("2", lambda h: net.blocks[cut[1]:cut[2]](h)),
                ("3", lambda h: net.forward_head(net.norm(net.blocks[cut[2]:cut[3]](h)), pre_logits=True)),
            ] + head
        # convnext
        k = len(net.stages)
        pieces = [("1", lambda x: net.stages[0](net.stem(x)))]
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
    )


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


def lookup(name: str) -> ModelEntry:
    """A registered model, or any timm model as ``timm/NAME`` (see :func:`timm_entry`)."""
    if name in MODELS or not name.startswith(PREFIX):
        try:
            return MODELS.get(name)
        except UsageError as e:
            raise UsageError(f"{e}; or {PREFIX}NAME for any timm model (e.g. {PREFIX}resnet18)") from None
    return timm_entry(name)


# ---------------------------------------------------------------------------------------------
# CIFAR networks (not in timm): ResNet-26 and WideResNet-28-10


class _CifarBasicBlock(nn.Module):
    """He et al.'s basic block (conv-BN-ReLU-conv-BN + shortcut, ReLU), 1×1 conv + BN projection."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _CifarNet(PiecewiseForward, BlockModel):
    """Shared by the CIFAR networks: three stages, a stem, pieces for the prefix fast path."""

    stages: tuple[str, str, str] = ("layer1", "layer2", "layer3")

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _tail(self, h: torch.Tensor) -> torch.Tensor:  # after the last stage: to pooled features
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)

    def _pieces(self) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        s1, s2, s3 = (getattr(self, s) for s in self.stages)
        return [("1", lambda x: s1(self._stem(x))), ("2", lambda h: s2(h)), ("3", lambda h: self._tail(s3(h))),
                ("last", lambda h: self.head(h))]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for _, piece in self._pieces()[:-1]:
            x = piece(x)
        return x

    def residual_units(self) -> list[tuple[str, str]]:
        return [(f"{path}.{i}", str(k + 1)) for k, s in enumerate(self.stages)
                for path in [s if isinstance(getattr(self, s), nn.Sequential) else f"{s}.layer"]
                for i in range(len(self.get_submodule(path)))]

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Published checkpoints call the classifier ``fc``; here it is ``head``."""
        return {("head." + k[3:]) if k.startswith("fc.") else k: v for k, v in sd.items()}

    def first_conv(self) -> str | None:
        return "conv1.weight"


class CifarResNet(_CifarNet):
    """He et al. (2016, §4.2) CIFAR ResNet of depth 6n+2 (ResNet-26: n = 4).

    A 3×3 convolution (16·width channels) + BN + ReLU, three stages of n basic blocks with 16, 32,
    64 (× width) channels (stride 2 entering stages 2 and 3, with a 1×1 convolution + BN projection
    shortcut where the shape changes), global average pooling and a linear classifier.
    Blocks: 1 = stem + stage 1, 2 = stage 2, 3 = stage 3, last = classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int = 26, width: int = 1) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 26, ...), got {depth}")
        n = (depth - 2) // 6
        w = [16 * width, 32 * width, 64 * width]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BUILD_SEED)
            self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w[0])
            cin = w[0]
            for k, c in enumerate(w):
                layers = []
                for i in range(n):
                    layers.append(_CifarBasicBlock(cin, c, 2 if (k > 0 and i == 0) else 1))
                    cin = c
                setattr(self, f"layer{k + 1}", nn.Sequential(*layers))
            self.head = nn.Linear(cin, num_classes)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict([("1", [self.conv1, self.bn1, self.layer1]), ("2", [self.layer2]), ("3", [self.layer3]),
                            ("last", [self.head])])


class _WideBlock(nn.Module):
    """Zagoruyko & Komodakis' pre-activation block (BN-ReLU-conv-BN-ReLU-conv + shortcut).

    Parameter names follow the widely used reference implementation (xternalz/WideResNet-pytorch,
    as in RobustBench): ``bn1, conv1, bn2, conv2, convShortcut``. Where the width changes, the
    pre-activation is shared by the residual branch and the 1×1 projection shortcut.
    """

    def __init__(self, cin: int, cout: int, stride: int, drop: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop > 0:
            out = F.dropout(out, p=self.drop, training=self.training)
        out = self.conv2(out)
        return (x if self.convShortcut is None else self.convShortcut(pre)) + out


class _WideStage(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, drop: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[_WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(_CifarNet):
    """WRN-depth-k (Zagoruyko & Komodakis, 2016) for 32×32 images; WRN-28-10 has 36.5M parameters.

    A 3×3 convolution to 16 channels, three stages of (depth−4)/6 pre-activation blocks with 16k,
    32k, 64k channels (stride 2 entering stages 2 and 3), BN + ReLU, global average pooling and a
    linear classifier. Blocks: 1 = stem convolution + stage 1, 2 = stage 2, 3 = stage 3 + the final
    BN, last = classifier. Key layout of the reference implementation (``conv1``, ``block1.layer.0.bn1``,
    …, ``bn1``, ``fc``), so its checkpoints load with ``--weights``.
    """

    stages = ("block1", "block2", "block3")

    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, widen: int = 10, drop: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BUILD_SEED)
            self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
            self.block1 = _WideStage(n, w[0], w[1], 1, drop)
            self.block2 = _WideStage(n, w[1], w[2], 2, drop)
            self.block3 = _WideStage(n, w[2], w[3], 2, drop)
            self.bn1 = nn.BatchNorm2d(w[3])
            self.head = nn.Linear(w[3], num_classes)
            for m in self.modules():  # the reference initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        return super()._tail(F.relu(self.bn1(h)))

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        return OrderedDict([("1", [self.conv1, self.block1]), ("2", [self.block2]), ("3", [self.block3, self.bn1]),
                            ("last", [self.head])])

    def adapt_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # TRADES-style copies also hold an unused ``sub_block1``, which the forward pass never runs.
        return super().adapt_state_dict({k: v for k, v in sd.items() if not k.startswith("sub_block1.")})


# ---------------------------------------------------------------------------------------------
# Local checkpoints (--weights PATH)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (``torch.load(weights_only=True)``): plain, or under ``state_dict``/``model``.

    A ``module.`` prefix (DataParallel) is dropped. Anything else is a one-line :class:`UsageError`.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"weights file {str(p)!r} not found")
    unreadable = UsageError(f"weights file {str(p)!r} is not a readable PyTorch checkpoint (torch.save format)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(e))  # either wording of torch
        if found is None:  # not a pickle at all, e.g. a truncated download or another format
            raise unreadable from None
        raise UsageError(f"weights file {str(p)!r} holds Python objects besides tensors ({found.group(1)}), which "
                         "weights_only=True refuses to load; save the state dict alone") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError):
        raise unreadable from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise UsageError(f"weights file {str(p)!r} holds no state dict (a dict of tensors, plain or under "
                         "'state_dict' / 'model')")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_weights(model: BlockModel, path: str | Path, name: str = "") -> bool:
    """Load the state dict at ``path`` into ``model``; return whether its classifier was loaded too.

    Accepts this model's own layout (the pretrain cache, ``net.*``/``head.*``) or the layout of the
    network it wraps (a timm model's own keys, the CIFAR networks' ``fc``). Every parameter and buffer
    but the classifier's must be there with its shape (BatchNorm's ``num_batches_tracked`` may be
    missing); a first convolution for another number of input channels is adapted as timm adapts hub
    weights. A classifier of another shape is left as built (re-initialised): the source model then
    fits it on the source split.
    """
    sd = read_state_dict(path)
    ours = model.state_dict()
    adapt = getattr(model, "adapt_state_dict", None)
    if adapt is not None:
        other = adapt(sd)
        if len(set(other) & set(ours)) > len(set(sd) & set(ours)):
            sd = other
    head_keys = {f"head.{k}" for k in model.head.state_dict()}
    first = model.first_conv() if hasattr(model, "first_conv") else None
    if first in sd and first in ours and sd[first].dim() == 4 and sd[first].shape != ours[first].shape \
            and sd[first].shape[0] == ours[first].shape[0] and sd[first].shape[2:] == ours[first].shape[2:]:
        try:  # as timm adapts hub weights: summed to 1 channel, repeated and rescaled for more
            sd = {**sd, first: timm.models.adapt_input_conv(ours[first].shape[1], sd[first].float(),
                                                             base_chans=sd[first].shape[1]).to(sd[first].dtype)}
        except (NotImplementedError, ValueError, AssertionError):
            pass  # reported below as a key of another shape
    missing = [k for k in ours if k not in sd and k not in head_keys and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in ours]
    wrong = [k for k in ours if k in sd and k not in head_keys and sd[k].shape != ours[k].shape]
    if missing or unexpected or wrong:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        what = [f"{len(missing)} missing ({few(missing)})"] * bool(missing) + \
               [f"{len(unexpected)} unexpected ({few(unexpected)})"] * bool(unexpected) + \
               [f"{len(wrong)} of another shape ({few(wrong)})"] * bool(wrong)
        raise UsageError(f"weights file {str(path)!r} does not fit model {name or type(model).__name__!r}: "
                         f"keys {'; '.join(what)}")
    head_fits = all(k in sd and sd[k].shape == ours[k].shape for k in head_keys)
    load = {k: v for k, v in sd.items() if head_fits or k not in head_keys}
    with torch.no_grad():
        model.load_state_dict(load, strict=False)
    return head_fits


def resolve_weights(weights: str | None, entry: ModelEntry) -> str | None:
    """Canonical ``--weights`` value for a RunSpec: None (the model's default), ``scratch``, or an absolute path.

    ``scratch`` for a model trained from scratch anyway is its default (None), so both ask for one run.
    """
    if weights is None:
        return None
    w = str(weights).strip()
    if w == SCRATCH:
        return SCRATCH if entry.weights is not None else None
    p = Path(w).expanduser()
    if not p.is_file():
        raise UsageError(f"weights file {w!r} not found; --weights takes a state-dict file or 'scratch'")
    return str(p.resolve())


HEAD_RECIPE = {"solver": "lbfgs", "l2": 1e-3, "max_iter": 200}  # a classifier fit on given weights' features


@dataclass
class Given:
    """Pretrained weights given for a run: the model holding them, and whether its classifier came too."""

    model: BlockModel
    head_loaded: bool
    key: Callable[[], str]  # identity of the weights, for the cache key of a classifier fit on them


def given_weights(entry: ModelEntry, name: str, in_channels: int, num_classes: int,
                  weights: str | None) -> Given | None:
    """The weights a run starts from: a state-dict file, the model's own hub weights (its default),
    or None — train from random initialisation (``scratch``, and every model without hub weights)."""
    if weights == SCRATCH or (weights is None and entry.weights is None):
        return None
    if weights is None:
        assert entry.weights is not None
        model, key, head = entry.weights(in_channels, num_classes)
        return Given(model, head, lambda: key)
    model = entry.build(in_channels, num_classes)
    head = load_weights(model, weights, name)
    return Given(model, head, lambda: f"file:sha256:{_file_digest(weights)}")


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def fit_head(model: BlockModel, source: SourceTask, device: torch.device) -> BlockModel:
    """Fit only the classifier on the source split, on the frozen backbone's features (eval mode):
    L2-regularised logistic regression by full-batch L-BFGS from zero (``HEAD_RECIPE``), as the
    linear probe fits it (``TrainContext.linear_probe``)."""
    model = model.to(device).eval()
    dev = torch.device(device)
    with torch.no_grad(), autocast(dev):  # streamed splits (ImageNet-size sources) are decoded batch by batch
        feats = torch.cat([model.features(xb).float() for xb in source.train.to(dev).batches(256)])
    y = source.train.y.to(dev)
    head = model.head
    w = torch.zeros(head.weight.shape, device=dev, requires_grad=True)
    b = torch.zeros(head.bias.shape, device=dev, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=HEAD_RECIPE["max_iter"], tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(feats @ w.T + b, y) + 0.5 * HEAD_RECIPE["l2"] * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    return model


def block_parameter_counts(entry: ModelEntry) -> dict[str, int]:
    """Parameters per block of ``entry`` for its native input channels and classes (built on the meta device)."""
    with torch.device("meta"):
        model = entry.build(*entry.native)
    return {b: sum(p.numel() for p in model.block_parameters(b)) for b in model.block_names()}


# ---------------------------------------------------------------------------------------------
# Registered models

MODELS.register("resnet26-cifar")(ModelEntry(
    build=lambda cin, n: CifarResNet(cin, n, depth=26, width=1),
    block_names=("1", "2", "3", "last"),
    help="CIFAR ResNet-26 (He et al. 2016: 3 stages x 4 basic blocks, 16/32/64 ch; block 1 = stem + stage 1)",
    native=(3, 10),
))
MODELS.register("wrn-28-10")(ModelEntry(
    build=lambda cin, n: WideResNet(cin, n, depth=28, widen=10),
    block_names=("1", "2", "3", "last"),
    help="WideResNet-28-10 for CIFAR (Zagoruyko & Komodakis 2016; block 1 = stem + stage 1, block 3 ends with the final BN)",
    native=(3, 10),
))
MODELS.register("resnet50")(_entry(
    "resnet50.tv_in1k", {}, "timm resnet50.tv_in1k, torchvision's ImageNet weights (block 1 = stem + layer1)",
    FAMILY_BLOCKS["resnet"]))
MODELS.register("vit-b16")(_entry(
    "vit_base_patch16_224.augreg2_in21k_ft_in1k", {}, "timm ViT-B/16, 224 px, ImageNet-21k -> 1k "
    "(blocks 1 = embeddings + transformer blocks 0-3, 2 = 4-7, 3 = 8-11 + final norm)", FAMILY_BLOCKS["vit"]))
MODELS.register("convnext-tiny")(_entry(
    "convnext_tiny.fb_in1k", {}, "timm ConvNeXt-T, ImageNet-1k (block 1 = stem + stage 0, block 4 ends with the head's norm)",
    FAMILY_BLOCKS["convnext"]))
