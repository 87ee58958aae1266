"""Limits against runaway work (docs/cli.md#limits, docs/sweeps.md#limits, docs/methods.md#limits): a
count or a suite that would allocate terabytes or never finish is refused at once, and a value at
the limit is still accepted. The bad inputs themselves, run as the user runs them, are in the corpus
(tests/test_bad_inputs.py); these tests pin the boundaries and that every count has a limit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ftbench.errors import UsageError
from ftbench.methods.base import all_methods, get_method
from ftbench.plan.suites import MAX_INCLUDE_DEPTH, MAX_SUITE_RUNS, expand_suite
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.validate import RUN_NUMBERS

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
# Methods whose options need a model other than digits' default (a transformer for lora, vpt).
MODEL = {"lora": "digits-vit", "vpt": "digits-vit"}
COUNT_OPTIONS = [(m.name, k) for m in all_methods() for k, o in m.options.items() if type(o.default) is int]


def test_every_count_has_a_documented_limit() -> None:
    """Each integer method option and each count of a run has a limit, and the docs give it."""
    assert COUNT_OPTIONS  # the registry is loaded
    methods_doc = (DOCS / "methods.md").read_text()
    limits = methods_doc[methods_doc.index("## Limits"):]
    for method, key in COUNT_OPTIONS:
        option = get_method(method).options[key]
        assert option.maximum is not None, (method, key)
        rows = [line.split("|") for line in limits.splitlines() if line.startswith("|")]
        row = next((r for r in rows if f"`{method}`" in r[1] and f"`{key}`" in r[2]), None)
        assert row is not None and row[3].strip() == f"{int(option.maximum):,}", (method, key, row)
    cli_doc = (DOCS / "cli.md").read_text()
    cli_limits = cli_doc[cli_doc.index("### Limits"):]
    from ftbench.validate import SETTING_NUMBERS

    for name, rule in [*((n, RUN_NUMBERS[n]) for n in ("steps", "epochs", "batch_size", "shots", "checkpoints")),
                       *((n, SETTING_NUMBERS[n]) for n in ("threads", "jobs", "per_gpu"))]:
        assert rule.limit and rule.high < 2**31, name
        flag = "--" + name.replace("_", "-")
        assert re.search(rf"`{flag}`[^|]*\|\s*{int(rule.high):,}\s*\|", cli_limits), name


@pytest.mark.parametrize("method, key", COUNT_OPTIONS, ids=[f"{m}-{k}" for m, k in COUNT_OPTIONS])
def test_a_count_option_is_accepted_at_its_limit_and_refused_above(method: str, key: str) -> None:
    high = int(get_method(method).options[key].maximum)
    spec = RunSpec(method=method, model=MODEL.get(method), options=((key, str(high)),))
    assert dict(resolve(spec).options)[key] == high
    with pytest.raises(UsageError, match=rf"option {key}={high + 1} of method '{method}' must be an integer in "
                                         rf"\d+\.\.{high} \(ftbench's limit"):
        resolve(RunSpec(method=method, model=MODEL.get(method), options=((key, str(high + 1)),)))


@pytest.mark.parametrize("name", ["steps", "epochs", "batch_size", "shots", "checkpoints"])
def test_a_count_is_accepted_at_its_limit_and_refused_above(name: str) -> None:
    from ftbench.validate import check_run_numbers

    high = int(RUN_NUMBERS[name].high)
    check_run_numbers(RunSpec(**{name: high}))
    with pytest.raises(UsageError, match=rf"^{name} must be an integer in 1\.\.{high}, got {high + 1} "):
        check_run_numbers(RunSpec(**{name: high + 1}))
    with pytest.raises(UsageError, match=rf"^{name} must be a positive integer, got 0$"):  # below: as before
        check_run_numbers(RunSpec(**{name: 0}))


def test_wise_ft_takes_as_many_alphas_as_its_limit() -> None:
    from ftbench.methods.wiseft import MAX_ALPHAS, parse_alphas

    grid = [i / (MAX_ALPHAS - 1) for i in range(MAX_ALPHAS)]
    assert len(parse_alphas(grid)) == MAX_ALPHAS
    with pytest.raises(UsageError, match=f"has {MAX_ALPHAS + 1} values; accepted: at most {MAX_ALPHAS}"):
        parse_alphas([*grid, 1.0])


def _chain(length: int) -> str:
    body = "\n".join(f'[suites.c{i}]\ninclude = "c{i + 1}"' for i in range(length))
    return f'{body}\n[suites.c{length}]\nmethod = "none"\n'


def test_includes_nest_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "chain.toml"
    path.write_text(_chain(MAX_INCLUDE_DEPTH))
    assert [s.method for s in expand_suite("c0", path)] == ["none"]
    path.write_text(_chain(MAX_INCLUDE_DEPTH + 1))
    with pytest.raises(UsageError, match=rf"suite 'c0': includes nest more than {MAX_INCLUDE_DEPTH} levels deep"):
        expand_suite("c0", path)
    # reached through a suite counted before along a shorter path: still the depth of the longer one
    path.write_text(f'[suites.top]\ninclude = ["c{MAX_INCLUDE_DEPTH}", "c0"]\n' + _chain(MAX_INCLUDE_DEPTH + 1))
    with pytest.raises(UsageError, match=f"includes nest more than {MAX_INCLUDE_DEPTH} levels deep"):
        expand_suite("top", path)


def test_a_diamond_within_the_limit_expands_to_its_unique_runs(tmp_path: Path) -> None:
    levels = 12  # 4,096 paths to the one run
    tables = [f'[suites.d{i}]\ninclude = ["d{i + 1}", "d{i + 1}"]' for i in range(levels)]
    path = tmp_path / "diamond.toml"
    path.write_text("\n".join([*tables, f'[suites.d{levels}]\nmethod = "none"\nseed = [0, 1]']) + "\n")
    assert [s.seed for s in expand_suite("d0", path)] == [0, 1]
    assert 2 * 2**levels <= MAX_SUITE_RUNS


def test_a_grid_at_the_run_limit_is_counted_not_refused(tmp_path: Path) -> None:
    from ftbench.plan.suites import check_suite_size, load_suites

    seeds, lrs = MAX_SUITE_RUNS // 100, [(i + 1) * 1e-4 for i in range(100)]
    assert seeds * len(lrs) == MAX_SUITE_RUNS
    path = tmp_path / "grid.toml"
    path.write_text(f'[suites.g]\nmethod = "none"\nseed = {list(range(seeds))}\nlr = {lrs}\n')
    suites, text = load_suites(path)
    check_suite_size("g", suites, text, path)  # counted, not expanded (that would resolve 100,000 runs)
    path.write_text(f'[suites.g]\nmethod = "none"\nseed = {list(range(seeds + 1))}\nlr = {lrs}\n')
    suites, text = load_suites(path)
    with pytest.raises(UsageError, match=f"expands to {(seeds + 1) * len(lrs):,} runs, more than ftbench's limit"):
        check_suite_size("g", suites, text, path)


def test_a_symlink_to_a_suites_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "real.toml").write_text('[suites.s]\nmethod = "none"\n')
    (tmp_path / "link.toml").symlink_to(tmp_path / "real.toml")
    assert [s.method for s in expand_suite("s", tmp_path / "link.toml")] == ["none"]


# Run in a process of its own with a timeout: before the fix this connection retried for minutes.
RAY_SCRIPT = """
import sys
import ftbench.sweep.ray_executor as rx
from ftbench.cli import main

rx._client_extra_error = {patch}
sys.exit(main(["sweep", "smoke", "--executor", "ray", "--address", "ray://127.0.0.1:1", "--out", "out"]))
"""


@pytest.mark.parametrize("patch, message", [
    ("lambda: ImportError(\"No module named 'grpc'\")",
     "error: cannot use the Ray cluster at 'ray://127.0.0.1:1': a Ray Client address (ray://) needs Ray's client "
     "extra (grpc, not installed): pip install \"ray[client]\""),
    ("lambda: None",
     "error: cannot connect to the Ray cluster at 'ray://127.0.0.1:1': Connection refused (waited at most 10 s)"),
], ids=["without-client-extra", "with-client-extra-unreachable"])
def test_a_ray_client_address_is_refused_in_one_line(tmp_path: Path, patch: str, message: str) -> None:
    pytest.importorskip("ray")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(RAY_SCRIPT.format(patch=patch))], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr
    assert not (tmp_path / "out").exists()
