"""Caches, resume state and run identity are checked, never believed as written (issue 27, section
1, "Caches trusted without checking"): a cached source model, a catalog entry, a resume state or an
AutoFT journal that is not what ftbench wrote for this very key is recomputed with a notice; resume
state lives until its run's row is written; equal runs get one run id."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftbench.spec import RunSpec, resolve

# --- run identity: -0.0 is 0.0 --------------------------------------------------------------------


@pytest.mark.parametrize("a, b", [
    (RunSpec(wd=-0.0), RunSpec(wd=0.0)),
    (RunSpec(method="wise-ft", options=(("alphas", "-0,0.5"),)), RunSpec(method="wise-ft", options=(("alphas", "0,0.5"),))),
    (RunSpec(method="wise-ft", options=(("alphas", [-0.0, 1.0]),)), RunSpec(method="wise-ft", options=(("alphas", "0,1"),))),
    (RunSpec(method="autoft", options=(("wd_min", -0.0),)), RunSpec(method="autoft", options=(("wd_min", 0.0),))),
])
def test_minus_zero_and_zero_are_one_run(a: RunSpec, b: RunSpec) -> None:
    ra, rb = resolve(a), resolve(b)
    assert ra.run_id == rb.run_id
    assert ra == rb  # the rows show one value too


def test_a_grid_of_zero_and_minus_zero_is_one_run(cli, tmp_path: Path) -> None:
    suites = tmp_path / "suites.toml"
    suites.write_text('[suites.z]\ndescription = "z"\nmethod = ["surgical"]\nsteps = 2\nwd = [0.0, -0.0]\n')
    r = cli("sweep", "z", "--suites", suites, "--dry-run", "--out", tmp_path / "out")
    assert r.code == 0, r.err
    assert "1 runs, 0 done, 1 to do" in r.out and "wd=-0" not in r.out
