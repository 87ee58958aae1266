"""Regression gates: compare a results folder with a committed baseline, cell by cell.

Both sides go through the same model selection as the tables (:func:`ftbench.report.table.select`:
per cell and seed, the run with the best selection metric; only ``status == "ok"`` runs). A *cell*
is one (benchmark, shift, corruption, severity, model, shots, method, blocks, variant), i.e.
``COL_KEY + ROW_KEY`` of :mod:`ftbench.report.table`. For every cell and metric (``ood_acc`` and
``id_acc`` by default) the per-seed values of the chosen runs are compared; the verdict is one of

* ``regressed`` / ``improved`` / ``unchanged`` — the cell has values on both sides;
* ``appeared`` — values now, none in the baseline (never fails the gate);
* ``vanished`` — values in the baseline, none now (fails the gate unless ``allow_missing``).

Appeared / vanished are decided per cell *and metric*, so a missing cell yields one change per
metric (the renderers list it once per cell). A metric that is NaN in every seed of a side counts
as absent for that metric; NaN seeds are otherwise dropped, and n counts the finite seeds.

Tolerance (accuracy points, i.e. percent):

* a number ``t`` (absolute): regressed if ``mean_now < mean_baseline - t``, improved if
  ``mean_now > mean_baseline + t``, else unchanged (a 1e-9 slack absorbs float rounding, so
  ``t = 0`` passes identical results);
* ``"auto"``: a one-sided Welch t-test over the per-seed values
  (``scipy.stats.ttest_ind(now, baseline, equal_var=False, alternative="less")``; ``"greater"`` for
  improvements), significant at p < :data:`ALPHA`. With fewer than 2 finite seeds on either side, or
  zero variance on both sides, a t-test says nothing; the cell then falls back to the absolute rule
  with ``t =`` :data:`AUTO_FALLBACK_POINTS`, its ``p_value`` is None, and the text output says so.

One-sided by default: only ``regressed`` (and ``vanished``) fail. ``two_sided=True`` fails an
``improved`` cell too, for a deterministic baseline that must move only in the commit that moves
the numbers (a baseline left stale after an improvement would hide a later regression of the
same size). Either way the output says in which direction cells moved, and which of the
environment columns (:data:`ENV_COLUMNS`: library versions, CPU, kernels, device, threads) differ
between the two sides, since those change CPU results too.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ftbench.errors import UsageError, unknown
from ftbench.report.table import COL_KEY, ROW_KEY, SELECTIONS, block_key, method_order, row_label, select

VERDICTS = ("regressed", "improved", "unchanged", "appeared", "vanished")
METRICS = ("ood_acc", "id_acc")
ALPHA = 0.05  # significance level of the one-sided Welch t-tests of tolerance "auto"
AUTO_FALLBACK_POINTS = 0.5  # tolerance "auto" without a usable t-test: |delta| must exceed this
_EPS = 1e-9  # means of the same values summed in another order may differ in the last bits
CELL_KEY = COL_KEY + ROW_KEY
# Result columns that describe where a row was made; numbers may differ when they do (docs/ci.md).
ENV_COLUMNS = ("torch_version", "timm_version", "numpy_version", "cpu_model", "cpu_kernels", "device", "threads")
NOT_RECORDED = "not recorded"
_LEVEL_ORDER = {"input": 0, "feature": 1, "output": 2, "natural": 3}


@dataclass(frozen=True)
class CellChange:
    """How one metric of one cell moved between the baseline and the current results."""

    cell: str  # human label, e.g. "digits/corruption (gaussian_noise, s5) · block 1"
    metric: str  # "ood_acc" or "id_acc"
    baseline: float | None  # mean over seeds, None if the cell is absent from the baseline
    current: float | None  # mean over seeds, None if absent now
    delta: float | None  # current - baseline, in accuracy points
    n_baseline: int
    n_current: int
    p_value: float | None  # only for tolerance "auto" (None where it fell back to the absolute rule)
    verdict: str  # "regressed" | "improved" | "unchanged" | "appeared" | "vanished"


@dataclass(frozen=True)
class EnvValue:
    """One environment column on both sides: its distinct values, joined by ", " (or "not recorded")."""

    column: str
    baseline: str
    current: str

    @property
    def differs(self) -> bool:
        return self.baseline != self.current


@dataclass(frozen=True)
class Comparison:
    """Every (cell, metric) change of a comparison, in display order, and how it was judged."""

    changes: list[CellChange]
    tolerance: float | str
    selection: str
    two_sided: bool = False  # an improvement beyond the tolerance fails too
    environment: list[EnvValue] = field(default_factory=list)  # ENV_COLUMNS of both sides (ok runs)

    def by_verdict(self, verdict: str) -> list[CellChange]:
        """The changes with this verdict, in display order."""
        if verdict not in VERDICTS:
            raise UsageError(f"unknown verdict {verdict!r}; accepted: {', '.join(VERDICTS)}")
        return [c for c in self.changes if c.verdict == verdict]

    def failed(self, allow_missing: bool = False) -> bool:
        """True if any metric regressed (or, two-sided, improved), or any vanished (unless ``allow_missing``)."""
        moved = ("regressed", "improved") if self.two_sided else ("regressed",)
        return any(c.verdict in moved or (c.verdict == "vanished" and not allow_missing) for c in self.changes)

    def env_differences(self) -> list[EnvValue]:
        """The environment columns whose values differ between the baseline and the current results."""
        return [e for e in self.environment if e.differs]


# --------------------------------------------------------------------------------------------
# Input


def parse_tolerance(text: str) -> float | str:
    """``"1.0"`` -> 1.0 (accuracy points), ``"auto"`` -> ``"auto"``; anything else is a UsageError."""
    s = str(text).strip()
    if s.lower() == "auto":
        return "auto"
    try:
        value = float(s)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"tolerance must be a non-negative number of accuracy points or 'auto', got {text!r}")
    return value


def load_baseline(path: Path) -> pd.DataFrame:
    """Read a baseline results folder or parquet file; a UsageError naming the path if it is unusable.

    Files of a folder that cannot be read are skipped with a ``warning:`` line on stderr, like
    ``ftbench report`` does for results (their cells will then show as appeared).
    """
    from ftbench.results.store import read_results

    p = Path(path)
    if not p.exists():
        raise UsageError(f"baseline {str(p)!r} does not exist; give a results folder or .parquet file of ftbench runs")
    try:
        df, problems = read_results(p)
    except UsageError as e:
        raise UsageError(f"cannot use baseline {str(p)!r}: {_reason(e)}") from None
    except OSError as e:
        raise UsageError(f"cannot read baseline {str(p)!r}: {e.strerror or e}") from None
    for prob in problems:
        from ftbench.text import clean

        print(clean(f"warning: skipped baseline file {prob.path}: {prob.reason}"), file=sys.stderr)
    if df.empty:
        raise UsageError(f"baseline {str(p)!r} holds no readable ftbench results")
    if not (df["status"] == "ok").any():
        raise UsageError(f"baseline {str(p)!r} holds no successful runs (status == 'ok')")
    return df


def _reason(e: UsageError) -> str:
    # read_results says "cannot use results file 'PATH': REASON"; keep only the reason.
    msg = str(e)
    return msg.split("': ", 1)[1] if "': " in msg else msg


# --------------------------------------------------------------------------------------------
# Comparison


def _norm(v: object) -> object:
    """A key value that compares equal across sides whatever pandas made of it (NaN, 20 vs 20.0)."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run id, step): a run present twice (copied files, concatenated frames) counts once,
    the newest; the checkpoint rows of one run (``--checkpoints``) are kept."""
    key = [c for c in ("run_id", "step", "alpha") if c in df.columns]
    if "run_id" not in df.columns or not df.duplicated(key).any():
        return df
    if "timestamp" in df.columns:
        df = df.sort_values("timestamp", kind="mergesort", na_position="first")
    return df.drop_duplicates(key, keep="last")


def _per_seed(
    df: pd.DataFrame, selection: str, metrics: tuple[str, ...], levels: dict[tuple, int]
) -> dict[tuple, dict[str, list[float]]]:
    """cell key -> metric -> finite per-seed values (in seed order) of the selected runs.

    Also records each cell's shift level (for the display order) in ``levels``.
    """
    chosen = select(_dedupe(df), selection)
    cells: dict[tuple, dict[str, list[float]]] = {}
    if chosen.empty:
        return cells
    missing = [m for m in metrics if m not in chosen.columns]
    if missing:
        raise UsageError(f"results have no column {missing[0]!r}; metrics compared: {', '.join(metrics)}")
    chosen = chosen.sort_values("seed", kind="mergesort")
    for key, part in chosen.groupby(CELL_KEY, dropna=False, sort=False):
        k = tuple(_norm(v) for v in key)
        slot = cells.setdefault(k, {m: [] for m in metrics})
        for m in metrics:
            vals = pd.to_numeric(part[m], errors="coerce").to_numpy(dtype=float)
            slot[m].extend(float(v) for v in vals if math.isfinite(v))
        level = str(part["shift_level"].iloc[0]) if "shift_level" in part.columns else ""
        levels.setdefault(k, _LEVEL_ORDER.get(level, 9))
    return cells


def _labels(keys: Iterable[tuple]) -> dict[tuple, str]:
    """``benchmark/shift (corruption, sN) [model=…, shots=…] · row label``; model/shots only if they vary."""
    keys = list(keys)
    idx = {c: i for i, c in enumerate(CELL_KEY)}
    varying = [c for c in ("model", "shots") if len({k[idx[c]] for k in keys}) > 1]
    out = {}
    for k in keys:
        f = dict(zip(CELL_KEY, k))
        col = f"{f['benchmark']}/{f['shift']}"
        if f["corruption"]:
            col += f" ({f['corruption']}, s{f['severity']})"
        if varying:
            col += " [" + ", ".join(f"{c}={f[c]}" for c in varying) + "]"
        out[k] = f"{col} · {row_label(str(f['method']), str(f['blocks']), str(f['variant']))}"
    return out


def _sort_key(k: tuple, levels: dict[tuple, int], order: dict[str, int]) -> tuple:
    # Table order: benchmark, shift level, shift, corruption, severity, model, shots; then the row.
    f = dict(zip(CELL_KEY, k))
    blocks = block_key(str(f["blocks"]))
    shots = f["shots"] if isinstance(f["shots"], (int, float)) else math.inf
    return (str(f["benchmark"]), levels.get(k, 9), str(f["shift"]), str(f["corruption"]), _int(f["severity"]),
            str(f["model"]), shots, order.get(str(f["method"]), 1000), str(f["method"]), blocks, str(f["variant"]))


def _int(v: object) -> int:
    return v if isinstance(v, int) else 0


def _judge(base: list[float], now: list[float], tolerance: float | str) -> tuple[str, float | None]:
    """Verdict and p-value for one metric of a cell present on both sides."""
    delta = float(np.mean(now)) - float(np.mean(base))
    if tolerance == "auto":
        if len(base) >= 2 and len(now) >= 2 and (np.var(base) > 0 or np.var(now) > 0):
            from scipy.stats import ttest_ind

            p_less = float(ttest_ind(now, base, equal_var=False, alternative="less").pvalue)
            p_greater = float(ttest_ind(now, base, equal_var=False, alternative="greater").pvalue)
            if math.isfinite(p_less) and math.isfinite(p_greater):
                if p_less < ALPHA:
                    return "regressed", p_less
                if p_greater < ALPHA:
                    return "improved", p_greater
                return "unchanged", p_less if delta < 0 else p_greater
        tol = AUTO_FALLBACK_POINTS
    else:
        tol = float(tolerance)
    if delta < -(tol + _EPS):
        return "regressed", None
    if delta > tol + _EPS:
        return "improved", None
    return "unchanged", None


def _env_values(df: pd.DataFrame, column: str) -> str:
    """Distinct values of an environment column over the ok runs, sorted and joined; NOT_RECORDED if none."""
    if column not in df.columns:
        return NOT_RECORDED
    rows = df[df["status"] == "ok"] if "status" in df.columns else df
    vals = sorted({str(_norm(v)) for v in rows[column] if _norm(v) != ""})
    return ", ".join(vals) if vals else NOT_RECORDED


def compare_environment(current: pd.DataFrame, baseline: pd.DataFrame) -> list[EnvValue]:
    """:data:`ENV_COLUMNS` of both sides, in that order (see :class:`EnvValue`)."""
    return [EnvValue(c, _env_values(baseline, c), _env_values(current, c)) for c in ENV_COLUMNS]


def compare(
    current: pd.DataFrame,
    baseline: pd.DataFrame,
    tolerance: float | str = 1.0,
    selection: str = "target-val",
    metrics: tuple[str, ...] = METRICS,
    two_sided: bool = False,
) -> Comparison:
    """Compare raw results with a baseline, per cell and metric, after the same model selection.

    ``tolerance`` is accuracy points (>= 0) or ``"auto"`` (see the module docstring); a string is
    parsed with :func:`parse_tolerance`. Changes come in table order (column, then row, then metric).
    ``two_sided``: an improvement beyond the tolerance fails the gate like a regression.
    """
    tol = parse_tolerance(tolerance) if isinstance(tolerance, str) else tolerance
    if tol != "auto" and (not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0):
        raise UsageError(f"tolerance must be a non-negative number of accuracy points or 'auto', got {tolerance!r}")
    if selection not in SELECTIONS:
        raise unknown("selection", selection, list(SELECTIONS))
    if not metrics:
        raise UsageError("compare needs at least one metric, e.g. ood_acc")
    metrics = tuple(metrics)
    levels: dict[tuple, int] = {}
    base_cells = _per_seed(baseline, selection, metrics, levels)
    now_cells = _per_seed(current, selection, metrics, levels)
    keys = set(base_cells) | set(now_cells)
    labels = _labels(keys)
    changes: list[CellChange] = []
    order = method_order()
    for k in sorted(keys, key=lambda k: _sort_key(k, levels, order)):
        for m in metrics:
            base = base_cells.get(k, {}).get(m, [])
            now = now_cells.get(k, {}).get(m, [])
            b_mean = float(np.mean(base)) if base else None
            n_mean = float(np.mean(now)) if now else None
            if not base and not now:
                continue  # NaN on both sides: nothing to compare
            if not base:
                verdict, p = "appeared", None
            elif not now:
                verdict, p = "vanished", None
            else:
                verdict, p = _judge(base, now, tol)
            delta = n_mean - b_mean if b_mean is not None and n_mean is not None else None
            changes.append(CellChange(labels[k], m, b_mean, n_mean, delta, len(base), len(now), p, verdict))
    return Comparison(changes, float(tol) if tol != "auto" else "auto", selection, two_sided,
                      compare_environment(current, baseline))


# --------------------------------------------------------------------------------------------
# Output


def _tol_text(c: Comparison) -> str:
    if c.tolerance == "auto":
        return f"tolerance auto (one-sided Welch t-test over seeds, p < {ALPHA:g})"
    return f"tolerance {float(c.tolerance)} accuracy points"


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}"


def _fallbacks(c: Comparison) -> list[CellChange]:
    """Changes judged by the fallback rule of tolerance "auto" (no usable t-test)."""
    if c.tolerance != "auto":
        return []
    return [x for x in c.changes if x.verdict in ("regressed", "improved", "unchanged") and x.p_value is None]


def _counts(c: Comparison) -> str:
    return ", ".join(f"{len(c.by_verdict(v))} {v}" for v in VERDICTS)


def _n_cells(c: Comparison) -> int:
    return len({x.cell for x in c.changes})


def _verdict_line(c: Comparison, allow_missing: bool) -> str:
    word = "FAIL" if c.failed(allow_missing) else "PASS"
    allowed = "; vanished cells allowed" if allow_missing and c.by_verdict("vanished") else ""
    sided = ", two-sided" if c.two_sided else ""
    return (f"{word}: {_counts(c)} ({_n_cells(c)} cells × {len(_metrics(c))} metrics vs baseline; "
            f"{_tol_text(c)}{sided}; selection {c.selection}{allowed})")


REFRESH_DOC = "docs/ci.md#refreshing-the-baseline-deliberately"


def direction_note(c: Comparison) -> str | None:
    """Which way the cells moved beyond the tolerance, and what that means for the baseline; None if none moved."""
    up, down = len(c.by_verdict("improved")), len(c.by_verdict("regressed"))
    if not up and not down:
        return None
    moved = " and ".join(x for x in (f"{up} up (improved)" if up else "", f"{down} down (regressed)" if down else "")
                         if x)
    if c.two_sided:
        return (f"moved beyond the tolerance: {moved}. Two-sided gate: a change either way fails. If the change is "
                f"meant, refresh the baseline in the same commit ({REFRESH_DOC}); if not, find what moved the numbers")
    if up:
        return (f"moved beyond the tolerance: {moved}. Improvements pass this one-sided gate, but the baseline is "
                f"now stale and would hide a later drop of the same size: refresh it ({REFRESH_DOC})")
    return f"moved beyond the tolerance: {moved}"


def _env_short(e: EnvValue, side: str) -> str:
    return f"{e.column} {getattr(e, side)}"


def environment_lines(c: Comparison) -> list[str]:
    """Text lines on the environment of both sides: the columns that differ, or that none do."""
    if not c.environment:
        return []
    diff = c.env_differences()
    if not diff:
        return ["environment: the same as the baseline's (" + "; ".join(_env_short(e, "current") for e in
                                                                        c.environment) + ")"]
    width = max(len(e.column) for e in diff)
    lines = [(f"environment differs from the baseline's in {len(diff)} of {len(c.environment)} columns "
              "(these change CPU results too, see docs/ci.md):")]
    lines += [f"  {e.column:<{width}}  {e.baseline} -> {e.current}" for e in diff]
    same = [e for e in c.environment if not e.differs and e.current != NOT_RECORDED]
    if same:
        lines.append("  same: " + "; ".join(_env_short(e, "current") for e in same))
    neither = [e.column for e in c.environment if not e.differs and e.current == NOT_RECORDED]
    if neither:
        lines.append(f"  {NOT_RECORDED} on either side: {', '.join(neither)}")
    return lines


def _metrics(c: Comparison) -> list[str]:
    return list(dict.fromkeys(x.metric for x in c.changes))


def _by_cell(changes: list[CellChange]) -> list[tuple[str, list[CellChange]]]:
    groups: dict[str, list[CellChange]] = {}
    for x in changes:
        groups.setdefault(x.cell, []).append(x)
    return list(groups.items())


def render_text(c: Comparison, allow_missing: bool = False) -> str:
    """Plain text for the terminal: the changed cells with their numbers, then the PASS/FAIL line."""
    lines: list[str] = []
    fallback = {id(x) for x in _fallbacks(c)}
    for verdict in ("regressed", "improved"):
        xs = c.by_verdict(verdict)
        if not xs:
            continue
        lines.append(f"{verdict} ({len(xs)}):")
        for x in xs:
            n = f"n={x.n_baseline}" if x.n_baseline == x.n_current else f"n={x.n_baseline}->{x.n_current}"
            p = f", p={x.p_value:.3g}" if x.p_value is not None else (", no t-test" if id(x) in fallback else "")
            lines.append(f"  {x.cell}  {x.metric}  {_num(x.baseline)} -> {_num(x.current)}  "
                         f"({_signed(x.delta)}, {n}{p})")
    for verdict, side in (("appeared", "current"), ("vanished", "baseline")):
        groups = _by_cell(c.by_verdict(verdict))
        if not groups:
            continue
        note = " (allowed)" if verdict == "vanished" and allow_missing else ""
        lines.append(f"{verdict} ({len(groups)} cell{'s' if len(groups) != 1 else ''}){note}:")
        for cell, xs in groups:
            vals = ", ".join(f"{x.metric} {_num(getattr(x, side))}" for x in xs)
            n = xs[0].n_current if side == "current" else xs[0].n_baseline
            where = "now" if side == "current" else "in baseline"
            lines.append(f"  {cell}  {vals}  (n={n} {where})")
    seeds = _by_cell([x for x in c.changes if x.n_baseline and x.n_current and x.n_baseline != x.n_current])
    if seeds:
        lines.append(f"note: {len(seeds)} cell(s) have a different number of seeds than the baseline; "
                     "means are over each side's own seeds")
    fb = _fallbacks(c)
    if fb:
        lines.append(f"note: {len(fb)} of {len(c.changes)} comparisons had fewer than 2 seeds on a side or no "
                     f"variance on either side, so no t-test: judged by |Δ| > {AUTO_FALLBACK_POINTS:g} points instead")
    lines += environment_lines(c)
    note = direction_note(c)
    if note:
        lines.append(note)
    lines.append(_verdict_line(c, allow_missing))
    return "\n".join(lines) + "\n"


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def render_summary(c: Comparison, allow_missing: bool = False) -> str:
    """Markdown for a CI job summary (e.g. ``$GITHUB_STEP_SUMMARY``): verdict, changed cells, counts."""
    failed = c.failed(allow_missing)
    out = [f"## {'❌ FAIL' if failed else '✅ PASS'}: ftbench regression gate", ""]
    out.append(f"Compared {_n_cells(c)} cells × {len(_metrics(c))} metrics ({', '.join(_metrics(c)) or 'none'}) "
               f"with the baseline; {_tol_text(c)}{', two-sided' if c.two_sided else ''}; selection `{c.selection}`."
               + (" Missing cells are allowed." if allow_missing else ""))
    out.append("")
    note = direction_note(c)
    if note:
        out += [f"**{_md(note[0].upper() + note[1:])}.**", ""]
    changed = [x for x in c.changes if x.verdict != "unchanged"]
    if changed:
        show_p = c.tolerance == "auto"
        head = "| verdict | cell | metric | baseline | current | Δ (points) | n baseline | n current |"
        rule = "|---|---|---|---:|---:|---:|---:|---:|"
        if show_p:
            head, rule = head + " p |", rule + "---:|"
        out += [head, rule]
        order = {v: i for i, v in enumerate(("regressed", "vanished", "improved", "appeared"))}
        for x in sorted(changed, key=lambda x: order[x.verdict]):
            fails = (x.verdict == "regressed" or (x.verdict == "improved" and c.two_sided)
                     or (x.verdict == "vanished" and not allow_missing))
            verdict = f"**{x.verdict}**" if fails else x.verdict
            row = (f"| {verdict} | {_md(x.cell)} | {x.metric} | {_num(x.baseline)} | {_num(x.current)} | "
                   f"{_signed(x.delta)} | {x.n_baseline} | {x.n_current} |")
            if show_p:
                row += f" {'–' if x.p_value is None else f'{x.p_value:.3g}'} |"
            out.append(row)
        out.append("")
    else:
        out += ["No cell changed beyond the tolerance.", ""]
    out.append("| regressed | improved | unchanged | appeared | vanished |")
    out.append("|---:|---:|---:|---:|---:|")
    out.append("| " + " | ".join(str(len(c.by_verdict(v))) for v in VERDICTS) + " |")
    out.append("")
    out.append("Counts are (cell, metric) comparisons; accuracies in %, mean over seeds.")
    fb = _fallbacks(c)
    if fb:
        out.append(f"{len(fb)} comparison(s) had fewer than 2 seeds on a side or no variance, so no t-test: "
                   f"judged by |Δ| > {AUTO_FALLBACK_POINTS:g} points.")
    if c.environment:
        diff = c.env_differences()
        out += ["", "Environment: " + (f"{len(diff)} column(s) differ from the baseline's (these change CPU results "
                                        "too)." if diff else "the same as the baseline's."), "",
                "| column | baseline | current |", "|---|---|---|"]
        out += [f"| {'**' + e.column + '**' if e.differs else e.column} | {_md(e.baseline)} | {_md(e.current)} |"
                for e in c.environment]
    if c.changes:
        out += ["", f"<details><summary>All {len(c.changes)} comparisons</summary>", "",
                "| cell | metric | baseline | current | Δ | verdict |", "|---|---|---:|---:|---:|---|"]
        out += [f"| {_md(x.cell)} | {x.metric} | {_num(x.baseline)} | {_num(x.current)} | {_signed(x.delta)} | "
                f"{x.verdict} |" for x in c.changes]
        out += ["", "</details>"]
    return "\n".join(out) + "\n"
