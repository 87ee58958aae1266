"""Suites from the command line (``sweep --grid``) and ``./benchmarks.toml`` adding to the bundled
suites instead of hiding them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftbench.errors import UsageError
from ftbench.plan.suites import expand_suite, grid_runs, grid_suite

SUITE = """
[suites.g]
method = "surgical"
block = [1, 2, 3, "last"]
lr = [1e-3, 1e-2]
seed = [0, 1, 2]
shift = "corruption"
corruption = "contrast"
severity = 3
"""


def test_a_grid_is_the_suite_it_spells_with_the_same_run_ids(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SUITE)
    from_file = expand_suite("g", path)
    grid, _ = grid_runs("method=surgical block=1,2,3,last lr=1e-3,1e-2 seed=0,1,2",
                        {"shift": "corruption", "corruption": "contrast", "severity": 3})
    assert [s.run_id for s in grid] == [s.run_id for s in from_file] and len(grid) == 24


def test_grid_values_block_sets_and_options() -> None:
    table = grid_suite("method=lp-ft block=1+2,last lr=1e-3 options.lp_select=fixed steps=5")
    assert table == {"method": "lp-ft", "block": [[1, 2], ["last"]], "lr": 1e-3, "steps": 5,
                     "options": {"lp_select": "fixed"}}
    specs, _ = grid_runs("method=surgical block=1+2,last steps=3")
    assert sorted(s.blocks for s in specs) == [("1", "2"), ("last",)]


@pytest.mark.parametrize("grid, message", [
    ("lr", "--grid: 'lr' is not KEY=VALUE[,VALUE...]"),
    ("lr=1e-3,,1e-2", "has an empty value between commas"),
    ("lr=1 lr=2", "key 'lr' given twice"),
    ("learning_rate=1", "--grid: unknown key 'learning_rate'; accepted:"),
    ("options.lp_l2=1,2 method=lp-ft", "method option 'lp_l2' takes one value"),
    ("method=surgical block=9", "--grid: block '9' is out of range for model 'digits-resnet'"),
    ("lr=abc", "--grid: lr must be a positive number, got 'abc'"),
    ("", "--grid is empty"),
])
def test_a_bad_grid_is_one_error_naming_it(grid: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        grid_runs(grid)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_local_suites_file_adds_to_the_bundled_suites(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTBENCH_NO_CATALOG", "1")
    Path("benchmarks.toml").write_text('[suites.mine]\nmethod = "surgical"\nblock = 1\nsteps = 3\n\n'
                                       '[suites.smoke]\ndescription = "local"\nmethod = "full"\nsteps = 2\n')
    r = cli("sweep", "mine", "--dry-run", "--out", "r")
    assert r.code == 0 and "suite 'mine' (benchmarks.toml): 1 runs" in r.out
    r = cli("sweep", "default", "--dry-run", "--out", "r")  # bundled, still there
    assert r.code == 0 and "suite 'default'" in r.out and "126 runs" in r.out
    r = cli("sweep", "smoke", "--dry-run", "--out", "r")  # both: the local one, said
    assert r.code == 0 and "1 runs" in r.out and "hides the bundled suite" in r.err
    r = cli("list", "suites")
    assert "mine [benchmarks.toml]" in r.out and "default (" in r.out and "smoke [benchmarks.toml] (hides the bundled one)" in r.out


def test_grid_flags_apply_only_with_grid_and_a_grid_is_no_suite_name(cli) -> None:
    r = cli("sweep", "--shift", "label-flip", "--dry-run")
    assert r.code == 2 and "--shift applies only with --grid" in r.err
    r = cli("sweep", "smoke", "--grid", "lr=1e-3", "--dry-run")
    assert r.code == 2 and "give --grid or a suite name" in r.err
    r = cli("sweep", "--grid", "method=surgical block=1 seed=0,1", "--shift", "label-flip", "--dry-run", "--out", "r")
    assert r.code == 0 and "suite 'grid' (--grid): 2 runs" in r.out
