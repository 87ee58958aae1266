"""Folders that hold more than one experiment (issue 25 §3): every command writes to ftbench-results/
by default, so following the README fills it with runs of two models and both protocols. The report
makes one table per protocol and model (never an average across them), applies a selection where it
applies (with a notice), fits the terminal, and its --filter takes OR within a key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ftbench.results.store import read_results, write_result

SMALL = Path(__file__).parent / "data" / "results_small"


def _row(base: dict, **changes: object) -> dict:
    row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in base.items()}
    row.update(changes)
    return row


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results_small (few-shot, digits-resnet), the same runs of digits-vit 20 points lower OOD, and
    id-ood runs of digits-resnet on style-noise (with an OOD val set) — what the README leaves."""
    folder = tmp_path_factory.mktemp("mixed") / "ftbench-results"
    df, _ = read_results(SMALL)
    rows = [r for r in df.to_dict("records")]
    for r in rows:
        write_result(folder, _row(r))
        if r["status"] == "ok":
            write_result(folder, _row(r, run_id=r["run_id"][::-1], model="digits-vit", ood_acc=r["ood_acc"] - 20))
    template = next(r for r in rows if r["status"] == "ok")
    n = 0
    for method in ("full", "lp-ft"):
        for seed in (0, 1):
            for lr, val, ood_val, style, noise in ((1e-3, 99.0, 60.0, 70.0, 50.0), (1e-2, 90.0, 70.0, 90.0, 80.0)):
                bonus = 4.0 if method == "lp-ft" else 0.0
                write_result(folder, _row(template, run_id=f"{n:016x}", protocol="id-ood", shift="style-noise",
                                          shift_level="mixed", corruption=None, severity=None, method=method,
                                          blocks="", seed=seed, lr=lr, val_acc=val, ood_val_acc=ood_val,
                                          **{"ood.style_acc": style + bonus, "ood.noise_acc": noise + seed},
                                          ood_acc=(style + bonus + noise + seed) / 2, id_acc=95.0 - bonus,
                                          source_val_acc=None))
                n += 1
    return folder


def _out(r) -> str:  # noqa: ANN001
    assert r.code == 0, r.err
    return r.out


def test_one_table_per_protocol_and_model_never_averaged_across_them(cli, mixed: Path) -> None:
    out = _out(cli("report", mixed, "--table", "methods", "--format", "markdown"))
    heads = [ln for ln in out.splitlines() if ln.startswith("### ")]
    assert heads == ["### protocol=few-shot, model=digits-resnet", "### protocol=few-shot, model=digits-vit",
                     "### protocol=id-ood, model=digits-resnet"]
    resnet, vit, idood = out.split("### ")[1:]
    # Each few-shot table is results_small's own table: nothing of the other model is in it.
    golden = (Path(__file__).parent / "golden" / "methods.md").read_text()
    assert resnet.split("\n", 2)[2] == golden + "\n"
    assert "| block 1 | 95.0 ± 0.0 | **65.0 ± 1.4** |" in vit  # 20 points below resnet's 85.0, not their mean 75.0
    assert "[model=" not in out and "[protocol=" not in out and "average" not in idood
    assert "protocol id-ood" in idood and "protocol few-shot" not in idood
    # A table kind or --rows that fits some of the tables only: those, and a note for the others.
    r = cli("report", mixed, "--table", "corruptions", "--format", "markdown")
    assert _out(r).count("### ") == 2 and "note: no --table corruptions for protocol=id-ood, model=digits-resnet" in r.err
    only = _out(cli("report", mixed, "--rows", "lp-ft", "--format", "markdown"))
    assert only.startswith("### protocol=id-ood, model=digits-resnet\n") and only.count("### ") == 1
    # A folder of one experiment prints as before (no heading).
    assert "###" not in _out(cli("report", SMALL, "--format", "markdown"))


def test_a_selection_that_applies_to_some_runs_applies_to_those_with_a_notice(cli, mixed: Path) -> None:
    for select, applies, rest in (("ood-val", "id-ood", "few-shot"), ("source-val", "few-shot", "id-ood")):
        r = cli("report", mixed, "--select", select, "--format", "markdown")
        out = _out(r)
        notes = [ln for ln in r.err.splitlines() if f"--select {select}" in ln]
        assert len(notes) == 1 and notes[0].startswith("note:") and f"{rest} runs on digits" in notes[0], r.err
        for part in out.split("### ")[1:]:
            caption = [ln for ln in part.strip().splitlines() if ln and not ln.startswith("*Ties:")][-1]  # the tie footnote follows
            if f"protocol={applies}" in part:
                assert {"ood-val": "OOD validation", "source-val": "source validation"}[select] in caption
            else:
                assert {"few-shot": "target validation", "id-ood": "ID validation"}[rest] in caption
    # The id-ood rows chose lr 1e-2 on OOD val (style 90 + 4 for lp-ft), lr 1e-3 on ID val (70 + 4).
    idood = _out(cli("report", mixed, "--select", "ood-val", "--format", "markdown",
                     "--filter", "protocol=id-ood"))
    assert "| lp-ft | **87.2 ± 0.4** | **94.0 ± 0.0** |" in idood
    # --plot and --baseline use one selection for all runs: refused before anything is drawn.
    r = cli("report", mixed, "--select", "ood-val", "--plot", mixed.parent / "fig.png")
    assert r.code == 2 and r.err.strip().splitlines()[-1].startswith("error: --select ood-val applies to some runs "
                                                                      "only; --plot uses one selection")
    assert not (mixed.parent / "fig.png").exists()
    # Where it applies to no run at all, it is refused as before.
    r = cli("report", SMALL, "--select", "ood-val")
    assert r.code == 2 and "does not apply to runs of protocol 'few-shot'" in r.err


def test_filter_takes_several_values_of_a_key(cli) -> None:
    both = _out(cli("report", SMALL, "--format", "csv", "--filter", "method=full,surgical"))
    assert both == _out(cli("report", SMALL, "--format", "csv"))
    one = _out(cli("report", SMALL, "--format", "csv", "--filter", "blocks=1,last"))
    assert "block 1," in one and "last layer," in one and "full," not in one
    r = cli("report", SMALL, "--filter", "shift=label-flip", "--filter", "method=ful,lp-ft")
    assert r.code == 2 and r.err.strip() == ("error: --filter method=ful,lp-ft matches no run (after --filter "
                                             "shift=label-flip); method has: full, surgical")


def test_terminal_tables_fit_the_width_and_say_what_moved(cli, mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ftbench.cli import out

    # results_small's methods table is 165 characters wide: wider than the report's console (160 unless
    # COLUMNS says otherwise). Before, rich cut its headers short ("corruption (gaussian_noi…").
    text = _out(cli("report", SMALL, "--table", "methods"))
    assert "…" not in text and max(len(ln) for ln in text.splitlines()) <= out.width
    assert "corruption (gaussian_noise, s5)" in text and "(part 2 of 2)" in text and "--format markdown" in text

    from ftbench.report.table import build, render_terminal

    grid = build(read_results(SMALL)[0], "methods")
    for width in (80, 100, 120):
        text = render_terminal(grid, width)
        assert max(len(ln) for ln in text.splitlines()) <= width, text
        assert "…" not in text  # no header or cell cut short
        for g, subs in grid.groups:  # every column is still shown, whole
            assert g in text
        assert "--format markdown" in text  # how to see it in one piece
    assert "part" not in render_terminal(grid, 200)  # a table that fits is one table


def test_compare_methods_on_id_ood_runs_warns_nothing(mixed: Path) -> None:
    """The id-ood column's sort key ends in a missing shot count: ordering the columns must not make NumPy print
    'invalid value encountered in reduce' under the paired table (it did, on every id-ood folder)."""
    import warnings

    from ftbench.report.paired import compare_methods

    df, _ = read_results(mixed)
    df = df[df["protocol"] == "id-ood"].assign(shots=float("nan"))  # id-ood runs have no shots, as a real folder's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = compare_methods(df, "lp-ft", "full", "val")
    assert {p.measure for p in pairs} >= {"ID", "OOD"}
