"""Inputs that used to be accepted and then ran as something else, or failed late: each is refused
when it is given (one error line: tests/test_bad_inputs.py holds the command-line forms), and the
valid inputs next to them run as before (same run ids)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from ftbench.errors import UsageError
from ftbench.spec import RunSpec
from ftbench.plan.suites import expand_suite
from ftbench.plan.resolve import resolve

REPO = Path(__file__).resolve().parents[1]


# --- shifts: a shift the protocol does not run is refused, never mapped to another -------------------

def test_a_shift_not_given_is_the_protocols_default_and_a_given_one_is_never_replaced() -> None:
    # the defaults, with the run ids they had (results folders made before stay valid)
    assert resolve(RunSpec()).run_id == "f02f83d34fa20551"
    assert resolve(RunSpec(shift="corruption")).run_id == "f02f83d34fa20551"
    assert resolve(RunSpec(protocol="id-ood")).shift == "style-noise"
    assert resolve(RunSpec(protocol="id-ood")).run_id == "01c6e87a0717e0b1"  # data version 2 (the bigger ID val split, 2026-12-07)
    assert resolve(RunSpec(protocol="id-ood", shift="style-noise")).run_id == "01c6e87a0717e0b1"
    # given explicitly, corruption is not style-noise (it ran style-noise silently)
    with pytest.raises(UsageError, match="in protocol id-ood: 'corruption'; accepted: style-noise"):
        resolve(RunSpec(protocol="id-ood", shift="corruption"))


def test_a_suite_without_a_shift_key_expands_as_before(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[suites.s]\nmethod = "none"\ncorruption = ["frost", "fog"]\n'
                 '[suites.t]\nmethod = "none"\nprotocol = "id-ood"\nweights = "scratch"\n')
    assert [s.corruption for s in expand_suite("s", f)] == ["frost", "fog"]
    f.write_text('[suites.t]\nmethod = "linear-probe"\nprotocol = "id-ood"\nshift = "corruption"\n')
    with pytest.raises(UsageError, match="accepted: style-noise"):
        expand_suite("t", f)


# --- recipes apply to the methods they list ---------------------------------------------------------

def test_a_recipe_refuses_a_method_it_does_not_list() -> None:
    from ftbench.papers.recipes import apply_recipe, get_recipe

    with pytest.raises(UsageError, match="recipe 'lp-ft' is not for method 'surgical'.*linear-probe, full, lp-ft"):
        apply_recipe(get_recipe("lp-ft"), {"method": "surgical"}, set())
    assert apply_recipe(get_recipe("lp-ft"), {"method": "full"}, set())["optimizer"] == "sgd"


def test_the_paper_suites_use_each_recipe_only_on_the_methods_it_lists() -> None:
    import tomllib

    from ftbench.papers.recipes import get_recipe

    suites = tomllib.loads((REPO / "ftbench" / "benchmarks.toml").read_text())["suites"]
    for name, t in suites.items():
        if "recipe" in t:
            methods = t.get("method", "surgical")
            for m in methods if isinstance(methods, list) else [methods]:
                assert m in get_recipe(t["recipe"]).methods, (name, m)


# --- method options: every string option is checked when the run is resolved --------------------------

def _options() -> list[tuple[str, str]]:
    from ftbench.methods.base import all_methods

    return [(m.name, k) for m in all_methods() for k, o in m.options.items() if isinstance(o.default, str | bool)]


@pytest.mark.parametrize("method, option", _options())
def test_a_bogus_value_of_any_string_option_is_refused_when_resolved(method: str, option: str) -> None:
    model = {"lora": "digits-vit", "vpt": "digits-vit", "adapter": "digits-vit", "flyp": "digits-clip"}.get(method)
    protocol = "id-ood" if method == "flyp" else "few-shot"
    with pytest.raises(UsageError, match=f"{option}.*bogus|bogus.*{option}"):
        resolve(RunSpec(method=method, model=model, protocol=protocol, options=((option, "bogus"),)))


def test_autoft_objective_names_the_benchmarks_metrics() -> None:
    from ftbench.data.base import get_benchmark

    with pytest.raises(UsageError, match="objective='bogus' of method 'autoft' is not a metric of benchmark "
                                         "'digits'; accepted: main, acc$"):
        resolve(RunSpec(method="autoft", options=(("objective", "bogus"),)))
    assert resolve(RunSpec(method="autoft", options=(("objective", " acc "),))).method == "autoft"
    assert get_benchmark("iwildcam").metric_names == ("macro_f1", "macro_recall")


def test_the_wilds_metric_names_are_what_their_metrics_compute() -> None:
    """metric_names is declared so objectives can be checked without data: it must equal what
    each benchmark's metric function returns (on a made-up split with its metadata columns)."""
    import functools

    import torch

    from ftbench.data import wilds_data as w
    from ftbench.data.base import get_benchmark

    y = torch.tensor([0, 1, 0, 1])
    meta = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 2, 1], [0, 1, 3, 0]])

    class Split:
        pass

    split = Split()
    split.y, split.meta = y, meta
    fns = {"waterbirds": functools.partial(w.worst_group_metrics, attribute=0, y=1, adjusted=True),
           "celeba": functools.partial(w.worst_group_metrics, attribute=0, y=1),
           "camelyon17": functools.partial(w.worst_slide_metrics, slide=2),
           "fmow": functools.partial(w.fmow_metrics, region=0, year=1, other=()),
           "iwildcam": w.macro_metrics}
    for name, fn in fns.items():
        assert tuple(fn(y.clone(), split)) == get_benchmark(name).metric_names, name


# --- block sets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("block", ["[[]]", "[1, []]", "[[1], []]", "[]"])
def test_an_empty_block_set_is_refused_not_taken_for_the_default_block(tmp_path: Path, block: str) -> None:
    f = tmp_path / "s.toml"
    f.write_text(f'[suites.s]\nmethod = "surgical"\nblock = {block}\n')
    with pytest.raises(UsageError, match=r"empty set \[\]|block is an empty list"):
        expand_suite("s", f)


# --- environment variables ------------------------------------------------------------------------

def test_fast_path_settings_are_read_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    from ftbench.train import prefix

    for value, fused_on_cpu in (("", False), ("auto", False), ("all", True), ("0", False), ("fused", True),
                                ("prefix", False), (" Prefix , fused ", True)):
        monkeypatch.setenv("FTBENCH_FASTPATH", value)
        assert prefix.fastpath_enabled("fused", "cpu") is fused_on_cpu, value
    monkeypatch.setenv("FTBENCH_FASTPATH", "prefx")  # it turned every fast path off
    with pytest.raises(UsageError, match="FTBENCH_FASTPATH='prefx' is not accepted"):
        prefix.fastpath_enabled("prefix", "cpu")
    monkeypatch.delenv("FTBENCH_FASTPATH")
    monkeypatch.setenv("FTBENCH_PREFIX_CACHE_MB", "abc")  # it meant the default budget
    with pytest.raises(UsageError, match="FTBENCH_PREFIX_CACHE_MB='abc'"):
        prefix._budget_bytes()
    monkeypatch.setenv("FTBENCH_PREFIX_CACHE_MB", "0.5")
    assert prefix._budget_bytes() == 2**19


def test_the_estimate_refuses_a_rate_it_cannot_divide_by(monkeypatch: pytest.MonkeyPatch) -> None:
    from ftbench.papers.estimate import estimate

    spec = resolve(RunSpec(steps=5))
    monkeypatch.setenv("FTBENCH_GPU_TFLOPS", "0")
    with pytest.raises(UsageError, match="FTBENCH_GPU_TFLOPS='0' is not accepted; accepted: a finite number > 0"):
        estimate([spec])
    monkeypatch.setenv("FTBENCH_GPU_TFLOPS", "50")
    half = estimate([spec])[0]
    monkeypatch.setenv("FTBENCH_GPU_TFLOPS", "100")
    assert estimate([spec])[0] == half / 2


def test_every_environment_variable_the_code_reads_is_documented_and_checked() -> None:
    import ftbench.environment as env

    read = set()
    for f in (REPO / "ftbench").rglob("*.py"):
        read |= set(re.findall(r"\"(FTBENCH_[A-Z_]+)\"", f.read_text()))
    table = (REPO / "docs" / "cli.md").read_text().split("## Environment variables", 1)[1]
    documented = set(re.findall(r"^\| `(FTBENCH_[A-Z_]+)`", table, flags=re.M))
    assert read <= documented, read - documented
    checked = set(re.findall(r"\"(FTBENCH_[A-Z_]+)\"", Path(env.__file__).read_text()))
    # switches (any non-empty value) and a folder-or-'none' setting read where they are used
    assert read - checked <= {"FTBENCH_DEBUG", "FTBENCH_NO_CATALOG", "FTBENCH_FROST_DIR"}, read - checked


# --- models and weights -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-5", "abc", "2", "True"])
def test_a_timm_dropout_rate_outside_0_1_is_refused_by_name(value: str) -> None:
    from ftbench.models.timm_models import parse_name

    with pytest.raises(UsageError, match=r"drop_rate must be a number in \[0, 1\]"):
        parse_name(f"timm/resnet18:drop_rate={value}")
    assert parse_name("timm/resnet18:drop_rate=0.25") == ("resnet18", {"drop_rate": 0.25})


def test_a_file_that_is_no_state_dict_is_refused_when_the_run_is_resolved(tmp_path: Path) -> None:
    import torch

    raw = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, raw, _use_new_zipfile_serialization=False)
    (tmp_path / "trunc.pt").write_bytes(raw.getvalue()[:30])  # struct.error inside torch.load
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")  # IndexError inside torch.load
    for name in ("trunc.pt", "passwd"):
        with pytest.raises(UsageError, match="is not a readable PyTorch checkpoint .*not a weights file; accepted"):
            resolve(RunSpec(weights=str(tmp_path / name)))
    f = tmp_path / "s.toml"
    f.write_text(f'[suites.s]\nmethod = "none"\nweights = "{tmp_path / "passwd"}"\n')
    with pytest.raises(UsageError, match="s.toml:3: suite 's': weights file"):
        expand_suite("s", f)  # it failed every run of the sweep instead
