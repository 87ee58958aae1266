"""The reference docs list what the code has: the bundled suites with their run counts (docs/cli.md),
the CSV columns of `report --format csv` (docs/cli.md) and the result columns (docs/results.md).
Built from the code, so a new suite, column or count cannot leave the docs behind."""

from __future__ import annotations

import re
from pathlib import Path

from ftbench.report.table import build, render
from ftbench.results.store import SCHEMA, read_results
from ftbench.plan.suites import default_suites_file, expand_suite, suite_descriptions

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
    documented = set(re.findall(r"^\| `([a-z_.<>]+)` \|", (DOCS / "results.md").read_text(), re.MULTILINE))
    assert set(SCHEMA.names) <= documented, sorted(set(SCHEMA.names) - documented)


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)


def test_the_extending_guide_runs(tmp_path: Path) -> None:
    """docs/extending.md's API example, and its example method registered from outside the package
    and run through the API, in a process of their own (the registry of this one stays as it is)."""
    import os
    import subprocess
    import sys

    api, method = _python_blocks(DOCS / "extending.md")[:2]
    check = '''
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.execution.runner import fine_tune
import torch
from ftbench.data.base import get_benchmark
from ftbench.train.pretrain import pretrained
spec = resolve(RunSpec(method="top-two", steps=2, lr=1e-2))
before = pretrained(spec.model, get_benchmark("digits").source(spec), torch.device("cpu"))
tr = fine_tune(spec, "cpu")
for b in tr.model.block_names():  # digits-resnet: 1, 2, 3, last; the top two train, the rest stay put
    same = [torch.equal(p, q) for p, q in zip(before.block_parameters(b), tr.model.block_parameters(b))]
    assert (not any(same)) if b in ("3", "last") else all(same), b
'''
    env = {**os.environ, "PYTHONPATH": str(DOCS.parent)}
    for code in (api, method + check):
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "my-results").is_dir() and len(list((tmp_path / "smoke-results").glob("*.parquet"))) == 4


def test_every_example_of_the_docs_is_what_its_command_prints() -> None:
    """Each ``$ ftbench ...`` transcript and ``<!-- example: ftbench ... -->`` region of docs/cli.md and
    docs/report.md is run (tools/regen_numbers.py: in an empty folder, COLUMNS=100) and its output
    compared with what the docs show; `python tools/regen_numbers.py refresh --only examples` rewrites them."""
    from scripts import load_script

    tool = load_script("tools/regen_numbers.py", "regen_numbers")
    for path in tool.EXAMPLE_DOCS:  # the docs have examples of both kinds
        kinds = {fence[:1] == "$" for _, _, fence, _ in tool.doc_examples(path.read_text())}
        assert kinds == {True, False}, path
    stale = tool.stale_examples()
    assert not stale, "".join(stale) + "\nrun `python tools/regen_numbers.py refresh --only examples`"
