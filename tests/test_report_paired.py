"""``ftbench report DIR --compare-methods A B``: paired per-seed differences with a t interval."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ftbench.report.paired import compare_methods, difference, sentence

SMALL = Path(__file__).resolve().parent / "data" / "results_small"


def test_the_interval_is_student_s_t_over_the_seeds_both_have() -> None:
    a = pd.Series([1.0, 2.0, 3.0, 9.0], index=[0, 1, 2, 5])
    b = pd.Series([0.0, 0.0, 0.0], index=[0, 1, 2])  # seed 5 has no B: not paired
    p = difference(a, b, "col", "OOD")
    half = 4.302652729749464 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n), sd = 1
    assert (p.n, p.mean, p.sd) == (3, 2.0, 1.0)
    assert p.low == pytest.approx(2 - half, rel=1e-12) and p.high == pytest.approx(2 + half, rel=1e-12)
    assert not p.resolved and p.seeds_needed == 4  # t(0.975, 3)/2 = 1.59 < 2 <= t(0.975, 2)/sqrt(3) = 2.48
    text = sentence(p, "lp-ft", "full")
    assert text.startswith("lp-ft − full, OOD (col): +2.0 points, 95 % CI [-0.5, +4.5], n = 3: not resolved at 3 seeds")
    assert "about 4 seeds" in text
    resolved = difference(pd.Series([5.0, 6.0, 7.0]), pd.Series([0.0, 0.0, 0.0]), "col", "ID")
    assert resolved.resolved and resolved.seeds_needed is None and "lp-ft is ahead" in sentence(resolved, "lp-ft", "b")


def test_rows_are_compared_on_the_runs_the_tables_select() -> None:
    from ftbench.report.table import label_columns, select
    from ftbench.results.store import read_results

    df, _ = read_results(SMALL)
    pairs = compare_methods(df, "block 1", "last layer", "val")
    chosen = label_columns(select(df, "val"))
    one = chosen[(chosen["column"] == "label-flip")]
    per_seed = {r: one[one["row"] == r].set_index("seed")["ood_acc"] for r in ("block 1", "last layer")}
    p = next(p for p in pairs if p.column == "label-flip" and p.measure == "OOD")
    assert p.mean == pytest.approx(float((per_seed["block 1"] - per_seed["last layer"]).dropna().mean()))


def test_the_cli_prints_the_table_and_refuses_what_it_cannot_do(cli, tmp_path: Path) -> None:
    r = cli("report", str(SMALL), "--compare-methods", "block 1", "last layer")
    assert r.code == 0 and "block 1 − last layer, OOD (label-flip)" in r.out and "95 % CI" in r.out
    r = cli("report", str(SMALL), "--compare-methods", "block 1", "last layer", "--format", "json")
    assert {p["measure"] for p in json.loads(r.out)} >= {"ID", "OOD"}
    r = cli("report", str(SMALL), "--compare-methods", "block 9", "last layer")
    assert r.code == 2 and "no row 'block 9'" in r.err and "accepted:" in r.err


def test_tables_mark_cells_ahead_of_or_behind_a_named_row(cli) -> None:
    """``--mark-vs full``: a cell is marked exactly where ``--compare-methods ROW full`` resolves the
    paired difference on that column and measure, ↑ ahead and ↓ behind; the caption says so."""
    from ftbench.report.paired import mark_against
    from ftbench.report.table import build
    from ftbench.results.store import read_results

    df, _ = read_results(SMALL)
    grid = build(df, "shifts", "val")
    marked = mark_against(grid, "FT")  # a display name names the row too
    expected = {}
    for row in ("block 1", "last layer"):
        for p in compare_methods(df, row, "full", "val"):
            if p.measure in ("OOD", "ID"):
                expected[(row, p.column, p.measure)] = ("up" if p.mean > 0 else "down") if p.resolved else ""
    got = {(r, g, s): c.mark for (r, g, s), c in grid.cells.items() if r != "full"}
    assert got == expected and marked == sum(1 for m in expected.values() if m) > 0
    assert not any(c.mark for (r, _, _), c in grid.cells.items() if r == "full")
    assert "↑/↓: ahead of / behind FT in the same column" in grid.caption
    md = cli("report", SMALL, "--format", "markdown", "--mark-vs", "full").out
    assert "↑" in md and "↓" in md and f"{marked} cell(s) marked" in md
    tex = cli("report", SMALL, "--format", "latex", "--mark-vs", "full").out
    assert r"$^{\uparrow}$" in tex and "↑" not in tex and "↓" not in tex  # pdflatex takes it as it is
    records = json.loads(cli("report", SMALL, "--format", "json", "--mark-vs", "full").out)["cells"]
    assert sum(1 for r in records if r.get("mark")) == marked


@pytest.mark.parametrize("args, message", [
    (("--mark-vs", "nope"), "error: --mark-vs: no row 'nope' in the table; accepted: 'block 1', 'last layer', 'full'"),
    (("--mark-vs", "full", "--table", "blocks"), "error: --mark-vs marks cells against a row of methods"),
    (("--mark-vs", "full", "--compare-methods", "full", "block 1"), "error: --mark-vs marks cells of the tables"),
    (("--mark-vs", " "), "error: --mark-vs expects a row name"),
])
def test_mark_vs_refuses_what_it_cannot_mark(cli, args: tuple[str, ...], message: str) -> None:
    r = cli("report", SMALL, *args)
    assert r.code == 2 and r.err.strip().splitlines()[-1].startswith(message), r.err
