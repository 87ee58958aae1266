#!/usr/bin/env python3
"""Every number this repository commits that the code computes: made by this script, checked by it.

    python tools/regen_numbers.py refresh      # after a change meant to move numbers (or a merge): rewrite them all
    python tools/regen_numbers.py gate         # CI: the smoke suite against tests/data/baseline_smoke, two-sided
    python tools/regen_numbers.py check-docs   # CI: the README's table and docs/cli.md's example are what the code prints
    python tools/regen_numbers.py spread       # measure how far the smoke numbers move with the CPU's kernels

What it makes (``refresh``; ``--only baseline`` or ``--only docs`` for one of them):

* ``tests/data/baseline_smoke/``: the ``smoke`` suite's result files, the regression gate's baseline;
* the README's default-suite table and docs/cli.md's ``ftbench run`` example, each between
  ``<!-- numbers:NAME begin ... -->`` and ``<!-- numbers:NAME end -->`` markers;
* ``tests/data/baseline_smoke.spread.json`` (``spread``): the measured spread and, derived from it,
  the gate's tolerance.

Every number is made the same way: ftbench from *this checkout* (PYTHONPATH is set to it, whatever
is installed), in a subprocess, on CPU with one torch thread, with an empty model cache and with
:data:`PINS` in its environment. docs/ci.md explains why (CPU results depend on the instruction set
torch's kernels use) and what was measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
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

# Portable CPU kernels. CPU results depend on the instruction set torch's kernels run: on the smoke
# suite, AVX2 against baseline x86-64 kernels moved a cell by 4.6 points (tests/data/
# baseline_smoke.spread.json, "unpinned"). These caps make every x86-64 CPU run the same
# instruction set: ATen's kernels without runtime AVX2/AVX-512 dispatch, oneDNN's (convolutions) at
# SSE4.1, and MKL's BLAS in its conditional-numerical-reproducibility mode COMPATIBLE. Libraries
# read them when they load, hence subprocesses. They make one machine's numbers independent of
# everything measured there, but not equal across CPU models (AMD EPYC vs an AVX-512 Xeon: up to
# 1.86 points, "cross_machine" in the spread file; the cause is not found: oneDNN choosing its
# blocking from cache sizes is the suspect). So the gate is exact on the machine that made the
# baseline (MACHINE) and allows the measured rounding spread elsewhere.
PINS = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}
KERNELS = "aten=DEFAULT onednn=SSE41 mkl=COMPATIBLE"  # the cpu_kernels column ftbench writes under PINS
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
    env = {k: v for k, v in os.environ.items() if k not in PINS and k not in ("DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    # The cache key of a source model does not include the kernels: a cache filled without the pins
    # would hand pinned runs a different source model. So every measurement gets its own.
    env["FTBENCH_CACHE"] = str(cache)
    if pinned:
        env.update(PINS)
    env.update(extra or {})
    return env


def ftbench(args: list[str], env: dict[str, str], cwd: Path = ROOT, capture: bool = False) -> subprocess.CompletedProcess:
    """``ftbench ARGS`` from this checkout in a subprocess (stderr passes through)."""
    cmd = [sys.executable, "-m", "ftbench.cli", *args]
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
    generation) and the versions of the libraries that compute them. Read without importing torch."""
    from importlib import metadata

    fp: dict[str, str] = {"machine": os.uname().machine if hasattr(os, "uname") else sys.platform}
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        first = ""
    info = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    for key in ("vendor_id", "model name", "cpu family", "model", "stepping", "cache size"):
        if key in info:
            fp[key] = info[key]
    if "flags" in info:
        import hashlib
        fp["flags_sha1"] = hashlib.sha1(" ".join(sorted(info["flags"].split())).encode()).hexdigest()[:12]
    for dist in ("torch", "timm", "numpy"):
        try:
            fp[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            fp[dist] = "not installed"
    return fp


def machine_differences() -> list[str]:
    """How this machine differs from the one that made the committed numbers (empty: the same)."""
    try:
        made = json.loads(MACHINE.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return [f"{MACHINE.name} is missing or unreadable"]
    now = machine_fingerprint()
    return [f"{k}: {made.get(k, '-')} -> {now.get(k, '-')}" for k in sorted(set(made) | set(now))
            if made.get(k) != now.get(k)]


def write_machine() -> None:
    record = {"what": "the machine that made the committed numbers (tests/data/baseline_smoke, the README's "
                      "table and docs/cli.md's example); on another one the gate uses "
                      "tolerance_other_machine of baseline_smoke.spread.json and check-docs compares shapes",
              "made": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "fingerprint": machine_fingerprint()}
    write_atomic(MACHINE, json.dumps(record, indent=1, ensure_ascii=False) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def tolerance(other_machine: bool = False) -> float:
    """The gate's tolerance in accuracy points, as derived by ``spread`` (tests/data/baseline_smoke.spread.json):
    ``tolerance`` on the machine that made the baseline, ``tolerance_other_machine`` elsewhere."""
    key = "tolerance_other_machine" if other_machine else "tolerance"
    try:
        return float(json.loads(SPREAD.read_text())[key])
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"numbers: cannot read the gate's {key} from {SPREAD} ({e}); run `python tools/regen_numbers.py spread`")


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
    say(f"wrote {BASELINE.relative_to(ROOT)} ({len(list(BASELINE.glob('*.parquet')))} runs); commit it with the change")


def gate(summary: Path | None, keep: Path | None) -> int:
    """The CI gate: the smoke suite now against the committed baseline, two-sided; returns the exit code."""
    differs = machine_differences()
    tol = tolerance(other_machine=bool(differs))
    if differs:
        say(f"this machine is not the one that made the baseline ({'; '.join(differs)}): pinned kernels still "
            f"round differently across CPU models (docs/ci.md), so the gate allows {tol} points, the largest "
            f"change measured from a rounding difference (tolerance_other_machine in {SPREAD.relative_to(ROOT)})")
    else:
        say(f"the machine that made the baseline: exact gate (tolerance {tol})")
    with workspace() as tmp:
        results = tmp / "results"
        env = child_env(tmp / "cache")
        sweep(SMOKE, results, env)
        args = ["report", str(results), "--baseline", str(BASELINE), "--tolerance", repr(tol), "--two-sided",
                "--format", "markdown"]
        if summary is not None:
            args += ["--summary", str(summary)]
        code = ftbench(args, env).returncode
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(results, keep, ignore=shutil.ignore_patterns(".*"))
    if summary is not None and summary.is_file() and differs:
        with summary.open("a") as f:
            f.write(f"\nMade on another machine than the baseline ({'; '.join(differs)}): tolerance {tol} points "
                    "instead of an exact comparison (docs/ci.md).\n")
    if code == 1:
        hint = (f"the smoke numbers changed. If the change is meant to move them, run `{REFRESH}` and commit "
                "tests/data/baseline_smoke (and the docs it rewrites) in the same commit; if not, find the cause")
        say(hint)
        if summary is not None and summary.is_file():
            with summary.open("a") as f:
                f.write(f"\n{hint[0].upper() + hint[1:]}.\n")
    return code


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


# Regions compared by shape on another machine; the reading (prose) is skipped there.
SHAPED = ("default-table", "run-example")
_NUMBER = re.compile(r"\d+\.\d+")  # measured values; counts (blocks, seeds, parameters) are not


def shape(text: str) -> str:
    """``text`` with every measured value (a decimal) replaced and bold marks (the best cell, which a
    value decides) removed."""
    return _NUMBER.sub("#", text.replace("**", ""))


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
    gap = min(ood(r, SUBPOPULATION) for r in below) - sub_last
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
    """Exit code 1, with a diff, when a generated region differs from what the code prints now."""
    differs = machine_differences()
    stale = 0
    for path, regions in docs_numbers().items():
        text = path.read_text()
        for name, content in regions.items():
            i, j = region(text, name, path)
            have, want = normalise(text[i:j]), normalise(content)
            if differs and name in SHAPED:
                # Another machine: its pinned numbers differ by rounding (docs/ci.md), and a rounding
                # difference can flip a per-seed selection between learning rates, so no tolerance
                # bounds a cell. Compare what does not depend on it: the rows, columns and words.
                # (The reading's claims were checked on this machine's numbers by docs_numbers.)
                have, want = shape(have), shape(want)
            elif differs:
                continue
            if have != want:
                stale += 1
                rel = str(path.relative_to(ROOT))
                sys.stderr.writelines(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                                           f"{rel} ({name}, committed)", f"{rel} ({name}, code now)"))
    if stale:
        say(f"FAIL: {stale} generated region(s) differ from what the code prints; run `{REFRESH} --only docs` "
            "and commit the result with the change")
        return 1
    if differs:
        say(f"PASS (shapes only): this machine is not the one that made the committed numbers ({'; '.join(differs)}); "
            "the README's table and docs/cli.md's example have the rows, columns and words the code prints, "
            "and the README's reading holds for this machine's numbers. The exact check runs on the machine in "
            f"{MACHINE.relative_to(ROOT)}")
        return 0
    say("PASS: the README's table and docs/cli.md's example are what the code prints")
    return 0


# --------------------------------------------------------------------------------------------
# Spread: how much the smoke numbers move, and the tolerance derived from it

# (label, pinned?, extra environment, reuse the first variant's model cache?)
VARIANTS: list[tuple[str, bool, dict[str, str], bool]] = [
    ("pinned (the gate's setting)", True, {}, False),
    ("pinned, again with another empty model cache", True, {}, False),
    ("pinned, warm model cache", True, {}, True),
    ("pinned, OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 inherited", True, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
     False),
    ("pinned, MKL_ENABLE_INSTRUCTIONS=SSE4_2 (MKL as on a CPU without AVX)", True,
     {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, False),
    ("unpinned: this CPU's native kernels", False, {}, False),
    ("unpinned: only ATEN_CPU_CAPABILITY=default", False, {"ATEN_CPU_CAPABILITY": "default"}, False),
    ("unpinned: only ONEDNN_MAX_CPU_ISA=SSE41", False, {"ONEDNN_MAX_CPU_ISA": "SSE41"}, False),
    ("unpinned: only MKL_CBWR=COMPATIBLE", False, {"MKL_CBWR": "COMPATIBLE"}, False),
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


OTHER_MACHINE_ARGUMENT = (
    "on a machine other than the baseline's (tests/data/numbers.machine.json), the pinned kernels still round "
    "differently (measured: cross_machine), and a rounding difference changes a smoke cell by what the training "
    "steps make of it, not by a bound of the arithmetic. The gate allows the largest change any rounding "
    "difference was measured to cause: over the unpinned kernel variants on one machine and the pinned runs "
    "across machines. A regression larger than that still fails; smaller ones are caught on the baseline's machine")


def spread() -> None:
    """Run every variant, then write SPREAD: the values, the spreads and the tolerance derived from them."""
    measured: list[dict] = []
    with workspace() as tmp:
        for k, (label, pinned, extra, warm) in enumerate(VARIANTS):
            say(f"[{k + 1}/{len(VARIANTS)}] {label}")
            cache = tmp / ("cache0" if warm else f"cache{k}")
            out = tmp / f"v{k}"
            sweep(SMOKE, out, child_env(cache, extra, pinned))
            values, recorded = _cells(out)
            measured.append({"variant": label, "pinned": pinned, "env": extra, "cpu_kernels": recorded["cpu_kernels"],
                             "values": values})
            if k == 0:
                environment = recorded  # as the runs themselves recorded it
    ref = measured[0]["values"]

    def max_dev(group: list[dict]) -> float:
        return max(abs(v["values"][c] - ref[c]) for v in group for c in ref)

    for v in measured:
        v["max_abs_delta_vs_pinned"] = round(max(abs(v["values"][c] - ref[c]) for c in ref), 6)
    pinned_dev = max_dev([v for v in measured if v["pinned"]])
    unpinned_dev = max_dev([v for v in measured if not v["pinned"]])
    try:  # measurements across machines cannot be made here: keep those recorded
        cross = json.loads(SPREAD.read_text()).get("cross_machine", [])
    except (OSError, ValueError):
        cross = []
    cross_dev = max([float(c["max_abs_delta"]) for c in cross], default=0.0)
    record = {
        "what": "tests/data/baseline_smoke: how far the smoke suite's numbers (accuracy points, per cell and metric "
                "after selection) move with what differs between machines; made by `python tools/regen_numbers.py spread`",
        "measured": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": environment,
        "pins": PINS,
        "tolerance": round(pinned_dev, 6),
        "tolerance_argument": (
            "the largest change of any cell over the pinned variants on the machine that made the baseline (the "
            "gate's setting there). One thread runs the pinned kernels in a fixed order and each run starts from "
            "an empty model cache, so the gate is exact on that machine when this measured spread is 0; a change "
            "beyond it in either direction fails the gate. Across CPU models the pins do not make the numbers "
            "equal (cross_machine): see tolerance_other_machine"),
        "tolerance_other_machine": round(max(pinned_dev, unpinned_dev, cross_dev), 6),
        "tolerance_other_machine_argument": OTHER_MACHINE_ARGUMENT,
        "max_abs_delta_pinned": round(pinned_dev, 6),
        "max_abs_delta_unpinned": round(unpinned_dev, 6),
        "variants": measured,
        "cross_machine": cross,
    }
    write_atomic(SPREAD, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    for v in measured:
        say(f"  {v['max_abs_delta_vs_pinned']:6.2f}  {v['variant']}")
    say(f"wrote {SPREAD.relative_to(ROOT)}: tolerance {record['tolerance']} points "
        f"(pinned spread {pinned_dev:.2f}, unpinned {unpinned_dev:.2f})")


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/regen_numbers.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("refresh", help="rewrite the smoke baseline and the generated docs numbers")
    r.add_argument("--only", choices=("baseline", "docs"), help="rewrite only one of them")
    g = sub.add_parser("gate", help="the smoke suite against the committed baseline, two-sided (exit 1 on a change)")
    g.add_argument("--summary", type=Path, help="also write the gate's Markdown summary to this file")
    g.add_argument("--keep", type=Path, help="copy the smoke results to this folder (to inspect or refresh from)")
    sub.add_parser("check-docs", help="exit 1 when the generated docs numbers differ from what the code prints")
    sub.add_parser("spread", help=f"measure the smoke numbers' spread and write {SPREAD.relative_to(ROOT)}")
    a = p.parse_args(argv)
    if a.command == "refresh":
        if a.only in (None, "baseline"):
            refresh_baseline()
        if a.only in (None, "docs"):
            refresh_docs()
        write_machine()  # what made the numbers just written
        say(f"wrote {MACHINE.relative_to(ROOT)}; commit it with them")
        return 0
    if a.command == "gate":
        return gate(a.summary, a.keep)
    if a.command == "check-docs":
        return check_docs()
    spread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
