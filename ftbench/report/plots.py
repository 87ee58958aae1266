"""Figures from a results folder: ID-vs-OOD scatter and accuracy-by-tuned-block bars per shift.

The figure applies the same protocol as the tables (:mod:`ftbench.report.table`): only ``ok`` runs;
per (cell, seed) the run chosen by :func:`~ftbench.report.table.select`; points and bars are the
mean over seeds, error bars the sample standard deviation over seeds (ddof = 1).

Figures are built on a bare :class:`matplotlib.figure.Figure` (no pyplot), so nothing depends on
the interactive backend or global figure state, and no window can pop up; saving goes through
Agg / the vector backends chosen by the file suffix.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ftbench.errors import UsageError, unknown
from ftbench.outfile import write_output
from ftbench.report import PANELS
from ftbench.report.names import column_name, row_name
from ftbench.report.table import (DEFAULT_SELECTION, DEFAULT_TREND, SELECTIONS, Trend, fit_trend, label_columns,
                                  protocols_of, select, trend_points)

FORMATS = (".png", ".svg", ".pdf")


def _selection_title(selection: str, protocols: list[str]) -> str:
    """What the selection read, in the words of the rows' protocols (ftbench/protocols)."""
    from ftbench.protocols.base import get_protocol

    words = " / ".join(dict.fromkeys(get_protocol(p).selections[selection][1] for p in protocols))
    if selection == "oracle":
        return f"ORACLE selection on {words.replace('TEST', 'test')} (an upper bound, not a result)"
    return f"hyperparameters selected per seed on {words}"


METRIC_LABEL = {
    "ood_acc": "OOD accuracy (%)",
    "id_acc": "ID accuracy (%)",
    "val_acc": "target validation accuracy (%)",
    "source_val_acc": "source validation accuracy (%)",
}
CURVE_METHOD = "wise-ft"  # rows of this method with an `alpha` column are drawn as a curve over alpha
PANELS_PER_ROW = 4  # wrap wider sweeps (e.g. 7 corruptions) so panels stay legible on a page
# tab10 without its grey (too close to the black of "no fine-tuning"); markers keep labels apart in
# greyscale print, where colours alone do not.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "d", "H", "8"]


def _marker(i: int) -> str | tuple[int, int, int]:
    """The ``i``-th row's marker: one of MARKERS, then stars and asterisks of 4, 6, 7, ... points
    (matplotlib's (sides, style, angle) markers), so no two rows of a figure share one (the 5-point
    star ``*`` stays reserved for ``none``)."""
    if i < len(MARKERS):
        return MARKERS[i]
    k = i - len(MARKERS)
    sides = [4, 6, 7, 8, 9, 10, 11, 12][(k // 2) % 8] + 8 * (k // 16)
    return (sides, 1 + k % 2, 0)


@dataclass(frozen=True)
class _Style:
    color: str
    marker: str | tuple[int, int, int]
    name: str  # the row's display name (ftbench.report.names), as the LaTeX table prints it


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        shown = path.suffix or "(no suffix)"
        raise UsageError(f"unsupported plot format '{shown}'; accepted: {', '.join(FORMATS)}")
    return suffix


def _check_metric(df: pd.DataFrame, metric: str) -> None:
    accepted = [c for c in METRIC_LABEL if c in df.columns]
    accepted += sorted(c for c in df.columns if str(c).endswith("_acc") and c not in accepted)
    if metric not in df.columns or not pd.api.types.is_numeric_dtype(df[metric]):
        raise unknown("metric", metric, accepted)


def _metric_label(metric: str) -> str:
    return METRIC_LABEL.get(metric, f"{metric} (%)")


# --- labels and order --------------------------------------------------------------------------
def _curve_variant(variant: str) -> str:
    # A future wise-ft may record alpha among its options; the curve is one label across alphas.
    return ",".join(kv for kv in variant.split(",") if kv and not kv.startswith("alpha="))


# --- data -------------------------------------------------------------------------------------
def _chosen(df: pd.DataFrame, selection: str) -> pd.DataFrame:
    """Selected runs per (cell, seed); WiSE-FT rows separately per alpha, so each alpha is a point.

    ``select`` does not know ``alpha``; selecting over it would keep one alpha per seed and
    collapse the curve, so each alpha is selected on its own.
    """
    ok = df[df["status"] == "ok"]
    if "alpha" in ok.columns:
        is_curve = (ok["method"] == CURVE_METHOD) & ok["alpha"].notna()
    else:
        is_curve = pd.Series(False, index=ok.index)
    parts = [select(ok[~is_curve], selection)]
    if is_curve.any():
        parts += [select(g, selection) for _, g in ok[is_curve].groupby("alpha", sort=True)]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame()
    chosen = pd.concat(parts, ignore_index=True)
    if "alpha" not in chosen.columns:
        chosen["alpha"] = np.nan
    chosen["_curve"] = (chosen["method"] == CURVE_METHOD) & chosen["alpha"].notna()
    return chosen


def _points(chosen: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Mean and sample std over seeds per (label, column[, alpha]); labels and columns in table order."""
    # The table's labels and order; a curve's rows share one label across alphas.
    variant = [(_curve_variant(v) if c else v) for v, c in zip(chosen["variant"], chosen["_curve"])]
    chosen = label_columns(chosen.assign(variant=variant)).rename(columns={"row": "label"})
    chosen = chosen.assign(
        _alpha=chosen["alpha"].where(chosen["_curve"], -1.0),  # groupby drops NaN keys
        _x=pd.to_numeric(chosen["id_acc"], errors="coerce"),
        _y=pd.to_numeric(chosen[metric], errors="coerce"),
    )
    pts = chosen.groupby(["label", "column", "_alpha"], sort=False).agg(
        method=("method", "first"), blocks=("blocks", "first"), variant=("variant", "first"), curve=("_curve", "first"),
        x_mean=("_x", "mean"), x_std=("_x", "std"), y_mean=("_y", "mean"), y_std=("_y", "std"),
        n=("seed", "nunique"),
    ).reset_index().rename(columns={"_alpha": "alpha"})
    labels = sorted(set(chosen["label"]), key=lambda r: min(chosen.loc[chosen["label"] == r, "_rsort"]))
    columns = sorted(set(chosen["column"]), key=lambda c: min(chosen.loc[chosen["column"] == c, "_csort"]))
    return pts, labels, columns


def _styles(labels: list[str], pts: pd.DataFrame) -> dict[str, _Style]:
    # Assigned once for the whole figure so a label has the same colour, marker and name in every panel.
    first = pts.drop_duplicates("label").set_index("label")
    styles, i = {}, 0
    for label in labels:
        name = row_name(first.loc[label, "method"], first.loc[label, "blocks"], first.loc[label, "variant"])
        if label == "none":
            styles[label] = _Style("black", "*", name)
        else:
            styles[label] = _Style(PALETTE[i % len(PALETTE)], _marker(i), name)
            i += 1
    return styles


def _nan0(a: pd.Series) -> np.ndarray:
    # n = 1 seed has no std: draw no error bar rather than dropping the point.
    return np.nan_to_num(a.to_numpy(dtype=float), nan=0.0)


# --- drawing ----------------------------------------------------------------------------------
def _draw_points(ax: Axes, pts: pd.DataFrame, labels: list[str], styles: dict[str, _Style]) -> None:
    for label in labels:
        p = pts[pts["label"] == label]
        st = styles[label]
        curve, single = p[p["curve"]].sort_values("alpha"), p[~p["curve"]]
        if not curve.empty:
            line = ax.errorbar(curve["x_mean"], curve["y_mean"], xerr=_nan0(curve["x_std"]),
                               yerr=_nan0(curve["y_std"]), fmt="-", marker=st.marker, markersize=6, linewidth=1.6,
                               color=st.color, ecolor=st.color, elinewidth=1.0, capsize=2.5, zorder=4)
            line.lines[0].set_gid(f"curve:{label}")
            # A hollow marker at the smallest alpha shows the curve's direction; text labels at the
            # ends were tried and collide with nearby points when panels are crowded.
            ax.plot(curve["x_mean"].iloc[:1], curve["y_mean"].iloc[:1], linestyle="none", marker=st.marker,
                    markersize=6, markerfacecolor="white", markeredgecolor=st.color, markeredgewidth=1.5,
                    zorder=4.5, gid=f"curve-start:{label}")
        if single.empty:
            continue
        if label == "none":
            kw = dict(fmt="*", markersize=15, markeredgecolor="white", markeredgewidth=0.6, zorder=5)
        else:
            kw = dict(marker=st.marker, linestyle="none", markersize=7, zorder=3)
        point = ax.errorbar(single["x_mean"], single["y_mean"], xerr=_nan0(single["x_std"]),
                            yerr=_nan0(single["y_std"]), color=st.color, ecolor=st.color, elinewidth=1.0,
                            capsize=2.5, **kw)
        point.lines[0].set_gid(f"point:{label}")


def _extent(pts: pd.DataFrame) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) of the points including their error bars."""
    xs, ys = _nan0(pts["x_std"]), _nan0(pts["y_std"])
    x, y = pts["x_mean"].to_numpy(dtype=float), pts["y_mean"].to_numpy(dtype=float)
    return float(np.nanmin(x - xs)), float(np.nanmax(x + xs)), float(np.nanmin(y - ys)), float(np.nanmax(y + ys))


def _padded(lo: float, hi: float, frac: float, minimum: float) -> tuple[float, float]:
    pad = max(hi - lo, minimum) * frac
    return lo - pad, hi + pad


def _draw_scatter(ax: Axes, pts: pd.DataFrame, labels: list[str], styles: dict[str, _Style],
                  trend: Trend | None = None) -> None:
    _draw_points(ax, pts, labels, styles)
    x0, x1, y0, y1 = _extent(pts)
    xlim, ylim = _padded(x0, x1, 0.12, 2.0), _padded(y0, y1, 0.12, 2.0)
    if trend is not None:  # the ID-OOD trend line (straight in logit space, curved on these axes)
        xs = np.linspace(max(xlim[0], 0.01), min(xlim[1], 99.99), 100)
        ax.plot(xs, trend.predict(xs), color="grey", linestyle=":", linewidth=1.2, zorder=1, gid="trend")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("ID accuracy (%)")
    ax.grid(True, linewidth=0.4, alpha=0.5)
    _maybe_zoom(ax, pts, labels, styles, xlim, ylim)


def _maybe_zoom(ax: Axes, pts: pd.DataFrame, labels: list[str], styles: dict[str, _Style],
                xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
    """Add a zoomed inset when the fine-tuned points are squeezed into a corner.

    That happens when ``none`` lies far away (e.g. label-flip: no fine-tuning has ~0 % OOD and
    ~98 % ID while every fine-tuned row has ~95 % OOD and ~1 % ID); without a zoom those points
    overlap into one blob. The inset goes into a corner of the panel that holds no data.
    """
    tuned = pts[pts["label"] != "none"]
    if len(tuned) < 2 or len(tuned) == len(pts):
        return
    x0, x1, y0, y1 = _extent(tuned)
    wx, wy = xlim[1] - xlim[0], ylim[1] - ylim[0]
    if (x1 - x0) / wx > 0.25 or (y1 - y0) / wy > 0.25:
        return

    def frac(x: float, y: float) -> tuple[float, float]:
        return (x - xlim[0]) / wx, (y - ylim[0]) / wy

    # Everything the inset must not cover, in axes fractions: each point with its error bars.
    boxes = []
    for r in pts.itertuples():
        xs, ys = (0.0 if r.x_std != r.x_std else r.x_std), (0.0 if r.y_std != r.y_std else r.y_std)
        (a0, b0), (a1, b1) = frac(r.x_mean - xs, r.y_mean - ys), frac(r.x_mean + xs, r.y_mean + ys)
        boxes.append((a0 - 0.05, a1 + 0.05, b0 - 0.05, b1 + 0.05))  # marker size margin
    size, pad = 0.5, 0.04
    for ix, iy in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0), (0.5, 1), (0, 0.5), (1, 0.5)):
        left, bottom = pad + ix * (1 - size - 2 * pad), pad + iy * (1 - size - 2 * pad)
        if all(b[1] < left or b[0] > left + size or b[3] < bottom or b[2] > bottom + size for b in boxes):
            break
    else:
        return  # no free corner: leave the panel as it is rather than hide data
    inset = ax.inset_axes([left, bottom, size, size], gid="zoom")
    _draw_points(inset, tuned, labels, styles)
    inset.set_xlim(*_padded(x0, x1, 0.15, 0.5))
    inset.set_ylim(*_padded(y0, y1, 0.15, 0.5))
    inset.tick_params(labelsize=7, length=2, pad=1)
    inset.grid(True, linewidth=0.3, alpha=0.5)
    ax.indicate_inset_zoom(inset, edgecolor="0.4")


def _draw_bars(ax: Axes, pts: pd.DataFrame, labels: list[str], styles: dict[str, _Style]) -> None:
    # Surgical rows in block order (labels are already in table order), then full fine-tuning.
    p = pts[~pts["curve"]].set_index("label")
    bar_labels = [lb for lb in labels if lb in p.index and p.loc[lb, "method"] == "surgical"]
    bar_labels += [lb for lb in labels if lb in p.index and p.loc[lb, "method"] == "full"]
    if not bar_labels:
        ax.text(0.5, 0.5, "no surgical or full runs", transform=ax.transAxes, ha="center", va="center",
                fontsize=9, color="0.4")
        ax.set_xticks([])
        return
    means = p.loc[bar_labels, "y_mean"].to_numpy(dtype=float)
    stds = _nan0(p.loc[bar_labels, "y_std"])
    best = means >= np.nanmax(means) - 1e-9
    x = np.arange(len(bar_labels))
    # Non-best bars are light; the best bar is solid with a heavy black edge, readable in greyscale too.
    faces = [matplotlib.colors.to_rgba(styles[lb].color, 1.0 if b else 0.4) for lb, b in zip(bar_labels, best)]
    edges = ["black" if b else styles[lb].color for lb, b in zip(bar_labels, best)]
    ax.bar(x, means, yerr=stds, width=0.72, color=faces, edgecolor=edges, linewidth=[2.0 if b else 0.8 for b in best],
           error_kw=dict(elinewidth=1.0, capsize=3, ecolor="0.2"), zorder=3)
    for xi, m, s, b in zip(x, means, stds, best):
        ax.annotate(f"{m:.1f}", (xi, m + s), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=7.5, fontweight="bold" if b else "normal")
    lo, hi = float(np.nanmin(means - stds)), float(np.nanmax(means + stds))
    if "none" in p.index:
        ref = float(p.loc["none", "y_mean"])
        ax.axhline(ref, color="black", linestyle="--", linewidth=1.1, zorder=4)
        lo, hi = min(lo, ref), max(hi, ref)
    # Zoom to the data (differences of a few points are the finding); the ticks show the offset.
    span = max(hi - lo, 5.0)
    bottom = max(0.0, math.floor((lo - 0.25 * span) / 5) * 5)
    ax.set_ylim(bottom, hi + 0.22 * (hi - bottom))
    ax.set_xticks(x, [styles[lb].name for lb in bar_labels], rotation=30, ha="right", rotation_mode="anchor", fontsize=8.5)
    for tick, b in zip(ax.get_xticklabels(), best):
        if b:
            tick.set_fontweight("bold")
    ax.grid(True, axis="y", linewidth=0.4, alpha=0.5, zorder=0)
    ax.set_axisbelow(True)


def build_figure(df: pd.DataFrame, selection: str = DEFAULT_SELECTION, metric: str = "ood_acc",
                 trend: tuple[str, ...] = DEFAULT_TREND, panels: tuple[str, ...] = PANELS,
                 title: str | None = None) -> Figure:
    """Build (without saving) the results figure; see :func:`plot_results` for what it shows.

    ``panels``: which rows of panels (``scatter``, ``bars``, in that order on the figure). ``title``:
    None for the default title (what is plotted, the selection and the protocol details, wrapped);
    ``""`` for none; any other text is the one-line title.

    Scatter axes carry the gid ``"scatter:<column>"`` and bar axes ``"bars:<column>"``, so callers
    and tests can find panels without relying on their position.
    """
    if selection not in SELECTIONS:
        raise unknown("selection", selection, list(SELECTIONS))
    bad = [p for p in panels if p not in PANELS]
    if bad or not panels:
        raise unknown("panel", bad[0] if bad else "", PANELS)
    _check_metric(df, metric)
    chosen = _chosen(df, selection)
    if chosen.empty:
        raise UsageError("no successful runs to plot (status == 'ok')")
    pts, labels, columns = _points(chosen, metric)
    styles = _styles(labels, pts)
    points = trend_points(df, label_columns(chosen), trend)
    fits = {col: fit_trend(points[points["column"] == col], metric) for col in columns}

    labelled = label_columns(chosen)
    benches = {col: sorted(set(labelled.loc[labelled["column"] == col, "benchmark"].astype(str))) for col in columns}
    ncols = min(len(columns), PANELS_PER_ROW)
    nrows = math.ceil(len(columns) / ncols)
    kinds = [p for p in PANELS if p in panels]  # scatter above bars, whatever order they were named in
    head = 1.4 if title is None else (0.3 if title == "" else 0.7)
    fig = Figure(figsize=(max(3.7 * ncols, 7.5), 3.5 * len(kinds) * nrows + head), layout="constrained")
    grid = fig.add_gridspec(len(kinds) * nrows, ncols)
    ylabel = _metric_label(metric)
    for i, col in enumerate(columns):
        r, c = divmod(i, ncols)
        # The benchmark in every title (the table's column label names it only when benchmarks vary).
        named = col if any(col.startswith(f"{b}/") for b in benches[col]) else f"{'+'.join(benches[col])}/{col}"
        panel_title = textwrap.fill(column_name(named), 36)  # long labels ([model=..., shots=...]) wrap instead of colliding
        for k, kind in enumerate(kinds):
            ax = fig.add_subplot(grid[k * nrows + r, c], gid=f"{kind}:{col}")
            if kind == "scatter":
                _draw_scatter(ax, pts[pts["column"] == col], labels, styles, fits[col])
            else:
                _draw_bars(ax, pts[pts["column"] == col], labels, styles)
            ax.set_title(panel_title, fontsize=10)
            if c == 0:  # same quantity in every panel of a row: label it once, at the left
                ax.set_ylabel(ylabel)

    ns = sorted(set(pts["n"]))
    n_text = f"n = {ns[0]} seed{'s' if ns[0] != 1 else ''}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]} seeds"
    what = "ID vs OOD accuracy" if metric == "ood_acc" else f"ID accuracy vs {ylabel.removesuffix(' (%)')}"
    from ftbench.protocols.base import get_protocol

    roles = "; ".join(f"{p}: ID = {get_protocol(p).id_words}, OOD = {get_protocol(p).ood_words}"
                      for p in protocols_of(df))
    line = (f" Dotted: the ID-OOD trend of every run of {', '.join(trend)} (logit-space linear fit)."
            if any(fits.values()) else "")
    where = {"scatter": "one point per tuned row",
             "bars": f"{ylabel.removesuffix(' (%)')} by tuned block, best bar outlined"}
    layout = (f"Top: {where['scatter']}. Bottom: {where['bars']}." if len(kinds) == 2
              else f"{where[kinds[0]][0].upper()}{where[kinds[0]][1:]}.")
    details = f"{roles}; mean over seeds ± sample std (ddof=1), {n_text}.{line if 'scatter' in kinds else ''} {layout}"
    if title is None:
        # Wrapped to the figure width (~12 characters per inch at 10 pt) so it is never clipped.
        fig.suptitle(textwrap.fill(f"{what} — {_selection_title(selection, protocols_of(df))}", int(fig.get_figwidth() * 11)) + "\n" + textwrap.fill(details, int(fig.get_figwidth() * 12)),
                     fontsize=10)
    elif title:
        fig.suptitle(title, fontsize=11)
    handles = _legend_handles(pts, labels, styles, bars="bars" in kinds)
    ncols = max(1, min(len(handles), int(fig.get_figwidth() / 1.75)))
    fig.legend(handles=_row_major(handles, ncols), loc="outside lower center", ncols=ncols, frameon=False,
               fontsize=9)
    return fig


def _row_major(items: list[Artist], ncols: int) -> list[Artist]:
    """Reorder so a legend, which fills column by column, reads left to right in table order."""
    nrows = math.ceil(len(items) / ncols)
    # Legend columns are np.array_split chunks: the first len % ncols columns are one longer.
    return [items[r * ncols + c] for c in range(ncols) for r in range(nrows) if r * ncols + c < len(items)]


def _legend_handles(pts: pd.DataFrame, labels: list[str], styles: dict[str, _Style],
                    bars: bool = True) -> list[Artist]:
    handles: list[Artist] = []
    for label in labels:
        st = styles[label]
        if label == "none":
            # The same handle explains the star (scatter) and the dashed reference line (bars).
            handles.append(Line2D([], [], color="black", marker="*", markersize=12, linestyle="--",
                                  label=st.name))
        elif pts.loc[pts["label"] == label, "curve"].any():
            a = pts.loc[(pts["label"] == label) & pts["curve"], "alpha"]
            handles.append(Line2D([], [], color=st.color, marker=st.marker, linestyle="-",
                                  label=f"{st.name} curve (α {a.min():g}→{a.max():g}, hollow: α {a.min():g})"))
        else:
            handles.append(Line2D([], [], color=st.color, marker=st.marker, linestyle="none", markersize=7,
                                  label=st.name))
    if bars:
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=2.0, label="best bar"))
    return handles


def plot_results(df: pd.DataFrame, path: Path, selection: str = DEFAULT_SELECTION, metric: str = "ood_acc",
                 trend: tuple[str, ...] = DEFAULT_TREND, panels: tuple[str, ...] = PANELS,
                 title: str | None = None) -> Path:
    """Write the results figure of ``df`` (as from ``read_results``) to ``path``; return ``path``.

    Top row: per shift column, ID accuracy (x) vs ``metric`` (y), one point per tuned row (mean over
    seeds, error bars = sample std over seeds in both directions); ``none`` is a black star; WiSE-FT
    rows with an ``alpha`` column are joined by a line in alpha order; the dotted line is the ID-OOD
    trend fit to every run of the ``trend`` methods (as ``report --table robustness``). Bottom row: ``metric`` per
    surgically tuned block, then ``full``, best bar outlined, ``none`` as a dashed line. ``panels``
    and ``title``: as :func:`build_figure`.

    The format comes from the suffix (.png, .svg, .pdf; anything else is a :class:`UsageError`
    before any work). The file is written to a hidden temporary name in the same folder and
    renamed into place; missing parent folders are created; an existing FIFO or device is written
    into (:func:`ftbench.outfile.write_output`).
    """
    path = Path(path)
    suffix = _check_suffix(path)
    fig = build_figure(df, selection, metric, trend, panels, title)  # validates everything before the disk is touched
    # Text stays text in SVG/PDF (searchable, editable in papers); no dates, so reruns are identical.
    rc = {"svg.fonttype": "none", "pdf.fonttype": 42, "svg.hashsalt": "ftbench"}
    metadata = {".png": {}, ".svg": {"Date": None}, ".pdf": {"CreationDate": None}}[suffix]
    buf = io.BytesIO()  # drawn in memory, then written as a whole (a FIFO or device gets the bytes)
    with matplotlib.rc_context(rc):
        fig.savefig(buf, format=suffix[1:], dpi=200, metadata=metadata)
    write_output(path, buf.getvalue(), "--plot")
    return path


def plot_pareto(grids: list, path: Path, title: str | None = None) -> Path:
    """Write the ``--table pareto`` figure of ``grids`` (:func:`ftbench.report.table.build` with
    ``table="pareto"``) to ``path``: per shift column, training FLOPs (x) against OOD (y, mean over seeds,
    error bars the sample std), one labelled point per row; the Pareto-optimal rows filled and joined by
    the front's staircase, the others hollow. Written as :func:`plot_results` writes."""
    path = Path(path)
    suffix = _check_suffix(path)
    panels = [(g, col) for g in grids for col, _ in g.groups]
    if not panels:
        raise UsageError("--plot with --table pareto: no table to draw")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.6 * nrows + (0.4 if title else 0)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (g, col) in zip(axes.flat, panels):
        name = g.groups[0][1][0]
        pts = []
        for r in g.rows:
            ood, flops, front = (g.cells.get((r, col, k)) for k in (name, "FLOPs", "Pareto"))
            if ood is None or flops is None or ood.mean != ood.mean or flops.mean != flops.mean:
                continue
            pts.append((flops.mean, ood.mean, ood.std if ood.std == ood.std else 0.0, r,
                        bool(front is not None and front.best)))
        for x, y, e, r, on in pts:
            ax.errorbar([x], [y], yerr=[e], fmt="o", color="C0" if on else "0.5",
                        mfc="C0" if on else "white", ms=6, capsize=2)
            ax.annotate(g.display.get(r, r), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = sorted((x, y) for x, y, _, _, on in pts if on)
        if len(front) > 1:
            ax.step([x for x, _ in front], [y for _, y in front], where="post", color="C0", lw=1, alpha=0.6)
        ax.set_title(textwrap.shorten(col, 48), fontsize=9)
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(f"{name} accuracy (%)")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    rc = {"svg.fonttype": "none", "pdf.fonttype": 42, "svg.hashsalt": "ftbench"}
    metadata = {".png": {}, ".svg": {"Date": None}, ".pdf": {"CreationDate": None}}[suffix]
    buf = io.BytesIO()
    with matplotlib.rc_context(rc):
        fig.savefig(buf, format=suffix[1:], dpi=200, metadata=metadata)
    write_output(path, buf.getvalue(), "--plot")
    return path
