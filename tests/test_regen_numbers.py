"""tools/regen_numbers.py, the script that makes and checks the committed numbers, without running a
suite (the suites run in .ci/run): its regions, its comparison, and the README's reading of its table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("regen_numbers", ROOT / "tools" / "regen_numbers.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["regen_numbers"] = mod
    spec.loader.exec_module(mod)
    return mod


def _table_cells(markdown: str) -> str:
    """The README's markdown table as `ftbench report --format json` would give its cells."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")][1:]
    cells = []
    for ln in lines[2:]:
        row, *values = [v.strip().strip("*") for v in ln.strip("|").split("|")]
        for head, value in zip(header, values):
            column, metric = head.rsplit(" ", 1)
            mean, _, std = value.partition(" ± ")
            cells.append({"row": row, "column": column, "metric": metric, "mean": float(mean),
                          "std": float(std) if std else None})
    return json.dumps({"cells": cells})


def test_readme_reading_is_what_its_table_says() -> None:
    """The sentences under the README's table cite the table's numbers, and their claims hold for it."""
    tool = _tool()
    text = tool.README.read_text()
    table = text[slice(*tool.region(text, "default-table", tool.README))]
    reading = text[slice(*tool.region(text, "default-reading", tool.README))]
    assert tool.reading(_table_cells(table)) == reading


def test_reading_refuses_a_claim_the_numbers_no_longer_support() -> None:
    tool = _tool()
    text = tool.README.read_text()
    cells = json.loads(_table_cells(text[slice(*tool.region(text, "default-table", tool.README))]))
    for c in cells["cells"]:
        if (c["row"], c["column"], c["metric"]) == ("last layer", "label-flip", "OOD"):
            c["mean"] = 50.0  # the last layer no longer wins under label-flip
    with pytest.raises(tool.ProseIsWrong, match="label-flip: the last layer is best"):
        tool.reading(json.dumps(cells))


def test_regions_are_found_replaced_and_missing_ones_named(tmp_path: Path) -> None:
    tool = _tool()
    begin, end = tool._markers("x")
    doc = tmp_path / "doc.md"
    text = f"intro\n{begin}\nold numbers\n{end}\noutro\n"
    assert text[slice(*tool.region(text, "x", tool.ROOT / "doc.md"))] == "old numbers\n"
    assert tool.replace_region(text, "x", "new\n", doc) == f"intro\n{begin}\nnew\n{end}\noutro\n"
    with pytest.raises(SystemExit, match="has no region 'y'"):
        tool.region(text, "y", tool.ROOT / "doc.md")
    # Every region the script writes exists in the committed docs.
    for path, names in ((tool.README, ("default-table", "default-reading")), (tool.CLI_DOC, ("run-example",))):
        for name in names:
            tool.region(path.read_text(), name, path)


def test_only_the_training_time_of_the_example_is_ignored() -> None:
    tool = _tool()
    a = "  val acc  77.65%   (target val)   status ok   4,848/77,754 params trained   4.20 s on cpu (x86_64)"
    assert tool.normalise(a) == tool.normalise(a.replace("4.20 s", "0.36 s"))
    assert tool.normalise(a) != tool.normalise(a.replace("77.65%", "77.66%"))


def test_child_processes_get_this_checkout_the_pins_and_their_own_cache(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    tool = _tool()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # a cap the caller happens to have
    pinned = tool.child_env(tmp_path)
    assert pinned["PYTHONPATH"].split(":")[0] == str(ROOT) and pinned["FTBENCH_CACHE"] == str(tmp_path)
    assert {k: pinned[k] for k in tool.PINS} == tool.PINS
    native = tool.child_env(tmp_path, pinned=False)
    assert not set(tool.PINS) & set(native)  # unpinned means the CPU's own kernels, not the caller's caps


def test_the_gate_is_exact_only_on_the_machine_that_made_the_numbers(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinned kernels still round differently across CPU models (docs/ci.md): the recorded machine gets
    the exact tolerance, any other machine (another CPU, its flags, another torch) the measured one."""
    tool = _tool()
    machine = tmp_path / "numbers.machine.json"
    monkeypatch.setattr(tool, "MACHINE", machine)
    assert tool.machine_differences() and "missing" in tool.machine_differences()[0]
    tool.write_machine()
    assert tool.machine_differences() == []
    here = tool.machine_fingerprint()
    assert {"torch", "numpy", "timm", "machine"} <= set(here)
    made = machine.read_text()
    for key in ("model", "flags_sha1", "torch"):
        other = f"{here.get(key, '-')}-elsewhere"  # (a fixed value could be this machine's: AMD EPYC's model is 1)
        record = json.loads(made)
        record["fingerprint"][key] = other
        machine.write_text(json.dumps(record))
        assert tool.machine_differences() == [f"{key}: {other} -> {here.get(key, '-')}"]
    spread = json.loads(tool.SPREAD.read_text())
    assert tool.tolerance() == spread["tolerance"] == 0.0
    # The other machine's tolerance covers every rounding difference the spread file records.
    measured = [v["max_abs_delta_vs_pinned"] for v in spread["variants"]]
    measured += [c["max_abs_delta"] for c in spread["cross_machine"]]
    assert spread["cross_machine"] and tool.tolerance(other_machine=True) == pytest.approx(max(measured))


def test_another_machine_compares_the_docs_by_shape() -> None:
    tool = _tool()
    row = "| block 2 | **79.8 ± 1.4** | 97.4 ± 0.4 |"
    assert tool.shape(row) == tool.shape("| block 2 | 80.1 ± 0.9 | **97.6 ± 0.2** |")
    assert tool.shape(row) != tool.shape("| block 3 | 79.8 ± 1.4 | 97.4 ± 0.4 |")  # another row
    assert tool.shape(row) != tool.shape("| block 2 | 79.8 ± 1.4 |")  # a column fewer
    line = "  OOD acc  76.92%   (target test)   4,848/77,754 params trained"
    assert tool.shape(line) == tool.shape(line.replace("76.92", "77.54"))
    assert tool.shape(line) != tool.shape(line.replace("4,848", "5,001"))  # a count is not a measurement
    assert tool.shape(line) != tool.shape(line.replace("target test", "target val"))
