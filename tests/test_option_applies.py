"""An option or hyperparameter the user sets must never be dropped in silence (issue 25 §1): ``ftbench run``
refuses one that has no effect in the configuration given, naming what makes it apply; a suite that crosses
a method with a value it ignores still expands (same runs) and says so once."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve


@pytest.mark.parametrize("args, message", [
    # README's and docs/cli.md's former example: the same run id as without the option
    (["--method", "lp-ft", "--shift", "subpopulation", "--set", "lp_l2=1e-2"],
     "error: option lp_l2 of method 'lp-ft' applies only with lp_select=fixed (given: lp_select=val); "
     "set --set lp_select=fixed or drop it"),
    # given explicitly at its default value: still not what the run uses
    (["--method", "lp-ft", "--set", "lp_l2=1e-3"], "option lp_l2 of method 'lp-ft' applies only with lp_select=fixed"),
    (["--method", "lp-ft", "--set", "lp_select=fixed", "--set", "lp_c_max=10"],
     "option lp_c_max of method 'lp-ft' applies only with lp_select=val (given: lp_select=fixed)"),
    (["--method", "linear-probe", "--set", "select=fixed", "--set", "c_min=1e-3"],
     "option c_min of method 'linear-probe' applies only with select=val (given: select=fixed)"),
    (["--method", "linear-probe", "--lr", "1e-2"], "error: --lr has no effect with method 'linear-probe', which uses "
                                                   "only --wd (with select=fixed)"),
    (["--method", "linear-probe", "--lr", "1e-3"], "--lr has no effect with method 'linear-probe'"),  # the default value
    (["--method", "linear-probe", "--optimizer", "sgd"], "--optimizer has no effect with method 'linear-probe'"),
    (["--method", "linear-probe", "--wd", "1e-2"],
     "--wd of method 'linear-probe' applies only with select=fixed (given: select=val); set --set select=fixed"),
    (["--method", "linear-probe", "--checkpoints", "3"],
     "--checkpoints has no effect with method 'linear-probe', which trains no optimizer loop"),
    (["--method", "zero-shot", "--model", "digits-clip", "--steps", "5"], "--steps has no effect with method 'zero-shot'"),
    (["--method", "autoft", "--lr", "1e-2"], "--lr of method 'autoft' applies only with lr_mode=fixed (given: "
                                             "lr_mode=sampled)"),
    (["--method", "auto-snr", "--set", "fraction=0.5"],
     "option fraction of method 'auto-snr' applies only with rule=top (given: rule=threshold)"),
])
def test_an_option_without_effect_is_refused(cli, tmp_path: Path, args: list[str], message: str) -> None:
    r = cli("run", *args, "--out", tmp_path / "out")
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "out").exists()


def test_default_hyperparameters_are_not_refused_and_the_fixed_probe_option_changes_the_run(cli, tmp_path: Path) -> None:
    """Only what the command line gives is refused: linear-probe runs with run's default --lr/--wd; with
    lp_select=fixed (docs' example) lp_l2 is a different run, and the echoed settings show the value."""
    r = cli("run", "--method", "linear-probe", "--out", tmp_path)
    assert r.code == 0, r.err
    base = cli("run", "--method", "lp-ft", "--steps", "2", "--set", "lp_select=fixed", "--out", tmp_path)
    l2 = cli("run", "--method", "lp-ft", "--steps", "2", "--set", "lp_select=fixed", "--set", "lp_l2=1e-2",
             "--out", tmp_path)
    assert base.code == 0 and l2.code == 0, base.err + l2.err
    first = [line.split()[1] for line in (base.out.splitlines()[0], l2.out.splitlines()[0])]
    assert first[0] != first[1] and "lp_l2=0.01" in l2.out
    # the echoed settings show what the run used: not the sweep's C grid, which lp_select=fixed ignores
    assert "lp_c_max" not in base.out and "lp_l2=0.001" in base.out


def test_a_recipe_value_that_does_not_apply_is_not_the_users(cli, tmp_path: Path) -> None:
    """The lp-ft recipe sets the probe's C grid; with the user's lp_select=fixed the grid has no effect,
    and the run goes on (the recipe's values are not given by the user)."""
    r = cli("run", "--recipe", "lp-ft", "--method", "lp-ft", "--set", "lp_select=fixed", "--steps", "1",
            "--out", tmp_path)
    assert r.code == 0, r.err


def test_library_resolution_refuses_a_value_for_an_option_that_does_not_apply() -> None:
    with pytest.raises(Exception, match="applies only with lp_select=fixed"):
        resolve(RunSpec(method="lp-ft", options=(("lp_l2", 0.01),)))
    # a resolved spec (every option filled, defaults where they do not apply) resolves to itself
    spec = resolve(RunSpec(method="lp-ft", options=(("lp_select", "fixed"),)))
    assert resolve(spec) == spec


SUITE = """[suites.s]
method = ["linear-probe", "full"]
lr = [1e-3, 1e-2]
shift = "subpopulation"
"""


def test_a_suite_crossing_a_method_with_an_axis_it_ignores_says_so_once(cli, tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text(SUITE)
    r = cli("sweep", "s", "--suites", tmp_path / "b.toml", "--dry-run", "--out", tmp_path / "r")
    assert r.code == 0, r.err
    note = "note: suite 's': method 'linear-probe' does not use lr (0.001, 0.01); its runs ignore that axis"
    assert r.err.count(note) == 1 and r.err.count("note:") == 1, r.err
    # expands as before: one linear-probe run, two full runs, the ids of the same runs asked for one by one
    ids = {line.split()[0] for line in r.out.splitlines() if line[:16].isalnum() and len(line.split()[0]) == 16}
    want = {resolve(RunSpec(method="linear-probe", shift="subpopulation")).run_id,
            *(resolve(RunSpec(method="full", shift="subpopulation", lr=lr)).run_id for lr in (1e-3, 1e-2))}
    assert ids == want


def test_a_suite_option_that_does_not_apply_is_noted_and_dropped(cli, tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text('[suites.s]\nmethod = "lp-ft"\noptions = {lp_l2 = 0.01}\n')
    r = cli("sweep", "s", "--suites", tmp_path / "b.toml", "--dry-run", "--out", tmp_path / "r")
    assert r.code == 0, r.err
    assert ("note: suite 's': option lp_l2 of method 'lp-ft' applies only with lp_select=fixed (here "
            "lp_select=val; lp_l2=0.01); its runs ignore it") in r.err
    assert resolve(RunSpec(method="lp-ft")).run_id in r.out


def test_a_grid_notes_what_its_methods_ignore(cli, tmp_path: Path) -> None:
    r = cli("sweep", "--grid", "method=linear-probe,surgical lr=1e-3,1e-2", "--dry-run", "--out", tmp_path / "r")
    assert r.code == 0, r.err
    assert r.err.count("note: --grid: method 'linear-probe' does not use lr (0.001, 0.01)") == 1, r.err


def test_the_bundled_suites_still_expand_with_notes_not_errors() -> None:
    """Every bundled suite expands (the refusals apply to what a user gives, never to a suite's grid),
    and the default suite's linear-probe rows ignoring its lr axis is said."""
    from ftbench.plan.suites import bundled_suites_file, expand_suite, load_suites, suite_notes

    suites, _ = load_suites(bundled_suites_file())
    assert expand_suite("default", bundled_suites_file())
    assert any("method 'linear-probe' does not use lr" in n for n in suite_notes("default", suites))


def test_a_cached_dry_run_notes_the_same_without_importing_torch(tmp_path: Path) -> None:
    """The notes come from the catalog cache as the expanded runs do: a second `sweep --dry-run` in a fresh
    process says the same and imports no method module (nor torch)."""
    import os
    import subprocess
    import sys

    (tmp_path / "b.toml").write_text(SUITE)
    argv = ["sweep", "s", "--suites", str(tmp_path / "b.toml"), "--dry-run", "--out", str(tmp_path / "r")]
    code = (f"import sys; from ftbench.cli import main; rc = main({argv!r}); "
            "print(rc, 'torch' in sys.modules, file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "FTBENCH_NO_CATALOG"}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                           env={**env, "FTBENCH_CACHE": str(tmp_path / "cache")}) for _ in range(2)]
    notes = [[line for line in r.stderr.splitlines() if line.startswith("note:")] for r in runs]
    assert notes[0] == notes[1] == ["note: suite 's': method 'linear-probe' does not use lr (0.001, 0.01); its runs "
                                    "ignore that axis"], [r.stderr for r in runs]
    assert [r.stderr.strip().splitlines()[-1] for r in runs] == ["0 True", "0 False"]
