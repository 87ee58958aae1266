"""What a table chose and what it mixed: `report --show-selected`, the `selected` records of json and
csv output, the warning for a cell whose seeds were run over different settings, and `run`'s echo of
its settings."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ftbench.report.table import SELECTED_FIELDS, build, mixed_settings, select
from ftbench.results.store import read_results

SMALL = Path(__file__).parent / "data" / "results_small"


def _clone_run(folder: Path, source: Path, run_id: str, **changes: object) -> None:
    """A copy of the run in ``source`` under a new run id with ``changes`` (as another command made it)."""
    df = pd.read_parquet(source)
    for k, v in changes.items():
        df[k] = v
    df["run_id"] = run_id
    df.to_parquet(folder / f"{run_id}.parquet", index=False)


def _key(v: object) -> str:
    return "" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v)


def test_show_selected_names_the_chosen_run_of_every_cell_and_seed(cli) -> None:
    r = cli("report", SMALL, "--format", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    df = read_results(SMALL)[0]
    chosen = select(df)
    assert len(doc["selected"]) == len(chosen)  # one record per row, column and seed
    by_id = df.set_index("run_id")
    for rec in doc["selected"]:
        assert rec["run_id"] in by_id.index and set(rec) <= {"row", "column", "seed", "run_id", *SELECTED_FIELDS}
        run = by_id.loc[[rec["run_id"]]].iloc[0]
        # It is the run with the best selection score among the cell's runs of that seed.
        same = (df["seed"] == rec["seed"]) & (df["status"] == "ok")
        for k in ("method", "blocks", "benchmark", "shift", "corruption", "severity", "model", "shots"):
            same &= df[k].map(_key) == _key(run[k])
        rivals = df[same]
        assert len(rivals) >= 1
        assert run["val_acc"] == rivals["val_acc"].max()
        assert rec.get("lr") == run["lr"]
    md = cli("report", SMALL, "--format", "markdown", "--show-selected")
    assert md.code == 0 and "| tuned | column | seed | run | chosen |" in md.out
    assert all(rec["run_id"] in md.out for rec in doc["selected"])
    csv = cli("report", SMALL, "--format", "csv", "--show-selected")
    head = csv.out.splitlines()[0]
    assert head.endswith(",selected") and "seed 0: run " in csv.out
    plain = cli("report", SMALL, "--format", "csv")
    assert not plain.out.splitlines()[0].endswith(",selected")  # the documented columns, unless asked


def test_a_cell_whose_seeds_ran_different_settings_is_a_warning(cli, tmp_path: Path) -> None:
    """The issue's case: a throwaway --steps 1 run became "seed 1" of a cell whose seed 0 had 50 steps."""
    folder = tmp_path / "r"
    shutil.copytree(SMALL, folder)
    df = read_results(folder)[0]
    assert mixed_settings(df) == []  # as committed: every cell's seeds cover one grid
    one = df[(df["method"] == "full") & (df["shift"] == "corruption") & (df["seed"] == 0)].iloc[0]
    _clone_run(folder, folder / f"{one['run_id']}.parquet", "0123456789abcdef", seed=7, steps=1)
    r = cli("report", folder, "--format", "markdown")
    assert r.code == 0
    warnings = [ln for ln in r.err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, r.err
    assert "full on digits/corruption" in warnings[0] and "seed 7: lr=0.001 wd=0.0001 steps=1" in warnings[0]


def test_a_cell_mixing_weight_files_is_a_warning(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    shutil.copytree(SMALL, folder)
    df = read_results(folder)[0]
    one = df[(df["method"] == "full") & (df["seed"] == 0)].iloc[0]
    _clone_run(folder, folder / f"{one['run_id']}.parquet", "fedcba9876543210", weights="other.pt")
    got = mixed_settings(read_results(folder)[0])
    assert len(got) == 1 and "mixes weights (default, other.pt);" in got[0], got


def test_run_echoes_its_settings(cli, tmp_path: Path) -> None:
    r = cli("run", "--steps", "3", "--lr", "0.002", "--seed", "4", "--set", "bn=train", "--out", tmp_path)
    assert r.code == 0, r.err
    line = next(ln for ln in r.out.splitlines() if ln.strip().startswith("settings "))
    assert "lr=0.002 wd=0.0001 steps=3 batch_size=64 optimizer=adam shots=20 seed=4; options bn=train" in line


def test_build_records_selection_for_every_table(tmp_path: Path) -> None:
    df = read_results(SMALL)[0]
    for table in ("shifts", "blocks", "methods"):
        grid = build(df, table)
        assert grid.selected and {s["seed"] for s in grid.selected} == set(select(df)["seed"].astype(int))


@pytest.mark.parametrize("fmt", ["markdown", "terminal"])
def test_show_selected_in_text_formats_lists_one_line_per_choice(cli, fmt: str) -> None:
    r = cli("report", SMALL, "--format", fmt, "--show-selected")
    assert r.code == 0
    n = len(select(read_results(SMALL)[0]))
    lines = [ln for ln in r.out.splitlines() if " · seed " in ln or (ln.startswith("| ") and "|---" not in ln)]
    assert len([ln for ln in lines if "run " in ln or ln.count("|") == 6]) >= n
