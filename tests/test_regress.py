"""Regression gates (ftbench.report.regress) on modified copies of the hand-made results folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftbench.errors import UsageError
from ftbench.report.regress import (
    AUTO_FALLBACK_POINTS,
    compare,
    load_baseline,
    parse_tolerance,
    render_summary,
    render_text,
)
from ftbench.report.table import select
from ftbench.results.store import read_results

# Tolerances: means of hand-made float64 numbers (exact to ~1e-15); pytest.approx's default
# (1e-6 relative) only absorbs the order of summation.

DATA = Path(__file__).parent / "data" / "results_small"
BASELINE_SMOKE = Path(__file__).parent / "data" / "baseline_smoke"

# The cell the tests move: surgical block 1 under gaussian noise (two seeds, two lrs in results_small).
LABEL = "digits/corruption (gaussian_noise, s5) · block 1"


def small() -> pd.DataFrame:
    return read_results(DATA)[0]


def in_cell(df: pd.DataFrame, shift: str = "corruption", method: str = "surgical", blocks: str = "1") -> pd.Series:
    """Rows of one cell; for corruption, the gaussian_noise/5 column."""
    m = (df["shift"] == shift) & (df["method"] == method) & (df["blocks"].fillna("") == blocks)
    if shift == "corruption":
        m &= df["corruption"] == "gaussian_noise"
    return m


def n_cells(df: pd.DataFrame) -> int:
    chosen = select(df)
    return len(chosen.groupby(["benchmark", "shift", "corruption", "severity", "model", "shots", "method", "blocks",
                               "variant"], dropna=False))


def shifted(df: pd.DataFrame, points: float, metric: str = "ood_acc") -> pd.DataFrame:
    """A copy with one metric of the block-1 cell moved by ``points`` in every run (selection unchanged)."""
    df = df.copy()
    df.loc[in_cell(df), metric] += points
    return df


def with_seeds(df: pd.DataFrame, n: int) -> pd.DataFrame:
    """A copy with seeds 0..n-1: seeds >= 2 are copies of seed (s % 2) under new run ids."""
    parts = [df]
    for s in range(2, n):
        extra = df[df["seed"] == s % 2].copy()
        extra["seed"] = s
        extra["run_id"] = extra["run_id"] + f"-s{s}"
        parts.append(extra)
    return pd.concat(parts, ignore_index=True)


def set_per_seed(df: pd.DataFrame, values: list[float], metric: str = "ood_acc") -> pd.DataFrame:
    """A copy where the block-1 cell has ``values[seed]`` for ``metric`` (in every lr of that seed)."""
    df = df.copy()
    for seed, v in enumerate(values):
        df.loc[in_cell(df) & (df["seed"] == seed), metric] = v
    return df


def test_identical_results_pass_with_everything_unchanged() -> None:
    df = small()
    c = compare(df, df.copy())
    assert not c.failed()
    assert len(c.changes) == 2 * n_cells(df)  # every cell, ood_acc and id_acc
    assert {x.verdict for x in c.changes} == {"unchanged"}
    assert all(x.delta == 0 and x.n_baseline == x.n_current == 2 for x in c.changes)
    assert render_text(c).splitlines()[-1].startswith("PASS")
    assert not compare(df, df.copy(), tolerance=0.0).failed()  # identical numbers pass even at tolerance 0


def test_drop_beyond_tolerance_fails_naming_the_cell() -> None:
    base = small()
    c = compare(shifted(base, -3.0), base, tolerance=1.0)
    assert c.failed()
    [reg] = c.by_verdict("regressed")
    assert (reg.cell, reg.metric) == (LABEL, "ood_acc")
    assert reg.baseline == pytest.approx(73.0) and reg.current == pytest.approx(70.0)
    assert reg.delta == pytest.approx(-3.0) and (reg.n_baseline, reg.n_current) == (2, 2)
    assert reg.p_value is None
    assert len(c.by_verdict("unchanged")) == len(c.changes) - 1
    text = render_text(c)
    assert LABEL in text and "73.00 -> 70.00" in text and "-3.00" in text
    assert text.splitlines()[-1].startswith("FAIL")


def test_drop_within_tolerance_passes() -> None:
    base = small()
    c = compare(shifted(base, -0.9), base, tolerance=1.0)
    assert not c.failed() and not c.by_verdict("regressed")
    assert render_text(c).splitlines()[-1].startswith("PASS")
    # The same drop fails a stricter gate; the tolerance is what decides.
    assert compare(shifted(base, -0.9), base, tolerance=0.5).failed()


def test_id_accuracy_is_gated_too() -> None:
    base = small()
    [reg] = compare(shifted(base, -5.0, "id_acc"), base).by_verdict("regressed")
    assert (reg.cell, reg.metric) == (LABEL, "id_acc")


def test_improvement_is_reported_and_passes() -> None:
    base = small()
    c = compare(shifted(base, 4.0), base, tolerance=1.0)
    assert not c.failed()
    [imp] = c.by_verdict("improved")
    assert (imp.cell, imp.metric) == (LABEL, "ood_acc") and imp.delta == pytest.approx(4.0)
    text = render_text(c)
    assert "improved (1):" in text and LABEL in text and text.splitlines()[-1].startswith("PASS")


def test_improvement_passes_one_sided_but_says_the_baseline_is_stale() -> None:
    base = small()
    text = render_text(compare(shifted(base, 4.0), base, tolerance=1.0))
    assert "1 up (improved)" in text and "baseline is now stale" in text and "refreshing-the-baseline" in text


@pytest.mark.parametrize("points", [4.0, -4.0], ids=["up", "down"])
def test_two_sided_gate_fails_a_change_in_either_direction(points: float) -> None:
    base = small()
    c = compare(shifted(base, points), base, tolerance=1.0, two_sided=True)
    assert c.failed()
    text = render_text(c)
    direction = "1 up (improved)" if points > 0 else "1 down (regressed)"
    assert direction in text and "refresh the baseline in the same commit" in text
    assert text.splitlines()[-1].startswith("FAIL") and "two-sided" in text.splitlines()[-1]
    md = render_summary(c)
    assert "FAIL" in md.splitlines()[0] and direction in md and "refresh the baseline" in md
    assert f"| **{'improved' if points > 0 else 'regressed'}** | {LABEL} |" in md
    # Within the tolerance, or identical: the two-sided gate passes.
    assert not compare(shifted(base, 0.9), base, tolerance=1.0, two_sided=True).failed()
    assert not compare(base, base.copy(), tolerance=0.0, two_sided=True).failed()


ENV = {"torch_version": "2.4.0", "timm_version": "1.0.9", "numpy_version": "1.26.4", "cpu_model": "AMD EPYC",
       "cpu_kernels": "aten=AVX2 onednn=native mkl=native", "device": "cpu (x86_64)", "threads": 1}


def test_gate_names_the_environment_columns_that_differ() -> None:
    base = small().assign(**ENV)
    now = base.assign(torch_version="2.5.1", cpu_model="Intel(R) Xeon(R) Gold 6338")
    c = compare(now, base, tolerance=1.0)
    assert [e.column for e in c.env_differences()] == ["torch_version", "cpu_model"]
    text = render_text(c)
    assert "torch_version  2.4.0 -> 2.5.1" in text and "AMD EPYC -> Intel(R) Xeon(R) Gold 6338" in text
    assert "same: timm_version 1.0.9; numpy_version 1.26.4" in text
    assert "| **cpu_model** | AMD EPYC | Intel(R) Xeon(R) Gold 6338 |" in render_summary(c)
    assert "environment: the same as the baseline's" in render_text(compare(base, base.copy()))
    # A baseline from before these columns: the gate says they were not recorded there.
    old = compare(base, small())
    assert [e.baseline for e in old.env_differences() if e.column != "device"] == ["not recorded"] * 6


def test_every_result_row_records_the_environment() -> None:
    import importlib.metadata

    import numpy
    import torch

    from ftbench.spec import RunSpec
    from ftbench.plan.resolve import resolve
    from ftbench.execution.runner import execute

    [row] = execute(resolve(RunSpec(method="none")), "cpu")
    assert (row["torch_version"], row["numpy_version"]) == (torch.__version__, numpy.__version__)
    assert row["timm_version"] == importlib.metadata.version("timm")
    assert row["cpu_model"] and row["cpu_kernels"].startswith(f"aten={torch.backends.cpu.get_cpu_capability()} ")


def test_vanished_cell_fails_unless_missing_is_allowed() -> None:
    base = small()
    gone = in_cell(base, shift="label-flip", method="full", blocks="")
    c = compare(base[~gone], base)
    vanished = c.by_verdict("vanished")
    assert {(x.cell, x.metric) for x in vanished} == {("digits/label-flip · full", "ood_acc"),
                                                     ("digits/label-flip · full", "id_acc")}
    assert all(x.current is None and x.delta is None and x.n_current == 0 and x.n_baseline == 2 for x in vanished)
    assert c.failed() and not c.failed(allow_missing=True)
    text = render_text(c)
    assert "vanished (1 cell):" in text and "digits/label-flip · full" in text
    assert text.splitlines()[-1].startswith("FAIL")
    assert render_text(c, allow_missing=True).splitlines()[-1].startswith("PASS")


def test_failed_run_makes_its_cell_vanish() -> None:
    # A run that crashes now is not ok, so its cell has no value: the gate catches it.
    base = small()
    now = base.copy()
    m = in_cell(now)
    now.loc[m, "status"] = "failed"
    now.loc[m, ["ood_acc", "id_acc", "val_acc"]] = np.nan
    c = compare(now, base)
    assert {x.cell for x in c.by_verdict("vanished")} == {LABEL} and c.failed()


def test_new_cell_appears_and_passes() -> None:
    base = small()
    new = in_cell(base, shift="label-flip", method="full", blocks="")
    c = compare(base, base[~new])
    appeared = c.by_verdict("appeared")
    assert {x.cell for x in appeared} == {"digits/label-flip · full"} and len(appeared) == 2
    assert all(x.baseline is None and x.n_baseline == 0 and x.current is not None for x in appeared)
    assert not c.failed()
    assert "appeared (1 cell):" in render_text(c)


def test_auto_detects_a_clear_drop_over_seeds() -> None:
    base = set_per_seed(with_seeds(small(), 4), [72.0, 73.0, 74.0, 73.0])
    now = set_per_seed(base, [66.0, 67.0, 66.0, 65.0])
    c = compare(now, base, tolerance="auto")
    assert c.failed() and c.tolerance == "auto"
    [reg] = c.by_verdict("regressed")
    assert (reg.cell, reg.metric) == (LABEL, "ood_acc")
    assert reg.p_value is not None and reg.p_value < 0.05
    assert (reg.n_baseline, reg.n_current) == (4, 4)
    assert "p=" in render_text(c)


def test_auto_ignores_a_noise_level_change() -> None:
    base = set_per_seed(with_seeds(small(), 4), [72.0, 73.0, 74.0, 73.0])
    now = set_per_seed(base, [72.5, 73.6, 72.4, 72.9])  # mean 72.85 vs 73.0, well within the seed spread
    c = compare(now, base, tolerance="auto")
    assert not c.failed() and not c.by_verdict("improved")
    [x] = [x for x in c.changes if x.cell == LABEL and x.metric == "ood_acc"]
    assert x.verdict == "unchanged" and x.p_value is not None and x.p_value >= 0.05
    # The same change fails a gate with absolute tolerance 0: "auto" is what absorbs the noise.
    assert compare(now, base, tolerance=0.0).failed()


def test_auto_detects_an_improvement() -> None:
    base = set_per_seed(with_seeds(small(), 3), [72.0, 73.0, 74.0])
    c = compare(set_per_seed(base, [80.0, 81.0, 80.5]), base, tolerance="auto")
    [imp] = c.by_verdict("improved")
    assert imp.cell == LABEL and imp.p_value < 0.05 and not c.failed()


def test_auto_falls_back_to_a_minimum_difference_with_one_seed() -> None:
    base = small()
    base = base[base["seed"] == 0]
    small_drop = compare(shifted(base, -(AUTO_FALLBACK_POINTS - 0.1)), base, tolerance="auto")
    assert not small_drop.failed()
    big = compare(shifted(base, -2.0), base, tolerance="auto")
    [reg] = big.by_verdict("regressed")
    assert reg.cell == LABEL and reg.p_value is None
    text = render_text(big)
    assert "no t-test" in text and f"|Δ| > {AUTO_FALLBACK_POINTS:g} points" in text


def test_nan_metrics_different_seed_counts_and_duplicates() -> None:
    base = small()
    # NaN in every seed of a cell's ood_acc: that metric vanishes, id_acc is still compared.
    now = base.copy()
    now.loc[in_cell(now), "ood_acc"] = np.nan
    by = {x.metric: x for x in compare(now, base).changes if x.cell == LABEL}
    assert by["ood_acc"].verdict == "vanished" and by["id_acc"].verdict == "unchanged"
    # NaN in one seed only: the mean is over the finite seed, n says so.
    now = base.copy()
    now.loc[in_cell(now) & (now["seed"] == 1), "ood_acc"] = np.nan
    [x] = [x for x in compare(now, base).changes if x.cell == LABEL and x.metric == "ood_acc"]
    assert (x.n_baseline, x.n_current) == (2, 1) and x.current == pytest.approx(70.0)
    # A cell with fewer seeds now: compared on its own mean, noted in the text.
    now = base[~(in_cell(base) & (base["seed"] == 1))]
    c = compare(now, base)
    [x] = [x for x in c.changes if x.cell == LABEL and x.metric == "ood_acc"]
    assert (x.n_baseline, x.n_current) == (2, 1) and x.verdict == "regressed"  # 70 vs 73
    assert "different number of seeds" in render_text(c)
    # The same runs twice (copied result files): counted once.
    c = compare(pd.concat([base, base], ignore_index=True), base, tolerance=0.0)
    assert not c.failed() and all(x.n_current == x.n_baseline for x in c.changes)


def test_both_sides_use_the_same_selection() -> None:
    # Raising the test accuracy of a run that validation does not choose changes nothing...
    base = small()
    now = base.copy()
    unchosen = in_cell(now) & (now["seed"] == 0) & (now["lr"] == 1e-2)  # val 70 < 80: not selected
    now.loc[unchosen, "ood_acc"] = 10.0
    assert not compare(now, base, tolerance=0.0).failed()
    # ...unless the selection is the oracle, which picks on the test accuracy itself.
    assert compare(now, base, tolerance=0.0, selection="oracle").failed()
    with pytest.raises(UsageError, match="unknown selection 'best'"):
        compare(base, base, selection="best")


@pytest.mark.parametrize("text, value", [("1.0", 1.0), ("0", 0.0), ("2.5", 2.5), ("auto", "auto"), (" AUTO ", "auto")])
def test_parse_tolerance(text: str, value: float | str) -> None:
    assert parse_tolerance(text) == value


@pytest.mark.parametrize("text", ["x", "-1", "nan", "inf", "", "1.0pt"])
def test_parse_tolerance_rejects_bad_values(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_tolerance(text)
    assert str(e.value) == f"tolerance must be a non-negative number of accuracy points or 'auto', got {text!r}"


def test_compare_rejects_a_negative_tolerance() -> None:
    with pytest.raises(UsageError, match="non-negative"):
        compare(small(), small(), tolerance=-1.0)


def test_load_baseline(tmp_path: Path) -> None:
    df = load_baseline(DATA)
    assert (df["status"] == "ok").sum() > 0
    missing = tmp_path / "nope"
    with pytest.raises(UsageError, match="does not exist") as e:
        load_baseline(missing)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no readable ftbench results"):
        load_baseline(tmp_path / "empty")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not parquet")
    with pytest.raises(UsageError, match="cannot use baseline") as e:
        load_baseline(bad)
    assert str(bad) in str(e.value)
    failed_only = small()
    failed_only = failed_only[failed_only["status"] != "ok"]
    failed_only.to_parquet(tmp_path / "failed.parquet")
    with pytest.raises(UsageError, match="no successful runs"):
        load_baseline(tmp_path / "failed.parquet")


def test_render_summary_is_markdown_with_verdict_and_cell() -> None:
    base = small()
    md = render_summary(compare(shifted(base, -3.0), base))
    lines = md.splitlines()
    assert lines[0].startswith("## ") and "FAIL" in lines[0]
    assert "| verdict | cell | metric | baseline | current |" in md
    assert f"| **regressed** | {LABEL} | ood_acc | 73.00 | 70.00 | -3.00 |" in md
    assert "| regressed | improved | unchanged | appeared | vanished |" in md
    ok = render_summary(compare(base, base))
    assert ok.splitlines()[0].startswith("## ") and "PASS" in ok.splitlines()[0]
    assert "No cell changed beyond the tolerance." in ok and LABEL in ok  # listed in the details table


def test_cli_gate_exit_codes_and_summary(cli, tmp_path: Path) -> None:
    base = small()
    worse = tmp_path / "worse.parquet"
    shifted(base, -3.0).to_parquet(worse)
    ok = cli("report", DATA, "--format", "csv", "--baseline", DATA, "--summary", tmp_path / "ok.md")
    assert ok.code == 0, ok.err
    assert "PASS" in ok.err and "PASS" in (tmp_path / "ok.md").read_text()
    bad = cli("report", worse, "--format", "csv", "--baseline", DATA, "--tolerance", "1.0",
              "--summary", tmp_path / "bad.md")
    assert bad.code == 1, bad.err
    assert "FAIL" in bad.err and LABEL in bad.err
    assert LABEL in (tmp_path / "bad.md").read_text()
    r = cli("report", DATA, "--baseline", DATA, "--tolerance", "x")
    assert r.code == 2 and "tolerance must be a non-negative number" in r.err
    r = cli("report", DATA, "--baseline", tmp_path / "missing")
    assert r.code == 2 and "does not exist" in r.err
    better = tmp_path / "better.parquet"
    shifted(base, 3.0).to_parquet(better)
    assert cli("report", better, "--format", "csv", "--baseline", DATA).code == 0
    up = cli("report", better, "--format", "csv", "--baseline", DATA, "--two-sided")
    assert up.code == 1 and "1 up (improved)" in up.err and up.err.rstrip().splitlines()[-1].startswith("FAIL")
    r = cli("report", DATA, "--two-sided")
    assert r.code == 2 and r.err.strip() == "error: --two-sided needs --baseline"


def test_committed_smoke_baseline_matches_the_smoke_suite() -> None:
    """The CI gate compares `ftbench sweep smoke` with tests/data/baseline_smoke: same runs, all ok."""
    from ftbench.plan.suites import expand_suite

    df = load_baseline(BASELINE_SMOKE)
    assert set(df["run_id"]) == {s.run_id for s in expand_suite("smoke")}, (
        "the smoke suite changed: refresh the baseline with `python tools/regen_numbers.py refresh --only baseline`")
    assert (df["status"] == "ok").all()
    assert not compare(df, df, tolerance=0.0).failed()
    # Made the documented way (tools/regen_numbers.py: portable kernels), not by a plain sweep.
    assert set(df["cpu_kernels"]) == {"portable: aten=DEFAULT onednn=off nnpack=off mkl=COMPATIBLE,STRICT"}, (
        "the baseline was not made by `python tools/regen_numbers.py refresh --only baseline`")
