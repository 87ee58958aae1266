"""The reference docs list what the code has: the bundled suites with their run counts (docs/cli.md),
the CSV columns of `report --format csv` (docs/cli.md) and the result columns (docs/results.md).
Built from the code, so a new suite, column or count cannot leave the docs behind."""

from __future__ import annotations

import re
from pathlib import Path

from ftbench.report.table import build, render
from ftbench.results.store import SCHEMA, read_results
from ftbench.spec import default_suites_file, expand_suite, suite_descriptions

DOCS = Path(__file__).resolve().parents[1] / "docs"
SMALL = Path(__file__).parent / "data" / "results_small"


def _table_after(text: str, header: str) -> list[list[str]]:
    lines = text[text.index(header):].splitlines()
    rows = []
    for ln in lines[2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def test_the_suite_table_is_the_bundled_suites_file() -> None:
    path = default_suites_file()
    want = [(f"`{name}`", str(len(expand_suite(name, path)))) for name in suite_descriptions(path)]
    rows = _table_after((DOCS / "cli.md").read_text(), "| suite | runs |")
    assert [(r[0], r[1]) for r in rows] == want


def test_the_documented_csv_columns_are_the_ones_written() -> None:
    text = (DOCS / "cli.md").read_text()
    documented = re.search(r"with the\s+columns `([a-z_,]+)`", text).group(1)
    written = render(build(read_results(SMALL)[0]), "csv").splitlines()[0]
    assert documented == written


def test_every_result_column_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z_.<>]+)` \|", (DOCS / "results.md").read_text(), re.M))
    assert set(SCHEMA.names) <= documented, sorted(set(SCHEMA.names) - documented)
