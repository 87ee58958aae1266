"""``ftbench report DIR --compare-methods A B``: does row A beat row B? The paired per-seed difference.

For each column of the table (a shift, or a benchmark's ID→OOD task) and each measure (ID, OOD, each
OOD test set), the selection picks one run of A and one of B per seed exactly as the tables do
(:func:`ftbench.report.table.select`); the difference A − B is taken per seed, over the seeds both
have. Its mean, the sample standard deviation and a two-sided 95 % confidence interval from
Student's t over those n seeds (``mean ± t(0.975, n − 1)·sd/√n``; the seeds are the independent
units: a seed draws the few-shot set, the head's initialisation and the batch order) are printed
with a plain verdict. "About N seeds would resolve it" is the smallest N at which the same mean and
spread would give an interval that excludes 0 — a planning figure, not a power calculation.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import pandas as pd

from ftbench.errors import UsageError
from ftbench.report.table import METRIC_NAMES, Grid, _match_rows, _per_seed, label_columns, ood_sets, select

CONFIDENCE = 0.95
MAX_SEEDS_SUGGESTED = 1000


@dataclass(frozen=True)
class Paired:
    """A − B on one column and measure."""

    column: str
    measure: str
    n: int
    mean: float
    sd: float
    low: float
    high: float
    seeds_needed: int | None  # None: resolved already, or cannot be said (n < 2, or a mean of 0)

    @property
    def resolved(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def _t(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + CONFIDENCE / 2, n - 1))


def _seeds_needed(mean: float, sd: float) -> int | None:
    if mean == 0 or not math.isfinite(sd):
        return None
    if sd == 0:
        return 2
    for n in range(2, MAX_SEEDS_SUGGESTED + 1):
        if _t(n) * sd / math.sqrt(n) < abs(mean):
            return n
    return None


def difference(a: pd.Series, b: pd.Series, column: str, measure: str) -> Paired:
    """The paired difference of per-seed values ``a`` and ``b`` (indexed by seed)."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    d = (both["a"] - both["b"]).astype(float)
    n = int(len(d))
    mean = float(d.mean()) if n else float("nan")
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    half = _t(n) * sd / math.sqrt(n) if n > 1 else float("nan")
    low, high = mean - half, mean + half
    p = Paired(column, measure, n, mean, sd, low, high, None)
    return p if p.resolved else Paired(column, measure, n, mean, sd, low, high, _seeds_needed(mean, sd))


def compare_methods(df: pd.DataFrame, a: str, b: str, selection: str, checkpoint: str = "best",
                    metric: str = "ood_acc") -> list[Paired]:
    """A − B (row labels as the tables print them: ``lp-ft``, ``block 1``, ``full``) per column and
    measure, on the runs that the tables would select."""
    chosen = select(df, selection, checkpoint, metric)
    if chosen.empty:
        raise UsageError("--compare-methods: no ok run to compare in these results")
    chosen = label_columns(chosen)
    rows = sorted(set(chosen["row"]))
    for name in (a, b):
        if name not in rows:
            raise UsageError(f"--compare-methods: no row {name!r} in these results; accepted: {', '.join(rows)}")
    if a == b:  # the CLI says so before reading the results
        raise UsageError(f"--compare-methods: give two different rows, got {a!r} twice")
    out: list[Paired] = []
    for column in sorted(set(chosen["column"]), key=lambda c: min(chosen.loc[chosen["column"] == c, "_csort"])):
        g = chosen[chosen["column"] == column]
        ga, gb = g[g["row"] == a], g[g["row"] == b]
        if ga.empty or gb.empty:
            continue
        measures = {"ID": "id_acc", METRIC_NAMES.get(metric, metric): metric, **ood_sets(g, metric)}
        for label, col in measures.items():
            va = _per_seed(ga, [], col).set_index("seed")[col]
            vb = _per_seed(gb, [], col).set_index("seed")[col]
            out.append(difference(va, vb, column, label))
    if not out:
        raise UsageError(f"--compare-methods: rows {a!r} and {b!r} share no column (shift) to compare on")
    return out


def sentence(p: Paired, a: str, b: str) -> str:
    """The plain verdict: '<a> − <b>, OOD: +6.0 points, 95 % CI [−3.2, 15.2], n = 3: not resolved ...'."""
    head = f"{a} − {b}, {p.measure} ({p.column}): {p.mean:+.1f} points"
    if p.n < 2:
        return f"{head}, n = {p.n}: one seed gives no interval; run more seeds"
    ci = f"{CONFIDENCE:.0%} CI [{p.low:+.1f}, {p.high:+.1f}], n = {p.n}".replace("%", " %")
    if p.resolved:
        same = " (the same difference in every seed: the interval has no width)" if p.sd == 0 else ""
        return f"{head}, {ci}: {a if p.mean > 0 else b} is ahead, resolved at {p.n} seeds{same}"
    more = (f"; about {p.seeds_needed} seeds would resolve a difference this size" if p.seeds_needed
            else "; no number of seeds would resolve a mean difference of 0" if p.mean == 0 else "")
    return f"{head}, {ci}: not resolved at {p.n} seeds{more}"


def render(pairs: list[Paired], a: str, b: str, fmt: str) -> str:
    """A table (markdown; csv; json) of the differences, then one sentence per row (markdown/terminal)."""
    if fmt == "json":
        return json.dumps([{**asdict(p), "a": a, "b": b, "resolved": p.resolved} for p in pairs], indent=1) + "\n"
    if fmt == "csv":
        lines = ["column,measure,n,mean,sd,ci_low,ci_high,resolved,seeds_needed"]
        lines += [f"\"{p.column}\",{p.measure},{p.n},{p.mean:.6g},{p.sd:.6g},{p.low:.6g},{p.high:.6g},"
                  f"{p.resolved},{p.seeds_needed or ''}" for p in pairs]
        return "\n".join(lines) + "\n"
    head = [f"**{a} − {b}** (paired by seed; {CONFIDENCE:.0%} CI from Student's t over the seeds both have)".replace("%", " %"),
            "", "| column | measure | n | mean | sd | 95 % CI | verdict |", "|---|---|---:|---:|---:|---|---|"]
    for p in pairs:
        verdict = "resolved" if p.resolved else ("—" if p.n < 2 else f"not resolved (~{p.seeds_needed} seeds)"
                                                 if p.seeds_needed else "not resolved")
        ci = f"[{p.low:+.1f}, {p.high:+.1f}]" if p.n > 1 else "—"
        sd = f"{p.sd:.1f}" if p.n > 1 else "—"
        head.append(f"| {p.column} | {p.measure} | {p.n} | {p.mean:+.1f} | {sd} | {ci} | {verdict} |")
    return "\n".join(head + [""] + [sentence(p, a, b) for p in pairs]) + "\n"


def mark_against(grid: Grid, baseline: str) -> int:
    """Mark the cells of ``grid`` whose paired per-seed difference from row ``baseline`` (the same
    column and measure, the seeds both have) is resolved: a 95 % t interval above 0 (``up``, ↑) or
    below it (``down``, ↓), as :func:`difference` computes it for ``--compare-methods``. Cells of one
    seed are never marked. ``baseline`` is a row label or its display name; the caption says what the
    marks mean. Returns the number of cells marked."""
    (row,) = _match_rows(grid.rows, grid.display, [baseline], "--mark-vs")
    marked = 0
    for (r, group, sub), cell in grid.cells.items():
        base = grid.cells.get((row, group, sub))
        cell.mark = ""
        if r == row or base is None or not cell.seeds or not base.seeds:
            continue
        p = difference(pd.Series(cell.seeds), pd.Series(base.seeds), group, sub)
        if p.resolved:
            cell.mark = "up" if p.mean > 0 else "down"
            marked += 1
    name = grid.display.get(row, row)
    grid.caption += (f" ↑/↓: ahead of / behind {name} in the same column, the paired per-seed difference's "
                     f"{CONFIDENCE:.0%} t interval (over the seeds both have) excluding 0; {marked} cell(s) marked."
                     ).replace("%", " %")
    return marked
