"""Models and the benchmark's image size: the one-line refusal and the fixes it suggests."""

from __future__ import annotations

import pytest


def test_the_size_error_suggests_fixes_that_fit() -> None:
    """What check_input_fits suggests for a ViT on 8x8 digits does fit; a CNN that fits passes."""
    import re

    from ftbench.errors import UsageError
    from ftbench.models.base import check_input_fits

    with pytest.raises(UsageError) as e:
        check_input_fits("timm/vit_tiny_patch16_224", 1, (8, 8), "digits")
    fixes = [f.rstrip(",;") for f in re.findall(r"timm/vit_tiny_patch16_224:\S+", str(e.value).split("build the ViT")[1])]
    assert len(fixes) == 2
    for fix in fixes:
        check_input_fits(fix, 1, (8, 8), "digits")  # no error
    for fits in ("digits-resnet", "digits-vit", "timm/resnet18"):
        check_input_fits(fits, 1, (8, 8), "digits")


def test_builtin_model_modules_are_where_each_model_registers() -> None:
    """get_model_entry imports only BUILTIN_MODULE[name] (so a digits-resnet run imports no timm):
    every built-in model is in the table, under the module that registers it."""
    import importlib
    import pkgutil

    import ftbench.models as pkg
    from ftbench.models.base import BUILTIN_MODULE, MODELS

    where = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        before = set(MODELS.names())
        importlib.import_module(f"ftbench.models.{info.name}")
        where.update({n: info.name for n in set(MODELS.names()) - before})
    assert {n: where.get(n, BUILTIN_MODULE[n]) for n in MODELS.names()} == BUILTIN_MODULE
    assert set(MODELS.names()) == set(BUILTIN_MODULE)


def test_size_check_is_skipped_only_for_a_cached_scratch_source_model(tmp_path, monkeypatch) -> None:
    """A warm run skips the meta-device size check (2 s of imports) only where a source model trained
    on these very images is in the cache; given weights, another image size, or no cache: checked."""
    import dataclasses

    import torch

    from ftbench.data.base import get_benchmark
    from ftbench.train.pretrain import cache_path, trained_here
    from ftbench.spec import RunSpec
    from ftbench.plan.resolve import resolve

    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path))
    source = get_benchmark("digits").source(resolve(RunSpec()))
    cpu = torch.device("cpu")
    assert not trained_here("digits-resnet", source, cpu, None, source.train)  # empty cache
    path = cache_path("digits-resnet", source, cpu)
    path.parent.mkdir(parents=True)
    path.touch()
    assert trained_here("digits-resnet", source, cpu, None, source.train)
    assert trained_here("digits-resnet", source, cpu, "scratch", source.train)
    assert not trained_here("digits-resnet", source, cpu, str(path), source.train)  # a weights file
    assert not trained_here("digits-resnet", None, cpu, None, source.train)  # no source task (id-ood)
    bigger = dataclasses.replace(source.train, x=torch.zeros(2, 1, 16, 16), y=torch.zeros(2, dtype=torch.long))
    assert not trained_here("digits-resnet", source, cpu, None, bigger)
