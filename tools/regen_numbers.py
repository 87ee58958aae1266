#!/usr/bin/env python3
"""Every number this repository commits that the code computes: made by this script, checked by it.

    python tools/regen_numbers.py refresh      # after a change meant to move numbers (or a merge): rewrite them all
    python tools/regen_numbers.py gate         # CI: the smoke suite against tests/data/baseline_smoke, two-sided
    python tools/regen_numbers.py check-docs   # CI: the README's table and the docs' examples are what the code prints
    python tools/regen_numbers.py refresh --only examples   # the docs' fast examples only (seconds; no training)
    python tools/regen_numbers.py spread       # measure how far the smoke numbers move with the CPU's kernels
    python tools/regen_numbers.py portable     # on a CPU not yet in tests/data/portable/: add its proof
    python tools/regen_numbers.py portable --emulate Haswell-v4   # the same for an emulated CPU model (qemu-user)

What it makes (``refresh``; ``--only baseline`` or ``--only docs`` for one of them):

* ``tests/data/baseline_smoke/``: the ``smoke`` suite's result files, the regression gate's baseline;
* the README's default-suite table and docs/cli.md's ``ftbench run`` example, each between
  ``<!-- numbers:NAME begin ... -->`` and ``<!-- numbers:NAME end -->`` markers;
* every other example of docs/cli.md and docs/report.md: ``$ ftbench ...`` transcripts and
  ``<!-- example: ftbench ... -->`` output regions (see "The docs' examples" below);
* ``tests/data/baseline_smoke.spread.json`` (``spread``): the measured spread and, derived from it,
  the gate's tolerance;
* ``tests/data/portable/<CPU>.json`` (``refresh`` and ``portable``): this CPU's smoke results in
  portable mode, exact, with its fingerprint, compared bit for bit with every other CPU's.

Every number is made the same way: ftbench from *this checkout* (PYTHONPATH is set to it, whatever
is installed), in a subprocess, on CPU with one torch thread, with an empty model cache and with
:data:`PINS` in its environment: portable numerics (ftbench/numerics.py), the same bits on every
x86-64 CPU. docs/ci.md explains why (CPU results depend on the kernels the CPU makes torch choose)
and what was measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "benchmarks.toml"
BASELINE = ROOT / "tests" / "data" / "baseline_smoke"
SPREAD = ROOT / "tests" / "data" / "baseline_smoke.spread.json"
# Where the committed numbers were made (``machine_fingerprint``), written by ``refresh``.
MACHINE = ROOT / "tests" / "data" / "numbers.machine.json"
README = ROOT / "README.md"
CLI_DOC = ROOT / "docs" / "cli.md"
SMOKE = "smoke"
DOCS_SUITE = "default"
# The command whose output docs/cli.md shows (the first example of the README's "Everyday use").
RUN_EXAMPLE = ["run", "--method", "surgical", "--block", "1", "--shift", "corruption"]

# Portable numerics (ftbench/numerics.py): with FTBENCH_PORTABLE=1, no kernel is chosen by the CPU.
# ATen runs its generic kernels, oneDNN and NNPACK are off (a convolution is ATen's im2col and a
# matrix product), MKL's BLAS runs in its CPU-independent CNR mode COMPATIBLE,STRICT, NumPy its
# baseline loops and OpenBLAS its generic kernels. The former pins (ATen generic, oneDNN capped at
# SSE4.1, MKL COMPATIBLE) left oneDNN's convolutions in place, whose blocking follows the CPU's cache
# sizes: an Intel Xeon and an AMD EPYC gave smoke cells up to 1.86 points apart under them. Libraries
# read the variables when they load, hence subprocesses. docs/ci.md says what was measured.
sys.path.insert(0, str(ROOT))
from ftbench import numerics  # noqa: E402  (does not import torch)

PINS = {numerics.VARIABLE: "1"}
KERNELS = numerics.LABEL  # the cpu_kernels column ftbench writes under PINS
# Each machine's portable smoke results, with its CPU fingerprint (``python tools/regen_numbers.py portable``).
PORTABLE_DIR = ROOT / "tests" / "data" / "portable"
THREADS = "1"
# The default suite's 126 runs in parallel worker processes, one thread each: the numbers are the
# same as one after another (each run is deterministic on its own; measured equal on the smoke suite).
DOCS_JOBS = max(1, min(os.cpu_count() or 1, 8))

REFRESH = "python tools/regen_numbers.py refresh"


def say(msg: str) -> None:
    print(f"numbers: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Running ftbench


def child_env(cache: Path, extra: dict[str, str] | None = None, pinned: bool = True) -> dict[str, str]:
    """The environment of an ftbench subprocess: this checkout first on PYTHONPATH, a given (fresh)
    model cache, PINS (unless ``pinned`` is False: then any inherited cap is removed too) and ``extra``."""
    drop = {*PINS, *numerics.ENVIRONMENT, *numerics.REMOVED, "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    # The cache key of a source model does not include the kernels: a cache filled without the pins
    # would hand pinned runs a different source model. So every measurement gets its own.
    env["FTBENCH_CACHE"] = str(cache)
    if pinned:
        env.update(PINS)
    env.update(extra or {})
    return env


# ``--emulate CPU``: every ftbench subprocess runs under ``qemu-x86_64 -cpu CPU`` (a user-mode emulator: the
# instructions report CPU's vendor, model, instruction sets and cache sizes, which is what the libraries dispatch
# on), so one machine can give the numbers of another CPU model (docs/ci.md, "The proof across CPU models").
EMULATOR: list[str] = []


def ftbench(args: list[str], env: dict[str, str], cwd: Path = ROOT, capture: bool = False) -> subprocess.CompletedProcess:
    """``ftbench ARGS`` from this checkout in a subprocess (stderr passes through)."""
    cmd = [*EMULATOR, sys.executable, "-m", "ftbench.cli", *args]
    return subprocess.run(cmd, env=env, cwd=cwd, check=False, text=True,
                          stdout=subprocess.PIPE if capture else None)


def sweep(suite: str, out: Path, env: dict[str, str], jobs: int = 1) -> None:
    """Run ``suite`` of this checkout's benchmarks.toml into the (new) folder ``out``, or exit."""
    args = ["sweep", suite, "--suites", str(SUITES), "--out", str(out), "--device", "cpu", "--threads", THREADS,
            "--format", "markdown"]
    if jobs > 1:
        args += ["--jobs", str(jobs)]
    r = ftbench(args, env, capture=True)  # the table on stdout is not wanted here
    if r.returncode != 0:
        sys.exit(f"numbers: `ftbench {' '.join(args)}` failed with exit code {r.returncode}")


@contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ftbench-numbers-") as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------------------------
# The smoke baseline and its gate


def machine_fingerprint() -> dict[str, str]:
    """What, besides the code, decides the pinned numbers: the CPU (as /proc/cpuinfo describes its
    first processor, with a digest of its feature flags: a VM's generic model name can hide the
    generation) and the versions of the libraries that compute them. Read without importing torch.

    Where the CPU that the instructions report (CPUID, what MKL, ATen, NumPy and glibc dispatch on)
    is another than /proc/cpuinfo's, as under a user-mode emulator (``--emulate``), the fingerprint
    is CPUID's, and ``host`` names the machine underneath."""
    from importlib import metadata

    fp: dict[str, str] = {"machine": os.uname().machine if hasattr(os, "uname") else sys.platform}
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        first = ""
    info = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    seen = cpuid()
    if seen and any(seen.get(k) != info.get(k) for k in ("vendor_id", "cpu family", "model")):
        fp.update({k: v for k, v in seen.items() if k != "flags"})
        fp["flags_sha1"] = _flags_digest(seen["flags"])
        fp["host"] = f"{info.get('model name', '?')} ({info.get('vendor_id', '?')}, family {info.get('cpu family', '?')}, " \
                     f"model {info.get('model', '?')}), as /proc/cpuinfo describes it"
    else:
        for key in ("vendor_id", "model name", "cpu family", "model", "stepping", "cache size"):
            if key in info:
                fp[key] = info[key]
        if "flags" in info:
            fp["flags_sha1"] = _flags_digest(info["flags"])
    for dist in ("torch", "timm", "numpy"):
        try:
            fp[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            fp[dist] = "not installed"
    return fp


def emulated_fingerprint() -> dict[str, str]:
    """The fingerprint as code under :data:`EMULATOR` sees it (this script's ``fingerprint`` command run
    there), with ``emulator`` saying how it was made."""
    r = subprocess.run([*EMULATOR, sys.executable, str(Path(__file__).resolve()), "fingerprint"], check=False,
                       text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if r.returncode != 0:
        sys.exit(f"numbers: `{' '.join(EMULATOR)} python tools/regen_numbers.py fingerprint` failed "
                 f"(exit code {r.returncode})")
    fp = json.loads(r.stdout)
    if "host" not in fp:
        sys.exit(f"numbers: under `{' '.join(EMULATOR)}` the CPU reports itself as the host does "
                 f"({fp.get('model name')}): no other CPU model to measure (install py-cpuinfo, or pick another -cpu)")
    version = subprocess.run([EMULATOR[0], "--version"], check=False, text=True, stdout=subprocess.PIPE).stdout
    fp["emulator"] = f"{' '.join(EMULATOR)} ({version.splitlines()[0].strip() if version else '?'}; TCG)"
    return fp


@functools.cache
def _here() -> tuple[tuple[str, str], ...]:
    return tuple((emulated_fingerprint() if EMULATOR else machine_fingerprint()).items())


def fingerprint_here() -> dict[str, str]:
    """The fingerprint of the CPU the measurement runs on: this machine's, or under ``--emulate`` the
    emulated CPU's (found once per process: each look starts the emulator)."""
    return dict(_here())


def _flags_digest(flags: str) -> str:
    import hashlib

    return hashlib.sha1(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]


def cpuid() -> dict[str, str] | None:
    """The CPU as the CPUID instruction reports it (py-cpuinfo runs the instruction), in /proc/cpuinfo's
    keys; None where py-cpuinfo is missing or CPUID cannot run. /proc/cpuinfo is the kernel's view of
    the real CPU, which a user-mode emulator (qemu-x86_64 -cpu MODEL) does not change; CPUID is what
    the code sees."""
    try:
        from cpuinfo import cpuinfo as pycpuinfo

        c = pycpuinfo._get_cpu_info_from_cpuid()  # the instruction itself, not /proc/cpuinfo
    except Exception:  # noqa: BLE001 — no py-cpuinfo, or CPUID not runnable here: /proc/cpuinfo only
        return None
    if not c or "vendor_id_raw" not in c:
        return None
    return {"vendor_id": str(c["vendor_id_raw"]), "model name": str(c.get("brand_raw", "")),
            "cpu family": str(c.get("family", "")), "model": str(c.get("model", "")),
            "stepping": str(c.get("stepping", "")),
            "cache size": f"{int(c.get('l2_cache_size') or 0) // 1024} KB (L2)",
            "flags": " ".join(c.get("flags", []))}


def write_machine() -> None:
    record = {"what": "the machine that made the committed numbers (tests/data/baseline_smoke, the README's "
                      "table and docs/cli.md's example), in portable mode (docs/ci.md); the gate and check-docs "
                      "are exact on every machine, and tests/data/portable/ holds each CPU's proof",
              "made": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "fingerprint": machine_fingerprint()}
    write_atomic(MACHINE, json.dumps(record, indent=1, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------
# Each CPU's portable smoke results: the proof that portable mode gives the same bits everywhere

METRICS = ("id_acc", "ood_acc", "val_acc", "source_val_acc")  # every accuracy a smoke row holds


def fingerprint_id(fp: dict[str, str]) -> str:
    """A CPU's file name in PORTABLE_DIR: vendor, family, model, stepping, a digest of its flags and its
    cache size (what made the former pins diverge; a virtual machine may report another for one model)."""
    parts = [fp.get(k, "-") for k in ("vendor_id", "cpu family", "model", "stepping", "flags_sha1", "cache size")]
    return re.sub(r"[^A-Za-z0-9.-]+", "_", "-".join([fp.get("machine", "-"), *parts]))


def _runs(rows: list[dict]) -> dict[str, dict]:
    """run id -> what identifies the run and its accuracies, each as [value, exact hex]."""
    out = {}
    for r in sorted(rows, key=lambda r: r["run_id"]):
        metrics = {m: [float(r[m]), float(r[m]).hex()] for m in METRICS if r.get(m) is not None and r[m] == r[m]}
        out[r["run_id"]] = {"method": r["method"], "shift": r["shift"], "blocks": r["blocks"], **metrics}
    return out


def _rows(folder: Path) -> list[dict]:
    from ftbench.results.store import read_results

    df = read_results(folder)[0]
    return df.to_dict("records")


def numbers_digest(runs: dict[str, dict]) -> str:
    """A digest of the runs' ids and exact accuracies: which committed numbers a file was made for."""
    import hashlib

    flat = [[rid, *(run[m][1] for m in METRICS if m in run)] for rid, run in sorted(runs.items())]
    return hashlib.sha256(json.dumps(flat).encode()).hexdigest()[:16]


def model_digests(cache: Path) -> dict[str, str]:
    """Each cached model's weights, digested tensor by tensor (a pretrained source model takes hundreds of
    training steps: one rounding difference anywhere in them changes its bits)."""
    import hashlib

    import torch

    out = {}
    for f in sorted((cache / "models").glob("*.pt")):
        state = torch.load(f, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        h = hashlib.sha256()
        for k in sorted(state):
            v = state[k]
            h.update(k.encode())
            if isinstance(v, torch.Tensor):
                h.update(str(v.dtype).encode() + v.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
            else:
                h.update(repr(v).encode())
        out[f.name] = h.hexdigest()[:32]
    return out


def portable_record(results: Path, cache: Path) -> dict:
    """This machine's portable smoke results (a sweep into ``results`` with model cache ``cache``)."""
    rows = _rows(results)
    runs = _runs(rows)
    return {"what": "the smoke suite's results in portable mode (docs/ci.md) on the CPU of 'fingerprint'; "
                    "made by `python tools/regen_numbers.py portable`, compared bit for bit with every other "
                    "CPU's file by tests/test_portable.py and the gate",
            "made": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "fingerprint": fingerprint_here(),
            "cpu_kernels": ", ".join(sorted({str(r["cpu_kernels"]) for r in rows})),
            "baseline": numbers_digest(_runs(_rows(BASELINE))) if BASELINE.is_dir() else None,
            "runs": runs,
            "models": model_digests(cache)}


def portable_files() -> dict[str, dict]:
    """The stored CPUs' records: file stem -> record."""
    return {f.stem: json.loads(f.read_text()) for f in sorted(PORTABLE_DIR.glob("*.json"))}


def portable_differences(now: dict, stored: dict[str, dict]) -> tuple[list[str], list[str], list[str]]:
    """Compare this machine's record with each stored CPU's made for the same committed numbers
    (``baseline``): (the CPUs compared, the differences found, the files made for other numbers)."""
    compared, differences, stale = [], [], []
    for name, other in stored.items():
        if other.get("baseline") != now.get("baseline"):
            stale.append(name)
            continue
        compared.append(name)
        where = f"{name} ({other['fingerprint'].get('model name', '?')})"
        for key in ("runs", "models"):
            mine, theirs = now.get(key, {}), other.get(key, {})
            for k in sorted(set(mine) | set(theirs)):
                if mine.get(k) != theirs.get(k):
                    differences.append(f"{key[:-1]} {k}: here {mine.get(k, 'missing')}, on {where} "
                                       f"{theirs.get(k, 'missing')}")
    return compared, differences, stale


def write_portable(record: dict) -> Path:
    PORTABLE_DIR.mkdir(parents=True, exist_ok=True)
    path = PORTABLE_DIR / f"{fingerprint_id(record['fingerprint'])}.json"
    write_atomic(path, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return path


def portable() -> int:
    """Run the smoke suite in portable mode, compare it with every stored CPU's results and the
    committed baseline, and write this CPU's file (``portable`` subcommand)."""
    with workspace() as tmp:
        results, cache = tmp / "results", tmp / "cache"
        sweep(SMOKE, results, child_env(cache))
        record = portable_record(results, cache)
    mine = fingerprint_id(record["fingerprint"])
    stored = {k: v for k, v in portable_files().items() if k != mine}
    compared, differences, stale = portable_differences(record, stored)
    path = write_portable(record)
    say(f"wrote {path.relative_to(ROOT)}; commit it")
    if record["baseline"] != numbers_digest(record["runs"]):
        say(f"this CPU's portable numbers differ from tests/data/baseline_smoke: if the baseline is current "
            f"(`{REFRESH} --only baseline` was run for this code), portable mode is not exact on this CPU")
        return 1
    return _say_portable(compared, differences, stale)


def _say_portable(compared: list[str], differences: list[str], stale: list[str]) -> int:
    for d in differences:
        say(f"  {d}")
    if stale:
        say(f"not compared (made for other committed numbers; a session on that CPU re-adds it with "
            f"`python tools/regen_numbers.py portable`): {', '.join(stale)}")
    if differences:
        say(f"FAIL: portable mode gave other bits on this CPU than stored for {len(compared)} CPU(s) "
            f"({len(differences)} difference(s)): it is not exact here; find the kernel that differs (docs/ci.md)")
        return 1
    say(f"portable results bit for bit equal to the stored results of {len(compared)} CPU(s)"
        + (f": {', '.join(compared)}" if compared else ""))
    return 0


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def tolerance() -> float:
    """The gate's tolerance in accuracy points, as derived by ``spread`` (tests/data/baseline_smoke.spread.json)."""
    try:
        return float(json.loads(SPREAD.read_text())["tolerance"])
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"numbers: cannot read the gate's tolerance from {SPREAD} ({e}); run `python tools/regen_numbers.py spread`")


def refresh_baseline() -> None:
    """Sweep the smoke suite into a new folder and put it in place of tests/data/baseline_smoke.

    A sweep skips runs whose result file exists, so sweeping into the old folder would change nothing.
    """
    with workspace() as tmp:
        new = tmp / "baseline_smoke"
        sweep(SMOKE, new, child_env(tmp / "cache"))
        if BASELINE.is_dir():
            say("what moved (old baseline -> new results, tolerance 0):")
            ftbench(["report", str(new), "--baseline", str(BASELINE), "--tolerance", "0", "--two-sided",
                     "--format", "csv"], child_env(tmp / "cache"), capture=True)
        # Build the new folder beside the old one, then swap by renames: never a half-made baseline.
        staged, old = BASELINE.with_name(".baseline_smoke.new"), BASELINE.with_name(".baseline_smoke.old")
        for p in (staged, old):
            shutil.rmtree(p, ignore_errors=True)
        staged.mkdir()
        for f in sorted(new.glob("*.parquet")):
            shutil.copy2(f, staged / f.name)
        if BASELINE.exists():
            BASELINE.rename(old)
        staged.rename(BASELINE)
        shutil.rmtree(old, ignore_errors=True)
        path = write_portable(portable_record(new, tmp / "cache"))  # this CPU's proof, for the new numbers
    say(f"wrote {BASELINE.relative_to(ROOT)} ({len(list(BASELINE.glob('*.parquet')))} runs) and "
        f"{path.relative_to(ROOT)}; commit them with the change")
    stale = [k for k, v in portable_files().items() if v.get("baseline") != numbers_digest(_runs(_rows(BASELINE)))]
    if stale:
        say(f"made for the former numbers, so no longer compared: {', '.join(stale)}; a session on each of those "
            "CPUs re-adds its file with `python tools/regen_numbers.py portable` (docs/ci.md)")


def gate(summary: Path | None, keep: Path | None) -> int:
    """The CI gate: the smoke suite now against the committed baseline, two-sided and exact, and against
    every stored CPU's portable results bit for bit; returns the exit code."""
    tol = tolerance()
    here = fingerprint_id(fingerprint_here())
    stored = portable_files()
    known = here in stored
    say(f"portable mode: exact gate (tolerance {tol}) on any x86-64 CPU; this CPU ({here}) "
        + ("has its file in tests/data/portable" if known else
           "is not yet in tests/data/portable: if the gate passes, add it with `python tools/regen_numbers.py portable`"))
    with workspace() as tmp:
        results, cache = tmp / "results", tmp / "cache"
        env = child_env(cache)
        sweep(SMOKE, results, env)
        args = ["report", str(results), "--baseline", str(BASELINE), "--tolerance", repr(tol), "--two-sided",
                "--format", "markdown"]
        if summary is not None:
            args += ["--summary", str(summary)]
        code = ftbench(args, env).returncode
        record = portable_record(results, cache)
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(results, keep, ignore=shutil.ignore_patterns(".*"))
            write_atomic(keep / "portable.json", json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    compared, differences, stale = portable_differences(record, stored)  # this CPU's own file too: a rerun
    cross = _say_portable(compared, differences, stale)
    if summary is not None and summary.is_file():
        with summary.open("a") as f:
            f.write(f"\nPortable mode, tolerance {tol}: this CPU's smoke results are "
                    + (f"**not** bit for bit those of {', '.join(compared)} ({len(differences)} difference(s))"
                       if differences else f"bit for bit those of {', '.join(compared) or 'no other stored CPU'}")
                    + ".\n")
    if code == 1:
        hint = (f"the smoke numbers changed. If the change is meant to move them, run `{REFRESH}` and commit "
                "tests/data/baseline_smoke (and the docs it rewrites) in the same commit; if not, find the cause")
        say(hint)
        if summary is not None and summary.is_file():
            with summary.open("a") as f:
                f.write(f"\n{hint[0].upper() + hint[1:]}.\n")
    return code or cross


# --------------------------------------------------------------------------------------------
# Generated regions of the docs


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- numbers:{name} begin: made by `{REFRESH}` from what the code prints; do not edit by hand -->",
            f"<!-- numbers:{name} end -->")


def region(text: str, name: str, path: Path) -> tuple[int, int]:
    """Start and end offsets of the content between the markers of ``name`` in ``text``."""
    begin, end = _markers(name)
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        sys.exit(f"numbers: {path.relative_to(ROOT)} has no region {name!r} (markers {begin!r} ... {end!r})")
    return i + len(begin) + 1, j


def replace_region(text: str, name: str, content: str, path: Path) -> str:
    i, j = region(text, name, path)
    return text[:i] + content + text[j:]


# The only part of the example's output that differs between two runs of it: the training time.
_VOLATILE = re.compile(r"\d+(?:\.\d+)? s on ")


def normalise(text: str) -> str:
    return _VOLATILE.sub("<seconds> s on ", text)


CORRUPTION, SUBPOPULATION, FLIP = "corruption (gaussian_noise, s5)", "subpopulation", "label-flip"
BLOCKS = ("block 1", "block 2", "block 3")


class ProseIsWrong(Exception):
    """A sentence of the README's reading of the table no longer holds for the numbers."""


def reading(report_json: str) -> str:
    """The README's reading of the default table (how the surgical paper reads its Table 1), with
    the numbers it cites taken from the table and each claim checked against them."""
    cells = {(c["row"], c["column"], c["metric"]): c for c in json.loads(report_json)["cells"]}

    def ood(row: str, col: str) -> float:
        return float(cells[(row, col, "OOD")]["mean"])

    def std(row: str, col: str) -> float:
        return float(cells[(row, col, "OOD")]["std"] or 0.0)

    def f(v: float) -> str:
        return f"{v:.1f}"

    def claim(ok: bool, what: str) -> None:
        if not ok:
            raise ProseIsWrong(what)

    best = max(BLOCKS, key=lambda b: ood(b, CORRUPTION))
    last, b1 = ood("last layer", CORRUPTION), ood("block 1", CORRUPTION)
    claim(ood(best, CORRUPTION) > last, "corruption: an early block beats the last layer")
    # "Within seed noise": the two means are closer than the sum of their standard deviations.
    near = abs(b1 - last) <= std("block 1", CORRUPTION) + std("last layer", CORRUPTION)
    block1 = ("is within seed noise of it here" if near else
              f"is {'ahead of' if b1 > last else 'behind'} it by more than the seed spread")
    first = (f"  block beats tuning only the last layer: {best} reaches {f(ood(best, CORRUPTION))} against "
             f"{f(last)} for the last layer")
    if best != "block 1":
        first += (f";\n  block 1 ({f(b1)}) {block1}. On these 8×8 digits the best single block is\n"
                  f"  {best}; the paper finds block 1 on CIFAR-10-C;")
    else:
        first += ", as the paper finds on CIFAR-10-C;"
    below = [*BLOCKS, "full"]
    sub_last = ood("last layer", SUBPOPULATION)
    # "Behind by more than the seed spread": every gap exceeds the sum of the two standard deviations.
    claim(all(ood(r, SUBPOPULATION) - sub_last > std(r, SUBPOPULATION) + std("last layer", SUBPOPULATION)
              for r in below),
          "subpopulation: the last layer is behind every block and full fine-tuning by more than the seed spread")
    sub_best = max(below, key=lambda r: ood(r, SUBPOPULATION))
    runner_up = max((r for r in below if r != sub_best), key=lambda r: ood(r, SUBPOPULATION))
    sub_near = (ood(sub_best, SUBPOPULATION) - ood(runner_up, SUBPOPULATION)
                <= std(sub_best, SUBPOPULATION) + std(runner_up, SUBPOPULATION))
    sub_top = (f"{sub_best} is highest ({f(ood(sub_best, SUBPOPULATION))}), "
               + (f"within seed noise of {runner_up} ({f(ood(runner_up, SUBPOPULATION))})" if sub_near else
                  f"ahead of {runner_up} ({f(ood(runner_up, SUBPOPULATION))}) by more than the seed spread"))
    # From the values as the table prints them (one decimal), so a reader can check the sentence on the table.
    gap = round(min(ood(r, SUBPOPULATION) for r in below), 1) - round(sub_last, 1)
    middle = " (the paper finds a middle block best for feature-level shifts)" if sub_best == "block 2" else ""
    flips = {r: ood(r, FLIP) for r in (*BLOCKS, "last layer", "linear-probe", "full")}
    top = max(flips.values())
    claim(flips["last layer"] == top, "label-flip: the last layer is best")
    claim(flips["block 1"] == min(flips.values()), "label-flip: block 1 is worst")
    probe = " (or a linear probe)" if flips["linear-probe"] == top else ""
    text = f"""* **input-level shift** (`corruption`: gaussian noise on the target images) — tuning an early
{first}
* **feature-level shift** (`subpopulation`: the source saw one writing style of each digit, the
  target is the other) — the last layer alone is behind ({f(sub_last)}); every block below it and
  full fine-tuning adapt the features and gain at least {f(gap)} points;
  {sub_top}{middle};
* **output-level shift** (`label-flip`: permuted labels) — the last layer{probe} is
  best ({f(top)}) and tuning block 1 is worst ({f(flips["block 1"])}).
"""
    return text


def docs_numbers() -> dict[Path, dict[str, str]]:
    """What the code prints now: file -> region name -> content."""
    with workspace() as tmp:
        env = child_env(tmp / "cache")
        results = tmp / "default"
        say(f"running the {DOCS_SUITE!r} suite with {DOCS_JOBS} worker(s) (a few minutes of CPU)")
        sweep(DOCS_SUITE, results, env, jobs=DOCS_JOBS)
        table = ftbench(["report", str(results), "--format", "markdown"], env, capture=True)
        cells = ftbench(["report", str(results), "--format", "json"], env, capture=True)
        if table.returncode != 0 or cells.returncode != 0:
            sys.exit("numbers: `ftbench report` failed")
        try:
            prose = reading(cells.stdout)
        except ProseIsWrong as e:
            sys.exit(f"numbers: the README's reading of the table no longer holds ({e}); rewrite it "
                     "(reading() in tools/regen_numbers.py) to say what the new numbers show")
        example_dir = tmp / "example"
        example_dir.mkdir()
        example = ftbench(RUN_EXAMPLE, env, cwd=example_dir, capture=True)  # writes ./ftbench-results/, as shown
        if example.returncode != 0:
            sys.exit(f"numbers: `ftbench {' '.join(RUN_EXAMPLE)}` failed")
    return {README: {"default-table": table.stdout.strip("\n") + "\n", "default-reading": prose},
            CLI_DOC: {"run-example": "```\n" + example.stdout.strip("\n") + "\n```\n"}}


def refresh_docs() -> None:
    for path, regions in docs_numbers().items():
        text = path.read_text()
        for name, content in regions.items():
            text = replace_region(text, name, content, path)
        write_atomic(path, text)
        say(f"rewrote {path.relative_to(ROOT)} ({', '.join(regions)})")


def check_docs() -> int:
    """Exit code 1, with a diff, when a generated region differs from what the code prints now.
    Exact on every machine: the numbers are made in portable mode (docs/ci.md)."""
    stale = 0
    for path, regions in docs_numbers().items():
        text = path.read_text()
        for name, content in regions.items():
            i, j = region(text, name, path)
            have, want = normalise(text[i:j]), normalise(content)
            if have != want:
                stale += 1
                rel = str(path.relative_to(ROOT))
                sys.stderr.writelines(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                                           f"{rel} ({name}, committed)", f"{rel} ({name}, code now)"))
    examples = stale_examples()
    for d in examples:
        sys.stderr.write(d)
    if stale or examples:
        say(f"FAIL: {stale} generated region(s) and the examples of {len(examples)} doc(s) differ from what the "
            f"code prints; run `{REFRESH} --only docs` (or `--only examples`) and commit the result with the change")
        return 1
    say("PASS: the README's table, docs/cli.md's example and every example of docs/cli.md and docs/report.md "
        "are what the code prints")
    return 0


# --------------------------------------------------------------------------------------------
# The docs' examples: every shown command whose output is deterministic is run, and its output is
# what the docs show. Two kinds, in docs/cli.md and docs/report.md (EXAMPLE_DOCS):
#
# * a transcript: a fenced block whose first line is ``$ ftbench ...``; each ``$ ftbench ...`` line is
#   run and the lines up to the next one are its output (stdout and stderr, as a terminal shows them);
# * an output region: ``<!-- example: ftbench ARGS -->`` ... ``<!-- example end -->`` holds what the
#   command prints on stdout (a markdown table shown as a table; inside a fence if it was fenced).
#
# The commands run in an empty folder holding a link to this checkout's tests/ (so
# ``tests/data/results_small`` is there), COLUMNS=100, with the pins of every other number. They must
# be fast (a report, a refused input, a dry run): a training run's output is a numbers region
# (docs_numbers). Paths of this checkout and of that folder are shown relative to them.

EXAMPLE_DOCS = (ROOT / "docs" / "cli.md", ROOT / "docs" / "report.md")
EXAMPLE_COLUMNS = "100"
_REGION = re.compile(r"<!-- example: (ftbench .*?) -->\n(.*?)(?=<!-- example end -->)", re.DOTALL)
_TRANSCRIPT = re.compile(r"^( *)```[a-z]*\n(\1\$ ftbench .*?)(?=^\1```$)", re.DOTALL | re.MULTILINE)


def doc_examples(text: str) -> list[tuple[int, int, str, list[str]]]:
    """The examples of a doc: (start, end, fence, commands) of each stretch of ``text`` that is made
    by running commands; ``fence`` is "$" and the block's indent for a transcript (a fenced block in
    a list item is indented), else the region's opening fence or ""."""
    found = []
    for m in _REGION.finditer(text):
        body = m.group(2)
        fence = body.split("\n", 1)[0] + "\n" if body.startswith("```") else ""
        found.append((m.start(2), m.end(2), fence, [m.group(1)]))
    for m in _TRANSCRIPT.finditer(text):
        indent = m.group(1)
        commands = [ln[len(indent) + 2:] for ln in m.group(2).splitlines() if ln.startswith(f"{indent}$ ftbench ")]
        found.append((m.start(2), m.end(2), "$" + indent, commands))
    return sorted(found)


def _example_output(command: str, env: dict[str, str], cwd: Path, both: bool) -> str:
    import shlex

    args = shlex.split(command)[1:]
    r = subprocess.run([sys.executable, "-m", "ftbench.cli", *args], env=env, cwd=cwd, check=False, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT if both else subprocess.DEVNULL)
    text = r.stdout
    for folder in (cwd, ROOT):  # shown relative: the same text in every checkout
        text = text.replace(str(folder) + os.sep, "").replace(str(folder.resolve()) + os.sep, "")
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()) + "\n" if text.strip() else ""


def examples_now(path: Path) -> str:
    """``path``'s text with every example's output as the code prints it now."""
    text = path.read_text()
    with workspace() as tmp:
        env = child_env(tmp / "cache", {"COLUMNS": EXAMPLE_COLUMNS, "PYTHONUNBUFFERED": "1"})
        cwd = tmp / "examples"
        cwd.mkdir()
        (cwd / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
        pieces, at = [], 0
        for start, end, fence, commands in doc_examples(text):
            if fence.startswith("$"):
                indent = fence[1:]
                body = "".join(f"{indent}$ {c}\n" + "".join(f"{indent}{ln}".rstrip() + "\n" for ln in
                                                          _example_output(c, env, cwd, both=True).splitlines())
                               for c in commands)
            else:
                out = _example_output(commands[0], env, cwd, both=False)
                body = f"{fence}{out}```\n" if fence else out + "\n"
            pieces += [text[at:start], body]
            at = end
    return "".join(pieces) + text[at:]


def stale_examples() -> list[str]:
    """A diff per doc whose examples differ from what the code prints now (normalised as check-docs does)."""
    diffs = []
    for path in EXAMPLE_DOCS:
        have, want = path.read_text(), examples_now(path)
        if normalise(have) != normalise(want):
            rel = str(path.relative_to(ROOT))
            diffs.append("".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                                      f"{rel} (committed)", f"{rel} (code now)")))
    return diffs


def refresh_examples() -> None:
    for path in EXAMPLE_DOCS:
        write_atomic(path, examples_now(path))
        say(f"rewrote the examples of {path.relative_to(ROOT)} ({len(doc_examples(path.read_text()))})")


# --------------------------------------------------------------------------------------------
# Spread: how much the smoke numbers move, and the tolerance derived from it

# (label, portable?, extra environment, reuse the first variant's model cache?). The portable variants
# change what a CPU changes (the instruction sets the libraries may use, inherited thread settings)
# and must give the same bits; the others show what portable mode removes.
FORMER_PINS = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}
VARIANTS: list[tuple[str, bool, dict[str, str], bool]] = [
    ("portable (the gate's setting)", True, {}, False),
    ("portable, again with another empty model cache", True, {}, False),
    ("portable, warm model cache", True, {}, True),
    ("portable, OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 inherited", True, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
     False),
    ("portable, MKL_ENABLE_INSTRUCTIONS=SSE4_2 (MKL as on a CPU without AVX)", True,
     {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, False),
    ("portable, MKL_ENABLE_INSTRUCTIONS=AVX512 ONEDNN_MAX_CPU_ISA=AVX512_CORE ATEN_CPU_CAPABILITY=avx512 inherited", True,
     {"MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512"}, False),
    ("not portable: this CPU's native kernels", False, {}, False),
    ("not portable: only ATEN_CPU_CAPABILITY=default", False, {"ATEN_CPU_CAPABILITY": "default"}, False),
    ("not portable: the former pins (ATen generic, oneDNN at SSE4.1, MKL COMPATIBLE)", False, FORMER_PINS, False),
]


def _cells(folder: Path) -> tuple[dict[str, float], dict[str, str]]:
    """``cell metric`` -> value after the gate's selection (via ftbench.report.regress), and the
    environment columns the runs recorded (one value each, or the distinct values joined)."""
    sys.path.insert(0, str(ROOT))
    from ftbench.report.regress import ENV_COLUMNS, compare
    from ftbench.results.store import read_results

    df = read_results(folder)[0]
    values = {f"{x.cell} {x.metric}": float(x.current) for x in compare(df, df, 0.0).changes}
    env = {c: ", ".join(sorted({str(v) for v in df[c].dropna()})) for c in ENV_COLUMNS if c in df.columns}
    return values, env


def spread() -> None:
    """Run every variant, then write SPREAD: the values, the spreads and the tolerance derived from them."""
    measured: list[dict] = []
    records: list[dict] = []
    with workspace() as tmp:
        for k, (label, pinned, extra, warm) in enumerate(VARIANTS):
            say(f"[{k + 1}/{len(VARIANTS)}] {label}")
            cache = tmp / ("cache0" if warm else f"cache{k}")
            out = tmp / f"v{k}"
            sweep(SMOKE, out, child_env(cache, extra, pinned))
            values, recorded = _cells(out)
            records.append(portable_record(out, cache))
            measured.append({"variant": label, "portable": pinned, "env": extra, "cpu_kernels": recorded["cpu_kernels"],
                             "values": values})
            if k == 0:
                environment = recorded  # as the runs themselves recorded it
    ref = measured[0]["values"]

    def max_dev(group: list[dict]) -> float:
        return max(abs(v["values"][c] - ref[c]) for v in group for c in ref)

    for v, rec in zip(measured, records):
        v["max_abs_delta_vs_portable"] = round(max(abs(v["values"][c] - ref[c]) for c in ref), 6)
        # Bit for bit: every run's exact accuracies and the source model's weights.
        v["bit_identical_to_portable"] = (rec["runs"], rec["models"]) == (records[0]["runs"], records[0]["models"])
    portable_dev = max_dev([v for v in measured if v["portable"]])
    other_dev = max_dev([v for v in measured if not v["portable"]])
    try:  # measurements across machines cannot be made here: keep those recorded
        former = json.loads(SPREAD.read_text()).get("former_pins_cross_machine", [])
    except (OSError, ValueError):
        former = []
    record = {
        "what": "tests/data/baseline_smoke: how far the smoke suite's numbers (accuracy points, per cell and metric "
                "after selection) move with what differs between machines; made by `python tools/regen_numbers.py spread`",
        "measured": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": environment,
        "pins": PINS,
        "tolerance": round(portable_dev, 6),
        "tolerance_argument": (
            "the largest change of any cell over the portable variants: what a CPU changes (the instruction sets "
            "MKL, oneDNN and ATen may use, inherited thread settings) and the model cache. In portable mode no "
            "kernel is chosen by the CPU (ftbench/numerics.py), one thread runs it in a fixed order and each run "
            "starts from an empty model cache, so the gate is exact on every x86-64 CPU when this spread is 0; "
            "tests/data/portable/ holds each CPU's results, compared bit for bit by tests/test_portable.py"),
        "max_abs_delta_portable": round(portable_dev, 6),
        "max_abs_delta_not_portable": round(other_dev, 6),
        "variants": measured,
        "former_pins_cross_machine": former,
    }
    write_atomic(SPREAD, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    for v in measured:
        say(f"  {v['max_abs_delta_vs_portable']:6.2f}  {'bits equal' if v['bit_identical_to_portable'] else 'bits differ'}"
            f"  {v['variant']}")
    say(f"wrote {SPREAD.relative_to(ROOT)}: tolerance {record['tolerance']} points "
        f"(portable spread {portable_dev:.2f}, not portable {other_dev:.2f})")


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/regen_numbers.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("refresh", help="rewrite the smoke baseline and the generated docs numbers")
    r.add_argument("--only", choices=("baseline", "docs", "examples"),
                   help="rewrite only one of them (docs includes examples: the docs' fast command examples)")
    g = sub.add_parser("gate", help="the smoke suite against the committed baseline, two-sided (exit 1 on a change)")
    g.add_argument("--summary", type=Path, help="also write the gate's Markdown summary to this file")
    g.add_argument("--keep", type=Path, help="copy the smoke results to this folder (to inspect or refresh from)")
    sub.add_parser("check-docs", help="exit 1 when the generated docs numbers differ from what the code prints")
    sub.add_parser("spread", help=f"measure the smoke numbers' spread and write {SPREAD.relative_to(ROOT)}")
    o = sub.add_parser("portable", help=f"write this CPU's portable smoke results to {PORTABLE_DIR.relative_to(ROOT)}/ "
                                        "and compare them with every other CPU's")
    for q in (g, o):
        q.add_argument("--emulate", metavar="CPU",
                       help="run ftbench under `qemu-x86_64 -cpu CPU` (e.g. Haswell-v4, Nehalem-v1, EPYC-Rome-v1; "
                            "`qemu-x86_64 -cpu help` lists them): another CPU model's numbers on this machine, "
                            "about 50x slower")
    sub.add_parser("fingerprint", help=argparse.SUPPRESS)  # this CPU's fingerprint as JSON (used by --emulate)
    a = p.parse_args(argv)
    if a.command == "fingerprint":
        print(json.dumps(machine_fingerprint()))
        return 0
    if getattr(a, "emulate", None):
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            print("error: --emulate needs qemu-x86_64 (Debian/Ubuntu: apt-get install qemu-user)", file=sys.stderr)
            return 2
        listed = subprocess.run([qemu, "-cpu", "help"], check=False, text=True, stdout=subprocess.PIPE).stdout
        models = {line.split()[1] for line in listed.splitlines() if len(line.split()) > 1 and line.split()[0] == "x86"}
        if a.emulate not in models:
            print(f"error: --emulate {a.emulate!r} is not one of qemu-x86_64's CPU models; accepted: "
                  f"{', '.join(sorted(m for m in models if m[0].isupper())[:12])}, ... (`qemu-x86_64 -cpu help`)",
                  file=sys.stderr)
            return 2
        EMULATOR[:] = [qemu, "-cpu", a.emulate]
    if a.command == "refresh":
        if a.only in (None, "baseline"):
            refresh_baseline()
        if a.only in (None, "docs"):
            refresh_docs()
        if a.only in (None, "docs", "examples"):
            refresh_examples()
        if a.only == "examples":  # no training: the committed numbers are untouched
            return 0
        write_machine()  # what made the numbers just written
        say(f"wrote {MACHINE.relative_to(ROOT)}; commit it with them")
        return 0
    if a.command == "gate":
        return gate(a.summary, a.keep)
    if a.command == "check-docs":
        return check_docs()
    if a.command == "portable":
        return portable()
    spread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
