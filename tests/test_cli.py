"""The command line as a user meets it: the documented commands, bad input, determinism."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ftbench.results.store import SCHEMA


def test_readme_run_command_works_exactly_as_written(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("run", "--method", "surgical", "--block", "1", "--shift", "corruption")
    assert r.code == 0, r.err
    assert "ID acc" in r.out and "OOD acc" in r.out
    files = list((tmp_path / "ftbench-results").glob("*.parquet"))
    assert len(files) == 1
    df = pd.read_parquet(files[0])
    assert len(df) == 1
    row = df.iloc[0]
    assert (row.benchmark, row["shift"], row.method, row.blocks, row.status) == ("digits", "corruption", "surgical", "1", "ok")
    assert row.corruption == "gaussian_noise" and row.severity == 5
    assert set(SCHEMA.names) <= set(df.columns)
    assert 0 <= row.ood_acc <= 100 and 0 <= row.id_acc <= 100 and row.n_trainable < row.n_params
    assert row.run_id == files[0].stem


def test_run_with_no_flags_is_sensible(cli, tmp_path: Path) -> None:
    r = cli("run", "--out", tmp_path)
    assert r.code == 0, r.err
    assert "surgical --block 1" in r.out


def test_same_command_twice_gives_same_accuracies(cli, tmp_path: Path) -> None:
    args = ["run", "--method", "full", "--shift", "subpopulation", "--steps", "10", "--seed", "3"]
    assert cli(*args, "--out", tmp_path / "a").code == 0
    assert cli(*args, "--out", tmp_path / "b").code == 0
    a = pd.read_parquet(next((tmp_path / "a").glob("*.parquet"))).iloc[0]
    b = pd.read_parquet(next((tmp_path / "b").glob("*.parquet"))).iloc[0]
    assert a.run_id == b.run_id
    assert (a.id_acc, a.ood_acc, a.val_acc) == (b.id_acc, b.ood_acc, b.val_acc)


def test_seed_changes_the_few_shot_draw(cli, tmp_path: Path) -> None:
    from ftbench.data.base import get_benchmark
    from ftbench.spec import RunSpec
    from ftbench.plan.resolve import resolve

    bench = get_benchmark("digits")
    t0 = bench.target(resolve(RunSpec(seed=0)))
    t1 = bench.target(resolve(RunSpec(seed=1)))
    assert len(t0.train) == len(t1.train) == 200  # 20 shots x 10 classes
    assert not bool((t0.train.x == t1.train.x).all())
    assert bool((t0.test.x == t1.test.x).all())  # the scored images do not depend on the seed


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--method", "bogus"], "unknown method 'bogus'; accepted: "),
        (["run", "--shift", "weather"], "unknown shift for benchmark 'digits': 'weather'; accepted: corruption, subpopulation, label-flip"),
        (["run", "--benchmark", "cifar99"], "unknown benchmark 'cifar99'; accepted: camelyon17, celeba, cifar10, cifar10-c, "),
        (["run", "--block", "9"], "block '9' is out of range for model 'digits-resnet'; accepted: 1, 2, 3, last"),
        (["run", "--severity", "0"], "severity must be an integer in 1..5"),
        (["run", "--severity", "x"], "--severity must be an integer in 1..5, got 'x' (not an integer)"),
        (["run", "--corruption", "frostbite"], "unknown corruption 'frostbite'; accepted:"),
        (["run", "--set", "oops"], "--set expects key=value"),
        (["run", "--device", "tpu"], "unknown device 'tpu'; accepted: auto, cpu, cuda"),
        (["run", "--no-such-flag"], "No such option: --no-such-flag"),
        (["sweep", "no-such-suite"], "unknown suite in"),
        (["list", "gizmos"], "unknown list target 'gizmos'"),
        (["fetch", "imagenet-xyz"], "unknown dataset 'imagenet-xyz'; accepted: digits"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path: Path, args: list[str], message: str) -> None:
    r = cli(*args, "--out", tmp_path / "out") if args[0] in ("run", "sweep") else cli(*args)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    assert message in lines[0]
    assert "Traceback" not in r.err
    assert not (tmp_path / "out").exists()


def test_malformed_suites_file_is_a_usage_error(cli, tmp_path: Path) -> None:
    bad = tmp_path / "b.toml"
    bad.write_text('[suites.default]\nmethod = "surgical"\nblock = [1, 2\n')
    r = cli("sweep", "--suites", bad, "--out", tmp_path / "out")
    assert r.code == 2 and "malformed TOML" in r.err and r.err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_list_and_fetch(cli) -> None:
    r = cli("list", "methods")
    assert r.code == 0
    for name in ["none", "surgical", "linear-probe", "full", "lp-ft"]:
        assert name in r.out
    assert "--set bn=frozen" in r.out
    assert "blocks: 1, 2, 3, last" in cli("list", "models").out
    assert "subpopulation [feature level]" in cli("list", "benchmarks").out
    r = cli("fetch")
    assert r.code == 0 and "digits" in r.out and "bundled" in r.out
    r = cli("fetch", "digits")
    assert r.code == 0 and "bundled" in r.out


def test_version_prints_the_package_version(cli) -> None:
    from ftbench import __version__

    r = cli("--version")
    assert r.code == 0 and r.out.strip() == f"ftbench {__version__}"


def test_options_meant_to_repeat_still_repeat(cli, tmp_path: Path) -> None:
    """--block and --set take several values and flags may be given twice; only single-valued options
    given twice are refused (the corpus in tests/test_bad_inputs.py)."""
    r = cli("run", "--steps", "2", "--block", "2", "--block", "last", "--set", "bn=train", "--set", "bn=frozen",
            "--out", tmp_path)
    assert r.code == 0, r.err
    df = pd.read_parquet(next(tmp_path.glob("*.parquet")))
    assert df.iloc[0].blocks == "2,last"


@pytest.mark.parametrize("args", [["report", "{R}", "--format", "markdown"],
                                  ["report", "{R}", "--format", "json", "--trend", "full"],
                                  ["report", "{R}", "--baseline", "{R}"],
                                  ["list", "protocols"], ["list", "recipes"], ["--version"]])
def test_commands_that_only_read_results_do_not_import_torch(args: list[str]) -> None:
    """Importing torch costs seconds; formatting a table from parquet files needs none of it."""
    import subprocess
    import sys

    small = str(Path(__file__).parent / "data" / "results_small")
    argv = [a.replace("{R}", small) for a in args]
    code = ("import sys; from ftbench.cli import main; rc = main(%r); "
            "print(rc, 'torch' in sys.modules, file=sys.stderr)" % argv)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stderr.strip().splitlines()[-1] == "0 False", r.stderr


def test_list_one_method_or_model_in_full(cli) -> None:
    r = cli("list", "methods", "lora")
    assert r.code == 0 and r.out.startswith("lora: trains ") and "--set r=4" in r.out
    assert "surgical" not in r.out  # only the one asked for
    r = cli("list", "models", "digits-vit")
    assert r.code == 0 and r.out.startswith("digits-vit: ") and "blocks: 1, 2, 3, last" in r.out
    assert "digits-resnet" not in r.out and "timm/NAME" not in r.out
    r = cli("list", "methods", "nosuch")
    assert r.code == 2 and r.err.startswith("error: unknown method 'nosuch'; accepted: ")
    r = cli("list", "suites", "default")
    assert r.code == 2 and "takes no name" in r.err


def test_long_lines_are_not_wrapped_when_piped(cli) -> None:
    """A listing is read by grep and by people: one option per line, whatever the terminal width."""
    r = cli("list", "methods", "lora")
    targets = [ln for ln in r.out.splitlines() if ln.lstrip().startswith("--set targets=")]
    assert len(targets) == 1 and targets[0].endswith("every Linear but the head")


def test_shell_completion_is_offered(cli) -> None:
    r = cli("--help")
    assert "--install-completion" in r.out and "--show-completion" in r.out


def test_help_groups_flags_into_panels_with_examples(cli) -> None:
    """Slurm and Ray flags apart from the local ones; every command shows examples that parse."""
    import re

    r = cli("sweep", "--help")
    panels = {m.group(1): m.start() for m in re.finditer(r"─ (\w[\w ]*?) ─", r.out)}
    assert {"Where", "Local", "Slurm", "Ray"} <= set(panels)
    assert panels["Slurm"] < r.out.index("--partition") < panels["Ray"] < r.out.index("--address")
    for command in ("run", "sweep", "report", "fetch", "list"):
        r = cli(command, "--help")
        assert r.code == 0 and "Examples:" in r.out, command
        for example in re.findall(r"^ +(ftbench [^\n]+?) *$", r.out.split("Examples:")[1], flags=re.M):
            argv = example.split()[1:]
            if argv[0] in ("run", "sweep"):  # parse only: every flag exists (--help stops before any work)
                assert cli(*argv, "--help").code == 0, example
