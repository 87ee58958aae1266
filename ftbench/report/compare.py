"""``ftbench report --compare paper``: ftbench's numbers beside the papers' published ones.

The published numbers are ``ftbench/papers/published.toml`` (or any file of that format, given as
``--compare FILE``): each entry is one cell of a paper's table, with its source (paper, table, row,
column), the protocol it was measured under, and either the ftbench cell it corresponds to (result
columns and their values) or, where no ftbench result can match it (another model, data set or
column), ``not_comparable``: the reason. For each comparable entry the report gives the paper's
number (and its confidence interval where the paper prints one), ftbench's mean ± standard deviation
over seeds of the rows the report's own selection chooses among the runs of that cell, n, the
difference and a plain verdict; a published cell of a table with results but none of its own is
listed as missing; then the tables without any result, the entries that are not comparable, and
the ftbench cells without a published counterpart.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ftbench.errors import UsageError
from ftbench.papers.setup import ANY, EMPTY  # cell values: "" an empty column, "*" a set one
from ftbench.text import clean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PUBLISHED_FILE = Path(__file__).resolve().parents[1] / "papers" / "published.toml"
REQUIRED = ("paper", "table", "row", "column", "value", "protocol")


@dataclass(frozen=True)
class Published:
    """One published number and the ftbench cell it corresponds to (None: not comparable, see ``reason``)."""

    paper: str
    table: str
    row: str
    column: str
    value: float
    protocol: str
    cell: dict[str, Any] | None
    metric: str = "ood_acc"
    note: str = ""
    ci: float | None = None  # half-width of the paper's confidence interval, in points, where it prints one
    ci_level: float | None = None  # ... and its level, in %
    reason: str = ""  # why no ftbench result matches (entries without a cell)

    @property
    def source(self) -> str:
        return f"{self.paper}, {self.table}, row {self.row!r}, column {self.column!r}"

    @property
    def interval(self) -> tuple[float, float] | None:
        return None if self.ci is None else (self.value - self.ci, self.value + self.ci)


@dataclass(frozen=True)
class Matched:
    """A published entry with ftbench's numbers: mean and sample std over seeds, their values."""

    entry: Published
    mean: float
    std: float  # NaN with one seed
    seeds: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def difference(self) -> float:
        return self.mean - self.entry.value

    @property
    def verdict(self) -> str:
        """Plain words: is ftbench's mean inside the paper's interval (where it prints one); else is
        the paper's number inside the range of ftbench's seeds (the spread one more seed would show)."""
        iv = self.entry.interval
        if iv is not None:
            level = f"{self.entry.ci_level:g}% " if self.entry.ci_level is not None else ""
            inside = iv[0] <= round(self.mean, 1) <= iv[1]  # the paper prints one decimal
            return f"{'within' if inside else 'outside'} the paper's {level}CI [{iv[0]:.1f}, {iv[1]:.1f}]"
        if self.n < 2:
            return "one seed: no spread to judge by"
        lo, hi = min(self.seeds), max(self.seeds)
        inside = lo <= self.entry.value <= hi
        return f"paper {'within' if inside else 'outside'} ftbench's seed range [{lo:.1f}, {hi:.1f}]"


@dataclass
class Comparison:
    entries: list[Published] = field(default_factory=list)  # every published entry, in the file's order
    matched: list[Matched] = field(default_factory=list)
    without_results: list[Published] = field(default_factory=list)
    not_comparable: list[Published] = field(default_factory=list)
    without_published: list[str] = field(default_factory=list)  # ftbench cells, as labels
    missing_tables: list[dict[str, Any]] = field(default_factory=list)

    def tables_with_results(self) -> set[tuple[str, str]]:
        return {(m.entry.paper, m.entry.table) for m in self.matched}


def _type(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), f"a {type(v).__name__}")


def _text(v: Any, where: str, key: str) -> str:
    """A text field of an entry (a number is taken as its text); anything else is a UsageError."""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise UsageError(f"{where}: {key} must be a string, got {v!r} ({_type(v)})")
    return clean(str(v), newlines=False)


def _number(v: Any, where: str, key: str, low: float, high: float | None = None) -> float:
    try:
        if isinstance(v, bool):
            raise TypeError
        x = float(v)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {key} {v!r} is not a number") from None
    if not (x >= low and (high is None or x <= high)):
        rng = f">= {low:g}" if high is None else f"in {low:g}..{high:g}"
        raise UsageError(f"{where}: {key} {v!r} must be a number {rng}")
    return x


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


def _entry(e: dict[str, Any], where: str) -> Published:
    missing = [k for k in REQUIRED if k not in e]
    if missing:
        raise UsageError(f"{where} lacks {', '.join(missing)}; each needs {', '.join(REQUIRED)}, and a cell table "
                         "or not_comparable (why no ftbench result matches)")
    if "cell" in e and not isinstance(e["cell"], dict):
        raise UsageError(f"{where}: cell must be a table of result columns and values, got {e['cell']!r} "
                         f"({_type(e['cell'])})")
    if ("cell" in e) == ("not_comparable" in e):
        raise UsageError(f"{where} needs exactly one of a cell table (the ftbench results it corresponds to) and "
                         "not_comparable (why no ftbench result matches), got "
                         + ("both" if "cell" in e else "neither"))
    try:
        if isinstance(e["value"], bool):
            raise TypeError
        value = float(e["value"])
    except (TypeError, ValueError):
        raise UsageError(f"{where}: value {e['value']!r} is not a number") from None
    cell = None
    if "cell" in e:
        cell = {}
        for k, v in e["cell"].items():
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise UsageError(f"{where}: cell value {k} = {v!r} ({_type(v)}) must be a string or a number")
            cell[clean(str(k), newlines=False)] = clean(v, newlines=False) if isinstance(v, str) else v
    metric = e.get("metric", "ood_acc")
    # a not-comparable entry's metric says what the paper measured (e.g. a 5-set average): no column of ours
    metric = _check_metric_name(metric, where) if cell is not None else _text(metric, where, "metric")
    ci = _number(e["ci"], where, "ci", 0.0) if "ci" in e else None
    level = _number(e["ci_level"], where, "ci_level", 0.0, 100.0) if "ci_level" in e else None
    if level is not None and ci is None:
        raise UsageError(f"{where}: ci_level without ci (the interval's half-width)")
    return Published(*(_text(e[k], where, k) for k in ("paper", "table", "row", "column")), value,
                     _text(e["protocol"], where, "protocol"), cell, metric, _text(e.get("note", ""), where, "note"),
                     ci, level, _text(e.get("not_comparable", ""), where, "not_comparable"))


def load_published(source: str | Path) -> tuple[list[Published], list[dict[str, Any]]]:
    """The entries of a published-numbers file (``"paper"``: the shipped one) and its ``missing``
    list (tables not entered, with why). A malformed file is a UsageError naming it: not UTF-8 text,
    not TOML, ``published``/``missing`` not lists of tables, an entry lacking a key, with neither or
    both of ``cell`` and ``not_comparable``, or with a value of the wrong type, a comparable entry's
    ``metric`` that is no result column of measurements."""
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
    out = [_entry(e, f"{path}: published entry {i + 1}") for i, e in enumerate(_tables(data, "published", path))]
    tables = []
    for i, m in enumerate(_tables(data, "missing", path)):
        tables.append({k: _text(v, f"{path}: missing entry {i + 1}", k) for k, v in m.items()})
    return out, tables


def matches(df: pd.DataFrame, cell: dict[str, Any]) -> pd.Series:
    """Which rows of ``df`` belong to ``cell`` (every column equal; ``""``: empty; ``"*"``: set)."""
    keep = pd.Series(True, index=df.index)
    for k, v in cell.items():
        if k not in df.columns:
            return pd.Series(v == EMPTY, index=df.index)  # a column no row has is empty in every row
        col = df[k]
        empty = col.isna() | (col.astype(str) == "")
        if v == EMPTY:
            keep &= empty
        elif v == ANY:
            keep &= ~empty
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            keep &= pd.to_numeric(col, errors="coerce") == float(v)
        else:
            keep &= col.fillna("").astype(str) == str(v)
    return keep


def compare(df: pd.DataFrame, published: list[Published], selection: str = "val",
            checkpoint: str = "best") -> Comparison:
    """Match each published entry to the results: among the runs of its cell, the rows the report's
    selection chooses (so a cell naming WiSE-FT's ``alpha`` is that alpha's row), per seed."""
    from ftbench.report.table import COL_KEY, ROW_KEY, label_columns, select

    out = Comparison(entries=list(published))
    matched_cells: set[tuple] = set()
    for p in published:
        if p.cell is None:
            out.not_comparable.append(p)
            continue
        rows = df[matches(df, p.cell)]
        rows = select(rows, selection, checkpoint, p.metric) if not rows.empty else rows
        if p.metric not in rows.columns:  # no run of these results measures it
            rows = rows.iloc[:0]
        rows = rows.assign(_v=pd.to_numeric(rows[p.metric], errors="coerce")) if not rows.empty else rows
        rows = rows[rows["_v"].notna()] if not rows.empty else rows
        if rows.empty:
            out.without_results.append(p)
            continue
        per_seed = rows.groupby("seed")["_v"].mean()
        std = float(per_seed.std(ddof=1)) if per_seed.size > 1 else float("nan")
        out.matched.append(Matched(p, float(per_seed.mean()), std, tuple(float(v) for v in per_seed)))
        matched_cells |= {_key(r, ROW_KEY + COL_KEY) for _, r in rows.iterrows()}
    chosen = select(df, selection, checkpoint, "ood_acc")
    if not chosen.empty:
        labelled = label_columns(chosen)
        seen = set()
        for _, r in labelled.iterrows():
            key = _key(r, ROW_KEY + COL_KEY)
            label = f"{r['row']} | {r['column']}"
            if key not in matched_cells and label not in seen:
                seen.add(label)
                out.without_published.append(label)
    return out


def _key(row: pd.Series, keys: list[str]) -> tuple[str, ...]:
    """A row's cell as text: an empty severity (NaN) is one key, where NaN would differ from itself."""
    return tuple("" if pd.isna(row[k]) else str(row[k]) for k in keys)


HEAD = ["paper", "table", "row", "column", "metric", "paper value", "ftbench", "n", "difference", "verdict"]


def _rows(c: Comparison) -> list[list[str]]:
    """One row per comparable entry of a table with results, in the file's order: matched, or missing."""
    tables = c.tables_with_results()
    found = {id(m.entry): m for m in c.matched}
    out = []
    for p in c.entries:
        if p.cell is None or (p.paper, p.table) not in tables:
            continue
        paper = f"{p.value:.1f}" + (f" ± {p.ci:.1f}" if p.ci is not None else "")
        m = found.get(id(p))
        if m is None:
            out.append([p.paper, p.table, p.row, p.column, p.metric, paper, "missing", "0", "–",
                        "missing: no ftbench result for this cell"])
            continue
        ours = f"{m.mean:.1f}" + (f" ± {m.std:.1f}" if m.std == m.std else "")
        out.append([p.paper, p.table, p.row, p.column, p.metric, paper, ours, str(m.n), f"{m.difference:+.1f}",
                    m.verdict])
    return out


def _groups(entries: list[Published], by_reason: bool = False) -> list[tuple[str, int, str]]:
    """(paper, table), count and the reason(s), in file order."""
    groups: dict[tuple[str, str], list[Published]] = {}
    for p in entries:
        groups.setdefault((p.paper, p.table), []).append(p)
    out = []
    for (paper, table), ps in groups.items():
        reasons = "; ".join(dict.fromkeys(p.reason for p in ps)) if by_reason else ""
        out.append((f"{paper}, {table}", len(ps), reasons))
    return out


def render(c: Comparison, fmt: str = "terminal") -> str:
    """The comparison as text: ``terminal`` (aligned), ``markdown`` or ``latex`` (a booktabs table)."""
    rows = _rows(c)
    lines: list[str] = []
    if rows:
        if fmt == "markdown":
            lines += ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        elif fmt == "latex":
            lines += _latex(rows)
        else:
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEAD)]
            lines.append("  ".join(h.ljust(w) for h, w in zip(HEAD, widths)).rstrip())
            lines += ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
        lines.append("")
        lines.append(_comment(fmt, "paper value: as printed (± the half-width of its confidence interval where the "
                                   "paper prints one); ftbench: mean ± sample standard deviation over n seeds of the "
                                   "rows the report selects among the cell's runs (same --select and --checkpoint); "
                                   "difference = ftbench − paper, in points"))
        protocols = dict.fromkeys((m.entry.paper, m.entry.table, m.entry.protocol) for m in c.matched)
        for paper, table, protocol in protocols:
            lines.append(_comment(fmt, f"protocol of {paper}, {table}: {protocol}"))
    else:
        lines.append(_comment(fmt, "no cell of these results has a published counterpart"))
    tables = c.tables_with_results()
    elsewhere = [p for p in c.without_results if (p.paper, p.table) not in tables]
    if elsewhere:
        lines.append("")
        lines.append(_comment(fmt, f"published tables without any ftbench result here ({len(elsewhere)} cells):"))
        lines += [_comment(fmt, f"  {name}: {n} cell(s)") for name, n, _ in _groups(elsewhere)]
    if c.not_comparable:
        lines.append("")
        lines.append(_comment(fmt, f"not comparable ({len(c.not_comparable)} published cells no ftbench result can "
                                   "match):"))
        lines += [_comment(fmt, f"  {name}: {n} cell(s): {why}") for name, n, why in _groups(c.not_comparable, True)]
    if c.without_published:
        lines.append("")
        lines.append(_comment(fmt, f"ftbench cells without a published number ({len(c.without_published)}):"))
        lines += [_comment(fmt, f"  {label}") for label in c.without_published]
    if c.missing_tables:
        lines.append("")
        lines.append(_comment(fmt, "tables not entered in the published numbers:"))
        lines += [_comment(fmt, f"  {m.get('paper', '')}, {m.get('table', '')}: {m.get('why', '')}")
                  for m in c.missing_tables]
    return "\n".join(lines) + "\n"


def _comment(fmt: str, text: str) -> str:
    """A line under the table: as it is, or a LaTeX comment (the file stays a table to \\input)."""
    return f"% {text}" if fmt == "latex" else text


def _latex(rows: list[list[str]]) -> list[str]:
    from ftbench.report.table import _tex

    head = ["Paper", "Table", "Row", "Column", "Paper value", "ftbench", "$n$", "Difference", "Verdict"]
    keep = [0, 1, 2, 3, 5, 6, 7, 8, 9]  # the metric is in the column's name
    lines = [r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             r"\caption{Published numbers and ftbench's}", r"\smallskip",
             r"\begin{tabular}{llll" + "r" * 4 + "l}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for r in rows:
        cells = [_tex(r[i]) for i in keep]
        lines.append(" & ".join(cells).replace("–", "--") + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return lines
