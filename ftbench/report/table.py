"""Paper-style tables from a results folder. Never imports the runner.

Protocol (stated in every caption): for each table cell and each seed, the hyperparameter setting
(lr, wd, steps/epochs, batch size, optimizer) with the best selection metric (by default the run
protocol's own validation split: target val in the few-shot protocol, ID val in the ID→OOD one) is
chosen; its accuracies are then aggregated over seeds. ± is the sample standard deviation over seeds
(ddof = 1); n is the number of seeds. The run protocol (ftbench/protocols) is a column key and named
in the caption.

Table kinds (``--table``):

* ``shifts`` — rows = tuned blocks / methods, columns = shifts, cells = OOD and ID (the default);
* ``blocks`` — the surgical paper's table: rows = benchmark/shift, columns = tuned block / method;
* ``methods`` — the LP-FT / PETL papers' table: rows = methods, ID | OOD per shift, plus average;
* ``corruptions`` — per corruption and severity, plus the mean over corruptions;
* ``robustness`` — effective robustness (Taori et al. 2020): each method's OOD accuracy above the
  logit-space linear trend of OOD on ID accuracy fit to every run of the trend methods;
* ``pareto`` — per shift, every (method, blocks) row with OOD, ID, trainable parameters, training
  seconds and training FLOPs; the rows no other row beats on OOD, FLOPs and parameters at once marked
  (``--within X``: also the cheapest row within X points of the best OOD).

ID→OOD rows carry one OOD column per OOD test set (``ood.<set>_acc``): the ``shifts``, ``methods`` and
``robustness`` tables show each set beside their mean.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ftbench.errors import UsageError, unknown
from ftbench.report import FORMATS, TABLES  # noqa: F401  (the accepted --format and --table values)

# Model selections (--select): name -> what it means. Which column each one reads depends on the rows'
# protocol (Protocol.selections); a selection a protocol does not have is refused for its rows.
SELECTIONS = {
    "val": "the protocol's validation split (target val in few-shot, ID val in id-ood)",
    "target-val": "target validation (few-shot)",
    "id-val": "ID validation (id-ood)",
    "ood-val": "the benchmark's OOD validation set (id-ood)",
    "source-val": "source validation (few-shot)",
    "oracle": "the reported OOD test metric itself: an upper bound, not a result",
}
DEFAULT_SELECTION = "val"
DEFAULT_PROTOCOL = "few-shot"  # rows written before protocols existed
HYPERPARAMETERS = ["lr", "wd", "steps", "epochs", "batch_size", "optimizer"]
ROW_KEY = ["method", "blocks", "variant"]
COL_KEY = ["benchmark", "shift", "corruption", "severity", "model", "shots", "protocol"]
LEVEL_ORDER = {"input": 0, "feature": 1, "output": 2, "natural": 3, "mixed": 4}
DEFAULT_TREND = ("full",)  # methods whose runs trace the ID-OOD trend line of --table robustness
CHECKPOINTS = ("best", "final")
METRIC_NAMES = {"ood_acc": "OOD", "id_acc": "ID", "val_acc": "target val", "source_val_acc": "source val"}


@dataclass
class Cell:
    """Aggregate of one metric over seeds."""

    mean: float
    std: float
    n: int
    best: bool = False
    # The per-seed values (seed -> value) the mean is over, for paired comparisons (--mark-vs).
    seeds: dict = field(default_factory=dict, repr=False, compare=False)
    mark: str = ""  # "up" / "down": ahead of / behind the --mark-vs row, resolved at 95 % (report/paired.py)
    text: str | None = None  # shown instead of mean ± std (counts and flags of --table pareto)


@dataclass
class Grid:
    """A rendered-format-agnostic table: rows × column groups × sub-columns."""

    title: str
    caption: str
    row_header: str
    rows: list[str]
    groups: list[tuple[str, list[str]]]  # (group label, sub-column labels)
    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)  # (row, group, sub)
    # The run (and checkpoint or WiSE-FT alpha) chosen per cell and seed: :func:`selected_records`.
    selected: list[dict] = field(default_factory=list)
    # Row and column labels -> display names (ftbench.report.names), for --format latex.
    display: dict[str, str] = field(default_factory=dict)
    # LaTeX only: \label{} and a caption replacing the title (--label, --caption).
    label: str = ""
    short_caption: str = ""
    kind: str = ""  # "pareto": its marks are the Pareto front, not a column's best (select_rows keeps them)

    def n_values(self) -> set[int]:
        return {c.n for c in self.cells.values()}


# --------------------------------------------------------------------------------------------
# Selection


def method_order() -> dict[str, int]:
    """Method name -> report row order (registry attribute ``Method.order``), without importing the
    methods (and torch) for it: see :data:`ftbench.methods.BUILTIN_ORDER`."""
    from ftbench.methods import method_order as order

    return order()


def _num(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.inf


def block_key(blocks: str) -> list[int]:
    """Sort key of a blocks label: model order, 'last' at the end."""
    return [999 if b == "last" else int(b) if b.isdigit() else 500 for b in blocks.split(",") if b]


def row_label(method: str, blocks: str, variant: str) -> str:
    """'block 1', 'blocks 1,2', 'last layer' for surgical rows; the method name otherwise."""
    if method == "surgical":
        label = "last layer" if blocks == "last" else (f"blocks {blocks}" if "," in blocks else f"block {blocks}")
    else:
        label = method + (f" [{blocks}]" if blocks else "")
    return label + (f" ({variant})" if variant else "")


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in ROW_KEY + COL_KEY + HYPERPARAMETERS + ["shift_level"]:
        if c not in df.columns:
            df[c] = None
    for c in ("variant", "blocks", "corruption", "shift_level"):
        df[c] = df[c].fillna("").astype(str)
    df["protocol"] = df["protocol"].fillna(DEFAULT_PROTOCOL).astype(str)
    df["severity"] = pd.to_numeric(df["severity"], errors="coerce").fillna(0).astype(int)
    return df


def is_final(df: pd.DataFrame) -> pd.Series:
    """True for end-of-training rows (results without a ``final`` column have only those)."""
    if "final" not in df.columns:
        return pd.Series(True, index=df.index)
    return df["final"].map(lambda v: True if v is None or v != v else bool(v))


def _protocol(name: str):  # noqa: ANN202 - ftbench.protocols.base.Protocol
    from ftbench.protocols.base import get_protocol

    return get_protocol(name)


def protocols_of(df: pd.DataFrame) -> list[str]:
    """The protocols of ``df``'s rows (rows without the column are few-shot), default first."""
    names = set(df["protocol"].fillna(DEFAULT_PROTOCOL).astype(str)) if "protocol" in df.columns else {DEFAULT_PROTOCOL}
    return sorted(names, key=lambda n: (n != DEFAULT_PROTOCOL, n))


def _metric_name(metric: str) -> str | None:
    """``m`` of a benchmark metric column of an OOD split (``ood_<m>``, ``ood.<set>_<m>``); None for accuracy."""
    if metric.startswith("ood."):
        m = metric.split("_", 1)[1] if "_" in metric else "acc"
    elif metric.startswith("ood_"):
        m = metric.removeprefix("ood_")
    else:
        return None
    return None if m == "acc" else m


def selection_column(selection: str, metric: str = "ood_acc", protocol: str = DEFAULT_PROTOCOL) -> str:
    """The column ``selection`` ranks rows of ``protocol`` by, for a table of ``metric``.

    Accuracy tables select on the selection split's accuracy (``Protocol.selections``). A benchmark
    metric (``ood_worst_group_acc``, ``ood.<set>_macro_f1``) is selected on the same metric of the
    selection split (``val_<m>``, ``ood_val_<m>``); source-val has no benchmark metrics (accuracy).
    Raises UsageError when the protocol has no such selection."""
    if selection not in SELECTIONS:
        raise unknown("selection", selection, list(SELECTIONS))
    p = _protocol(protocol)
    if selection not in p.selections:
        raise UsageError(f"--select {selection} does not apply to runs of protocol {protocol!r}; "
                         f"accepted for them: {', '.join(p.selections)}")
    col = p.selections[selection][0]
    m = _metric_name(metric)
    if m is not None:
        if selection == "oracle":
            return metric
        if col in ("val_acc", "ood_val_acc"):
            return col.removesuffix("acc") + m
    elif selection == "oracle":
        return metric if metric.startswith("ood") else col
    return col


def select(df: pd.DataFrame, selection: str = DEFAULT_SELECTION, checkpoint: str = "best",
           metric: str = "ood_acc") -> pd.DataFrame:
    """One chosen row per (cell, seed): the best by the selection metric over hyperparameters.

    With ``checkpoint="best"`` the checkpoint rows of runs made with ``--checkpoints`` are
    candidates too (early stopping on the selection metric); ``"final"`` uses end-of-training rows.
    The selection column depends on each row's protocol (:func:`selection_column`); a benchmark
    metric is selected on that metric of the selection split where the rows have it, else on its
    accuracy. A selection split absent from every row of a benchmark (``ood-val`` where the
    benchmark has no OOD val set) is a UsageError.
    """
    if selection not in SELECTIONS:
        raise unknown("selection", selection, list(SELECTIONS))
    if checkpoint not in CHECKPOINTS:
        raise unknown("checkpoint", checkpoint, CHECKPOINTS)
    df = _candidates(df, checkpoint)
    if df.empty:
        return df
    if not df.index.is_unique:  # the tie rule marks the chosen rows by index (frames concatenated by a caller)
        df = df.reset_index(drop=True)
    score = _scores(df, selection, metric)
    if selection != "oracle":  # a row without the selection value cannot be chosen (unselectable_rows)
        df, score = df[score.notna()], score[score.notna()]
    df = df.assign(_score=score.fillna(-math.inf), _loss=_losses(df, selection))
    keys = ROW_KEY + COL_KEY + ["seed"]
    # The tie rule (TIE_PREFERENCE): the loss breaks a tie only where every tied candidate has one.
    top = df["_score"] == df.groupby(keys, dropna=False, sort=False)["_score"].transform("max")
    has_loss = (df["_loss"].notna() | ~top).groupby([df[k] for k in keys], dropna=False, sort=False).transform("all")
    df = df.assign(_loss=df["_loss"].where(has_loss))
    prefs = [c for c in TIE_PREFERENCE if c in df.columns]
    df = df.sort_values(["_score", "_loss", *prefs, "run_id"], ascending=[False] + [True] * (len(prefs) + 2),
                        na_position="last", kind="mergesort")
    chosen = df.groupby(keys, dropna=False, sort=False).head(1)
    return _mark_ties(df, chosen, keys, prefs).drop(columns=["_score", "_loss"])


# The tie rule (docs/report.md#ties). Candidates of one cell and seed with the same selection value go to
# the lower loss on the selection split (val_loss, ood_val_loss, source_val_loss: mean cross-entropy;
# rows written before ftbench recorded it have none), then to the setting closest to the pretrained model:
# the smaller learning rate, the smaller WiSE-FT alpha, the earlier checkpoint, fewer steps or epochs;
# then the smaller wd and batch size, and the optimizer and options by name (a fixed order, never a
# test metric). Only identical settings are left to the run id.
TIE_PREFERENCE = ("lr", "alpha", "step", "steps", "epochs", "wd", "batch_size", "optimizer", "options")
TIE_WORDS = {"loss": "the lower loss on the selection split", "lr": "the smaller learning rate",
             "alpha": "the smaller WiSE-FT alpha", "step": "the earlier checkpoint", "steps": "fewer steps",
             "epochs": "fewer epochs", "wd": "the smaller weight decay", "batch_size": "the smaller batch size",
             "optimizer": "the optimizer's name", "options": "the method options' text", "run_id": "the run id"}


def _losses(df: pd.DataFrame, selection: str) -> pd.Series:
    """The loss on each row's selection split (``val_acc`` -> ``val_loss``, ...), NaN where a row has none
    (older results; ``--select oracle``, whose split is the test split)."""
    loss = pd.Series(float("nan"), index=df.index)
    if selection == "oracle":
        return loss
    for name in protocols_of(df):
        col = selection_column(selection, "ood_acc", name).removesuffix("_acc") + "_loss"
        if col in df.columns:
            rows = df["protocol"] == name
            loss.loc[rows] = pd.to_numeric(df.loc[rows, col], errors="coerce").to_numpy()
    return loss


def _mark_ties(ranked: pd.DataFrame, chosen: pd.DataFrame, keys: list[str], prefs: list[str]) -> pd.DataFrame:
    """``chosen`` with ``_tied`` (how many distinct candidates shared the best selection value: a run,
    checkpoint step and alpha each) and ``_tie`` (what decided among them: ``loss``, a TIE_PREFERENCE
    column or ``run_id``; "" without a tie). ``ranked``: the candidates in the order of the tie rule."""
    ident = ["run_id", *(c for c in ("step", "alpha") if c in ranked.columns)]
    best = ranked.groupby(keys, dropna=False, sort=False)["_score"].transform("first")
    top = ranked[ranked["_score"] == best].drop_duplicates([*keys, *ident])
    tied = top.groupby(keys, dropna=False, sort=False)["run_id"].transform("size")
    tie = pd.Series("", index=chosen.index, dtype=object)
    n = pd.Series(1, index=chosen.index)
    for _, part in top[tied > 1].groupby(keys, dropna=False, sort=False):
        first, second = part.iloc[0], part.iloc[1]
        decided = "run_id"
        if first["_loss"] == first["_loss"] and first["_loss"] < second["_loss"]:
            decided = "loss"
        else:
            for c in prefs:
                a, b = first[c], second[c]
                if not ((a is None or a != a) and (b is None or b != b)) and a != b:
                    decided = c
                    break
        tie[first.name] = decided
        n[first.name] = len(part)
    return chosen.assign(_tie=tie, _tied=n)


def _candidates(df: pd.DataFrame, checkpoint: str) -> pd.DataFrame:
    """The rows :func:`select` chooses among: ok runs, end-of-training rows only with ``final``, prepared."""
    df = df[df["status"] == "ok"]
    if checkpoint == "final":
        df = df[is_final(df)]
    return _prepare(df)


def _scores(df: pd.DataFrame, selection: str, metric: str) -> pd.Series:
    """The selection value of each row of ``df`` (prepared ok rows), NaN where a row has none.

    A benchmark none of whose rows has the selection split (``ood-val`` where it has no OOD val set)
    is a UsageError; a single row without a value (NaN ``val_acc``) is only that row's problem."""
    score = pd.Series(float("nan"), index=df.index)
    for name in protocols_of(df):
        rows = df["protocol"] == name
        column, base = selection_column(selection, metric, name), selection_column(selection, "ood_acc", name)
        s = pd.to_numeric(df.loc[rows].get(base), errors="coerce") if base in df.columns else \
            pd.Series(float("nan"), index=df.index[rows])
        if column != base and column in df.columns:  # the benchmark metric where a row has it, else accuracy
            s = pd.to_numeric(df.loc[rows, column], errors="coerce").fillna(s)
        has = s.notna().groupby(df.loc[rows, "benchmark"].astype(str).to_numpy()).any()
        missing = sorted(has.index[~has.to_numpy()])
        if missing and selection != "oracle":
            raise UsageError(f"--select {selection}: runs of protocol {name!r} on {', '.join(missing)} have no "
                             f"{base.removesuffix('_acc').replace('_', ' ')} split to select on; accepted for them: "
                             + ", ".join(k for k in _protocol(name).selections if k != selection))
        score.loc[rows] = s.to_numpy()
    return score


def unselectable_rows(df: pd.DataFrame, selection: str = DEFAULT_SELECTION, checkpoint: str = "best",
                      metric: str = "ood_acc") -> int:
    """How many ok rows :func:`select` leaves out because they have no value of the selection split
    (a NaN ``val_acc`` in one run, while the benchmark's other runs have it)."""
    if selection == "oracle":
        return 0
    df = _candidates(df, checkpoint)
    return 0 if df.empty else int(_scores(df, selection, metric).isna().sum())


# Columns that say which cell and seed a row belongs to: never a --metric (grouped by, not averaged).
KEY_COLUMNS = ("run_id", *ROW_KEY, *COL_KEY, "seed", "shift_level")
MEASUREMENT_PREFIXES = ("id_", "ood_", "ood.", "val_", "source_val_")


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The columns ``--metric`` accepts: numeric (not boolean) result columns other than the cell
    keys and the seed; the measurements (``id_*``, ``ood_*``, ``val_*``, ...) first."""
    cols = [str(c) for c in df.columns if c not in KEY_COLUMNS and pd.api.types.is_numeric_dtype(df[c])
            and not pd.api.types.is_bool_dtype(df[c])]
    first = [c for c in METRIC_NAMES if c in cols]
    first += sorted(c for c in cols if c.startswith(MEASUREMENT_PREFIXES) and c not in first)
    return first + sorted(c for c in cols if c not in first)


def check_metric(df: pd.DataFrame, metric: str) -> None:
    """A UsageError naming the accepted metrics unless ``metric`` is one of :func:`metric_columns`."""
    accepted = metric_columns(df)
    if metric not in accepted:
        why = ("a column the table groups by, not a number to average" if metric in KEY_COLUMNS else
               "not a numeric column" if metric in df.columns else "no such column")
        raise UsageError(f"unknown metric {metric!r} ({why}); accepted: {', '.join(accepted)}")


# What the selection chooses among: a cell's runs for one seed may differ in these (a suite's grid),
# and every seed's runs should cover the same grid. The other settings here should be shared by a
# cell's runs: the report would otherwise select between, say, two weight files as if between
# learning rates.
SELECTION_AXES = ("lr", "wd", "steps", "epochs", "batch_size", "optimizer", "options")
SHARED_SETTINGS = ("weights", "checkpoints", "data_version")
# Shown per chosen run by --show-selected (those a row has).
SELECTED_FIELDS = ("lr", "wd", "steps", "epochs", "step", "alpha")


def _cell_name(r: pd.Series) -> str:
    shift = r["shift"] + (f" ({r['corruption']}, s{int(r['severity'])})" if r["corruption"] else "")
    return f"{row_label(r['method'], r['blocks'], r['variant'])} on {r['benchmark']}/{shift}"


def _show(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def mixed_settings(df: pd.DataFrame, limit: int = 5) -> list[str]:
    """Warnings for cells whose runs mix settings the report would silently select among: a setting
    outside :data:`SELECTION_AXES` with several values, or seeds run over different grids (a one-off
    ``--steps 1`` run that became "seed 1" of a 10-step cell)."""
    ok = _prepare(df[df["status"] == "ok"])
    ok = ok[is_final(ok)] if "final" in ok.columns else ok
    shared = [c for c in SHARED_SETTINGS if c in ok.columns]
    axes = [c for c in SELECTION_AXES if c in ok.columns]

    def setting(row: object) -> tuple[str, ...]:
        return tuple(f"{a}={_show(v)}" for a, v in zip(axes, row) if v is not None and v == v and v != "")

    found: list[str] = []
    for _, g in ok.groupby(ROW_KEY + COL_KEY, dropna=False, sort=False):
        problems = []
        for col in shared:
            values = sorted({_show(v) if v is not None and v == v and v != "" else "default" for v in g[col]})
            if len(values) > 1:
                problems.append(f"{col} ({', '.join(values)})")
        grids = {seed: frozenset(setting(row) for row in part[axes].to_numpy(dtype=object))
                 for seed, part in g.groupby("seed")}
        if len(set(grids.values())) > 1:
            by_seed = "; ".join(f"seed {seed}: " + ", ".join(" ".join(t) for t in sorted(grid))
                                for seed, grid in sorted(grids.items()))
            problems.append(f"seeds run over different settings ({by_seed})")
        if problems:
            found.append(f"{_cell_name(g.iloc[0])} mixes {' and '.join(problems)}; the report selects among "
                         "them per seed as among hyperparameters (separate them with --filter or --out folders)")
    if len(found) > limit:
        found = found[:limit] + [f"... and {len(found) - limit} more cells that mix settings"]
    return found


def selected_records(chosen: pd.DataFrame) -> list[dict]:
    """Per table row, column and seed: the chosen run and what was chosen (its hyperparameters, and the
    checkpoint step or WiSE-FT alpha where the row is not the end of training)."""
    recs = []
    row_at = {x: i for i, x in enumerate(_ordered(chosen, "row", "_rsort"))}
    col_at = {x: i for i, x in enumerate(_ordered(chosen, "column", "_csort"))}
    rows = sorted((r for _, r in chosen.iterrows()), key=lambda r: (row_at[r["row"]], col_at[r["column"]], r["seed"]))
    for r in rows:
        rec = {"row": r["row"], "column": r["column"], "seed": int(r["seed"]), "run_id": r["run_id"]}
        for k in SELECTED_FIELDS:
            v = r.get(k)
            if k == "step" and bool(r.get("final", True)):
                continue  # the end of training: nothing was chosen along the steps
            if v is not None and v == v and not (k == "alpha" and v == 1):
                v = v.item() if hasattr(v, "item") else v
                rec[k] = int(v) if k in ("steps", "epochs", "step") else v
        if r.get("_tie"):  # several candidates had the best selection value: the tie rule decided
            rec["tie"], rec["tied"] = str(r["_tie"]), int(r["_tied"])
        recs.append(rec)
    return recs


def _chosen(record: dict) -> str:
    """What one selected record chose, as ``lr=0.001 wd=0.0001 steps=50 ...``, and how a tie was broken."""
    text = " ".join(f"{k}={_show(record[k])}" for k in SELECTED_FIELDS if k in record)
    if record.get("tie"):
        text += f" (tie of {record['tied']}, broken by {TIE_WORDS.get(record['tie'], record['tie'])})"
    return text


def tie_counts(grid: Grid) -> dict[str, int]:
    """How many of ``grid``'s per-seed selections the tie rule decided, in all and by each criterion
    (``loss``, ``lr``, ...), and how many selections there are (``of``)."""
    by: dict[str, int] = {}
    for s in grid.selected:
        if s.get("tie"):
            by[s["tie"]] = by.get(s["tie"], 0) + 1
    order = ["loss", *TIE_PREFERENCE, "run_id"]
    by = dict(sorted(by.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return {"decided": sum(by.values()), "of": len(grid.selected), **by}


def tie_note(grid: Grid) -> str:
    """The footnote of a table some of whose cells the tie rule decided ("" if none)."""
    counts = tie_counts(grid)
    if not counts["decided"]:
        return ""
    how = [f"{n} by {TIE_WORDS.get(k, k)}" for k, n in counts.items() if k not in ("decided", "of")]
    return (f"Ties: {counts['decided']} of {counts['of']} cells (per seed) decided by the tie rule, several "
            f"candidates having the best selection value: {', '.join(how)} (--show-selected names them).")


def run_curve(path: object, split: str) -> tuple[dict, list[str]]:
    """What ``ftbench run`` prints for one run of several result rows (WiSE-FT's alphas, ``--checkpoints``):
    the row :func:`select` chooses when ``report`` reads the run's result file ``path`` alone (the
    headline), and lines naming it and listing every row (``split``: the selection split's name)."""
    from ftbench.results.store import read_results

    df = read_results(path)[0]
    chosen = select(df)
    if chosen.empty:  # not ok: the end of training, as written
        return df.iloc[-1].to_dict(), []
    pick = chosen.iloc[0]
    sets = [c for c in df.columns if c.startswith("ood.") and c.endswith("_acc") and "_" not in c[4:-4]]
    alphas = "alpha" in df.columns and pd.to_numeric(df["alpha"], errors="coerce").notna().any()
    last = pd.to_numeric(df["step"], errors="coerce").max()

    def name(r: pd.Series) -> str:  # the alpha, and the step of a checkpoint before the end of training
        parts = [f"alpha={_show(float(r['alpha']))}"] if alphas else []
        return " ".join(parts + ([f"step={int(r['step'])}"] if r["step"] < last else [])) or f"step={int(last)}"

    how = f"the best {split} accuracy"
    if pick.get("_tie"):
        how += f" (a tie of {int(pick['_tied'])}, broken by {TIE_WORDS.get(pick['_tie'], pick['_tie'])})"
    what = "alpha" if alphas and not (pd.to_numeric(df["step"], errors="coerce") < last).any() else \
        "checkpoint" if not alphas else "row"
    width = max(12, *(len(name(r)) + 2 for _, r in df.iterrows()))
    lines = [f"headline numbers above: {name(pick)}, the {what} with {how}, as `ftbench report` selects",
             f"{'':{width + 2}s}{'val acc':>9s}{'ID acc':>9s}{'OOD acc':>9s}" + "".join(f"{c[4:-4]:>9s}" for c in sets)]
    order = df.assign(_a=pd.to_numeric(df["alpha"], errors="coerce") if alphas else 0.0,
                      _s=pd.to_numeric(df["step"], errors="coerce"))
    for i, r in order.sort_values(["_a", "_s"], kind="mergesort").iterrows():
        vals = "".join(f"{float(r[c]):8.2f}%" for c in ["val_acc", "id_acc", "ood_acc", *sets])
        lines.append(f"  {name(r):{width}s}{vals}" + ("  <- headline" if i == pick.name else ""))
    return pick.to_dict(), lines


def render_selected(grid: Grid, fmt: str) -> str:
    """--show-selected after a markdown or terminal table: one line per row, column and seed."""
    if fmt == "markdown":
        lines = ["", "| tuned | column | seed | run | chosen |", "|---|---|---:|---|---|"]
        lines += [f"| {s['row']} | {s['column']} | {s['seed']} | {s['run_id']} | {_chosen(s)} |" for s in grid.selected]
    else:
        lines = ["", "selected (per row, column and seed):"]
        lines += [f"  {s['row']} · {s['column']} · seed {s['seed']}: run {s['run_id']} {_chosen(s)}"
                  for s in grid.selected]
    return "\n".join(lines) + "\n"


def label_columns(chosen: pd.DataFrame, corruption_in_label: bool = True) -> pd.DataFrame:
    """Add display labels and sort keys: ``row``/``_rsort`` (method) and ``column``/``_csort`` (shift)."""
    varying = {k for k in ("benchmark", "model", "shots", "protocol") if chosen[k].nunique(dropna=False) > 1}
    order = method_order()

    def col_label(r: pd.Series) -> str:
        label = r["shift"]
        if corruption_in_label and r["corruption"]:
            label += f" ({r['corruption']}, s{int(r['severity'])})"
        if "benchmark" in varying:
            label = f"{r['benchmark']}/{label}"
        extra = [f"{k}={r[k]}" for k in ("model", "shots", "protocol") if k in varying]
        return label + (f" [{', '.join(extra)}]" if extra else "")

    return chosen.assign(
        row=[row_label(m, b, v) for m, b, v in zip(chosen["method"], chosen["blocks"], chosen["variant"])],
        column=[col_label(r) for _, r in chosen.iterrows()],
        _rsort=[(order.get(m, 1000), m, block_key(b), v)
                for m, b, v in zip(chosen["method"], chosen["blocks"], chosen["variant"])],
        _csort=[(r["protocol"] != DEFAULT_PROTOCOL, r["protocol"], r["benchmark"], LEVEL_ORDER.get(r["shift_level"], 9),
                 r["shift"], r["corruption"], r["severity"], str(r["model"]), _num(r["shots"]))
                for _, r in chosen.iterrows()],
    )


def _ordered(chosen: pd.DataFrame, label: str, key: str) -> list[str]:
    first = chosen.groupby(label)[key].agg(min)
    return sorted(first.index, key=lambda x: first[x])


def _stats(values: pd.Series) -> Cell:
    v = values.dropna().astype(float)  # indexed by seed (_per_seed)
    if v.empty:
        return Cell(float("nan"), float("nan"), 0)
    return Cell(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), int(len(v)),
                seeds={int(k): float(x) for k, x in v.items()})


def _per_seed(chosen: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """metric per (by..., seed), averaging duplicate runs of one cell and seed (e.g. from union folders);
    the index is the seed too, so a column taken from it keeps which seed each value is."""
    out = chosen.groupby(by + ["seed"], sort=False)[metric].mean().reset_index()
    out.index = pd.Index(out["seed"].to_numpy())
    return out


def _mark_best(grid: Grid, along: str, sub: str) -> None:
    """Mark the highest mean of sub-column ``sub`` per group (``along='column'``) or per row."""
    lines = grid.rows if along == "row" else [g for g, _ in grid.groups]
    for line in lines:
        cells = [c for (r, g, s), c in grid.cells.items() if s == sub and (r if along == "row" else g) == line
                 and c.mean == c.mean]
        if cells:
            top = max(c.mean for c in cells)
            for c in cells:
                c.best = c.mean >= top - 1e-9


def _caption(selection: str, grid: Grid, metric: str, extra: str = "", protocols: list[str] | None = None) -> str:
    ns = sorted(grid.n_values())
    n_text = (f"n = {ns[0]} seed{'s' if ns[0] != 1 else ''}" if len(ns) == 1 else "n (seeds) given per cell")
    parts = []
    for name in protocols or [DEFAULT_PROTOCOL]:
        p = _protocol(name)
        ood = p.ood_words if metric == "ood_acc" else f"{p.ood_words} ({metric})"
        words = p.selections[selection][1]
        col = selection_column(selection, metric, name)
        if col != selection_column(selection, "ood_acc", name) and selection != "oracle":
            words += f" {_metric_name(metric) or metric} (where the runs have it)"
        else:
            words += " accuracy" if selection != "oracle" else ""
        chosen = (f"ORACLE: hyperparameters chosen per seed on {words} (an upper bound, not a result)"
                  if selection == "oracle" else f"hyperparameters chosen per seed on {words}")
        parts.append(f"protocol {name}: OOD = {ood}, ID = {p.id_words}; {chosen}")
    return f"Accuracy (%): {'; '.join(parts)}; mean ± sample std over seeds (ddof=1), {n_text}{extra}."


# --------------------------------------------------------------------------------------------
# Table kinds


def build(df: pd.DataFrame, table: str = "shifts", selection: str = DEFAULT_SELECTION, metric: str = "ood_acc",
          title: str = "", checkpoint: str = "best", trend: tuple[str, ...] = DEFAULT_TREND,
          within: float | None = None) -> Grid:
    """Build table ``table`` from raw results ``df`` (one row per run); ``trend``: the methods whose
    runs fit the trend line of ``table="robustness"``; ``within``: ``table="pareto"`` only, also mark
    the cheapest row within this many points of the best."""
    if table not in TABLES:
        raise unknown("table", table, TABLES)
    check_within(table, within)
    check_metric(df, metric)
    chosen = select(df, selection, checkpoint, metric)
    if chosen.empty:
        raise UsageError("no successful runs to report (status == 'ok')")
    with_ckpt = checkpoint == "best" and not bool(is_final(df[df["status"] == "ok"]).all())
    if table == "corruptions":
        chosen = chosen[chosen["corruption"] != ""]
        if chosen.empty:
            raise UsageError("--table corruptions needs runs with --shift corruption")
    chosen = label_columns(chosen, corruption_in_label=table != "corruptions")
    if table == "robustness":
        grid = _robustness(chosen, df, selection, metric, title, trend)
    elif table == "pareto":
        grid = _pareto(chosen, selection, metric, title, within)
    else:
        builder = {"shifts": _shifts, "blocks": _blocks, "methods": _methods, "corruptions": _corruptions}[table]
        grid = builder(chosen, selection, metric, title)
    grid.selected = selected_records(chosen)
    grid.display = display_names(chosen)
    if with_ckpt:  # say so: the numbers include early stopping or WiSE-FT's choice of alpha
        extra = df[(df["status"] == "ok") & ~is_final(df)]
        alpha = extra["alpha"] if "alpha" in extra.columns else pd.Series(float("nan"), index=extra.index)
        is_alpha = alpha.notna() & (alpha != 1)
        over = ["checkpoints (--checkpoints)"] * bool((~is_alpha).any()) + ["WiSE-FT alpha"] * bool(is_alpha.any())
        grid.caption = grid.caption.replace(" accuracy;", f" accuracy, over lr, wd, steps and {' and '.join(over)};", 1)
    return grid


def display_names(chosen: pd.DataFrame) -> dict[str, str]:
    """Display names (ftbench.report.names) of the row and column labels of ``chosen``; a WiSE-FT row
    whose every cell and seed chose one alpha is named with it (``WiSE-FT (α = 0.5)``)."""
    from ftbench.report.names import column_name, row_name

    names = {c: column_name(c) for c in chosen["column"].unique()}
    alpha = (pd.to_numeric(chosen["alpha"], errors="coerce").fillna(1.0) if "alpha" in chosen.columns
             else pd.Series(1.0, index=chosen.index))
    for (label, method, blocks, variant), part in chosen.groupby(["row", "method", "blocks", "variant"], sort=False):
        names[label] = row_name(method, blocks, variant, set(alpha[part.index]))
    return names


def _match_rows(labels: list[str], display: dict[str, str], wanted: list[str], flag: str = "--rows") -> list[str]:
    """The labels ``wanted`` names (by label or display name, in any case), in that order."""
    by_name: dict[str, str] = {}
    for r in labels:
        by_name.setdefault(r.casefold(), r)
        by_name.setdefault(display.get(r, r).casefold(), r)
    rows: list[str] = []
    for w in wanted:
        r = by_name.get(w.strip().casefold())
        if r is None:
            raise UsageError(f"{flag}: no row {w.strip()!r} in the table; accepted: "
                             + ", ".join(repr(x) for x in labels))
        if r in rows:
            raise UsageError(f"{flag}: row {r!r} given twice")
        rows.append(r)
    return rows


def check_rows(df: pd.DataFrame, table: str, wanted: list[str]) -> None:
    """Refuse a ``--rows`` name that no row of ``table`` over the ok runs of ``df`` has, before the
    report prints anything (the table's own rows are checked again by :func:`select_rows`)."""
    ok = _prepare(df[df["status"] == "ok"])
    if ok.empty:
        return
    chosen = label_columns(ok)
    key, sort = ("column", "_csort") if table == "blocks" else ("row", "_rsort")
    _match_rows(_ordered(chosen, key, sort), display_names(chosen), wanted)


def rows_in(grid: Grid, wanted: list[str]) -> list[str]:
    """The names of ``wanted`` that name a row of ``grid`` (as :func:`select_rows` matches them)."""
    have = []
    for w in wanted:
        try:
            _match_rows(grid.rows, grid.display, [w])
        except UsageError:
            continue
        have.append(w)
    return have


def select_rows(grid: Grid, wanted: list[str]) -> Grid:
    """``grid`` with only the rows ``wanted``, in that order (``--rows``). A row is named by its label
    as the tables print it (``lp-ft``, ``block 1``) or its display name (``LP-FT``), in any case.
    Best marks are recomputed among the rows shown (per column; per-row marks stay as they are)."""
    rows = _match_rows(grid.rows, grid.display, wanted)
    if grid.row_header != "shift" and grid.kind != "pareto":  # best marked per column (the blocks table marks per row)
        marked = {s for (_, _, s), c in grid.cells.items() if c.best}
        for g, subs in grid.groups:
            for s in subs:
                if s not in marked:
                    continue
                cells = [grid.cells[(r, g, s)] for r in grid.rows if (r, g, s) in grid.cells]
                shown = [grid.cells[(r, g, s)] for r in rows if (r, g, s) in grid.cells
                         and grid.cells[(r, g, s)].mean == grid.cells[(r, g, s)].mean]
                for c in cells:
                    c.best = False
                if shown:
                    top = max(c.mean for c in shown)
                    for c in shown:
                        c.best = c.mean >= top - 1e-9
    grid.cells = {k: c for k, c in grid.cells.items() if k[0] in rows}
    grid.rows = rows
    key = "column" if grid.row_header == "shift" else "row"  # the blocks table's rows are the shifts
    grid.selected = [s for s in grid.selected if s[key] in rows]
    return grid


def _shifts(chosen: pd.DataFrame, selection: str, metric: str, title: str) -> Grid:
    rows, cols = _ordered(chosen, "row", "_rsort"), _ordered(chosen, "column", "_csort")
    name = METRIC_NAMES.get(metric, metric)
    sets = {c: ood_sets(chosen[chosen["column"] == c], metric) for c in cols}
    grid = Grid(title or "ID vs OOD accuracy", "", "tuned", rows,
                [(c, [name, *sets[c], "ID"]) for c in cols])
    for (r, c), g in chosen.groupby(["row", "column"], sort=False):
        grid.cells[(r, c, name)] = _stats(_per_seed(g, [], metric)[metric])
        for label, col in sets[c].items():
            grid.cells[(r, c, label)] = _stats(_per_seed(g, [], col)[col])
        grid.cells[(r, c, "ID")] = _stats(_per_seed(g, [], "id_acc")["id_acc"])
    _mark_best(grid, "column", name)
    for label in {label for v in sets.values() for label in v}:
        _mark_best(grid, "column", label)
    grid.caption = _caption(selection, grid, metric, f"; best {name} per column marked", protocols_of(chosen))
    return grid


def _blocks(chosen: pd.DataFrame, selection: str, metric: str, title: str) -> Grid:
    rows, cols = _ordered(chosen, "column", "_csort"), _ordered(chosen, "row", "_rsort")
    name = METRIC_NAMES.get(metric, metric)
    grid = Grid(title or f"{name} accuracy by tuned block", "", "shift", rows, [(c, [name]) for c in cols])
    for (shift, tuned), g in chosen.groupby(["column", "row"], sort=False):
        grid.cells[(shift, tuned, name)] = _stats(_per_seed(g, [], metric)[metric])
    _mark_best(grid, "row", name)
    grid.caption = _caption(selection, grid, metric, f"; best {name} per row marked", protocols_of(chosen))
    return grid


def ood_sets(rows: pd.DataFrame, metric: str = "ood_acc") -> dict[str, str]:
    """The OOD test sets of ID→OOD ``rows`` as {label: column} for ``metric`` (``ood_acc`` ->
    ``ood.<set>_acc``, ``ood_<m>`` -> ``ood.<set>_<m>``), in column order; {} for few-shot rows."""
    if not metric.startswith("ood_"):
        return {}
    suffix = metric.removeprefix("ood_")
    out = {}
    for col in rows.columns:
        if col.startswith("ood.") and col.endswith("_" + suffix) and "_" not in col[4:-len(suffix) - 1]:
            if pd.to_numeric(rows[col], errors="coerce").notna().any():
                out[col[4:-len(suffix) - 1]] = col
    return out


def _average(chosen: pd.DataFrame, row: str, metric: str, columns: list[str]) -> Cell:
    """Mean over columns per seed (seeds present in every column), then mean ± std over seeds."""
    ps = _per_seed(chosen[chosen["row"] == row], ["column"], metric)
    wide = ps.pivot(index="seed", columns="column", values=metric)
    if set(wide.columns) != set(columns):
        return Cell(float("nan"), float("nan"), 0)
    return _stats(wide[columns].dropna().mean(axis=1))


def _methods(chosen: pd.DataFrame, selection: str, metric: str, title: str) -> Grid:
    rows, cols = _ordered(chosen, "row", "_rsort"), _ordered(chosen, "column", "_csort")
    name = METRIC_NAMES.get(metric, metric)
    per_set = {c: ood_sets(chosen[chosen["column"] == c], metric) for c in cols}
    groups = [(c, ["ID", *per_set[c], name]) for c in cols] + ([("average", ["ID", name])] if len(cols) > 1 else [])
    grid = Grid(title or "Methods: ID and OOD accuracy", "", "method", rows, groups)
    for (r, c), g in chosen.groupby(["row", "column"], sort=False):
        grid.cells[(r, c, "ID")] = _stats(_per_seed(g, [], "id_acc")["id_acc"])
        for label, col in per_set[c].items():
            grid.cells[(r, c, label)] = _stats(_per_seed(g, [], col)[col])
        grid.cells[(r, c, name)] = _stats(_per_seed(g, [], metric)[metric])
    if len(cols) > 1:
        for r in rows:
            grid.cells[(r, "average", "ID")] = _average(chosen, r, "id_acc", cols)
            grid.cells[(r, "average", name)] = _average(chosen, r, metric, cols)
    _mark_best(grid, "column", name)
    _mark_best(grid, "column", "ID")
    for label in {label for v in per_set.values() for label in v}:
        _mark_best(grid, "column", label)
    avg = "; average = per-seed mean over the columns (rows missing a column get none)" if len(cols) > 1 else ""
    sets = f"; {name} = mean over the OOD test sets beside it" if any(per_set.values()) else ""
    grid.caption = _caption(selection, grid, metric, f"{avg}{sets}; best per column marked", protocols_of(chosen))
    return grid


def _logit(acc: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of accuracies in %, clipped to [0.01%, 99.99%] so 0 and 100 stay finite."""
    p = np.clip(np.asarray(acc, dtype=float) / 100.0, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Trend:
    """The line logit(OOD) = slope · logit(ID) + intercept fit to ``n`` runs (Taori et al. 2020)."""

    slope: float
    intercept: float
    n: int

    def predict(self, id_acc: np.ndarray | float) -> np.ndarray:
        """The OOD accuracy (%) on the line at ``id_acc`` (%)."""
        return 100.0 / (1.0 + np.exp(-(self.slope * _logit(id_acc) + self.intercept)))


def fit_trend(points: pd.DataFrame, metric: str = "ood_acc") -> Trend | None:
    """Least-squares fit of logit(``metric``) on logit(``id_acc``) over ``points`` (one per run and
    checkpoint); None with fewer than two distinct ID accuracies (no line through one point)."""
    x = pd.to_numeric(points.get("id_acc"), errors="coerce")
    y = pd.to_numeric(points.get(metric), errors="coerce")
    ok = x.notna() & y.notna()
    if x[ok].nunique() < 2:
        return None
    slope, intercept = np.polyfit(_logit(x[ok].to_numpy()), _logit(y[ok].to_numpy()), 1)
    return Trend(float(slope), float(intercept), int(ok.sum()))


def trend_points(df: pd.DataFrame, chosen: pd.DataFrame, trend: tuple[str, ...]) -> pd.DataFrame:
    """Every ok row (all hyperparameters, seeds and checkpoints) of the ``trend`` methods, labelled
    with the ``column`` of ``chosen`` that has the same column key."""
    base = _prepare(df[(df["status"] == "ok") & df["method"].isin(trend)])

    def keys(frame: pd.DataFrame) -> list[tuple[str, ...]]:  # as text: NaN (no shots) != NaN as a float
        return [tuple(map(str, k)) for k in frame[COL_KEY].itertuples(index=False)]

    labels = dict(zip(keys(chosen), chosen["column"]))
    return base.assign(column=[labels.get(k) for k in keys(base)])


def _robustness(chosen: pd.DataFrame, df: pd.DataFrame, selection: str, metric: str, title: str,
                trend: tuple[str, ...]) -> Grid:
    rows, cols = _ordered(chosen, "row", "_rsort"), _ordered(chosen, "column", "_csort")
    name = METRIC_NAMES.get(metric, metric)
    points = trend_points(df, chosen, trend)
    fits = {c: fit_trend(points[points["column"] == c], metric) for c in cols}
    if not any(fits.values()):
        raise UsageError(f"--table robustness fits its trend line to the runs of {', '.join(trend)} (--trend), and "
                         "no column has two of them with different ID accuracy; run those methods over a grid "
                         "(e.g. several lr) or name other methods with --trend")
    grid = Grid(title or "Effective robustness", "", "method", rows, [(c, ["ID", name, "ER"]) for c in cols])
    for (r, c), g in chosen.groupby(["row", "column"], sort=False):
        grid.cells[(r, c, "ID")] = _stats(_per_seed(g, [], "id_acc")["id_acc"])
        grid.cells[(r, c, name)] = _stats(_per_seed(g, [], metric)[metric])
        fit = fits[c]
        if fit is not None:
            er = g.assign(_er=pd.to_numeric(g[metric], errors="coerce")
                          - fit.predict(pd.to_numeric(g["id_acc"], errors="coerce").to_numpy()))
            grid.cells[(r, c, "ER")] = _stats(_per_seed(er, [], "_er")["_er"])
    _mark_best(grid, "column", "ER")
    nofit = [c for c in cols if fits[c] is None]
    runs = sorted({f.n for f in fits.values() if f is not None})
    extra = (f"; ER = effective robustness (Taori et al. 2020), in points: {name} minus the {name} that the "
             f"linear fit of logit({name}) on logit(ID) over every run of {', '.join(trend)} (all hyperparameters, "
             f"seeds and checkpoints; {'/'.join(map(str, runs))} runs per column) predicts at the row's ID accuracy"
             + (f"; no fit (fewer than 2 distinct ID accuracies) for {', '.join(nofit)}" if nofit else "")
             + "; best ER per column marked")
    grid.caption = _caption(selection, grid, metric, extra, protocols_of(chosen))
    return grid


def check_within(table: str, within: float | None) -> None:
    """``--within X`` belongs to ``--table pareto`` and is a number of points, at least 0."""
    if within is None:
        return
    if table != "pareto":
        raise UsageError(f"--within {within:g} applies to --table pareto (the cheapest row within X points of the "
                         f"best); got --table {table}")
    if not (within == within and math.isfinite(within) and within >= 0):
        raise UsageError(f"--within {within:g}: give a number of accuracy points, 0 or more (e.g. --within 1)")


def _train_flops(rows: pd.DataFrame) -> pd.Series:
    """Training FLOPs of each row: the FLOPs of one image's training step x the training examples the run
    processed. The examples are recorded (``examples_per_second`` x ``train_seconds`` = rows of every
    batch, docs/results.md); an image's step is counted on the meta device per block
    (ftbench/papers/estimate.py ``example_flops``): the forward pass, and the backward pass down to the
    lowest tuned block (input gradients) plus the tuned blocks' weight gradients. A surgical row tunes its
    ``blocks``; every other method counts as tuning everything (3 x forward, an upper bound for methods
    that train less, such as PETL adapters). NaN where the image size or the model's count is unknown."""
    from ftbench.papers.estimate import example_flops

    examples = (pd.to_numeric(rows.get("examples_per_second"), errors="coerce")
                * pd.to_numeric(rows.get("train_seconds"), errors="coerce")).round()
    per_image: dict[tuple[str, str, str, str], float] = {}
    out = []
    for bench, model, method, blocks, n in zip(rows["benchmark"].astype(str), rows["model"].astype(str),
                                               rows["method"].astype(str), rows["blocks"].astype(str), examples):
        key = (bench, model, method, blocks)
        if key not in per_image:
            tuned = [b for b in blocks.split(",") if b] if method == "surgical" else None
            f = example_flops(model, bench, tuned)
            per_image[key] = float("nan") if f is None else f
        out.append(0.0 if n == 0 else per_image[key] * n)
    return pd.Series(out, index=rows.index, dtype=float)


def pareto_front(points: list[tuple[float, float, float]]) -> list[bool]:
    """Which of ``points`` = (OOD, FLOPs, parameters) no other point dominates: OOD at least as high and
    FLOPs and parameters at most as high, one of them strictly. A point with a NaN is never optimal."""
    def ok(p: tuple[float, float, float]) -> bool:
        return all(v == v for v in p)

    flags = []
    for i, p in enumerate(points):
        if not ok(p):
            flags.append(False)
            continue
        dominated = any(ok(q) and q[0] >= p[0] and q[1] <= p[1] and q[2] <= p[2]
                        and (q[0] > p[0] or q[1] < p[1] or q[2] < p[2]) for j, q in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def cheapest_within(points: list[tuple[float, float, float]], within: float) -> int | None:
    """Index of the cheapest point (fewest FLOPs, then parameters, then highest OOD) whose OOD is at most
    ``within`` points below the best; None without a finite point."""
    good = [i for i, p in enumerate(points) if all(v == v for v in p)]
    if not good:
        return None
    best = max(points[i][0] for i in good)
    near = [i for i in good if points[i][0] >= best - within - 1e-9]
    return min(near, key=lambda i: (points[i][1], points[i][2], -points[i][0]))


def _count(v: float) -> str:
    return "–" if v != v else f"{v:,.0f}"


def _pareto(chosen: pd.DataFrame, selection: str, metric: str, title: str, within: float | None) -> Grid:
    chosen = chosen.assign(_flops=_train_flops(chosen).to_numpy(),
                           _params=pd.to_numeric(chosen.get("n_trainable"), errors="coerce").to_numpy(),
                           _seconds=pd.to_numeric(chosen.get("train_seconds"), errors="coerce").to_numpy())
    rows, cols = _ordered(chosen, "row", "_rsort"), _ordered(chosen, "column", "_csort")
    name = METRIC_NAMES.get(metric, metric)
    near = f"within {within:g}" if within is not None else None
    subs = [name, "ID", "params", "train s", "FLOPs", "Pareto"] + ([near] if near else [])
    grid = Grid(title or f"{name} against training cost", "", "tuned", rows, [(c, list(subs)) for c in cols])
    for c in cols:
        part = chosen[chosen["column"] == c]
        have = [r for r in rows if (part["row"] == r).any()]
        points = []
        for r in have:
            g = part[part["row"] == r]
            ood = _stats(_per_seed(g, [], metric)[metric])
            grid.cells[(r, c, name)] = ood
            grid.cells[(r, c, "ID")] = _stats(_per_seed(g, [], "id_acc")["id_acc"])
            params, flops = _stats(_per_seed(g, [], "_params")["_params"]), _stats(_per_seed(g, [], "_flops")["_flops"])
            grid.cells[(r, c, "params")] = Cell(params.mean, params.std, params.n, text=_count(params.mean))
            grid.cells[(r, c, "train s")] = _stats(_per_seed(g, [], "_seconds")["_seconds"])
            grid.cells[(r, c, "FLOPs")] = Cell(flops.mean, flops.std, flops.n,
                                               text="–" if flops.mean != flops.mean else f"{flops.mean:.3g}")
            points.append((ood.mean, flops.mean, params.mean))
        front = pareto_front(points)
        pick = cheapest_within(points, within) if within is not None else None
        for i, (r, optimal) in enumerate(zip(have, front)):
            grid.cells[(r, c, name)].best = optimal
            n = grid.cells[(r, c, name)].n
            grid.cells[(r, c, "Pareto")] = Cell(float(optimal), float("nan"), n, best=optimal,
                                                text="yes" if optimal else "")
            if near:
                grid.cells[(r, c, near)] = Cell(float(i == pick), float("nan"), n, best=i == pick,
                                                text="cheapest" if i == pick else "")
    extra = ("; params = trainable parameters (n_trainable); train s = training seconds; FLOPs = training FLOPs, "
             "the training examples processed x one image's step counted per block (forward, and backward down "
             "to the lowest tuned block; methods other than surgical count as tuning every block); Pareto = no other "
             "row has at least the OOD with at most the FLOPs and parameters (one strictly), per column, in bold"
             + (f"; within {within:g} = the fewest FLOPs (then parameters) among rows at most {within:g} points "
                f"below the best {name}" if near else ""))
    grid.caption = _caption(selection, grid, metric, extra, protocols_of(chosen))
    grid.kind = "pareto"
    return grid


def _corruptions(chosen: pd.DataFrame, selection: str, metric: str, title: str) -> Grid:
    chosen = chosen.assign(corr=[f"{c} s{s}" for c, s in zip(chosen["corruption"], chosen["severity"])],
                           _corr_sort=list(zip(chosen["severity"], chosen["corruption"])))
    rows = _ordered(chosen, "row", "_rsort")
    shifts = _ordered(chosen, "column", "_csort")
    corrs = _ordered(chosen, "corr", "_corr_sort")
    severities = sorted(chosen["severity"].unique())
    name = METRIC_NAMES.get(metric, metric)
    groups: list[tuple[str, list[str]]] = []
    grid = Grid(title or f"{name} accuracy per corruption", "", "tuned", [], groups)
    for shift in shifts:
        part = chosen[chosen["column"] == shift]
        prefix = "" if len(shifts) == 1 else f"{shift}: "
        cols = [c for c in corrs if c in set(part["corr"])]
        groups.append((f"{prefix}{name}", cols + [f"mean s{s}" for s in severities
                                                   if len(severities) > 1 and f"mean s{s}" not in cols] + ["mean"]))
        for r in rows:
            rp = part[part["row"] == r]
            ps = _per_seed(rp, ["corr"], metric)
            for c in cols:
                grid.cells[(r, groups[-1][0], c)] = _stats(ps.loc[ps["corr"] == c, metric])
            wide = ps.pivot(index="seed", columns="corr", values=metric) if not ps.empty else pd.DataFrame()
            for s in (severities if len(severities) > 1 else []):
                sc = [c for c in cols if c.endswith(f" s{s}")]
                if sc and set(sc) <= set(wide.columns):
                    grid.cells[(r, groups[-1][0], f"mean s{s}")] = _stats(wide[sc].dropna().mean(axis=1))
            if cols and set(cols) <= set(wide.columns):
                grid.cells[(r, groups[-1][0], "mean")] = _stats(wide[cols].dropna().mean(axis=1))
    grid.rows = rows
    for g, subs in groups:
        for s in subs:
            cells = [grid.cells[(r, g, s)] for r in rows if (r, g, s) in grid.cells and grid.cells[(r, g, s)].mean == grid.cells[(r, g, s)].mean]
            if cells:
                top = max(c.mean for c in cells)
                for c in cells:
                    c.best = c.mean >= top - 1e-9
    grid.caption = _caption(selection, grid, metric,
                            "; mean = per-seed mean over the corruptions, then over seeds; best per column marked",
                            protocols_of(chosen))
    return grid


# --------------------------------------------------------------------------------------------
# Rendering


MARKS = {"up": "↑", "down": "↓"}  # --mark-vs (report/paired.py); LaTeX: LATEX_MARKS
LATEX_MARKS = {"up": r"$^{\uparrow}$", "down": r"$^{\downarrow}$"}


def _fmt(c: Cell | None, show_n: bool, pm: str = "±", marks: dict[str, str] = MARKS) -> str:
    if c is not None and c.text is not None:
        return c.text
    if c is None or c.mean != c.mean:
        return "–"
    s = f"{c.mean:.1f}" + (f" {pm} {c.std:.1f}" if c.std == c.std else "")
    return s + marks.get(c.mark, "") + (f" (n={c.n})" if show_n else "")


def _flat(grid: Grid) -> list[tuple[str, str]]:
    return [(g, s) for g, subs in grid.groups for s in subs]


def render_markdown(grid: Grid) -> str:
    show_n = len(grid.n_values()) > 1
    cols = _flat(grid)
    head = [f"{g} {s}" if len(subs) > 1 or s != g else g for g, subs in grid.groups for s in subs]
    out = [f"| {grid.row_header} | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
    for r in grid.rows:
        vals = []
        for g, s in cols:
            c = grid.cells.get((r, g, s))
            t = _fmt(c, show_n)
            vals.append(f"**{t}**" if c is not None and c.best else t)
        out.append(f"| {r} | " + " | ".join(vals) + " |")
    out += ["", f"*{grid.caption} Best in bold.*"]
    if tie_note(grid):
        out += ["", f"*{tie_note(grid)}*"]
    return "\n".join(out) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$", "–": "--", "α": r"$\alpha$",
        "↑": r"$\uparrow$", "↓": r"$\downarrow$"}
_TEX_SPECIAL = re.compile("|".join(re.escape(k) for k in _TEX))


def _tex(s: str) -> str:
    # One pass: the braces of a replacement (\textbackslash{}) are not escaped again.
    return _TEX_SPECIAL.sub(lambda m: _TEX[m.group()], s)


def render_latex(grid: Grid) -> str:
    """A booktabs table in display names (ftbench.report.names): a short caption (the title, or
    ``--caption``) and ``\\label`` (``--label``) above the table, grouped header with cmidrules, best
    per column (or per row, in the blocks table) in bold, mean $\\pm$ std; the protocol details in a
    footnote-size note under the table; n in the note or in the cells."""
    from ftbench.report.names import column_name

    def name(label: str) -> str:
        return _tex(grid.display.get(label) or column_name(label))

    show_n = len(grid.n_values()) > 1
    cols = _flat(grid)
    caption = grid.short_caption or grid.title
    lines = [r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{_tex(caption)}}}" + (rf"\label{{{grid.label}}}" if grid.label else ""), r"\smallskip",
             r"\begin{tabular}{l" + "r" * len(cols) + "}", r"\toprule"]
    top, rules, i = [""], [], 2
    for g, subs in grid.groups:
        top.append(rf"\multicolumn{{{len(subs)}}}{{c}}{{{name(g)}}}")
        rules.append(rf"\cmidrule(lr){{{i}-{i + len(subs) - 1}}}")
        i += len(subs)
    lines.append(" & ".join(top) + r" \\")
    lines.append(" ".join(rules))
    lines.append(" & ".join([_tex(grid.row_header)] + [name(s) for _, s in cols]) + r" \\")
    lines.append(r"\midrule")
    for r in grid.rows:
        vals = []
        for g, s in cols:
            c = grid.cells.get((r, g, s))
            t = _fmt(c, show_n, pm=r"$\pm$", marks=LATEX_MARKS).replace("–", "--")
            vals.append(rf"\textbf{{{t}}}" if c is not None and c.best else t)
        lines.append(" & ".join([name(r)] + vals) + r" \\")
    ties = (" " + _tex(tie_note(grid))) if tie_note(grid) else ""
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\par\smallskip\begin{minipage}{\linewidth}\footnotesize " + _tex(grid.caption) + r" Best in bold."
              + ties + r"\end{minipage}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_html(grid: Grid) -> str:
    show_n = len(grid.n_values()) > 1
    e = html.escape
    ties = f" {e(tie_note(grid))}" if tie_note(grid) else ""
    out = ["<table class=\"ftbench\">", f"<caption>{e(grid.title)}. {e(grid.caption)} Best in bold.{ties}</caption>",
           "<thead>", "<tr><th rowspan=\"2\">" + e(grid.row_header) + "</th>" +
           "".join(f"<th colspan=\"{len(s)}\">{e(g)}</th>" for g, s in grid.groups) + "</tr>",
           "<tr>" + "".join(f"<th>{e(s)}</th>" for _, s in _flat(grid)) + "</tr>", "</thead>", "<tbody>"]
    for r in grid.rows:
        cells = []
        for g, s in _flat(grid):
            c = grid.cells.get((r, g, s))
            t = e(_fmt(c, show_n))
            cells.append(f"<td><strong>{t}</strong></td>" if c is not None and c.best else f"<td>{t}</td>")
        out.append(f"<tr><th>{e(r)}</th>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out) + "\n"


def _records(grid: Grid) -> list[dict]:
    recs = []
    for g, s in _flat(grid):
        for r in grid.rows:
            c = grid.cells.get((r, g, s))
            if c is not None:
                recs.append({"row": r, "column": g, "metric": s, "mean": c.mean,
                             "std": c.std if c.std == c.std else None, "n": c.n, "best": c.best,
                             **({"mark": c.mark} if c.mark else {})})
    return recs


def render_csv(grid: Grid, show_selected: bool = False) -> str:
    buf = io.StringIO()
    columns = ["row", "column", "metric", "mean", "std", "n", "best", "ties"]
    recs = [{**rec, "ties": tie_counts(grid)["decided"]} for rec in _records(grid)]  # the table's, as its footnote
    if show_selected:  # per seed, what the cell's row and column chose (column labels as the table's)
        columns.append("selected")
        chosen: dict[tuple[str, str], list[str]] = {}
        for s in grid.selected:
            chosen.setdefault((s["row"], s["column"]), []).append(f"seed {s['seed']}: run {s['run_id']} {_chosen(s)}".strip())
        for rec in recs:
            rec["selected"] = "; ".join(chosen.get((rec["row"], rec["column"]), []))
    df = pd.DataFrame(recs, columns=columns)
    df.to_csv(buf, index=False, float_format="%.4f", lineterminator="\n")
    return buf.getvalue()


def render_json(grid: Grid) -> str:
    def clean(v: object) -> object:
        return None if isinstance(v, float) and v != v else v

    doc = {"title": grid.title, "caption": grid.caption, "row_header": grid.row_header, "rows": grid.rows,
           "columns": [{"label": g, "metrics": s} for g, s in grid.groups],
           "cells": [{k: clean(v) for k, v in rec.items()} for rec in _records(grid)],
           "selected": [{k: clean(v) for k, v in rec.items()} for rec in grid.selected], "ties": tie_counts(grid)}
    return json.dumps(doc, indent=2) + "\n"


def render_rich(grid: Grid):  # noqa: ANN201 - rich.table.Table
    from rich.markup import escape
    from rich.table import Table as RichTable

    show_n = len(grid.n_values()) > 1
    note = f"\n{tie_note(grid)}" if tie_note(grid) else ""
    # A split table's parts have no caption: the whole table's caption and tie note follow the last part.
    caption = escape(grid.caption + " Best in bold green with *." + note) if grid.caption else None
    table = RichTable(title=escape(grid.title), caption=caption, caption_justify="left")
    table.add_column(escape(grid.row_header), style="bold")
    for g, subs in grid.groups:
        for j, s in enumerate(subs):
            head = f"{g}\n{s}" if j == 0 and (len(subs) > 1 or s != g) else (s if j else g)
            table.add_column(escape(head), justify="right", style="dim" if s == "ID" else None)
    for r in grid.rows:
        vals = []
        for g, s in _flat(grid):
            c = grid.cells.get((r, g, s))
            t = escape(_fmt(c, show_n))
            vals.append(f"[bold green]{t} *[/]" if c is not None and c.best else t)
        table.add_row(escape(r), *vals)
    return table


def _with_groups(grid: Grid, groups: list[tuple[str, list[str]]], title: str, caption: str) -> Grid:
    """``grid`` showing only ``groups`` (the same cells), titled and captioned anew."""
    return Grid(title, caption, grid.row_header, grid.rows, groups, grid.cells, grid.selected, grid.display,
                grid.label, grid.short_caption)


def fit_width(grid: Grid, width: int) -> list[Grid]:
    """``grid`` as one or more tables whose terminal rendering is at most ``width`` characters wide:
    the column groups in order, as many to a table as fit (a group wider than ``width`` by itself is
    split between its sub-columns). Every part repeats the row labels; none has the caption
    (:func:`rich_tables` prints it under the last, as wide as the terminal).
    Nothing is cut: a header rich would shorten to ``corrupt…`` moves to the next part instead."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=width, file=io.StringIO())
    wide = console.options.update(max_width=1_000_000)

    def fits(groups: list[tuple[str, list[str]]]) -> bool:
        table = render_rich(_with_groups(grid, groups, grid.title, ""))
        return Measurement.get(console, wide, table).maximum <= width

    if fits(grid.groups):
        return [grid]
    parts: list[list[tuple[str, list[str]]]] = []
    cur: list[tuple[str, list[str]]] = []
    for g, subs in grid.groups:
        if fits(cur + [(g, subs)]):
            cur.append((g, subs))
            continue
        if cur:
            parts.append(cur)
        cur = [(g, subs)]
        if not fits(cur):  # one group too wide by itself: its sub-columns in pieces
            chunk: list[str] = []
            for sub in subs:
                if chunk and not fits([(g, chunk + [sub])]):
                    parts.append([(g, chunk)])
                    chunk = []
                chunk.append(sub)
            cur = [(g, chunk)]
    parts.append(cur)
    n = len(parts)
    return [_with_groups(grid, groups, f"{grid.title} (part {i + 1} of {n})", "") for i, groups in enumerate(parts)]


def split_note(parts: list[Grid], width: int) -> str:
    """The line under a table that :func:`fit_width` split: what happened and how to see it whole."""
    if len(parts) < 2:
        return ""
    return (f"(the table is split into {len(parts)} parts to fit {width} columns; every column is shown. "
            "--format markdown, html or csv print it in one piece, COLUMNS=N sets the width, "
            "--filter and --rows show less of it)")


def rich_tables(grid: Grid, width: int) -> list:  # noqa: ANN201 - rich renderables
    """What the terminal shows of ``grid`` at ``width`` columns: its parts (:func:`fit_width`) and,
    when it is split, the note that says so."""
    from rich.markup import escape
    from rich.text import Text

    parts = fit_width(grid, width)
    if len(parts) == 1:
        return [render_rich(grid)]
    note = f"\n{tie_note(grid)}" if tie_note(grid) else ""
    caption = Text(escape(grid.caption + " Best in bold green with *." + note)) if grid.caption else None
    return [render_rich(p) for p in parts] + [x for x in (caption, Text(escape(split_note(parts, width)), style="dim"))
                                              if x is not None]


def render_terminal(grid: Grid, width: int) -> str:
    """The terminal table(s) of ``grid`` as plain text, fit to ``width`` columns."""
    from rich.console import Console

    console = Console(record=True, width=width, file=io.StringIO())
    for r in rich_tables(grid, width):
        console.print(r)
    return console.export_text()


def render(grid: Grid, fmt: str, show_selected: bool = False) -> str:
    """Text of ``grid`` in ``fmt`` (terminal = the rich table as plain text). ``show_selected``: with
    markdown and terminal, the table of what each cell chose after it; with csv, a ``selected``
    column (json always carries the records)."""
    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)
    if fmt == "terminal":
        text = render_terminal(grid, 200)
    elif fmt == "csv":
        return render_csv(grid, show_selected)
    else:
        text = {"markdown": render_markdown, "latex": render_latex, "html": render_html, "json": render_json}[fmt](grid)
    return text + (render_selected(grid, fmt) if show_selected and fmt in ("markdown", "terminal") else "")


def _filter_values(col: pd.Series, limit: int = 20) -> str:
    """The distinct values of a results column as ``--filter`` takes them (``0.001``, ``20``), sorted."""
    vals = sorted({_show(v.item() if hasattr(v, "item") else v) for v in col.dropna()},
                  key=lambda v: (_num(v), v))
    return ", ".join(vals[:limit]) + (f", ... ({len(vals)} values)" if len(vals) > limit else "") or "no values"


def _equals(col: pd.Series, value: str) -> pd.Series:
    """Where ``col`` is ``value``: as text, or as a number when ``value`` is one (``20`` matches 20.0)."""
    try:
        return (pd.to_numeric(col, errors="coerce") == float(value)) | (col.astype(str) == value)
    except ValueError:
        return col.astype(str) == value


def apply_filters(df: pd.DataFrame, filters: list[str], refuse_empty: bool = True) -> pd.DataFrame:
    """Keep rows where each ``key=value`` holds (string comparison; numbers compared as numbers).
    ``key=a,b`` keeps rows whose ``key`` is ``a`` or ``b`` (OR within a key; the filters together are
    an AND); a value that some row holds whole (``blocks=1,2``) is that one value. With
    ``refuse_empty``, a filter that leaves no row of a non-empty ``df`` is a UsageError naming it and
    the values its column has among the rows it was given."""
    given = []
    for f in filters:
        key, eq, value = f.partition("=")
        key = key.strip()
        if not eq:
            raise UsageError(f"--filter expects key=value, got {f!r}")
        if key not in df.columns:
            raise unknown("filter column", key, sorted(df.columns))
        col = df[key]
        mask = _equals(col, value)
        if not mask.any() and "," in value:  # OR within the key: method=full,lp-ft
            mask = pd.Series(False, index=df.index)
            for v in value.split(","):
                mask |= _equals(col, v.strip())
        if refuse_empty and not df.empty and not mask.any():
            before = f" (after --filter {' --filter '.join(given)})" if given else ""
            raise UsageError(f"--filter {key}={value} matches no run{before}; {key} has: {_filter_values(col)}")
        given.append(f"{key}={value}")
        df = df[mask]
    return df


# Column keys whose values are different experiments, never averaged together nor put side by side in
# one table: a results folder that holds runs of several protocols or models (every command writes to
# ftbench-results/ by default) gets one table per combination (docs/report.md, "Folders that hold
# more than one experiment").
SEPARATE = ("protocol", "model")


def split_groups(df: pd.DataFrame, group_by: str | None) -> list[tuple[str, pd.DataFrame]]:
    """One part per combination of the values of :data:`SEPARATE` that vary among ``df``'s ok runs
    (and of column ``group_by``), labelled ``protocol=id-ood, model=digits-clip``; ``[("", df)]`` when
    nothing varies. Parts come in table column order: the default protocol first, then by name."""
    if group_by and group_by not in df.columns:
        raise unknown("group-by column", group_by, sorted(df.columns))
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    keys = [k for k in SEPARATE if k in df.columns and k != group_by
            and ok[k].fillna(DEFAULT_PROTOCOL if k == "protocol" else "").astype(str).nunique() > 1]
    keys = ([group_by] if group_by else []) + keys
    if not keys:
        return [("", df)]
    values = pd.DataFrame({k: df[k].fillna(DEFAULT_PROTOCOL if k == "protocol" else "").astype(str) for k in keys},
                          index=df.index)
    parts = [(", ".join(f"{k}={v}" for k, v in zip(keys, vals if isinstance(vals, tuple) else (vals,))), df.loc[part.index])
             for vals, part in values.groupby(keys if len(keys) > 1 else keys[0], sort=True)]
    if "protocol" in keys:  # the default protocol first, as in the tables' column order
        parts.sort(key=lambda p: f"protocol={DEFAULT_PROTOCOL}" not in p[0].split(", "))
    return parts


def select_parts(parts: list[tuple[str, pd.DataFrame]], selection: str, checkpoint: str = "best",
                 metric: str = "ood_acc") -> tuple[list[tuple[str, pd.DataFrame, str]], str]:
    """Each part of :func:`split_groups` with the selection its table uses, and a notice.

    ``selection`` applies where the rows' protocol has it and their benchmark has the split
    (``ood-val``: id-ood runs on a benchmark with an OOD val set); the rest select on
    :data:`DEFAULT_SELECTION` (each protocol's own validation split) in a part of their own, and the
    notice names them. A selection that applies to no row at all stays a UsageError."""
    out: list[tuple[str, pd.DataFrame, str]] = []
    left: dict[str, int] = {}  # what the selection does not apply to -> in how many tables
    first: UsageError | None = None
    for label, part in parts:
        ok = part[part["status"] == "ok"] if "status" in part.columns else part
        fits, misfits = [], []
        proto = (ok["protocol"].fillna(DEFAULT_PROTOCOL).astype(str) if "protocol" in ok.columns
                 else pd.Series(DEFAULT_PROTOCOL, index=ok.index))
        for (name, bench), rows in ok.groupby([proto, ok["benchmark"].astype(str)], sort=True):
            try:
                unselectable_rows(rows, selection, checkpoint, metric)
                fits.append(rows.index)
            except UsageError as e:
                first = first or e
                misfits.append((f"{name} runs on {bench}", rows.index))
        if not misfits or selection == DEFAULT_SELECTION:
            out.append((label, part, selection))
            continue
        keep = part.index.difference(pd.Index([i for _, idx in misfits for i in idx]))
        if fits:
            out.append((", ".join(x for x in (label, f"--select {selection}") if x), part.loc[keep], selection))
        rest = part.drop(index=keep)
        out.append((", ".join(x for x in (label, f"--select {DEFAULT_SELECTION}") if x) if fits else label, rest,
                    DEFAULT_SELECTION))
        for name in dict.fromkeys(n for n, _ in misfits):
            left[name] = left.get(name, 0) + 1
    if first is not None and all(s != selection for _, _, s in out):
        raise first  # applies nowhere: what is accepted, as before
    notice = ""
    if left:
        tables = sum(left.values())
        notice = (f"--select {selection} applies to some runs only; not to the "
                  + ", ".join(f"{name}" for name in left)
                  + f", whose table{'s' if tables > 1 else ''} ({tables}) select{'' if tables > 1 else 's'} on "
                  f"{DEFAULT_SELECTION}, the protocol's own validation split")
    return out, notice
