"""``ftbench report --compare paper``: ftbench's numbers beside the papers' published ones.

The published numbers are ``ftbench/papers/published.toml`` (or any file of that format, given as
``--compare FILE``): each entry is one cell of a paper's table, with its source (paper, table, row,
column), the protocol it was measured under, and the ftbench cell it corresponds to (result
columns and their values). For each entry with results, the report gives the paper's number,
ftbench's (mean over seeds of the rows the report's own selection chooses), and the difference;
then the entries without results and the ftbench cells without a published counterpart.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ftbench.errors import UsageError
from ftbench.text import clean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PUBLISHED_FILE = Path(__file__).resolve().parents[1] / "papers" / "published.toml"
REQUIRED = ("paper", "table", "row", "column", "value", "protocol", "cell")


@dataclass(frozen=True)
class Published:
    """One published number and the ftbench cell it corresponds to."""

    paper: str
    table: str
    row: str
    column: str
    value: float
    protocol: str
    cell: dict[str, Any]
    metric: str = "ood_acc"
    note: str = ""

    @property
    def source(self) -> str:
        return f"{self.paper}, {self.table}, row {self.row!r}, column {self.column!r}"


@dataclass
class Comparison:
    matched: list[tuple[Published, float, int]] = field(default_factory=list)  # (entry, ftbench mean, seeds)
    without_results: list[Published] = field(default_factory=list)
    without_published: list[str] = field(default_factory=list)  # ftbench cells, as labels
    missing_tables: list[dict[str, Any]] = field(default_factory=list)


def _type(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), f"a {type(v).__name__}")


def _text(v: Any, where: str, key: str) -> str:
    """A text field of an entry (a number is taken as its text); anything else is a UsageError."""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise UsageError(f"{where}: {key} must be a string, got {v!r} ({_type(v)})")
    return clean(str(v), newlines=False)


def _tables(data: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    v = data.get(key, [])
    if not isinstance(v, list) or not all(isinstance(e, dict) for e in v):
        bad = v if not isinstance(v, list) else next(e for e in v if not isinstance(e, dict))
        raise UsageError(f"{path}: {key} must be a list of [[{key}]] tables, got {bad!r} ({_type(bad)})")
    return v


def _check_metric_name(metric: Any, where: str) -> str:
    from ftbench.report.table import MEASUREMENT_PREFIXES, METRIC_NAMES

    if not isinstance(metric, str) or not metric.startswith(MEASUREMENT_PREFIXES):
        shown = f"{metric!r}" + ("" if isinstance(metric, str) else f" ({_type(metric)})")
        raise UsageError(f"{where}: unknown metric {shown}; accepted: {', '.join(METRIC_NAMES)} or another result "
                         f"column of measurements ({', '.join(p + '*' for p in MEASUREMENT_PREFIXES)})")
    return metric


def load_published(source: str | Path) -> tuple[list[Published], list[dict[str, Any]]]:
    """The entries of a published-numbers file (``"paper"``: the shipped one) and its ``missing``
    list (tables not entered, with why). A malformed file is a UsageError naming it: not UTF-8 text,
    not TOML, ``published``/``missing`` not lists of tables, an entry lacking a key or with a value
    of the wrong type, a ``metric`` that is no result column of measurements."""
    path = PUBLISHED_FILE if str(source) == "paper" else Path(source)
    accepted = "accepted: 'paper' or a TOML file of [[published]] entries"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read published numbers {str(path)!r}: {e.strerror}; {accepted}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not a text (UTF-8) file: byte 0x{raw[e.start]:02x} at offset {e.start}; "
                         f"{accepted}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: malformed TOML: {e}") from None
    out = []
    for i, e in enumerate(_tables(data, "published", path)):
        where = f"{path}: published entry {i + 1}"
        missing = [k for k in REQUIRED if k not in e]
        if missing or not isinstance(e.get("cell"), dict):
            raise UsageError(f"{where} lacks {', '.join(missing) or 'a cell table'}; each needs {', '.join(REQUIRED)}")
        try:
            if isinstance(e["value"], bool):
                raise TypeError
            value = float(e["value"])
        except (TypeError, ValueError):
            raise UsageError(f"{where}: value {e['value']!r} is not a number") from None
        cell = {}
        for k, v in e["cell"].items():
            if not isinstance(v, (str, int, float)):
                raise UsageError(f"{where}: cell value {k} = {v!r} ({_type(v)}) must be a string or a number")
            cell[clean(str(k), newlines=False)] = clean(v, newlines=False) if isinstance(v, str) else v
        out.append(Published(*(_text(e[k], where, k) for k in ("paper", "table", "row", "column")), value,
                             _text(e["protocol"], where, "protocol"), cell,
                             _check_metric_name(e.get("metric", "ood_acc"), where),
                             _text(e.get("note", ""), where, "note")))
    tables = []
    for i, m in enumerate(_tables(data, "missing", path)):
        tables.append({k: _text(v, f"{path}: missing entry {i + 1}", k) for k, v in m.items()})
    return out, tables


def _matches(df: pd.DataFrame, cell: dict[str, Any]) -> pd.Series:
    keep = pd.Series(True, index=df.index)
    for k, v in cell.items():
        if k not in df.columns:
            return pd.Series(False, index=df.index)
        col = df[k]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            keep &= pd.to_numeric(col, errors="coerce") == float(v)
        else:
            keep &= col.fillna("").astype(str) == str(v)
    return keep


def compare(df: pd.DataFrame, published: list[Published], selection: str = "target-val",
            checkpoint: str = "best") -> Comparison:
    """Match each published entry to the results (selected as the report selects them)."""
    from ftbench.report.table import COL_KEY, ROW_KEY, label_columns, select

    out = Comparison()
    matched_cells: set[tuple] = set()
    chosen_by_metric: dict[str, pd.DataFrame] = {}
    for p in published:
        if p.metric not in chosen_by_metric:
            chosen_by_metric[p.metric] = select(df, selection, checkpoint, p.metric)
        chosen = chosen_by_metric[p.metric]
        rows = chosen[_matches(chosen, p.cell)] if not chosen.empty else chosen
        if p.metric not in rows.columns:  # no run of these results measures it
            rows = rows.iloc[:0]
        values = pd.to_numeric(rows[p.metric], errors="coerce").dropna() if not rows.empty else pd.Series([])
        if values.empty:
            out.without_results.append(p)
            continue
        per_seed = rows.assign(_v=pd.to_numeric(rows[p.metric], errors="coerce")).groupby("seed")["_v"].mean()
        out.matched.append((p, float(per_seed.mean()), int(per_seed.size)))
        matched_cells |= {tuple(r[k] for k in ROW_KEY + COL_KEY) for _, r in rows.iterrows()}
    chosen = select(df, selection, checkpoint, "ood_acc")
    if not chosen.empty:
        labelled = label_columns(chosen)
        seen = set()
        for _, r in labelled.iterrows():
            key = tuple(r[k] for k in ROW_KEY + COL_KEY)
            label = f"{r['row']} | {r['column']}"
            if key not in matched_cells and label not in seen:
                seen.add(label)
                out.without_published.append(label)
    return out


def render(c: Comparison, fmt: str = "terminal") -> str:
    """The comparison as text (markdown table for ``fmt="markdown"``, aligned text otherwise)."""
    head = ["paper", "table", "row", "column", "metric", "paper value", "ftbench", "seeds", "difference", "protocol"]
    rows = [[p.paper, p.table, p.row, p.column, p.metric, f"{p.value:.1f}", f"{v:.1f}", str(n),
             f"{v - p.value:+.1f}", p.protocol] for p, v, n in c.matched]
    lines: list[str] = []
    if rows:
        if fmt == "markdown":
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head[:-1])]
            lines.append("  ".join(h.ljust(w) for h, w in zip(head[:-1], widths)))
            for r in rows:
                lines.append("  ".join(x.ljust(w) for x, w in zip(r[:-1], widths)))
            lines.append("")
            lines += [f"protocol of {r[0]}, {r[1]}, {r[2]!r} / {r[3]!r}: {r[9]}" for r in rows]
        lines.append("")
        lines.append("difference = ftbench − paper, in points; ftbench = mean over seeds of the rows the report "
                     "selects (same --select and --checkpoint)")
    else:
        lines.append("no cell of these results has a published counterpart")
    if c.without_results:
        lines.append("")
        lines.append(f"published numbers without ftbench results ({len(c.without_results)}):")
        lines += [f"  {p.source} = {p.value:g} ({p.metric}; ftbench cell {_cell(p.cell)})" for p in c.without_results]
    if c.without_published:
        lines.append("")
        lines.append(f"ftbench cells without a published number ({len(c.without_published)}):")
        lines += [f"  {label}" for label in c.without_published]
    if c.missing_tables:
        lines.append("")
        lines.append("tables not entered in the published numbers:")
        lines += [f"  {m.get('paper', '')}, {m.get('table', '')}: {m.get('why', '')}" for m in c.missing_tables]
    return "\n".join(lines) + "\n"


def _cell(cell: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.items())
