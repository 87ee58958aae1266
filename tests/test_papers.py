"""Paper recipes (ftbench/papers/recipes.toml) and the published-numbers comparison (report --compare)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from ftbench.errors import UsageError
from ftbench.methods.base import get_method
from ftbench.papers.recipes import FIELDS, apply_recipe, get_recipe, recipes
from ftbench.spec import RunSpec
from ftbench.plan.suites import expand_suite
from ftbench.plan.resolve import resolve

SMALL = Path(__file__).parent / "data" / "results_small"


def test_every_recipe_names_its_release_and_only_real_fields_and_options() -> None:
    all_ = recipes()
    assert {"surgical", "lp-ft", "autoft", "wise-ft", "petl", "spottune"} <= set(all_)
    for r in all_.values():
        assert r.paper and "@" in r.code and r.methods
        assert set(r.fields) <= set(FIELDS) and r.sources  # every recipe says where its values are
        for m in r.methods:
            get_method(m)
        for m, opts in r.options.items():
            taken = [get_method(n).options for n in (r.methods if m == "*" else [m])]
            for k in opts:
                assert any(k in t for t in taken), (r.name, m, k)
        # every recipe resolves with every one of its methods (values of the right type and range)
        for m in r.methods:
            fields = apply_recipe(r, {"method": m, "benchmark": "digits"}, set())
            if m in ("vpt", "lora"):
                fields["model"] = "digits-vit"
            resolve(RunSpec(**fields))


def test_a_recipe_fills_what_is_not_given_and_the_run_id_is_the_settings() -> None:
    r = get_recipe("surgical")
    fields = apply_recipe(r, {"method": "surgical", "blocks": ("1",), "lr": 0.01, "options": (("bn", "train"),)},
                          given={"lr"})
    spec = resolve(RunSpec(**fields))
    assert spec.lr == 0.01 and spec.epochs == 15 and spec.checkpoints == 15 and spec.options_dict["bn"] == "train"
    by_hand = resolve(RunSpec(method="surgical", blocks=("1",), lr=0.01, wd=1e-4, epochs=15, checkpoints=15,
                              batch_size=64, optimizer="adam", options=(("bn", "train"),)))
    assert spec.run_id == by_hand.run_id  # not a RunSpec field: the same settings are the same run
    on_imagenet = apply_recipe(r, {"method": "auto-rgn", "benchmark": "imagenet-c"}, set())
    assert on_imagenet["epochs"] == 10 and dict(on_imagenet["options"])["every"] == 78
    assert apply_recipe(r, {"method": "surgical", "steps": 7}, {"steps"}).get("epochs") is None  # length given


def test_run_recipe_from_the_cli_explicit_flags_win(cli, tmp_path) -> None:
    r = cli("run", "--recipe", "lp-ft", "--method", "full", "--epochs", "1", "--lr", "0.01", "--out", tmp_path)
    assert r.code == 0, r.err
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[0]
    assert (row.optimizer, row.wd, row.lr, row.epochs, row.batch_size) == ("sgd", 0.0, 0.01, 1, 64)
    assert '"bn": "train"' in row.options  # the LP-FT release fine-tunes in train mode
    r = cli("run", "--recipe", "nope", "--out", tmp_path / "x")
    assert r.code == 2 and r.err.count("\n") == 1 and "unknown recipe 'nope'; accepted: surgical" in r.err
    assert not (tmp_path / "x").exists()


def test_suite_key_recipe_fills_grid_fields_and_options(tmp_path) -> None:
    f = tmp_path / "b.toml"
    f.write_text('[suites.s]\nrecipe = "surgical"\nmethod = ["surgical", "auto-rgn"]\nblock = 1\n'
                 '[suites.t]\nrecipe = "surgical"\nmethod = "surgical"\nlr = 0.5\nepochs = 2\n'
                 '[suites.bad]\nrecipe = ["surgical", "lp-ft"]\nmethod = "surgical"\n')
    specs = expand_suite("s", f)
    assert sorted({s.lr for s in specs}) == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1] and len(specs) == 10
    rgn = next(s for s in specs if s.method == "auto-rgn")
    assert rgn.options_dict["exclude_bn"] is True and rgn.options_dict["every"] == 3 and rgn.checkpoints == 15
    (t,) = expand_suite("t", f)
    assert (t.lr, t.epochs, t.wd) == (0.5, 2, 1e-4)  # the suite's own values win
    with pytest.raises(UsageError, match=r"b.toml:\d+: suite 'bad': recipe must be one recipe name"):
        expand_suite("bad", f)


def test_list_recipes_shows_every_default_and_its_source(cli) -> None:
    r = cli("list", "recipes")
    assert r.code == 0, r.err
    for text in ["surgical (--recipe surgical", "anniesch/surgical-finetuning", "grid (suites): lr = 0.1",
                 "source of bn: config/cifar-10c.yaml:22 train_mode: eval", "lp-ft", "log_reg_sk.py",
                 "autoft", "trials=500", "petl", "mode=deep", "spottune", "not_reproduced"]:
        assert text in r.out, text


# --- report --compare -----------------------------------------------------------------------


PUBLISHED = '''
[[published]]
paper = "Fabricated et al."
table = "Table 1"
row = "Block 1"
column = "digits corruption"
value = 75.0
protocol = "fabricated for the test"
cell = { benchmark = "digits", shift = "corruption", corruption = "gaussian_noise", severity = 5, method = "surgical", blocks = "1" }

[[published]]
paper = "Fabricated et al."
table = "Table 1"
row = "Full"
column = "digits label-flip"
value = 95.5
protocol = "fabricated for the test"
cell = { shift = "label-flip", method = "full" }

[[published]]
paper = "Fabricated et al."
table = "Table 2"
row = "LP-FT"
column = "CIFAR-10-C"
value = 80.0
protocol = "fabricated for the test"
cell = { benchmark = "cifar10-c", method = "lp-ft" }
'''


def test_compare_paper_gives_both_numbers_the_difference_and_the_cells_without_one(cli, tmp_path) -> None:
    """results_small's numbers are known (tests/data/make_results_small.py): target-val selection picks
    lr 1e-3 (OOD 70) for seed 0 and 1e-2 (OOD 76) for seed 1 of surgical block 1 -> 73.0."""
    results = tmp_path / "results"
    shutil.copytree(SMALL, results)
    pub = tmp_path / "published.toml"
    pub.write_text(PUBLISHED)
    r = cli("report", results, "--compare", pub)
    assert r.code == 0, r.err
    line = next(x for x in r.out.splitlines() if x.startswith("Fabricated et al.") and "Block 1" in x)
    assert "75.0" in line and "73.0" in line and "-2.0" in line and " 2 " in line
    line = next(x for x in r.out.splitlines() if x.startswith("Fabricated et al.") and "Full" in x)
    assert "95.5" in line and "92.0" in line and "-3.5" in line  # full label-flip: 91, 93 -> 92.0
    assert "published numbers without ftbench results (1):" in r.out and "Table 2, row 'LP-FT'" in r.out
    assert "ftbench cells without a published number" in r.out and "last layer | corruption" in r.out
    md = cli("report", results, "--compare", pub, "--format", "markdown")
    assert "| Fabricated et al. | Table 1 | Block 1 |" in md.out and "| -2.0 |" in md.out


def test_compare_with_the_shipped_numbers_and_bad_files(cli, tmp_path) -> None:
    r = cli("report", SMALL, "--compare", "paper")
    assert r.code == 0, r.err
    assert "tables not entered in the published numbers:" in r.out and "Lee et al. 2023" in r.out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[published]]\npaper = "x"\n')
    r = cli("report", SMALL, "--compare", bad)
    assert r.code == 2 and r.err.count("\n") == 1 and "published entry 1 lacks table, row" in r.err
    r = cli("report", SMALL, "--compare", tmp_path / "none.toml")
    assert r.code == 2 and "cannot read published numbers" in r.err and "accepted: 'paper'" in r.err


# --- reproduction suites and the GPU-hours estimate ----------------------------------------------


def test_reproduction_suites_expand_with_their_recipes_and_dry_run_estimates(cli) -> None:
    from ftbench.plan.suites import default_suites_file, suite_descriptions

    names = [n for n in suite_descriptions(default_suites_file()) if n.startswith("paper-")]
    assert {"paper-surgical-cifar10c", "paper-surgical-imagenetc", "paper-lpft", "paper-autoft"} <= set(names)
    cifar = expand_suite("paper-surgical-cifar10c")
    assert len(cifar) == 14 * 3 * (1 + 4 * 5 + 5) and {s.epochs for s in cifar if s.method != "none"} == {15}
    assert {s.options_dict.get("bn") for s in cifar if s.method != "none"} == {"frozen"}
    r = cli("sweep", "paper-autoft", "--dry-run")
    assert r.code == 0, r.err
    assert "estimated GPU-hours for the runs to do:" in r.out and "an estimate, not a measurement" in r.out


def test_the_estimate_is_counted_flops_times_steps_at_the_assumed_rate(monkeypatch) -> None:
    from ftbench.papers import estimate

    spec = resolve(RunSpec(method="full", steps=10, batch_size=32))
    f = estimate.forward_flops("digits-resnet", 1, 8, 10)
    assert f is not None and 1e6 < f < 1e7  # ~1.5 MFLOPs: a 3-stage ResNet on 8×8 images
    assert estimate.run_flops(spec) == pytest.approx(3 * f * 10 * 32)
    monkeypatch.setenv("FTBENCH_GPU_TFLOPS", "2")
    hours, unknown = estimate.estimate([spec, resolve(RunSpec(method="none"))])
    assert unknown == 0 and hours == pytest.approx(3 * f * 10 * 32 / 2e12 / 3600)
