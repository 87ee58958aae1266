"""Shared fixtures: a per-session model cache and a CLI runner that captures output."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pretrained source models are built once per test session, in a temporary cache."""
    path = tmp_path_factory.mktemp("ftbench-cache")
    old = os.environ.get("FTBENCH_CACHE")
    os.environ["FTBENCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("FTBENCH_CACHE", None)
    else:
        os.environ["FTBENCH_CACHE"] = old


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrained model for the ID→OOD protocol on a fetched benchmark (which refuses --weights
    scratch): a random resnet26-cifar's state dict (test_clip.py has its own, a digits-clip)."""
    import torch

    from ftbench.models.base import get_model_entry

    path = tmp_path_factory.mktemp("weights") / "resnet26-cifar.pt"
    torch.manual_seed(0)
    torch.save(get_model_entry("resnet26-cifar").build(3, 10).state_dict(), path)
    return path


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``ftbench ARGS`` in-process; returns exit code, stdout and stderr."""
    from ftbench.cli import main

    def run(*args: str) -> CliResult:
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run
