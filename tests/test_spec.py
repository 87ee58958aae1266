"""Run ids, resolution and suite expansion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ftbench.errors import UsageError
from ftbench.spec import RunSpec
from ftbench.plan.suites import expand_suite
from ftbench.plan.resolve import resolve

REPO = Path(__file__).resolve().parents[1]


def test_run_id_is_stable_across_versions() -> None:
    # A fixed spec must keep its id: results folders from earlier ftbench versions stay resumable.
    # If this changes on purpose, bump SPEC_VERSION and say so in CHANGELOG.md.
    spec = resolve(RunSpec(method="surgical", blocks=("1",), shift="corruption"))
    assert spec.run_id == resolve(RunSpec(method="surgical", blocks=("1",), shift="corruption")).run_id
    assert spec.run_id == GOLDEN_ID
    # The default bn became 'frozen' (issue 14): a default run is a new configuration with a new id,
    # and a result made before under the former default keeps its id, now spelled --set bn=train.
    old = resolve(RunSpec(method="surgical", blocks=("1",), shift="corruption", options=(("bn", "train"),)))
    assert old.run_id == GOLDEN_ID_BN_TRAIN


GOLDEN_ID = "f02f83d34fa20551"
GOLDEN_ID_BN_TRAIN = "5f9c1a843ef31a8e"  # the default id before 0.2 (bn=train)


def test_equivalent_requests_share_one_id() -> None:
    a = resolve(RunSpec(method="surgical", blocks=("1",)))
    b = resolve(RunSpec(method="surgical", blocks=(), model="digits-resnet", corruption="gaussian_noise", severity=5))
    assert a.run_id == b.run_id
    # Block order and duplicates do not matter; hyperparameters a method ignores do not either.
    assert resolve(RunSpec(blocks=("3", "1", "1"))).blocks == ("1", "3")
    lp1 = resolve(RunSpec(method="linear-probe", lr=0.1))
    lp2 = resolve(RunSpec(method="linear-probe", lr=0.5, steps=9))
    assert lp1.run_id == lp2.run_id and lp1.lr is None


def test_different_configurations_get_different_ids() -> None:
    base = resolve(RunSpec())
    for change in [dict(seed=1), dict(lr=1e-2), dict(blocks=("2",)), dict(shift="label-flip"),
                   dict(severity=3), dict(options=(("bn", "train"),)), dict(shots=5)]:
        assert resolve(dataclasses.replace(RunSpec(), **change)).run_id != base.run_id, change


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="nope"), "unknown method 'nope'; accepted: "),
        (dict(shift="weather"), "unknown shift for benchmark 'digits': 'weather'"),
        (dict(benchmark="imagenet-1k"), "unknown benchmark 'imagenet-1k'; accepted: camelyon17, celeba, cifar10, cifar10-c, "),
        (dict(blocks=("4",)), "block '4' is out of range for model 'digits-resnet'; accepted: 1, 2, 3, last"),
        (dict(blocks=("0",)), "out of range"),
        (dict(method="full", blocks=("1",)), "method 'full' takes no --block"),
        (dict(corruption="frostbite"), "unknown corruption 'frostbite'"),
        (dict(severity=6), "severity must be an integer in 1..5"),
        (dict(shift="label-flip", corruption="contrast"), "apply only to --shift corruption"),
        (dict(shots=500), "shots must be an integer in 1.."),
        (dict(options=(("nope", "1"),)), "method 'surgical' has no option 'nope'; accepted: bn, proj"),
        (dict(options=(("bn", "sometimes"),)), "unknown value for option bn"),
        (dict(steps=5, epochs=2), "give --steps or --epochs, not both"),
        (dict(lr=-1.0), "lr must be a positive number"),
        (dict(optimizer="rmsprop"), "unknown optimizer 'rmsprop'; accepted: adam, sgd"),
        (dict(model="vit"), "unknown model 'vit'"),
    ],
)
def test_bad_specs_name_the_value_and_what_is_accepted(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=None) as e:
        resolve(RunSpec(**kwargs))
    assert message in str(e.value)


def test_default_suite_expansion_matches_its_definition() -> None:
    specs = expand_suite("default", REPO / "benchmarks.toml")
    # Per shift and seed: none 1 + surgical 4 blocks x 2 lr + linear-probe 1 (lr-free) + full 2 + lp-ft 2.
    assert len(specs) == 3 * 3 * (1 + 8 + 1 + 2 + 2)
    assert len({s.run_id for s in specs}) == len(specs)
    assert {s.shift for s in specs} == {"corruption", "subpopulation", "label-flip"}
    assert {s.blocks for s in specs if s.method == "surgical"} == {("1",), ("2",), ("3",), ("last",)}
    assert all(s.corruption is None for s in specs if s.shift != "corruption")


def test_include_dedupes(tmp_path: Path) -> None:
    f = tmp_path / "b.toml"
    f.write_text('[suites.a]\nmethod = "none"\nseed = [0, 1]\n[suites.b]\ninclude = ["a", "a"]\nmethod = "none"\nseed = 1\n')
    assert len(expand_suite("b", f)) == 2


@pytest.mark.parametrize(
    "text, suite, message",
    [
        ('[suites.a]\nmethod = "none"\nlrs = [1]\n', "a", "b.toml:3: suite 'a': unknown key 'lrs'"),
        ('[suites.a]\nmethod = "none"\nseed = [0,\n', "a", "malformed TOML"),
        ('[suites.a]\nmethod = "nope"\n', "a", "b.toml:2: suite 'a': unknown method 'nope'"),
        ('[suites.a]\nblock = [9]\n', "a", "b.toml:2: suite 'a': block '9' is out of range"),
        ('[suites.a]\ninclude = ["a"]\n', "a", "includes itself"),
        ('[suites.a]\nmethod = "none"\n', "zzz", "unknown suite in"),
        ('x = 1\n', "a", "no [suites.NAME] tables found"),
    ],
)
def test_malformed_suites_name_file_line_and_key(tmp_path: Path, text: str, suite: str, message: str) -> None:
    f = tmp_path / "b.toml"
    f.write_text(text)
    with pytest.raises(UsageError) as e:
        expand_suite(suite, f)
    assert message in str(e.value)


def test_options_without_a_grid_are_an_error(tmp_path: Path) -> None:
    f = tmp_path / "b.toml"
    f.write_text('[suites.a]\nmethod = "none"\n[suites.b]\ninclude = ["a"]\noptions = { bn = "frozen" }\n')
    with pytest.raises(UsageError, match="options need a grid"):
        expand_suite("b", f)


def test_unknown_method_lists_every_registered_method() -> None:
    from ftbench.methods.base import METHODS, get_method

    get_method("full")
    with pytest.raises(UsageError) as e:
        resolve(RunSpec(method="nope"))
    assert str(e.value).endswith("accepted: " + ", ".join(METHODS.names()))
    assert {"none", "surgical", "linear-probe", "full", "lp-ft"} <= set(METHODS.names())


@pytest.mark.parametrize("method, option, value, message", [
    ("linear-probe", "max_iter", "0", "must be a positive integer"),
    ("lp-ft", "lp_l2", "-1", "must be a non-negative number"),
    ("lp-ft", "lp_l2", "nan", "must be a non-negative number"),
    ("l2-sp", "alpha", "inf", "must be a non-negative number"),
    ("auto-rgn", "every", "0", "must be a positive integer"),
])
def test_numeric_options_are_range_checked(method: str, option: str, value: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        resolve(RunSpec(method=method, options=((option, value),)))
    parsed = int(value) if option in ("max_iter", "every") else float(value)
    assert f"option {option}={parsed!r} of method {method!r} {message}" == str(e.value)
