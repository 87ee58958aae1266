"""The parquet store and the pretrained-model cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ftbench.data.base import get_benchmark
from ftbench.models import pretrain
from ftbench.results.store import completed_ids, read_results, write_result
from ftbench.spec import RunSpec, resolve


def test_write_is_atomic_and_overwrites_in_place(tmp_path: Path, monkeypatch) -> None:
    row = {"run_id": "abc", "benchmark": "digits", "shift": "corruption", "method": "none", "blocks": "",
           "seed": 0, "status": "ok", "id_acc": 1.0, "ood_acc": 2.0, "val_acc": 3.0}
    write_result(tmp_path, row)
    # A crash during the write leaves the previous file intact and no temporary behind.
    import pyarrow.parquet as pq

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        write_result(tmp_path, {**row, "ood_acc": 99.0})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc.parquet"]
    df, problems = read_results(tmp_path)
    assert not problems and df.iloc[0]["ood_acc"] == 2.0
    assert completed_ids(tmp_path) == {"abc"}


def test_hidden_and_temporary_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / ".abc.parquet.123.tmp").write_bytes(b"partial")
    (tmp_path / ".hidden.parquet").write_bytes(b"partial")
    assert completed_ids(tmp_path) == set()
    df, problems = read_results(tmp_path)
    assert df.empty and not problems


def test_pretrained_model_is_cached_and_rebuilt_when_corrupt(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path))
    spec = resolve(RunSpec(shift="subpopulation"))
    source = get_benchmark("digits").source(spec)
    first = pretrain.pretrained(spec.model, source, torch.device("cpu"))
    path = pretrain.cache_path(spec.model, source, torch.device("cpu"))
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == [path.name]
    calls = []
    real_train = pretrain._train
    monkeypatch.setattr(pretrain, "_train", lambda *a: calls.append(1) or real_train(*a))
    again = pretrain.pretrained(spec.model, source, torch.device("cpu"))
    assert calls == []  # reused, not retrained
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    path.write_bytes(b"not a checkpoint")
    rebuilt = pretrain.pretrained(spec.model, source, torch.device("cpu"))
    assert calls == [1] and "unreadable" in capsys.readouterr().err
    # Pretraining is deterministic: the rebuilt model equals the first one.
    for a, b in zip(first.state_dict().values(), rebuilt.state_dict().values()):
        assert torch.equal(a, b)
    # The source model is actually good on its own task.
    from ftbench.train.loop import accuracy

    assert accuracy(rebuilt, source.test) > 90.0
