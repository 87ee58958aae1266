"""tools/regen_numbers.py, the script that makes and checks the committed numbers, without running a
suite (the suites run in .ci/run): its regions, its comparison, and the README's reading of its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _tool():  # noqa: ANN202
    return load_script("tools/regen_numbers.py", "regen_numbers")


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


def test_the_gate_is_exact_on_every_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Portable mode makes the numbers independent of the CPU (docs/ci.md): one tolerance, 0, everywhere,
    derived from the measured spread, in which every portable variant gave the same bits and every
    other kernel setting moved them."""
    tool = _tool()
    spread = json.loads(tool.SPREAD.read_text())
    assert tool.tolerance() == spread["tolerance"] == 0.0
    assert "tolerance_other_machine" not in spread
    portable = [v for v in spread["variants"] if v["portable"]]
    others = [v for v in spread["variants"] if not v["portable"]]
    assert len(portable) >= 5 and all(v["bit_identical_to_portable"] for v in portable)
    assert others and not any(v["bit_identical_to_portable"] for v in others)
    assert {v["cpu_kernels"] for v in portable} == {tool.KERNELS}
    # The machine that made the numbers is recorded, as is each CPU's proof (tests/test_portable.py).
    machine = tmp_path / "numbers.machine.json"
    monkeypatch.setattr(tool, "MACHINE", machine)
    tool.write_machine()
    here = tool.machine_fingerprint()
    assert json.loads(machine.read_text())["fingerprint"] == here
    assert {"torch", "numpy", "timm", "machine"} <= set(here)
    assert tool.fingerprint_id(here) == tool.fingerprint_id(dict(here, torch="another"))  # one file per CPU
    for key in ("model", "flags_sha1", "cache size"):
        assert tool.fingerprint_id(here) != tool.fingerprint_id(dict(here, **{key: "elsewhere"}))


def test_doc_examples_are_transcripts_and_output_regions() -> None:
    """What tools/regen_numbers.py runs in a doc: `$ ftbench` lines of a fenced block (also indented in
    a list item), and the command of an example region; other fenced blocks are left alone."""
    tool = _tool()
    text = ("```bash\nftbench run\n```\n"
            "```\n$ ftbench list protocols\nold output\n$ ftbench run --lr inf\nerror: old\n```\n"
            "* item\n\n  ```\n  $ ftbench sweep smoke --dry-run\n  old\n  ```\n"
            "<!-- example: ftbench report tests/data/results_small --format markdown -->\n| old |\n\n"
            "<!-- example end -->\n")
    found = tool.doc_examples(text)
    assert [(fence, cmds) for _, _, fence, cmds in found] == [
        ("$", ["ftbench list protocols", "ftbench run --lr inf"]),
        ("$  ", ["ftbench sweep smoke --dry-run"]),
        ("", ["ftbench report tests/data/results_small --format markdown"])]
    assert [text[i:j] for i, j, _, _ in found] == [
        "$ ftbench list protocols\nold output\n$ ftbench run --lr inf\nerror: old\n",
        "  $ ftbench sweep smoke --dry-run\n  old\n", "| old |\n\n"]


def test_under_an_emulated_cpu_the_fingerprint_is_what_the_code_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user-mode emulator leaves /proc/cpuinfo as the host's; the fingerprint then comes from CPUID (what
    the libraries dispatch on) and names the host, so an emulated CPU's file is not filed as the host's."""
    tool = _tool()
    native = tool.machine_fingerprint()
    assert "host" not in native  # CPUID and /proc/cpuinfo agree on a real CPU (or CPUID is not readable)
    intel = {"vendor_id": "GenuineIntel", "model name": "Intel Core Processor (Haswell, no TSX, IBRS)",
             "cpu family": "6", "model": "60", "stepping": "1", "cache size": "4096 KB (L2)", "flags": "sse2 avx2 fma"}
    monkeypatch.setattr(tool, "cpuid", lambda: intel)
    seen = tool.machine_fingerprint()
    assert {k: seen[k] for k in ("vendor_id", "cpu family", "model", "model name")} == \
        {k: intel[k] for k in ("vendor_id", "cpu family", "model", "model name")}
    assert native.get("model name", "?") in seen["host"] and "flags" not in seen
    assert tool.fingerprint_id(seen) != tool.fingerprint_id(native)


@pytest.mark.parametrize("cpu", ["NoSuchCPU", "Haswell-v4; rm -rf /"])
def test_emulate_refuses_a_cpu_model_qemu_does_not_have(cpu: str, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    tool = _tool()
    assert tool.main(["portable", "--emulate", cpu]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --emulate")
    assert ("qemu-x86_64" in err[0]) and (shutil.which("qemu-x86_64") is None or "accepted: " in err[0])
