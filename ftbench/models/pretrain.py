"""Source models: pretrained on a benchmark's source split and cached on disk.

The cache key is a hash of the model name, the source task's identity, the pretraining recipe and
the device type,
so a model is reused across runs and sweeps and rebuilt when missing or unreadable. Files are
written to a temporary name and renamed into place, and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from ftbench.data.base import SourceTask
from ftbench.models.base import BlockModel, get_model_entry
from ftbench.train.loop import fit

PRETRAIN_VERSION = 1
RECIPE = {"optimizer": "adam", "lr": 3e-3, "wd": 5e-4, "epochs": 40, "batch_size": 64, "seed": 0}


def cache_dir() -> Path:
    """``$FTBENCH_CACHE`` or ``~/.cache/ftbench``."""
    return Path(os.environ.get("FTBENCH_CACHE") or Path.home() / ".cache" / "ftbench")


def cache_path(model: str, source: SourceTask, device: torch.device) -> Path:
    # The device type is part of the key: CUDA pretraining (bf16) gives different weights than CPU,
    # and results on one device must not depend on which device happened to fill the cache first.
    key = {"v": PRETRAIN_VERSION, "model": model, "source": source.key, "recipe": RECIPE,
           "device": torch.device(device).type}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{model}-{digest}.pt"


def pretrained(model: str, source: SourceTask, device: torch.device) -> BlockModel:
    """The source model for ``(model, source)`` on ``device``: from the cache, or trained now."""
    entry = get_model_entry(model)
    net = entry.build(int(source.train.x.shape[1]), source.num_classes)
    path = cache_path(model, source, device)
    if path.is_file():
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.to(device).eval()
        except Exception as e:  # corrupt or foreign file: rebuild it
            print(f"warning: cached source model {path} is unreadable ({type(e).__name__}); rebuilding",
                  file=sys.stderr)
    net = _train(net, source, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return net.eval()


def _train(net: BlockModel, source: SourceTask, device: torch.device) -> BlockModel:
    torch.manual_seed(RECIPE["seed"])
    net = net.to(device).train()
    for m in net.modules():  # fresh init under the recipe's seed, independent of build order
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    data = source.train.to(device)
    g = torch.Generator().manual_seed(RECIPE["seed"])
    steps = RECIPE["epochs"] * max(1, len(data) // RECIPE["batch_size"])
    fit(net, net.parameters(), data, lr=RECIPE["lr"], wd=RECIPE["wd"], steps=steps,
        batch_size=RECIPE["batch_size"], optimizer=RECIPE["optimizer"], generator=g)
    return net
