"""Report aggregation against a hand-made results folder (golden files) and its protocol."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from ftbench.report.table import aggregate, select
from ftbench.results.store import read_results

DATA = Path(__file__).parent / "data" / "results_small"
GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("fmt, golden", [("markdown", "report_small.md"), ("csv", "report_small.csv")])
def test_report_matches_golden(cli, fmt: str, golden: str) -> None:
    r = cli("report", DATA, "--format", fmt)
    assert r.code == 0, r.err
    assert r.out == (GOLDEN / golden).read_text()
    assert "1 run(s) not ok" in r.err  # the failed run is announced, not tabulated


def test_selection_uses_validation_never_test() -> None:
    df, _ = read_results(DATA)
    chosen = select(df, "target-val")
    b1 = chosen[(chosen["blocks"] == "1") & (chosen["shift"] == "corruption")].set_index("seed")
    # seed 0: lr 1e-3 has val 80 (test 70); lr 1e-2 has val 70 (test 90). Validation wins.
    assert b1.loc[0, "lr"] == 1e-3 and b1.loc[0, "ood_acc"] == 70.0
    oracle = select(df, "oracle")
    o1 = oracle[(oracle["blocks"] == "1") & (oracle["shift"] == "corruption")].set_index("seed")
    assert o1.loc[0, "ood_acc"] == 90.0


def test_cells_are_mean_and_sample_std_over_seeds() -> None:
    df, _ = read_results(DATA)
    t = aggregate(df)
    cell = t.cells[(t.cells["row"] == "block 1") & (t.cells["column"].str.startswith("corruption"))].iloc[0]
    assert cell.ood_mean == pytest.approx(73.0) and cell.ood_std == pytest.approx(pd.Series([70.0, 76.0]).std())
    assert cell.n == 2
    assert t.rows == ["block 1", "last layer", "full"]
    assert "oracle" not in t.caption.lower() and "target validation" in t.caption


def test_oracle_tables_say_so(cli) -> None:
    r = cli("report", DATA, "--format", "markdown", "--select", "oracle")
    assert r.code == 0 and "ORACLE" in r.out


def test_corrupt_and_foreign_files_are_skipped_with_a_warning(cli, tmp_path: Path) -> None:
    shutil.copytree(DATA, tmp_path / "r")
    (tmp_path / "r" / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    pd.DataFrame({"x": [1, 2]}).to_parquet(tmp_path / "r" / "foreign.parquet")
    r = cli("report", tmp_path / "r", "--format", "markdown")
    assert r.code == 0
    assert r.out == (GOLDEN / "report_small.md").read_text()
    assert "skipped" in r.err and "broken.parquet" in r.err and "foreign.parquet" in r.err


def test_report_of_nothing_is_a_usage_error(cli, tmp_path: Path) -> None:
    r = cli("report", tmp_path / "missing")
    assert r.code == 2 and r.err.count("\n") == 1 and "does not exist" in r.err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "bad.parquet").write_bytes(b"garbage")
    r = cli("report", tmp_path / "empty")
    assert r.code == 2 and "no readable ftbench results" in r.err.splitlines()[-1]
    r = cli("report", tmp_path / "empty" / "bad.parquet")
    assert r.code == 2 and r.err.count("\n") == 1 and "cannot use results file" in r.err
    r = cli("report", DATA, "--format", "docx")
    assert r.code == 2 and "unknown format 'docx'; accepted: terminal, markdown, csv" in r.err


def test_terminal_report_marks_best(cli) -> None:
    r = cli("report", DATA)
    assert r.code == 0
    assert "73.0 ± 4.2 *" in r.out and "n = 2 seeds" in r.out
