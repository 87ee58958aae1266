"""--checkpoints: evaluation during fine-tuning, one row per checkpoint, selection among them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from ftbench.report.table import build, select
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.execution.runner import execute

BASE = RunSpec(shift="corruption", method="surgical", blocks=("1",), steps=20, lr=1e-2)


def test_checkpoint_rows_and_untouched_training() -> None:
    plain = execute(BASE, "cpu")
    rows = execute(dataclasses.replace(BASE, checkpoints=4), "cpu")
    assert len(plain) == 1 and len(rows) == 4
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert [r["final"] for r in rows] == [False, False, False, True]
    assert len({r["run_id"] for r in rows}) == 1
    # Evaluating in between (eval mode, then back to train mode) does not perturb training.
    for k in ("id_acc", "ood_acc", "val_acc", "source_val_acc"):
        assert rows[-1][k] == plain[0][k], k
    # Checkpoints differ from each other: the model was evaluated while it trained.
    assert len({r["val_acc"] for r in rows}) > 1


def test_lp_ft_checkpoints_count_fine_tuning_steps_only() -> None:
    rows = execute(RunSpec(shift="label-flip", method="lp-ft", steps=10, checkpoints=2), "cpu")
    assert [r["step"] for r in rows] == [5, 10]


def test_checkpoints_resolution() -> None:
    assert resolve(dataclasses.replace(BASE, checkpoints=1)).run_id == resolve(BASE).run_id
    assert resolve(dataclasses.replace(BASE, checkpoints=3)).run_id != resolve(BASE).run_id
    assert resolve(RunSpec(method="linear-probe", checkpoints=5)).checkpoints is None
    from ftbench.errors import UsageError

    with pytest.raises(UsageError, match="checkpoints must be a positive integer"):
        resolve(dataclasses.replace(BASE, checkpoints=0))


def test_selection_among_checkpoints(cli, tmp_path: Path) -> None:
    r = cli("run", "--block", "1", "--steps", "20", "--lr", "0.01", "--checkpoints", "4", "--out", tmp_path)
    assert r.code == 0, r.err
    df = pd.read_parquet(next(tmp_path.glob("*.parquet")))
    assert len(df) == 4
    best = select(df, "target-val", "best").iloc[0]
    final = select(df, "target-val", "final").iloc[0]
    assert best["val_acc"] == df["val_acc"].max()  # early stopping on target validation
    assert bool(final["final"]) and final["step"] == 20
    assert "checkpoints" in build(df).caption and "checkpoints" not in build(df, checkpoint="final").caption
    r = cli("report", tmp_path, "--format", "csv", "--checkpoint", "final")
    assert r.code == 0 and f"{final['ood_acc']:.4f}" in r.out
    r = cli("report", tmp_path, "--checkpoint", "middle")
    assert r.code == 2 and "unknown checkpoint 'middle'; accepted: best, final" in r.err
