"""``ftbench report --table pareto``: OOD against training cost, the Pareto front and ``--within X``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ftbench.papers.estimate import example_flops
from ftbench.report.table import build, render

REPO = Path(__file__).resolve().parents[1]

# (method, blocks) -> (OOD, trainable parameters): one few-shot shift, two seeds alike.
ROWS = {("surgical", "1"): (80.0, 4848), ("surgical", "2"): (81.0, 4000), ("surgical", "last"): (79.5, 650),
        ("full", ""): (80.0, 6000), ("none", ""): (60.0, 0)}
EXAMPLES = 3200  # training examples each run processed (examples_per_second x train_seconds)


def _results() -> pd.DataFrame:
    recs = []
    for (method, blocks), (ood, params) in ROWS.items():
        for seed in (0, 1):
            recs.append({"run_id": f"{method}{blocks}{seed}", "benchmark": "digits", "shift": "corruption",
                         "corruption": "contrast", "severity": 5, "shots": 20, "model": "digits-resnet",
                         "protocol": "few-shot", "method": method, "blocks": blocks, "variant": "", "lr": 1e-3,
                         "seed": seed, "status": "ok", "id_acc": 90.0, "ood_acc": ood, "val_acc": ood,
                         "n_trainable": params, "train_seconds": 0.0 if method == "none" else 2.0,
                         "examples_per_second": 0.0 if method == "none" else EXAMPLES / 2.0})
    return pd.DataFrame(recs)


def _flags(grid, sub: str) -> dict[str, bool]:
    col = grid.groups[0][0]
    return {r: grid.cells[(r, col, sub)].best for r in grid.rows}


def test_pareto_marks_the_rows_no_other_row_beats_on_ood_flops_and_parameters():
    grid = build(_results(), "pareto")
    # block 2 has the best OOD; last layer and none are cheaper than every row above them; block 1 loses to
    # block 2 on every axis (less OOD, more FLOPs: its backward goes further down, more parameters); full
    # ties block 1 on OOD at more cost.
    assert _flags(grid, "Pareto") == {"block 1": False, "block 2": True, "last layer": True, "full": False,
                                      "none": True}
    col = grid.groups[0][0]
    flops = {r: grid.cells[(r, col, "FLOPs")].mean for r in grid.rows}
    assert flops["none"] == 0
    assert flops["last layer"] < flops["block 2"] < flops["block 1"] < flops["full"]
    assert flops["block 1"] == example_flops("digits-resnet", "digits", ["1"]) * EXAMPLES
    assert grid.cells[("block 2", col, "params")].text == "4,000"


def test_within_marks_the_cheapest_row_near_the_best():
    for within, pick in ((0, "block 2"), (1, "block 2"), (1.5, "last layer"), (25, "none")):
        grid = build(_results(), "pareto", within=within)
        marked = [r for r, b in _flags(grid, f"within {within:g}").items() if b]
        assert marked == [pick], within


def test_pareto_on_real_results_from_the_cli(tmp_path: Path):
    """baseline_smoke (real smoke-suite runs): last layer beats block 1 on both shifts and is cheaper."""
    p = subprocess.run([sys.executable, "-m", "ftbench.cli", "report", str(REPO / "tests/data/baseline_smoke"),
                        "--table", "pareto", "--within", "1", "--format", "json"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    marks = {(c["row"], c["column"], c["metric"]): c["best"] for c in doc["cells"]}
    for col in ("corruption (gaussian_noise, s5)", "label-flip"):
        assert marks[("last layer", col, "Pareto")] and not marks[("block 1", col, "Pareto")]
        assert marks[("last layer", col, "within 1")]
    text = render(build(_results(), "pareto", within=1), "markdown")
    assert "| none |" in text and "**yes**" in text


def test_plot_pareto_draws_each_row_of_each_shift(tmp_path: Path):
    p = subprocess.run([sys.executable, "-m", "ftbench.cli", "report", str(REPO / "tests/data/baseline_smoke"),
                        "--table", "pareto", "--format", "csv", "--plot", "front.svg"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    svg = (tmp_path / "front.svg").read_text()
    assert svg.count("Last layer") == 2 and svg.count("Block 1") == 2  # one labelled point per row and shift
    assert "training FLOPs" in svg
