"""Paper-style ID-vs-OOD tables from a results folder. Never imports the runner.

Protocol (stated in every caption): for each table cell and each seed, the hyperparameter setting
(lr, wd, steps/epochs, batch size, optimizer) with the best *target validation* accuracy is chosen;
its target-test (OOD) and source-test (ID) accuracies are then averaged over seeds. ± is the sample
standard deviation over seeds (ddof = 1); n is the number of seeds.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import pandas as pd

from ftbench.errors import UsageError, unknown

SELECTIONS = {"target-val": "val_acc", "source-val": "source_val_acc", "oracle": "ood_acc"}
SELECTION_TEXT = {
    "target-val": "hyperparameters chosen per seed on target validation accuracy",
    "source-val": "hyperparameters chosen per seed on source validation accuracy",
    "oracle": "ORACLE: hyperparameters chosen per seed on target TEST accuracy (an upper bound, not a result)",
}
HYPERPARAMETERS = ["lr", "wd", "steps", "epochs", "batch_size", "optimizer"]
ROW_KEY = ["method", "blocks", "variant"]
COL_KEY = ["benchmark", "shift", "corruption", "severity", "model", "shots"]
LEVEL_ORDER = {"input": 0, "feature": 1, "output": 2, "natural": 3}
FORMATS = ("terminal", "markdown", "csv")


@dataclass(frozen=True)
class Table:
    """An aggregated table: one row per (row, column) cell, plus labels in display order."""

    cells: pd.DataFrame  # columns: row, column, ood_mean, ood_std, id_mean, id_std, n, best
    rows: list[str]
    columns: list[str]
    caption: str


def _method_order() -> dict[str, int]:
    from ftbench.methods.base import all_methods

    return {m.name: m.order for m in all_methods()}


def _num(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.inf


def _block_key(blocks: str) -> list[int]:
    return [999 if b == "last" else int(b) if b.isdigit() else 500 for b in blocks.split(",") if b]


def row_label(method: str, blocks: str, variant: str) -> str:
    """'block 1', 'blocks 1,2', 'last layer' for surgical rows; the method name otherwise."""
    if method == "surgical":
        label = "last layer" if blocks == "last" else (f"blocks {blocks}" if "," in blocks else f"block {blocks}")
    else:
        label = method + (f" [{blocks}]" if blocks else "")
    return label + (f" ({variant})" if variant else "")


def _col_label(r: pd.Series, varying: set[str]) -> str:
    label = r["shift"]
    if isinstance(r["corruption"], str) and r["corruption"]:
        label += f" ({r['corruption']}, s{int(r['severity'])})"
    if "benchmark" in varying:
        label = f"{r['benchmark']}/{label}"
    extra = [f"{k}={r[k]}" for k in ("model", "shots") if k in varying]
    return label + (f" [{', '.join(extra)}]" if extra else "")


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in ROW_KEY + COL_KEY + HYPERPARAMETERS:
        if c not in df.columns:
            df[c] = None
    for c in ("variant", "blocks", "corruption"):
        df[c] = df[c].fillna("").astype(str)
    df["severity"] = pd.to_numeric(df["severity"], errors="coerce").fillna(0).astype(int)
    return df


def select(df: pd.DataFrame, selection: str = "target-val") -> pd.DataFrame:
    """One chosen run per (cell, seed): the best by the selection metric over hyperparameters."""
    if selection not in SELECTIONS:
        raise unknown("selection", selection, list(SELECTIONS))
    metric = SELECTIONS[selection]
    df = _prepare(df[df["status"] == "ok"])
    if df.empty:
        return df
    df = df.assign(_score=pd.to_numeric(df.get(metric), errors="coerce").fillna(-math.inf))
    # Deterministic tie-break: run id order (never the test metric).
    df = df.sort_values(["_score", "run_id"], ascending=[False, True], kind="mergesort")
    keys = ROW_KEY + COL_KEY + ["seed"]
    return df.groupby(keys, dropna=False, sort=False).head(1).drop(columns="_score")


def aggregate(df: pd.DataFrame, selection: str = "target-val") -> Table:
    """Select per seed, then aggregate over seeds into a :class:`Table`."""
    chosen = select(df, selection)
    if chosen.empty:
        raise UsageError("no successful runs to report (status == 'ok')")
    varying = {k for k in ("benchmark", "model", "shots") if chosen[k].nunique(dropna=False) > 1}
    order = _method_order()
    chosen = chosen.assign(
        row=[row_label(m, b, v) for m, b, v in zip(chosen["method"], chosen["blocks"], chosen["variant"])],
        column=[_col_label(r, varying) for _, r in chosen.iterrows()],
        _rsort=[(order.get(m, 1000), m, _block_key(b), v) for m, b, v in
                zip(chosen["method"], chosen["blocks"], chosen["variant"])],
        _csort=[(r["benchmark"], LEVEL_ORDER.get(str(r.get("shift_level", "")), 9), r["shift"], r["corruption"],
                 r["severity"], str(r["model"]), _num(r["shots"])) for _, r in chosen.iterrows()],
    )
    g = chosen.groupby(["row", "column"], sort=False)
    cells = g.agg(
        ood_mean=("ood_acc", "mean"), ood_std=("ood_acc", "std"),
        id_mean=("id_acc", "mean"), id_std=("id_acc", "std"), n=("seed", "nunique"),
    ).reset_index()
    best = cells.groupby("column")["ood_mean"].transform("max")
    cells["best"] = (cells["ood_mean"] >= best - 1e-9)
    rows = sorted(set(chosen["row"]), key=lambda r: min(chosen.loc[chosen["row"] == r, "_rsort"]))
    columns = sorted(set(chosen["column"]), key=lambda c: min(chosen.loc[chosen["column"] == c, "_csort"]))
    ns = sorted(set(cells["n"]))
    n_text = f"n = {ns[0]} seed{'s' if ns[0] != 1 else ''}" if len(ns) == 1 else "n (seeds) per cell"
    caption = (
        f"Accuracy (%): OOD = target test, ID = source test; mean ± sample std over seeds (ddof=1), "
        f"{n_text}; {SELECTION_TEXT[selection]}; best OOD per column marked."
    )
    return Table(cells, rows, columns, caption)


def _fmt(mean: float, std: float, n: int, show_n: bool) -> str:
    if mean != mean:
        return "–"
    s = f"{mean:.1f}" + (f" ± {std:.1f}" if std == std else "")
    return s + (f" (n={n})" if show_n else "")


def _grid(t: Table) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Header and body cells (text, is_best) in display order: per column an OOD and an ID cell."""
    show_n = t.cells["n"].nunique() > 1
    lookup = {(r.row, r.column): r for r in t.cells.itertuples()}
    body = []
    for row in t.rows:
        line: list[tuple[str, bool]] = []
        for col in t.columns:
            c = lookup.get((row, col))
            if c is None:
                line += [("", False), ("", False)]
            else:
                line += [(_fmt(c.ood_mean, c.ood_std, c.n, show_n), bool(c.best)),
                         (_fmt(c.id_mean, c.id_std, c.n, show_n), False)]
        body.append(line)
    return [x for col in t.columns for x in (f"{col} OOD", f"{col} ID")], body


def render_markdown(t: Table) -> str:
    header, body = _grid(t)
    out = ["| tuned | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for row, line in zip(t.rows, body):
        out.append(f"| {row} | " + " | ".join(f"**{s}**" if b else s for s, b in line) + " |")
    out += ["", f"*{t.caption} Best OOD in bold.*"]
    return "\n".join(out) + "\n"


def render_csv(t: Table) -> str:
    df = t.cells.copy()
    df["row"] = pd.Categorical(df["row"], t.rows, ordered=True)
    df["column"] = pd.Categorical(df["column"], t.columns, ordered=True)
    df = df.sort_values(["column", "row"])
    buf = io.StringIO()
    df[["row", "column", "ood_mean", "ood_std", "id_mean", "id_std", "n", "best"]].to_csv(
        buf, index=False, float_format="%.4f", lineterminator="\n"
    )
    return buf.getvalue()


def render_rich(t: Table, title: str = "ID vs OOD accuracy"):  # noqa: ANN201 - rich.table.Table
    from rich.markup import escape
    from rich.table import Table as RichTable

    header, body = _grid(t)
    table = RichTable(title=title, caption=t.caption + " Best OOD in bold green with *.", caption_justify="left")
    table.add_column("tuned", style="bold")
    for col in t.columns:
        table.add_column(escape(f"{col}\nOOD"), justify="right")
        table.add_column("ID", justify="right", style="dim")
    for row, line in zip(t.rows, body):
        table.add_row(escape(row), *[f"[bold green]{escape(s)} *[/]" if b else escape(s) for s, b in line])
    return table
