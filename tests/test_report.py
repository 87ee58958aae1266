"""Report aggregation against a hand-made results folder (golden files) and its protocol."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from ftbench.report.table import select
from ftbench.results.store import read_results

# Tolerances: means and standard deviations of hand-made float64 numbers (exact to ~1e-15);
# pytest.approx's default (1e-6 relative) only absorbs the order of summation.

DATA = Path(__file__).parent / "data" / "results_small"
GOLDEN = Path(__file__).parent / "golden"


EXT = {"terminal": "txt", "markdown": "md", "latex": "tex", "html": "html", "csv": "csv", "json": "json"}


@pytest.mark.parametrize("table", ["shifts", "blocks", "methods", "corruptions"])
@pytest.mark.parametrize("fmt", list(EXT))
def test_report_matches_golden(cli, tmp_path: Path, table: str, fmt: str) -> None:
    """Golden files were checked by hand against tests/data/make_results_small.py's numbers."""
    golden = (GOLDEN / f"{table}.{EXT[fmt]}").read_text()
    r = cli("report", DATA, "--table", table, "--format", fmt, "-o", tmp_path / "t")
    assert r.code == 0, r.err
    assert (tmp_path / "t").read_text() == golden
    assert "1 run(s) not ok" in r.err  # the failed run is announced, not tabulated
    if fmt != "terminal":  # stdout gets the same text
        assert cli("report", DATA, "--table", table, "--format", fmt).out == golden


def test_formats_are_well_formed() -> None:
    import json
    import xml.etree.ElementTree as ET

    doc = json.loads((GOLDEN / "methods.json").read_text())
    cell = next(c for c in doc["cells"] if c["row"] == "block 1" and c["column"] == "average" and c["metric"] == "OOD")
    assert cell["mean"] == pytest.approx((84 + 70 + 51 + 86 + 76 + 55) / 6) and cell["n"] == 2
    ET.fromstring((GOLDEN / "shifts.html").read_text())  # parses as XML: tags balanced
    tex = (GOLDEN / "shifts.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\textbf{73.0 $\pm$ 4.2}" in tex
    assert "Gaussian noise s5" in tex and "±" not in tex  # display names (ftbench.report.names)


def test_corruption_mean_is_per_seed_then_over_seeds() -> None:
    from ftbench.report.table import build

    df, _ = read_results(DATA)
    grid = build(df, "corruptions")
    mean = grid.cells[("block 1", "OOD", "mean")]
    # seed 0: (contrast 84 + gaussian 70) / 2 = 77; seed 1: (86 + 76) / 2 = 81.
    assert mean.mean == pytest.approx(79.0) and mean.std == pytest.approx(pd.Series([77.0, 81.0]).std())


def test_filter_group_by_and_metric(cli) -> None:
    r = cli("report", DATA, "--format", "csv", "--filter", "shift=label-flip")
    assert r.code == 0 and "corruption" not in r.out and "label-flip" in r.out
    r = cli("report", DATA, "--format", "csv", "--filter", "seed=1", "--filter", "method=full")
    assert r.code == 0 and ",1," in r.out and "block 1" not in r.out
    r = cli("report", DATA, "--format", "markdown", "--group-by", "shift")
    assert r.code == 0 and r.out.count("| tuned |") == 2
    assert "### shift=corruption" in r.out and "### shift=label-flip" in r.out
    r = cli("report", DATA, "--format", "csv", "--metric", "val_acc", "--filter", "shift=label-flip")
    assert r.code == 0 and "target val" in r.out
    for args, msg in [(["--filter", "nope=1"], "unknown filter column 'nope'"),
                      (["--filter", "noequals"], "--filter expects key=value"),
                      (["--group-by", "nope"], "unknown group-by column 'nope'"),
                      (["--metric", "nope"], "unknown metric 'nope'"),
                      (["--table", "nope"], "unknown table 'nope'; accepted: shifts, blocks, methods, corruptions"),
                      (["--select", "best"], "unknown selection 'best'"),
                      (["--filter", "shift=weather"], "--filter shift=weather matches no run; shift has: corruption, label-flip"),
                      (["--summary", "x.md"], "--summary needs --baseline"),
                      (["--plot", "x.gif"], "unsupported plot format '.gif'")]:
        r = cli("report", DATA, *args)
        assert r.code == 2 and msg in r.err and r.err.strip().splitlines()[-1].startswith("error:"), (args, r.err)


def test_selection_uses_validation_never_test() -> None:
    df, _ = read_results(DATA)
    chosen = select(df, "target-val")
    b1 = chosen[(chosen["blocks"] == "1") & (chosen["corruption"] == "gaussian_noise")].set_index("seed")
    # seed 0: lr 1e-3 has val 80 (test 70); lr 1e-2 has val 70 (test 90). Validation wins.
    assert b1.loc[0, "lr"] == 1e-3 and b1.loc[0, "ood_acc"] == 70.0
    oracle = select(df, "oracle")
    o1 = oracle[(oracle["blocks"] == "1") & (oracle["corruption"] == "gaussian_noise")].set_index("seed")
    assert o1.loc[0, "ood_acc"] == 90.0


def test_a_benchmark_metric_is_selected_on_the_same_metric_of_target_validation() -> None:
    from ftbench.report.table import build

    df, _ = read_results(DATA)
    cells = (df["blocks"] == "1") & (df["corruption"] == "gaussian_noise") & (df["seed"] == 0)
    # As a WILDS benchmark reports them: worst-group accuracy on target val and test; here the
    # run that is worse on val_acc (lr 1e-2) is the better one on val_worst_group_acc.
    df["val_worst_group_acc"] = float("nan")
    df["ood_worst_group_acc"] = float("nan")
    df.loc[cells & (df["lr"] == 1e-3), ["val_worst_group_acc", "ood_worst_group_acc"]] = [40.0, 30.0]
    df.loc[cells & (df["lr"] == 1e-2), ["val_worst_group_acc", "ood_worst_group_acc"]] = [60.0, 50.0]
    pick = lambda m: select(df, "target-val", metric=m).set_index(["blocks", "corruption", "seed"])  # noqa: E731
    assert pick("ood_worst_group_acc").loc[("1", "gaussian_noise", 0), "lr"] == 1e-2
    assert pick("ood_acc").loc[("1", "gaussian_noise", 0), "lr"] == 1e-3  # accuracy tables: val_acc
    # Rows without the metric (other cells) keep accuracy selection rather than an arbitrary pick.
    assert pick("ood_worst_group_acc").loc[("1", "gaussian_noise", 1), "lr"] == \
        pick("ood_acc").loc[("1", "gaussian_noise", 1), "lr"]
    assert "worst_group_acc (where the runs have it)" in build(df, metric="ood_worst_group_acc").caption


def test_cells_are_mean_and_sample_std_over_seeds() -> None:
    from ftbench.report.table import build

    df, _ = read_results(DATA)
    t = build(df)
    cell = t.cells[("block 1", "corruption (gaussian_noise, s5)", "OOD")]
    assert cell.mean == pytest.approx(73.0) and cell.std == pytest.approx(pd.Series([70.0, 76.0]).std())
    assert cell.n == 2 and cell.best
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
    assert r.out == (GOLDEN / "shifts.md").read_text()
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
    assert r.code == 2 and "unknown format 'docx'; accepted: terminal, markdown, latex, html, csv, json" in r.err


def test_terminal_report_marks_best(cli) -> None:
    r = cli("report", DATA)
    assert r.code == 0
    assert "73.0 ± 4.2 *" in r.out and "n = 2 seeds" in r.out


@pytest.mark.parametrize("table", ["shifts", "blocks", "methods", "corruptions"])
def test_latex_compiles(tmp_path: Path, table: str) -> None:
    """The LaTeX output is a valid booktabs table (compiled when pdflatex is installed)."""
    import subprocess

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,landscape]{geometry}\n"
                   f"\\begin{{document}}\n\\input{{{GOLDEN / (table + '.tex')}}}\n\\end{{document}}\n")
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
