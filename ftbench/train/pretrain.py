"""Source models: pretrained on a benchmark's source split and cached on disk.

The cache key is a hash of the model name, the source task's identity, the pretraining recipe and
the device type,
so a model is reused across runs and sweeps and rebuilt when missing or unreadable, or when its
bytes are not those recorded for its key when it was written (``<name>.pt.sha256``,
ftbench/integrity.py: another state dict put in its place, or a file of an older ftbench). Files are
written to a temporary name (``models/.<name>.pt.<pid>.tmp``) and renamed into place, and loaded
with ``weights_only=True``. Temporary files of killed writers are removed by the next process
that uses the cache (see :func:`clean_tmp`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ftbench import integrity
from ftbench.data.base import SourceTask
from ftbench.data.preprocess import InputTransform
from ftbench.environment import cache_dir
from ftbench.errors import disk_error
from ftbench.models.base import BlockModel, get_model_entry
from ftbench.models.weights import HEAD_RECIPE, given_weights, trains_from_scratch
from ftbench.train.loop import autocast, fit

# 2: CPU pretraining runs on one torch thread (CPU results depend on the thread count; version 1
# used torch's default), and digits-vit's architecture changed during development.
PRETRAIN_VERSION = 2
RECIPE = {"optimizer": "adam", "lr": 3e-3, "wd": 5e-4, "epochs": 40, "batch_size": 64, "seed": 0}


def cache_key(model: str, source: SourceTask, device: torch.device, weights: str | None = None) -> dict[str, Any]:
    """What a cached source model depends on (its file name is a hash of it, and its content hash
    record names it: ftbench/integrity.py)."""
    # The device type is part of the key: CUDA pretraining (bf16) gives different weights than CPU,
    # and results on one device must not depend on which device happened to fill the cache first.
    key = {"v": PRETRAIN_VERSION, "model": model, "source": source.key, "recipe": recipe_of(source, model),
           "device": torch.device(device).type}
    if weights is not None:  # a classifier fit on given weights; enters the key only then (older keys stay)
        key.update(weights=weights, recipe=HEAD_RECIPE)
    return key


def cache_path(model: str, source: SourceTask, device: torch.device, weights: str | None = None) -> Path:
    return _path_for(model, cache_key(model, source, device, weights))


def _path_for(model: str, key: dict[str, Any]) -> Path:
    """The cache file of a source model of ``model`` with :func:`cache_key` ``key``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{model.replace('/', '_').replace(':', '_')}-{digest}.pt"


def trained_here(model: str, source: SourceTask | None, device: torch.device, weights: str | None,
                 target: Any) -> bool:
    """Whether the source model of ``(model, source)`` was trained from scratch on this source split
    and is in the cache, and ``target``'s images are of the source's channels and size: then the
    model takes them, and the meta-device size check (``check_input_fits``, which costs a warm run
    ~2 s of torch imports) has nothing to find. Models with given or hub weights are always checked:
    their cache key needs the weights loaded, which is what the check comes before."""
    if source is None or (target.channels, target.image_size) != (source.train.channels, source.train.image_size):
        return False
    return trains_from_scratch(get_model_entry(model), weights) and cache_path(model, source, device).is_file()


def pretrained(model: str, source: SourceTask | None, device: torch.device, weights: str | None = None, *,
               channels: int | None = None, num_classes: int | None = None,
               input_stats: tuple[Any, Any] | None = None, transform: InputTransform | None = None) -> BlockModel:
    """The source model for ``(model, source)`` on ``device``: from the cache, or trained now.

    ``source=None`` (a protocol without a pretraining task of the benchmark's, whose ID task gets a
    new classifier anyway): the given weights as they are, built for ``channels`` inputs and
    ``num_classes`` classes, with no classifier fit; the resolved spec guarantees weights are given.

    ``weights`` is a resolved RunSpec's: None (the model's default), ``"scratch"`` or a state-dict
    file. Given weights (the file, or by default the model's own hub weights) are the source model
    when their classifier fits the source's classes; otherwise only the classifier is fit on the
    source split, on the frozen backbone (cached). Without weights the whole model is trained on
    the source split from random initialisation (cached). See docs/models.md.

    ``input_stats``: the benchmark's image normalisation (``Benchmark.input_stats``), which given
    weights pretrained on other statistics (OpenAI's CLIP towers) are adapted to before anything
    is fit or evaluated.

    ``transform``: the model's own input transform where the run applies it (``applied_transform``;
    None: the benchmark's images as they are): the model resizes and re-normalises every batch of
    another size to it, and a classifier fit on the source split is cached per transform.
    """
    entry = get_model_entry(model)

    def adapted(net: BlockModel) -> BlockModel:
        if hasattr(net, "input_transform") and (transform is None or net.input_transform is None):
            net.input_transform = transform  # a CLIP tower keeps its own (the same numbers, its tower's size)
        if input_stats is not None and hasattr(net, "set_input_stats"):
            net.set_input_stats(*input_stats)
        return net

    if source is None:
        assert channels is not None and num_classes is not None
        given = given_weights(entry, model, channels, num_classes, weights)
        if given is None:  # resolve() refuses this (Protocol.check_weights)
            raise ValueError(f"model {model!r} with weights {weights!r}: no pretrained weights and no pretraining task")
        return adapted(given.model).to(device).eval()
    given = given_weights(entry, model, source.train.channels, source.num_classes, weights)
    if given is not None:
        adapted(given.model)
    if given is not None and given.head_loaded:
        return given.model.to(device).eval()
    if given is not None and entry.zero_shot and source.prompts is not None:
        # A CLIP model's classifier for the source classes is its zero-shot head: nothing to fit or cache.
        net = given.model.to(device).eval()
        net.set_zero_shot_head(source.prompts)
        return net
    net = given.model if given is not None else entry.build(source.train.channels, source.num_classes)
    key = cache_key(model, source, device, given.key() if given is not None else None)
    if transform is not None:  # enters the key only then (older keys stay)
        key["input_transform"] = transform.key()
    path = _path_for(model, key)
    clean_tmp(path.parent)
    if path.is_file():
        # Believed only when it holds the very bytes written for this key (ftbench/integrity.py):
        # another valid state dict put in its place would otherwise be fine-tuned without a word.
        why = integrity.check(path, key)
        if why:
            print(f"warning: cached source model {path} is not used: {why}; rebuilding", file=sys.stderr)
        else:
            try:
                net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                return net.to(device).eval()
            except Exception as e:  # corrupt or foreign file: rebuild it
                print(f"warning: cached source model {path} is unreadable ({type(e).__name__}); rebuilding",
                      file=sys.stderr)
    net = _train(net, source, device, model) if given is None else fit_head(net, source, device)
    _save(net, path, key)
    return net.eval()


# A writer rewrites its temporary file continuously until the rename, so one untouched this long
# has no live writer — whatever its PID says on this host (a cache shared between hosts, e.g. a
# home folder on NFS seen by Slurm nodes, holds other hosts' PIDs, which mean nothing here).
TMP_SILENT_S = 60.0
# One untouched this long is stale even if a process with its PID lives here (a reused PID).
TMP_MAX_AGE_S = 3600.0


def clean_tmp(models: Path) -> int:
    """Remove the temporary files of killed writers in the cache folder ``models``; return how many.

    ``.<name>.pt.<pid>.tmp`` goes when its PID is no live process on this host and it has not
    been written to for :data:`TMP_SILENT_S`, or when it has not been written to for
    :data:`TMP_MAX_AGE_S` at all (a live writer never pauses that long).
    """
    removed = 0
    now = time.time()
    for f in models.glob(".*.pt.*.tmp"):
        pid = f.name[: -len(".tmp")].rsplit(".", 1)[-1]
        try:
            silent = now - f.stat().st_mtime
        except OSError:
            continue  # renamed or removed meanwhile
        if silent > TMP_MAX_AGE_S or (silent > TMP_SILENT_S and not (pid.isdigit() and _alive(int(pid)))):
            try:
                f.unlink()
                removed += 1
            except OSError:
                pass  # gone already, or not ours to remove
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists (another user's), or not a PID we can ask about: keep its file
    return True


def _save(net: nn.Module, path: Path, key: dict[str, Any]) -> None:
    """Write ``net``'s state dict to ``path`` atomically, with its content hash record for ``key``
    (written first: see ftbench/integrity.py); a full or read-only cache disk is a
    :class:`~ftbench.errors.DiskError` naming the cache file (and leaves no temporary file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:  # a file object: torch.save then chains the OSError of a failed write
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, fh)
        integrity.record(path, key, content=tmp)
        try:
            os.replace(tmp, path)
        except FileNotFoundError:  # removed by clean_tmp elsewhere after a long stall: just not cached
            print(f"warning: {tmp} vanished before it was renamed; the source model is not cached",
                  file=sys.stderr)
    except Exception as e:
        found = disk_error(e, path)
        if found is not None:
            raise found from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def recipe_of(source: SourceTask, model: str | None = None) -> dict:
    """The pretraining recipe of ``source``: its benchmark's (``SourceTask.recipe``), else ``RECIPE``;
    with the keys a model's entry overrides (``ModelEntry.recipe``: digits-clip's transformer towers
    need a tenth of the learning rate the small ResNets train with).

    Optional keys beyond RECIPE's: ``augment`` (``"crop-flip"``: a random crop of the image padded by
    4 px, reflected, and a horizontal flip with probability 1/2, per image on the device) and
    ``schedule`` (``"cosine"``: the learning rate decays from ``lr`` to 0 over the run).
    """
    r = RECIPE if source.recipe is None else source.recipe
    own = get_model_entry(model).recipe if model is not None else None
    return {**r, **own} if own else r


class CropFlip(nn.Module):
    """``net`` behind per-image random-crop + horizontal-flip augmentation (train mode only)."""

    def __init__(self, net: nn.Module, pad: int = 4) -> None:
        super().__init__()
        self.net, self.pad = net, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # global RNG of x's device: seeded by the recipe's torch.manual_seed
            n, _, h, w = x.shape
            p, dev = self.pad, x.device
            dy, dx = torch.randint(0, 2 * p + 1, (2, n, 1), device=dev)
            rows = (dy + torch.arange(h, device=dev))[:, :, None]  # n×h×1
            cols = (dx + torch.arange(w, device=dev))[:, None, :]  # n×1×w
            padded = F.pad(x, (p, p, p, p), mode="reflect").permute(0, 2, 3, 1)  # n×H×W×c
            x = padded[torch.arange(n, device=dev)[:, None, None], rows, cols].permute(0, 3, 1, 2)
            flip = torch.rand(n, device=dev) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return self.net(x)


def _train(net: BlockModel, source: SourceTask, device: torch.device, name: str = "model") -> BlockModel:
    # One CPU thread, whatever the caller's setting: the cached source model must not depend on
    # which process (a 1-thread sweep worker, a 2-thread `ftbench run`) happened to build it.
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        return _train_recipe(net, source, device, name)
    finally:
        torch.set_num_threads(threads)


def _train_recipe(net: BlockModel, source: SourceTask, device: torch.device, name: str = "model") -> BlockModel:
    r = recipe_of(source, name)
    torch.manual_seed(r["seed"])
    net = net.to(device).train()
    for m in net.modules():  # fresh init under the recipe's seed, independent of build order
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    data = source.train.to(device)
    g = torch.Generator().manual_seed(r["seed"])
    steps = r["epochs"] * max(1, len(data) // r["batch_size"])
    if r.get("augment") not in (None, "crop-flip") or r.get("schedule") not in (None, "cosine"):
        raise ValueError(f"unknown augment or schedule in pretraining recipe {r}")
    params = list(net.parameters())
    if getattr(net, "has_text", False):  # a CLIP model: contrastive, both towers (see ClassPromptLogits)
        if source.prompts is None:
            raise ValueError(f"model {name!r} has a text tower; its source split has no class prompts to train it on")
        net.text.train()
        params = [p for b in net.block_names() if b != "last" for p in net.block_parameters(b)] + net.text_parameters()
        model: nn.Module = ClassPromptLogits(net, source.prompts)
    else:
        model = net
    model = CropFlip(model) if r.get("augment") == "crop-flip" else model

    def cosine(opt: torch.optim.Optimizer, t: int) -> None:  # lr of step t (1-based), before its update
        for group in opt.param_groups:
            group["lr"] = r["lr"] * 0.5 * (1 + math.cos(math.pi * (t - 1) / steps))

    before_step = cosine if r.get("schedule") == "cosine" else None
    from ftbench.status import Task

    task = Task(f"source model {name}", steps, per_unit=max(1, len(data) // r["batch_size"]),
                about=f"training on {len(data):,} source images, once: it is cached for later runs")
    try:
        fit(model, params, data, lr=r["lr"], wd=r["wd"], steps=steps, batch_size=r["batch_size"],
            optimizer=r["optimizer"], generator=g, before_step=before_step,
            progress=lambda t, loss: task.update(t, float(loss)), progress_every=task.every)
    finally:
        task.close()
    if getattr(net, "has_text", False):
        net.set_zero_shot_head(source.prompts)  # the classifier of the source classes: their prompts' embeddings
    return net


class ClassPromptLogits(nn.Module):
    """A CLIP model's logits against its class prompts, for training both towers from scratch.

    ``logit_scale.exp() · f(x) · t_cᵀ`` with ``f`` the unit image embedding and ``t_c`` class c's
    embedding (mean over the templates of the unit caption embeddings, normalised: the zero-shot
    head, recomputed with gradients each step). Cross-entropy on these logits is the image-to-text
    half of CLIP's contrastive loss with the classes' captions as the candidate texts: what the
    embedded benchmark's CLIP (``digits-clip``) is pretrained with on the source split.
    """

    def __init__(self, net: nn.Module, prompts: Any) -> None:
        super().__init__()
        self.net, self.prompts = net, prompts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.logit_scale() * self.net.features(x) @ self.net.class_embeddings(self.prompts).T


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
