"""Result figures: files a user can open, errors before any work, the panels and curves they show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from ftbench.errors import UsageError
from ftbench.report import plots
from ftbench.report.plots import build_figure, plot_results
from ftbench.results.store import read_results

# Tolerances: plotted values are means of hand-made float64 numbers, computed exactly to ~1e-15;
# pytest.approx's default (1e-6 relative) only absorbs the order of summation.

DATA = Path(__file__).parent / "data" / "results_small"
COL_KEY = ["benchmark", "shift", "corruption", "severity", "model", "shots"]
NOISE = "corruption (gaussian_noise, s5)"


def _variant_rows(df: pd.DataFrame, method: str, tag: str = "", **extra: object) -> pd.DataFrame:
    """Synthetic rows of another method, copied from the ok block-1 rows (with new run ids)."""
    base = df[(df["status"] == "ok") & (df["method"] == "surgical") & (df["blocks"] == "1")]
    return base.assign(method=method, blocks="", run_id=base["run_id"] + method + tag, **extra)


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return read_results(DATA)[0]


@pytest.fixture(scope="module")
def fig(df: pd.DataFrame) -> Figure:
    """results_small plus a `none` baseline far away (0 %, 0 %) and a WiSE-FT sweep over alpha.

    Built once and shared: drawing is the slow part of these tests.
    """
    none = _variant_rows(df, "none", lr=np.nan, ood_acc=0.0, id_acc=0.0)
    none = pd.concat([none, none.assign(shift="label-flip", corruption=None, severity=np.nan,
                                        run_id=none["run_id"] + "lf")], ignore_index=True)
    # Alphas out of order on purpose; ID accuracy falls and OOD rises with alpha, so order is visible.
    wise = pd.concat([_variant_rows(df, "wise-ft", str(a), alpha=a, id_acc=99.0 - 10 * a, ood_acc=65.0 + 10 * a)
                      for a in (1.0, 0.0, 0.5)], ignore_index=True)
    return build_figure(pd.concat([df, none, wise], ignore_index=True))


def _axes(fig: Figure, kind: str) -> dict[str, object]:
    """Panels by column label, from the gids build_figure gives them ("scatter:<col>", "bars:<col>")."""
    return {ax.get_gid().split(":", 1)[1]: ax for ax in fig.axes if (ax.get_gid() or "").startswith(kind + ":")}


def _line(ax, gid: str):
    return next(line for line in ax.get_lines() if line.get_gid() == gid)


def _legend(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


# --- files and errors -------------------------------------------------------------------------
@pytest.mark.parametrize("suffix, selection", [(".png", "target-val"), (".svg", "oracle"), (".pdf", "target-val")])
def test_writes_a_valid_figure_file(df: pd.DataFrame, tmp_path: Path, suffix: str, selection: str) -> None:
    path = tmp_path / "new" / "folder" / f"fig{suffix}"  # missing parents are created
    assert plot_results(df, path, selection) == path
    data = path.read_bytes()
    assert len(data) > 10_000
    if suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    elif suffix == ".svg":
        text = data.decode()
        assert "<svg" in text and "OOD accuracy (%)" in text and "ID accuracy (%)" in text  # text stays text
        assert "ORACLE selection on target test" in text  # the protocol is stated on the figure
    else:
        assert data.startswith(b"%PDF")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


@pytest.mark.parametrize("name, shown", [("fig.jpg", ".jpg"), ("fig", "(no suffix)")])
def test_bad_suffix_is_a_usage_error_and_writes_nothing(df: pd.DataFrame, tmp_path: Path, name: str,
                                                         shown: str) -> None:
    with pytest.raises(UsageError) as e:
        plot_results(df, tmp_path / "out" / name)
    assert str(e.value) == f"unsupported plot format '{shown}'; accepted: .png, .svg, .pdf"
    assert not (tmp_path / "out").exists()


def test_no_ok_runs_or_bad_names_are_usage_errors(df: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no successful runs"):
        plot_results(df[df["status"] != "ok"], tmp_path / "fig.png")
    with pytest.raises(UsageError, match="unknown selection 'best'"):
        plot_results(df, tmp_path / "fig.png", selection="best")
    with pytest.raises(UsageError, match="unknown metric 'speed'; accepted: ood_acc, id_acc"):
        plot_results(df, tmp_path / "fig.png", metric="speed")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_old_file_and_no_temporary(df: pd.DataFrame, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "fig.png"
    old.write_bytes(b"previous figure")

    def broken_save(self: Figure, fname, **kwargs: object) -> None:  # drawn into memory, then written
        fname.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(plots, "build_figure", lambda *a: Figure())  # the content does not matter here
    monkeypatch.setattr(Figure, "savefig", broken_save)
    with pytest.raises(OSError):
        plot_results(df, old)
    assert old.read_bytes() == b"previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


# --- what the figure shows --------------------------------------------------------------------
def test_one_scatter_and_one_bar_panel_per_shift_column(df: pd.DataFrame, fig: Figure) -> None:
    ok = df[df["status"] == "ok"]
    n_columns = len(ok[COL_KEY].astype(str).drop_duplicates())
    scatter, bars = _axes(fig, "scatter"), _axes(fig, "bars")
    assert len(scatter) == len(bars) == n_columns
    assert NOISE in scatter and "label-flip" in scatter
    assert scatter[NOISE].get_xlabel() == "ID accuracy (%)"
    assert "hyperparameters selected per seed on target validation" in fig.get_suptitle()


def test_points_and_bars_are_selected_mean_and_sample_std(fig: Figure) -> None:
    b1 = _line(_axes(fig, "scatter")[NOISE], "point:block 1")
    # Chosen on target validation: seed 0 lr 1e-3 (ood 70, id 95), seed 1 lr 1e-2 (ood 76, id 94).
    assert b1.get_xdata()[0] == pytest.approx(94.5) and b1.get_ydata()[0] == pytest.approx(73.0)
    bars = _axes(fig, "bars")[NOISE]
    heights = {t.get_text(): p.get_height() for t, p in zip(bars.get_xticklabels(), bars.patches)}
    # Surgical blocks in order, then full; named as the LaTeX table names them (ftbench.report.names).
    assert list(heights) == ["Block 1", "Last layer", "FT"]
    assert heights["Block 1"] == pytest.approx(73.0)
    assert [t.get_text() for t in bars.get_xticklabels() if t.get_fontweight() == "bold"] == ["Block 1"]


def test_colours_are_consistent_across_panels(fig: Figure) -> None:
    for label in ("block 1", "last layer", "full"):
        colours = {to_hex(_line(ax, f"point:{label}").get_color()) for ax in _axes(fig, "scatter").values()}
        assert len(colours) == 1, label
    assert _legend(fig)[:4] == ["No fine-tuning", "Block 1", "Last layer", "FT"]  # table order, display names


def test_no_fine_tuning_is_a_star_and_a_reference_line(fig: Figure) -> None:
    star = _line(_axes(fig, "scatter")[NOISE], "point:none")
    assert star.get_marker() == "*" and star.get_color() == "black"
    bars = _axes(fig, "bars")[NOISE]
    assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == 0.0 for line in bars.get_lines())
    assert "No fine-tuning" in _legend(fig)


def test_wiseft_rows_are_a_curve_sorted_by_alpha(fig: Figure) -> None:
    for column, ax in _axes(fig, "scatter").items():
        curve = _line(ax, "curve:wise-ft")
        assert list(curve.get_xdata()) == pytest.approx([99.0, 94.0, 89.0]), column
        assert list(curve.get_ydata()) == pytest.approx([65.0, 70.0, 75.0]), column
        assert curve.get_linestyle() == "-"
    bars = _axes(fig, "bars")["label-flip"]
    assert "WiSE-FT" not in [t.get_text() for t in bars.get_xticklabels()]  # bars: surgical + full only
    assert "WiSE-FT curve (α 0→1, hollow: α 0)" in _legend(fig)


def test_points_squeezed_by_a_distant_baseline_get_a_zoomed_inset(fig: Figure) -> None:
    # `none` at (0 %, 0 %) squeezes the gaussian-noise points into a corner: zoom on them. Under
    # label-flip, OOD accuracy already spreads the points (51 to 93 %): no inset there.
    scatter = _axes(fig, "scatter")
    (inset,) = [a for a in scatter[NOISE].child_axes if a.get_gid() == "zoom"]
    gids = {line.get_gid() for line in inset.get_lines()}
    assert {"point:block 1", "point:last layer", "point:full", "curve:wise-ft"} <= gids
    assert "point:none" not in gids
    assert not [a for a in scatter["label-flip"].child_axes if a.get_gid() == "zoom"]


def test_panel_titles_name_the_benchmark(fig: Figure) -> None:
    """A figure stands alone (in a paper, a slide): each panel says which benchmark it shows, even
    when the table's column labels leave it out because every run is on one benchmark."""
    for kind in ("scatter", "bars"):
        titles = {col: ax.get_title().replace("\n", " ") for col, ax in _axes(fig, kind).items()}
        assert titles[NOISE] == "digits/Gaussian noise s5" and titles["label-flip"] == "digits/label flip"


def test_a_column_of_methods_only_says_so_in_its_bar_panel(df: pd.DataFrame) -> None:
    """No surgical or full run in a column (here: only BitFit rows): its bar panel says there is
    nothing to draw instead of staying blank."""
    only = _variant_rows(df, "bitfit")
    fig = build_figure(only)
    panels = _axes(fig, "bars")
    assert panels and all([t.get_text() for t in ax.texts] == ["no surgical or full runs"] for ax in panels.values())
