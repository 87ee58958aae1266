"""What ``ftbench report`` (and the sweep's closing table) writes and prints, for cases the bad-input
corpus cannot express: outputs that are FIFOs (never a real /dev node here), a full disk, escape
sequences in values read from files, an unusable ``$COLUMNS``, results folders of failed, NaN or
corrupt runs, and option combinations that must gate or be refused.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftbench.results.store import completed_ids, read_results

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "tests" / "data" / "results_small"
FIRST = sorted(SMALL.glob("*.parquet"))[0]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    shutil.copytree(SMALL, tmp_path / "r")
    return tmp_path / "r"


def _rewrite(path: Path, **values: object) -> None:
    """Rewrite result file ``path`` with some values of its (first) row changed."""
    t = pq.read_table(path)
    rows = [{**r, **values} for r in t.to_pylist()]
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), path)


# --- outputs that are not regular files: written into, never replaced --------------------------
def _reader(fifo: Path) -> subprocess.Popen:
    return subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)


def _read(reader: subprocess.Popen) -> bytes:
    try:
        out, _ = reader.communicate(timeout=60)  # only a safety net: cat ends when the writer closes
    except subprocess.TimeoutExpired:
        reader.kill()
        out, _ = reader.communicate()
    return out


@pytest.mark.parametrize("flag, name", [("-o", "table.md"), ("--summary", "gate.md"), ("--plot", "fig.svg")])
@pytest.mark.parametrize("via_link", [False, True], ids=["fifo", "symlink-to-fifo"])
def test_an_output_that_is_a_fifo_gets_the_bytes_and_stays_a_fifo(cli, results: Path, tmp_path: Path, flag: str,
                                                                  name: str, via_link: bool) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    target = fifo
    if via_link:
        target = tmp_path / f"link-{name}"
        target.symlink_to(fifo)
    extra = ["--baseline", str(results)] if flag == "--summary" else []
    reader = _reader(fifo)
    try:
        r = cli("report", results, "--format", "markdown", *extra, flag, target)
    finally:
        data = _read(reader)
    assert r.code == 0, r.err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # the node is still the FIFO: nothing renamed over it
    assert not via_link or (target.is_symlink() and os.readlink(target) == str(fifo))
    expected = {"-o": b"| tuned |", "--summary": b"ftbench regression gate", "--plot": b"<svg"}[flag]
    assert expected in data
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "r") == sorted({name, target.name})  # no temp file


def test_an_output_that_is_a_symlink_to_a_file_writes_the_file_and_keeps_the_link(cli, results: Path,
                                                                                  tmp_path: Path) -> None:
    real = tmp_path / "real.md"
    real.write_text("old\n")
    link = tmp_path / "link.md"
    link.symlink_to(real)
    r = cli("report", results, "--format", "markdown", "-o", link)
    assert r.code == 0, r.err
    assert link.is_symlink() and "| tuned |" in real.read_text()


# --- a full disk: one error line, the old file intact, no temporary file -----------------------
def _fill(folder: Path) -> None:
    try:
        with open(folder / "filler", "wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 64 KiB tmpfs holding ``table.md`` and ``fig.png`` (old contents), filled up to the last byte."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None or \
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                           check=False).returncode != 0:
        pytest.skip("needs root on Linux to mount a tmpfs")
    try:
        (disk / "table.md").write_text("old table\n")
        (disk / "fig.png").write_bytes(b"old figure")
        _fill(disk)
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, check=False)


@pytest.mark.parametrize("flag, name", [("-o", "table.md"), ("--plot", "fig.png"), ("-o", "new/table.md")])
def test_report_on_a_full_disk_is_one_error_line_and_nothing_half_written(cli, results: Path, full_disk: Path,
                                                                          flag: str, name: str) -> None:
    before = {p.name: p.read_bytes() for p in full_disk.iterdir() if p.is_file() and p.name != "filler"}
    r = cli("report", results, "--format", "markdown", flag, full_disk / name)
    assert r.code == 2 and "Traceback" not in r.err
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device" in errors[0], r.err
    assert {p.name: p.read_bytes() for p in full_disk.iterdir() if p.is_file() and p.name != "filler"} == before
    assert not [p for p in full_disk.rglob("*") if p.name.endswith(".tmp")]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(cli, results: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The same without a tmpfs: the write fails half-way, as on a full disk."""
    from ftbench import outfile

    def half(fh, payload: bytes) -> None:
        fh.write(payload[: len(payload) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outfile, "_write_all", half)
    old = tmp_path / "table.md"
    old.write_text("old table\n")
    r = cli("report", results, "--format", "markdown", "-o", old)
    assert r.code == 2 and r.err.strip().splitlines()[-1] == f"error: cannot write {old}: no space left on the device"
    assert old.read_text() == "old table\n" and sorted(p.name for p in tmp_path.iterdir()) == ["r", "table.md"]


# --- escape sequences from files never reach the terminal --------------------------------------
OSC52 = "\x1b]52;c;SGVsbG8=\x07"


def _ftbench(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env}
    return subprocess.run([sys.executable, "-m", "ftbench.cli", *args], cwd=cwd, env=environ, capture_output=True,
                          timeout=600, check=False)


def _no_controls(data: bytes) -> bool:
    return not any(b in data for b in (b"\x1b", b"\x07", b"\x9b", "\x9b".encode()))


@pytest.mark.parametrize("fmt", ["terminal", "markdown", "csv", "latex", "html"])
def test_an_escape_sequence_in_a_results_column_is_printed_visibly_not_sent(results: Path, fmt: str) -> None:
    _rewrite(results / FIRST.name, method=OSC52, shift="corr\x1b[2Jupted", variant="\x9b31m")
    shown = ["--show-selected"] if fmt in ("terminal", "markdown", "csv") else []
    r = _ftbench(["report", str(results), "--format", fmt, *shown], results.parent, COLUMNS="200")
    assert r.returncode == 0, r.stderr
    assert _no_controls(r.stdout) and _no_controls(r.stderr)
    assert b"\\x1b]52;c;SGVsbG8=\\x07" in r.stdout.replace(b"\\textbackslash{}", b"\\")  # shown, not sent


def test_an_escape_sequence_reaches_no_gate_output_or_warning(results: Path, tmp_path: Path) -> None:
    _rewrite(results / FIRST.name, method=OSC52)
    bad = results / "\x1b]0;title\x07.parquet"
    bad.write_bytes(b"not parquet")
    r = _ftbench(["report", str(results), "--baseline", str(SMALL), "--format", "csv"], tmp_path)
    assert r.returncode == 0 and b"warning: skipped" in r.stderr and b"appeared" in r.stderr  # the gate ran
    assert _no_controls(r.stdout) and _no_controls(r.stderr)


def test_an_escape_sequence_in_a_suite_description_or_published_file_is_printed_visibly(tmp_path: Path,
                                                                                         results: Path) -> None:
    suites = tmp_path / "s.toml"
    suites.write_text('[suites."s\\u001b[31m"]\ndescription = "tiny \\u001b]52;c;SGVsbG8=\\u0007 suite"\n'
                      'benchmark = "digits"\nmethod = "none"\nsteps = 1\n')
    for args in (["list", "suites", "--suites", str(suites)],
                 ["sweep", "s\x1b[31m", "--suites", str(suites), "--dry-run", "--out", str(tmp_path / "o")]):
        r = _ftbench(args, tmp_path)
        assert r.returncode == 0, r.stderr
        assert b"\\x1b]52;c;SGVsbG8=\\x07" in r.stdout and _no_controls(r.stdout) and _no_controls(r.stderr)
    published = tmp_path / "p.toml"
    published.write_text('[[published]]\npaper = "P \\u001b]52;c;SGVsbG8=\\u0007"\ntable = "T"\nrow = "r"\n'
                          'column = "c"\nvalue = 50.0\nprotocol = "x"\ncell = {method = "nope"}\n'
                          '[[missing]]\npaper = "\\u001b[2J"\ntable = "t"\nwhy = "w"\n')
    r = _ftbench(["report", str(results), "--compare", str(published)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert b"P \\x1b]52;c;SGVsbG8=\\x07" in r.stdout and _no_controls(r.stdout) and _no_controls(r.stderr)


# --- an unusable $COLUMNS is ignored: the output always appears --------------------------------
@pytest.mark.parametrize("columns", ["0", "abc", "-3", ""])
def test_an_unusable_columns_is_treated_as_unset(results: Path, columns: str) -> None:
    r = _ftbench(["report", str(results)], results.parent, COLUMNS=columns)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert b"block 1" in r.stdout and b"Accuracy (%)" in r.stdout


def test_run_prints_its_result_with_columns_zero(tmp_path: Path) -> None:
    r = _ftbench(["run", "--method", "none", "--out", str(tmp_path / "o")], tmp_path, COLUMNS="0")
    assert r.returncode == 0, r.stderr
    assert b"ID acc" in r.stdout and b"OOD acc" in r.stdout


# --- results of failed, NaN or corrupt runs ------------------------------------------------------
def test_a_nan_val_row_is_left_out_of_the_selection_not_the_whole_report(cli, results: Path) -> None:
    before = cli("report", results, "--format", "csv")
    _rewrite(results / FIRST.name, val_acc=float("nan"))
    r = cli("report", results, "--format", "csv")
    assert r.code == 0, r.err
    assert "note: 1 row(s) have no value of the --select val split (NaN)" in r.err
    assert r.out.splitlines()[0] == before.out.splitlines()[0] and len(r.out.splitlines()) > 3


def test_a_sweep_whose_runs_all_failed_says_so_in_one_line(cli, tmp_path: Path, monkeypatch) -> None:
    from ftbench.execution import runner

    def fail(spec, device, workdir):  # noqa: ANN001, ANN202
        raise RuntimeError(f"boom {OSC52}")  # an error quoting a file's text

    monkeypatch.setattr(runner, "execute", fail)
    r = cli("sweep", "smoke", "--out", tmp_path / "o", "--device", "cpu")
    assert r.code == 0 and "Traceback" not in r.err and "KeyError" not in r.err, r.err
    assert "note: no table: none of the suite's 4 run(s) is ok (4 failed)" in r.err
    assert r.out == "" and "\x1b" not in r.err and "\x07" not in r.err and "boom \\x1b]52" in r.err


def _fake_rows(spec, device, workdir):  # noqa: ANN001, ANN202 - a finished run without training
    return [{**spec.columns(), "status": "ok", "id_acc": 90.0, "ood_acc": 80.0, "val_acc": 85.0}]


def _corrupt_column(path: Path, column: str) -> None:
    """Flip the bytes of one column's data page: the footer (and run_id, status) still read."""
    meta = pq.read_metadata(path).row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    data = bytearray(path.read_bytes())
    for k in range(chunk.data_page_offset, chunk.data_page_offset + chunk.total_compressed_size):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["data page", "pandas metadata"])
def test_a_corrupt_result_file_is_not_done_and_the_sweep_replaces_it(cli, tmp_path: Path, monkeypatch,
                                                                     damage: str) -> None:
    from ftbench.execution import runner

    monkeypatch.setattr(runner, "execute", _fake_rows)
    out = tmp_path / "o"
    assert cli("sweep", "smoke", "--out", out, "--format", "csv").code == 0
    victim = sorted(out.glob("*.parquet"))[0]
    if damage == "data page":
        _corrupt_column(victim, "id_acc")
    else:
        t = pq.read_table(victim)
        pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"pandas": b"{not json"}), victim)
    assert victim.stem not in completed_ids(out)
    r = cli("report", out, "--format", "csv")  # the other runs are reported, the file named once
    assert r.code == 0 and r.err.count("warning: skipped") == 1 and str(victim) in r.err
    r = cli("sweep", "smoke", "--out", out, "--format", "csv")
    assert r.code == 0 and "3 already in" in r.err and "1 to run" in r.err
    df, problems = read_results(out)
    assert not problems and len(df) == 4


def test_a_folder_named_like_a_result_is_skipped_by_report(cli, results: Path) -> None:
    (results / "0000000000000000.parquet").mkdir()
    r = cli("report", results, "--format", "csv")
    assert r.code == 0 and "warning: skipped" in r.err and "not a regular file" in r.err


# --- option combinations: the gate always runs when asked for ----------------------------------
def test_compare_with_a_baseline_still_gates(cli, tmp_path: Path) -> None:
    worse = tmp_path / "worse"
    shutil.copytree(SMALL, worse)
    for f in worse.glob("*.parquet"):
        t = pq.read_table(f)
        _rewrite(f, ood_acc=t.column("ood_acc")[0].as_py() - 5.0 if t.column("ood_acc")[0].as_py() else None)
    r = cli("report", worse, "--compare", "paper", "--baseline", SMALL)
    assert r.code == 1, r.err
    assert r.err.rstrip().splitlines()[-1].startswith("FAIL") and "regressed" in r.err
    assert "no cell of these results has a published counterpart" in r.out  # the comparison is printed too
    r = cli("report", SMALL, "--compare", "paper", "--baseline", SMALL, "--plot", tmp_path / "fig.png")
    assert r.code == 0 and r.err.rstrip().splitlines()[-1].startswith("PASS") and (tmp_path / "fig.png").is_file()


def test_an_escape_sequence_in_a_dictionary_column_or_a_column_name_is_printed_visibly(results: Path) -> None:
    t = pq.read_table(results / FIRST.name)
    t = t.set_column(t.column_names.index("method"), "method", pa.array([OSC52] * t.num_rows).dictionary_encode())
    pq.write_table(t.append_column("ood.\x1b[31mx_acc", pa.array([50.0] * t.num_rows)), results / FIRST.name)
    for args in ([], ["--metric", "nope"]):
        r = _ftbench(["report", str(results), *args], results.parent, COLUMNS="200")
        assert _no_controls(r.stdout) and _no_controls(r.stderr)
        assert b"\\x1b[31mx" in r.stdout + r.stderr
