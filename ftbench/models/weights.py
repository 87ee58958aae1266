"""Weight files (``--weights PATH``, alias ``--checkpoint``) and a classifier fit on given weights.

``read_state_dict`` reads a state dict with ``torch.load(weights_only=True)`` (plain, or under
``state_dict``/``model``; a ``module.`` prefix dropped); ``load_weights`` puts it into a model in
its own layout or in the layout of the network it wraps; ``given_weights`` says what a run starts
from (a file, the model's hub weights, or ``scratch``); ``fit_head`` fits only the classifier on the
source split when the weights came without one for the benchmark's classes.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ftbench.errors import UsageError
from ftbench.models.base import BlockModel, ModelEntry

SCRATCH = "scratch"  # --weights scratch: random initialisation, trained on the source split


ACCEPTED = ("a state dict (tensors by name) saved by torch.save, zip or legacy format, plain or under "
            "'state_dict' / 'model'")


def read_state_dict(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (``torch.load(weights_only=True)``): plain, or under ``state_dict``/``model``.

    A ``module.`` prefix (DataParallel) is dropped. Anything else is a one-line :class:`UsageError`.
    ``mmap``: map a zip-format file instead of reading it (to check it, as resolution does).
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"weights file {str(p)!r} not found")
    unreadable = UsageError(f"weights file {str(p)!r} is not a readable PyTorch checkpoint (torch.save format): "
                            f"not a weights file; accepted: {ACCEPTED}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(p))
    except pickle.UnpicklingError as e:
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(e))  # either wording of torch
        if found is None:  # not a pickle at all, e.g. a truncated download or another format
            raise unreadable from None
        raise UsageError(f"weights file {str(p)!r} holds Python objects besides tensors ({found.group(1)}), which "
                         "weights_only=True refuses to load; save the state dict alone") from None
    except Exception:  # noqa: BLE001 - any file: a truncated legacy pickle raises IndexError, struct.error, ...
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
        import timm.models

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
    from ftbench.catalog import depends_on

    depends_on(p)  # a cached expansion holding this answer is stale once the file (or a symlink's target) changes
    if not p.is_file():
        raise UsageError(f"weights file {w!r} not found; --weights takes a state-dict file or 'scratch'")
    st = p.stat()
    _check_weights_file(str(p.resolve()), st.st_size, st.st_mtime_ns)
    return str(p.resolve())


@functools.lru_cache(maxsize=64)
def _check_weights_file(path: str, size: int, mtime_ns: int) -> None:
    """Read ``path`` as a state dict once per version of the file (a suite names it in every run):
    a file that is not one is one error line when the run is resolved, not a failed run later."""
    try:
        read_state_dict(path, mmap=True)
    except UsageError:  # mapping can refuse what reading takes (a file of an older torch.save): read it
        read_state_dict(path)


HEAD_RECIPE = {"solver": "lbfgs", "l2": 1e-3, "max_iter": 200}  # a classifier fit on given weights' features


@dataclass
class Given:
    """Pretrained weights given for a run: the model holding them, and whether its classifier came too."""

    model: BlockModel
    head_loaded: bool
    key: Callable[[], str]  # identity of the weights, for the cache key of a classifier fit on them


def trains_from_scratch(entry: ModelEntry, weights: str | None) -> bool:
    """Whether a resolved ``--weights`` value means random initialisation trained on the source split:
    ``scratch``, or the default for a model without hub weights."""
    return weights == SCRATCH or (weights is None and entry.weights is None)


def given_weights(entry: ModelEntry, name: str, in_channels: int, num_classes: int,
                  weights: str | None) -> Given | None:
    """The weights a run starts from: a state-dict file, the model's own hub weights (its default),
    or None — train from random initialisation (``scratch``, and every model without hub weights)."""
    if trains_from_scratch(entry, weights):
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
