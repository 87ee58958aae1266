"""What a paper suite reproduces, printed by ``ftbench sweep SUITE --dry-run`` (``setups.toml``).

For a suite it says: the paper and tables, the protocol, models, shots, methods and seeds its runs
use, the weights ftbench cannot download (given with ``sweep --weights``), the data each benchmark
reads with the ``ftbench fetch`` command for each, how to report it, and which published cells
(``published.toml``) its runs fill — found by matching each cell's columns against the runs' own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SETUPS_FILE = Path(__file__).with_name("setups.toml")
# Cell values with a meaning of their own (published.toml): "" matches a column left empty (shots = "": every
# ID training image), "*" a column set to any value (weights = "*": a --weights file).
EMPTY, ANY = "", "*"


@dataclass(frozen=True)
class Setup:
    """One paper suite's setup (see setups.toml)."""

    suite: str
    paper: str
    tables: str
    report: str
    differences: str
    weights: str = ""


@lru_cache(maxsize=1)
def setups() -> dict[str, Setup]:
    """Every paper suite's setup, by suite name."""
    data = tomllib.loads(SETUPS_FILE.read_text())
    return {n: Setup(n, str(t["paper"]), str(t["tables"]), str(t["report"]), str(t["differences"]),
                     str(t.get("weights", ""))) for n, t in data.get("setups", {}).items()}


def result_columns(spec: Any) -> list[dict[str, Any]]:
    """The result-row columns a run of ``spec`` will write that a published cell can name: its spec's
    columns, once per row (WiSE-FT: one row per alpha of its grid, ``alpha`` set)."""
    cols = spec.columns()
    if spec.method == "wise-ft":
        from ftbench.methods.wiseft import DEFAULT_ALPHAS, parse_alphas

        alphas = set(parse_alphas(spec.options_dict.get("alphas", DEFAULT_ALPHAS))) | {1.0}
        return [{**cols, "alpha": a} for a in sorted(alphas)]
    return [cols]


def fills(cell: dict[str, Any], row: dict[str, Any], weights_given: bool = False) -> bool:
    """Whether a result row with ``row``'s columns belongs to published ``cell`` (as report --compare
    matches them: ``""`` an empty column, ``"*"`` a set one). ``weights_given``: the sweep's --weights
    will set the weights column."""
    for k, v in cell.items():
        have = row.get(k)
        if k == "weights" and weights_given and have is None:
            have = "FILE"
        empty = have is None or have == ""
        if v == EMPTY:
            ok = empty
        elif v == ANY:
            ok = not empty
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                ok = not empty and float(have) == float(v)
            except (TypeError, ValueError):
                ok = False
        else:
            ok = not empty and str(have) == str(v)
        if not ok:
            return False
    return True


def cells_filled(specs: list[Any], published: list[Any], weights_given: bool = False) -> list[tuple[Any, list[str]]]:
    """(published entry, run ids that fill it) for each comparable entry some run of ``specs`` fills."""
    rows = [(s.run_id, r) for s in specs for r in result_columns(s)]
    out = []
    for p in published:
        if p.cell is None:
            continue
        ids = list(dict.fromkeys(rid for rid, r in rows if fills(p.cell, r, weights_given)))
        if ids:
            out.append((p, ids))
    return out


def _data_lines(specs: list[Any]) -> list[str]:
    from ftbench.data.base import get_benchmark
    from ftbench.data.fetch import DATASETS

    lines = []
    for b in dict.fromkeys(s.benchmark for s in specs):
        parts = []
        for name in get_benchmark(b).datasets:
            ds = DATASETS.get(name)
            parts.append(f"ftbench fetch {name}" + (" (you supply it: the command says where)" if ds.manual
                                                    else f" ({ds.size})"))
        lines.append(f"  {b}: " + "; ".join(parts))
    return lines


def _values(specs: list[Any], field: str, none: str = "") -> str:
    vals = list(dict.fromkeys(getattr(s, field) for s in specs))
    return ", ".join(none if v is None else str(v) for v in vals)


def describe(suite: str, specs: list[Any], published: list[Any], weights: str | None = None) -> list[str]:
    """The dry run's lines about ``suite``'s setup (empty for a suite that is no paper's); ``published``:
    the published entries (``ftbench.report.compare.load_published``), whose cells its runs may fill."""
    setup = setups().get(suite)
    if setup is None:
        return []
    lines = [f"paper suite {suite!r}: {setup.paper}, {setup.tables}"]
    trained = [s for s in specs if s.method not in ("zero-shot", "none")] or specs  # shots mean nothing to them
    shots = _values(trained, "shots", none="all of ID train" if any(s.protocol == "id-ood" for s in specs)
                    else "the benchmark's default")
    lines.append(f"setup: protocol {_values(specs, 'protocol')}; model {_values(specs, 'model')}; shots {shots}; "
                 f"methods {_values(specs, 'method')}; seeds {_values(specs, 'seed')}; {len(specs)} runs")
    if setup.weights:
        if weights:
            lines.append(f"weights: {weights} (--weights), meant to be {setup.weights}")
        else:
            lines.append(f"weights needed: {setup.weights}; give the file with: ftbench sweep {suite} --weights FILE "
                         f"(without it the runs start from the model's hub weights and fill no published cell)")
    lines.append("data needed (once each):")
    lines += _data_lines(specs)
    lines.append(f"report: {setup.report}")
    lines.append(f"known differences from the paper's setup: docs/papers.md#{setup.differences}")
    filled = cells_filled(specs, published, weights_given=bool(setup.weights))
    if filled:
        lines.append(f"published cells it fills ({len(filled)}):")
        tables: dict[tuple[str, str], list[str]] = {}
        for p, _ in filled:
            tables.setdefault((p.paper, p.table), []).append(f"{p.row} / {p.column}")
        lines += [f"  {paper}, {table}: " + "; ".join(cells) for (paper, table), cells in tables.items()]
    else:
        lines.append("published cells it fills: none (no table of this paper could be read; docs/papers.md)")
    return lines
