"""What the sweep executor tests share: a suite file fixture factory and the result set they compare."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ftbench.results.store import read_results
from ftbench.plan.suites import expand_suite
from ftbench.sweep.local import run_sweep

COLUMNS = ["run_id", "step", "final", "status", "id_acc", "ood_acc", "val_acc", "source_val_acc"]


def write_suite(tmp_path_factory: pytest.TempPathFactory, text: str) -> Path:
    f = tmp_path_factory.mktemp("suite") / "benchmarks.toml"
    f.write_text(text)
    return f


def result_set(out: Path) -> pd.DataFrame:
    """Every row of a results folder (no unreadable file allowed), in a canonical order."""
    df, problems = read_results(out)
    assert not problems
    return df[COLUMNS].sort_values(["run_id", "step", "final"]).reset_index(drop=True)


def reference_results(suite_file: Path, tmp_path_factory: pytest.TempPathFactory, suite: str = "tiny") -> pd.DataFrame:
    """The uninterrupted result set of ``suite``, run in this process, one run after the other."""
    out = tmp_path_factory.mktemp("reference")
    run_sweep(expand_suite(suite, suite_file), out, "cpu", progress=False, threads=1)
    return result_set(out)
