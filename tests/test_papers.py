"""Paper recipes (ftbench/papers/recipes.toml) and the published-numbers comparison (report --compare)."""

from __future__ import annotations

import dataclasses
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
            if m in ("vpt", "lora", "adapter"):
                fields["model"] = "digits-vit"
            if m == "flyp":
                fields["model"] = "digits-clip"
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
    assert "published tables without any ftbench result here (1 cells):" in r.out
    assert "Fabricated et al., Table 2: 1 cell(s)" in r.out
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
    # The release's Auto-RGN command (anniesch/surgical-finetuning @ effeec3, README.md:29) runs the same 14
    # CIFAR-10-C corruptions as its Table 1 command (README.md:23).
    release_14 = {"frost", "gaussian_blur", "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression",
                  "motion_blur", "pixelate", "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur"}
    assert {s.corruption for s in cifar} == release_14
    auto = expand_suite("paper-surgical-auto")
    assert {s.corruption for s in auto} == release_14 and {s.severity for s in auto} == {5}
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


# --- the paper suites: each in its paper's setup; every published cell filled by one -----------------


def _by(specs, **want):
    return [s for s in specs if all(getattr(s, k) == v for k, v in want.items())]


def test_every_paper_suite_expands_in_its_papers_setup() -> None:
    """Protocol, model, shots, methods and the released recipe's values of each paper suite (the values and
    their sources are in recipes.toml; the published protocol in published.toml)."""
    lpft = expand_suite("paper-lpft")
    assert {s.protocol for s in lpft} == {"id-ood"} and {s.model for s in lpft} == {"resnet50"}
    assert {s.benchmark for s in lpft} == {"living17", "entity30", "cifar10"} and {s.shots for s in lpft} == {None}
    assert {s.method for s in lpft} == {"linear-probe", "full", "lp-ft"} and {s.seed for s in lpft} == {0, 1, 2}
    full = _by(lpft, method="full")
    assert sorted({s.lr for s in full}) == [3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    assert {(s.optimizer, s.wd, s.batch_size, s.epochs, s.schedule) for s in full} == {("sgd", 0.0, 64, 20, "cosine")}
    assert {s.options_dict["bn"] for s in full} == {"train"}
    assert {s.options_dict["bn"] for s in _by(lpft, method="lp-ft")} == {"frozen"}
    assert {s.augment for s in _by(lpft, method="full", benchmark="living17")} == {"crop-flip"}
    assert {s.augment for s in _by(lpft, method="full", benchmark="cifar10")} == {None}  # Resize only
    assert {s.options_dict["select"] for s in _by(lpft, method="linear-probe")} == {"val"}
    assert {s.schedule for s in _by(lpft, method="linear-probe")} == {None}  # no loop: no schedule

    for name, shots, lr in (("paper-wiseft-table8", None, 3e-5), ("paper-wiseft-table7", 16, 1e-5)):
        specs = expand_suite(name)
        assert {s.method for s in specs} == {"zero-shot", "wise-ft"}
        assert {(s.benchmark, s.protocol, s.model) for s in specs} == {("imagenet", "id-ood", "clip-vit-b16")}
        (ws,) = {(s.shots, s.lr, s.wd, s.batch_size, s.epochs, s.schedule, s.warmup, s.clip_grad, s.augment,
                  s.head_init, s.options_dict["alphas"], s.options_dict["decay"]) for s in _by(specs, method="wise-ft")}
        assert ws == (shots, lr, 0.1, 512, 10, "cosine", 500, 1.0, "crop", None,  # None: wise-ft's zero-shot head
                      "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", "decoupled")

    petl = expand_suite("paper-petl-robustness")
    assert {s.method for s in petl} == {"zero-shot", "surgical", "full", "bitfit", "ln-tune", "lora", "adapter", "vpt"}
    assert {s.blocks for s in _by(petl, method="surgical")} == {("last",)}  # PETL_Vision's "linear": the head
    trained = [s for s in petl if s.method != "zero-shot"]
    assert {(s.benchmark, s.protocol, s.model, s.shots, s.head_init) for s in trained} == {
        ("imagenet", "id-ood", "clip-vit-b16", 100, "zero-shot")}
    assert {(s.lr, s.wd, s.batch_size, s.epochs, s.checkpoints, s.schedule, s.warmup) for s in trained} == {
        (3e-5, 0.005, 256, 100, 100, "cosine", 3900)}
    # the release's variants (recipes.toml cites each value's file:line): lora_32, rand_h_adapter_32, vpt_deep_50
    (lora,) = _by(petl, method="lora")
    assert {k: lora.options_dict[k] for k in ("r", "alpha", "dropout", "targets")} == {
        "r": 32, "alpha": 32.0, "dropout": 0.1, "targets": "qkv"}  # merge_factor 1: alpha = r
    (adapter,) = _by(petl, method="adapter")
    assert adapter.options_dict == {"bottleneck": 32, "placement": "houlsby", "act": "relu", "dropout": 0.1,
                                    "init": "xavier", "scale": 0.01, "proj": "train"}
    (vpt,) = _by(petl, method="vpt")
    assert vpt.options_dict == {"prompts": 50, "mode": "deep", "dropout": 0.1, "proj": "train"}
    # the release's head is Sequential(CLIP's projection, the classifier) (build_model.py:122-124): every trained
    # row but full (which trains everything) trains the projection too, the "linear" row included
    assert {s.method: s.options_dict.get("proj") for s in trained} == {
        "surgical": "train", "full": None, "bitfit": "train", "ln-tune": "train", "lora": "train", "adapter": "train",
        "vpt": "train"}

    autoft = expand_suite("paper-autoft")
    assert {(s.protocol, s.model) for s in autoft} == {("id-ood", "clip-vit-b16")}
    assert {s.benchmark for s in autoft} == {"iwildcam", "fmow"}
    assert {s.method for s in autoft} == {"zero-shot", "full", "autoft", "flyp", "wise-ft"}
    (a,) = {(s.lr, s.batch_size, s.epochs, s.schedule, s.warmup, s.clip_grad) for s in _by(autoft, method="autoft")}
    assert a == (1e-5, 256, 20, "cosine", 500, 1.0)
    o = _by(autoft, method="autoft")[0].options_dict
    assert (o["trials"], o["inner_steps"], o["lr_mode"], o["dcm"], o["search_size"]) == (500, 10, "fixed", "entropy", 1000)
    assert "flyp" in o["terms"].split(",")
    assert {s.head_init for s in _by(autoft, method="full")} == {"zero-shot"}
    # the release's fine-tuning baseline: AdamW at the scripts' wd (autoft/scripts/iwildcam.sh:15, fmow.sh:15)
    assert {(s.benchmark, s.wd, s.options_dict["decay"], s.lr, s.schedule, s.warmup, s.clip_grad)
            for s in _by(autoft, method="full")} == {("iwildcam", 0.2, "decoupled", 1e-5, "cosine", 500, 1.0),
                                                    ("fmow", 0.1, "decoupled", 1e-5, "cosine", 500, 1.0)}
    flyp = _by(expand_suite("paper-flyp-wilds"), method="flyp")
    assert {(s.lr, s.wd, s.batch_size, s.epochs, s.schedule, s.warmup) for s in flyp} == {(1e-5, 0.2, 256, 20, "cosine", 500)}
    assert {s.seed for s in flyp} == {0, 1, 2, 3, 4}  # the authors: iWildCam over 5 seeds


def test_every_published_cell_is_filled_by_a_paper_suite_and_every_paper_suite_fills_one() -> None:
    from ftbench.papers.setup import cells_filled, setups
    from ftbench.report.compare import load_published
    from ftbench.plan.suites import default_suites_file, load_suites

    published, missing = load_published("paper")
    comparable = [p for p in published if p.cell is not None]
    assert len(published) == 197 and len(comparable) == 81
    assert all(p.reason for p in published if p.cell is None)  # each says why no ftbench result matches
    unreadable = {m["paper"].split(" (")[0] for m in missing}
    suites = load_suites(default_suites_file())[0]
    filled: set[int] = set()
    for name, setup in setups().items():
        if setup.paper.split(" (")[0] in unreadable and not any(p.paper in setup.paper for p in comparable):
            continue  # no table of this paper could be read: a suite without cells, as the dry run says
        got = cells_filled(expand_suite(name), published, weights_given=bool(setup.weights))
        assert got, f"suite {name} fills no published cell"
        filled |= {id(p) for p, _ in got}
    orphans = [p.source for p in comparable if id(p) not in filled]
    assert not orphans, orphans
    # every paper-* suite is a paper suite with a setup, or a part of one
    included = {str(i) for n in setups() for i in suites[n].get("include", [])}
    assert {n for n in suites if n.startswith("paper-")} <= set(setups()) | included


def test_dry_run_prints_the_setup_weights_data_and_the_cells_it_fills(cli, tmp_path) -> None:
    r = cli("sweep", "paper-lpft", "--dry-run")
    assert r.code == 0, r.err
    for text in [("setup: protocol id-ood; model resnet50; shots all of ID train; methods linear-probe, full, lp-ft; "
                  "seeds 0, 1, 2; 189 runs"), "weights needed: the paper's MoCo-v2 ResNet-50",
                 "ftbench sweep paper-lpft --weights FILE", "ftbench fetch stl10", "ftbench fetch breeds",
                 "estimated GPU-hours for the runs to do:", "published cells it fills (21):",
                 "Kumar et al. 2022, Table 2: FT / STL"]:
        assert text in r.out, text
    r = cli("sweep", "paper-lpft", "--dry-run", "--weights", tmp_path / "none.pt")
    assert r.code == 2 and r.err.count("\n") == 1 and "weights file" in r.err and "not found" in r.err


def _fabricated(spec, seed_shift: float, alphas=True) -> list[dict]:
    """Rows as a run of ``spec`` writes them, with made-up accuracies (ID, each OOD set; WiSE-FT per alpha)."""
    from ftbench.data.base import get_benchmark

    sets = list(get_benchmark(spec.benchmark).id_ood_sets)
    base = {**spec.columns(), "status": "ok", "variant": "", "final": True}
    base["options"] = dict(spec.options)

    def accs(x: float) -> dict:
        ood = {f"ood.{n}_acc": x - 10 - i for i, n in enumerate(sets)}
        return {"id_acc": x, "val_acc": x, "ood_acc": sum(ood.values()) / len(ood), **ood}

    if spec.method != "wise-ft":
        return [{**base, **accs(70.0 + seed_shift)}]
    rows = [{**base, **accs(60.0 + 20 * a + seed_shift), "alpha": a, "final": False} for a in (0.0, 0.5)]
    return rows + [{**base, **accs(80.0 + seed_shift), "alpha": 1.0}]


def test_compare_paper_on_a_paper_suites_fabricated_results(cli, tmp_path) -> None:
    """Table 8's WiSE-FT run from the suite, its rows fabricated: each alpha row fills the cell naming it,
    the zero-shot cells (no zero-shot run here) are listed as missing in the table, other tables summarised."""
    from ftbench.results.store import write_result

    wise = _by(expand_suite("paper-wiseft-table8"), method="wise-ft")[0]
    write_result(tmp_path, _fabricated(wise, 0.0))
    r = cli("report", tmp_path, "--compare", "paper")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    half = next(x for x in lines if "WiSE-FT (α=0.5)" in x and "IN-V2" in x)  # alpha 0.5: id 70, v2 = 70 - 10
    assert "72.8" in half and "60.0" in half and "-12.8" in half and "one seed" in half
    ft = next(x for x in lines if "Standard fine-tuning" in x and "IN (ref.)" in x)  # alpha 1: id 80
    assert "81.3" in ft and "80.0" in ft and "-1.3" in ft
    zs = next(x for x in lines if "CLIP ViT-B/16: Zero-shot" in x and "IN-A" in x)
    assert "49.8" in zs and "missing" in zs  # listed, not dropped
    assert "Wortsman et al. 2022, Table 7: 5 cell(s)" in r.out and "Kumar et al. 2022, Table 1: 9 cell(s)" in r.out
    assert "not comparable (116 published cells" in r.out and "ftbench has no DomainNet benchmark" in r.out
    assert "ftbench cells without a published number" not in r.out  # the wise-ft cell is matched (empty severity)
    tex = cli("report", tmp_path, "--compare", "paper", "--format", "latex")
    assert tex.code == 0, tex.err
    assert r"\begin{tabular}" in tex.out and r"WiSE-FT ($\alpha$=0.5) & IN-V2 & 72.8 & 60.0 & 1 & -12.8" in tex.out
    md = cli("report", tmp_path, "--compare", "paper", "--format", "markdown")
    assert "| Wortsman et al. 2022 | Table 8 | CLIP ViT-B/16: Zero-shot | IN-A | ood.imagenet-a_acc | 49.8 | missing |" in md.out


def test_compare_paper_judges_by_the_papers_interval_or_the_seed_range(cli, tmp_path) -> None:
    """LP-FT prints 90% CIs: ftbench's mean inside or outside it; a run without --weights fills no LP-FT cell."""
    from ftbench.results.store import write_result

    specs = [s for s in expand_suite("paper-lpft") if s.lr in (3e-4, None) and s.benchmark == "cifar10"]
    for s in specs:  # with a weights file, as `sweep paper-lpft --weights FILE` makes them
        s = dataclasses.replace(s, weights="/weights/moco_v2_800ep.pt")
        rows = _fabricated(s, {0: -0.4, 1: 0.0, 2: 0.4}[s.seed])
        for r in rows:  # LP-FT's CIFAR-10 ID: 97.5 ± 0.1 -> 97.5 inside; FT 97.3 ± 0.2 -> 70 outside
            r["id_acc"] = {"lp-ft": 97.5, "full": 70.0, "linear-probe": 91.8}[s.method] + {0: -0.4, 1: 0.0, 2: 0.4}[s.seed]
        write_result(tmp_path, rows)
    r = cli("report", tmp_path, "--compare", "paper")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    lpft = next(x for x in lines if x.startswith("Kumar") and "Table 1" in x and "LP-FT" in x and "CIFAR-10" in x)
    assert "97.5 ± 0.1" in lpft and "97.5 ± 0.4" in lpft and "3" in lpft and "within the paper's 90% CI [97.4, 97.6]" in lpft
    ft = next(x for x in lines if x.startswith("Kumar") and "Table 1" in x and " FT " in x and "CIFAR-10" in x)
    assert "outside the paper's 90% CI [97.1, 97.5]" in ft
    liv = next(x for x in lines if x.startswith("Kumar") and "Table 1" in x and "Liv-17" in x)
    assert "missing" in liv
    plain = tmp_path / "plain"
    for s in specs[:1]:
        write_result(plain, _fabricated(s, 0.0))  # no --weights: the supervised hub weights
    r = cli("report", plain, "--compare", "paper")
    assert r.code == 0 and "Kumar et al. 2022, Table 1: 9 cell(s)" in r.out
