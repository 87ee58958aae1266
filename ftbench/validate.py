"""The checks of user input that are not names: numbers (types, finiteness, ranges) and output paths.

Every numeric field of a run (CLI flag or suites-file key) and every numeric executor setting is
checked here, against one table, so a flag and its suites key take the same values and say the
same thing when they do not. Names (benchmarks, methods, blocks, ...) are checked by their
registries; benchmark-specific bounds (the most shots a benchmark has) by the benchmark.

Bounds come from what stores or takes the value: every integer of a run is an ``int64`` column
of the results (so at most 2**63 - 1; numpy's ``SeedSequence`` takes any non-negative seed and
torch's ``manual_seed`` up to 2**64 - 1, so the column is the binding limit for seeds), thread
and worker counts go to C ``int`` parameters (torch.set_num_threads, Slurm's array throttle).
Counts that size work (steps, epochs, batch size, checkpoints, shots; threads and workers) also
have a *limit*: far above the largest value the papers use (or machines have), low enough that a
typo (an extra digit, 2**63 - 1) is refused at once instead of allocating terabytes or never
finishing (docs/cli.md#limits).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftbench.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")  # --device

INT64_MAX = 2**63 - 1
C_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Number:
    """What a numeric input accepts: an integer or any number, finite, in ``[low, high]``
    (``low`` excluded when ``open_low``)."""

    integer: bool
    low: float
    high: float = math.inf
    open_low: bool = False
    # True: ``high`` is ftbench's limit against runaway work, not part of what the number means;
    # the messages then name it only for a value above it ("a positive integer" below it).
    limit: bool = False

    def words(self) -> str:
        """The accepted values in words, as the messages say them."""
        if self.integer:
            if self.low == 1 and (self.high >= C_INT_MAX or self.limit):
                return "a positive integer"
            return f"an integer in {_fmt(self.low)}..{_fmt(self.high)}"
        if self.low == 0:
            return "a positive number" if self.open_low else "a non-negative number"
        return f"a number {'>' if self.open_low else '>='} {_fmt(self.low)}"

    def accepted(self) -> str:
        """The accepted range, spelt out (for the part after "accepted:")."""
        kind = "integers" if self.integer else "finite numbers"
        low = f"{'>' if self.open_low else '>='} {_fmt(self.low)}"
        return f"{kind} {low}" if self.high == math.inf else f"{kind} {low} and <= {_fmt(self.high)}"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not accepted (None: it is)."""
        if isinstance(value, bool) or not isinstance(value, int | float) or (self.integer and not isinstance(value, int)):
            what = "a boolean" if isinstance(value, bool) else f"a {_type_name(value)}"
            return f"must be {self.words()}, got {_show(value)} ({what})"
        if self.limit and math.isfinite(value) and value > self.high:
            return (f"must be {'an integer' if self.integer else 'a number'} in {_fmt(self.low)}..{_fmt(self.high)}, "
                    f"got {_show(value)} (ftbench's limit against runaway work: docs/cli.md#limits)")
        if not math.isfinite(value) or value < self.low or (self.open_low and value == self.low) or value > self.high:
            words = self.words()
            # the range is in the words already, or the value is below a bound the words name
            plain = words.startswith("an integer in") or (self.integer and words == "a positive integer"
                                                            and value < self.low)
            more = "" if plain else f"; accepted: {self.accepted()}"
            return f"must be {words}, got {_show(value)}{more}"
        return None


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _type_name(value: Any) -> str:
    return {str: "string", list: "list", dict: "table", float: "float", int: "integer"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


# RunSpec fields that hold numbers (the CLI flag is --NAME with '-' for '_'; the suites key NAME).
# The limits of the counts, each with the largest value of the papers' recipes (ftbench/papers/
# recipes.toml) it leaves room above; docs/cli.md#limits lists them.
RUN_NUMBERS: dict[str, Number] = {
    "lr": Number(False, 0, open_low=True),
    "wd": Number(False, 0),
    # WiSE-FT/FLYP on ImageNet: 10 epochs x 2,503 steps of 512 = 25,030 steps; 400x that
    "steps": Number(True, 1, 10_000_000, limit=True),
    "epochs": Number(True, 1, 10_000, limit=True),  # SpotTune's 110 (main.py --nb_epochs); 90x that
    "batch_size": Number(True, 1, 65_536, limit=True),  # WiSE-FT/FLYP's 512; 128x that
    # the benchmarks bound shots by their data (ImageNet: 1,300 images a class); 750x that
    "shots": Number(True, 1, 1_000_000, limit=True),
    "severity": Number(True, 1, 5),
    "checkpoints": Number(True, 1, 10_000, limit=True),  # the PETL study's 100 (an evaluation an epoch); 100x
    "seed": Number(True, 0, INT64_MAX),
    "warmup": Number(True, 0, 10_000_000, limit=True),  # wise-ft/FLYP/AutoFT: 500 steps; at most the steps limit
    "clip_grad": Number(False, 0, open_low=True),
}
# Executor settings (flags of `ftbench sweep`, or [suites.NAME.slurm] / [suites.NAME.ray] keys).
# Threads and worker processes: ftbench's limit, 8x the 512 logical CPUs of the largest two-socket
# servers (2**31 - 1 threads would each be started: torch.set_num_threads does not refuse them).
MAX_WORKERS = 4_096
SETTING_NUMBERS: dict[str, Number] = {
    "threads": Number(True, 1, MAX_WORKERS, limit=True),
    "jobs": Number(True, 1, MAX_WORKERS, limit=True),
    "per_gpu": Number(True, 1, MAX_WORKERS, limit=True),
    "time": Number(True, 1, C_INT_MAX),
    "runs_per_job": Number(True, 1, C_INT_MAX),
    "signal_delay_s": Number(True, 0, C_INT_MAX),
    "cpus_per_job": Number(False, 0, C_INT_MAX, open_low=True),
    "gpus_per_job": Number(False, 0, C_INT_MAX),
    "mem_gb": Number(False, 0, open_low=True),
}


def check_run_numbers(spec: Any) -> None:
    """Raise a UsageError for the first numeric field of ``spec`` that is not accepted (None: unset)."""
    for name, rule in RUN_NUMBERS.items():
        value = getattr(spec, name)
        if value is not None:
            problem = rule.problem(value)
            if problem:
                raise UsageError(f"{name} {problem}")


def run_value_problem(key: str, field: str, value: Any) -> str | None:
    """Why ``value`` is no value of suites key ``key`` (setting RunSpec field ``field``), or None.
    Checks one entry of a grid axis: its type, and for numbers its range."""
    if field in RUN_NUMBERS:
        problem = RUN_NUMBERS[field].problem(value)
        return f"{key} {problem}" if problem else None
    if field == "blocks":  # 1 | "last" | [1, 2] (one entry = one block set)
        if isinstance(value, list) and not value:  # would be no block given: the method's default block
            return ("block sets must name at least one block, got an empty set []; accepted: a block name or "
                    "number, or a non-empty list of them (one block set)")
        items = value if isinstance(value, list) else [value]
        for b in items:
            if isinstance(b, bool) or not isinstance(b, int | str):
                return (f"block must be a block name or number, or a list of them (one block set), got {_show(b)} "
                        f"({'a boolean' if isinstance(b, bool) else 'a ' + _type_name(b)})")
        return None
    if not isinstance(value, str):
        return f"{key} must be a string, got {_show(value)} ({'a boolean' if isinstance(value, bool) else 'a ' + _type_name(value)})"
    return None


def check_settings(settings: dict[str, Any]) -> None:
    """Raise a UsageError for the first numeric executor setting that is not accepted."""
    for name, value in settings.items():
        if name in SETTING_NUMBERS and value is not None:
            problem = SETTING_NUMBERS[name].problem(value)
            if problem:
                raise UsageError(f"--{name.replace('_', '-')} {problem}")


# ---------------------------------------------------------------------------------------------
# Output paths


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path) -> str | None:
    """Try to create (and remove) a file in ``folder``: the one test of writability that holds for
    root, read-only mounts, ACLs and network file systems alike. Returns why not, or None."""
    try:
        fd, name = tempfile.mkstemp(prefix=".ftbench-probe-", dir=folder)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(name)
    return None


def _broken_link(path: Path) -> tuple[Path, str] | None:
    """The first symbolic link on ``path`` (itself or a parent) that leads nowhere, and why: a folder
    cannot be created through it (``mkdir`` says only "File exists"). None: no such link."""
    import errno

    for q in (path, *path.parents):
        if q.is_symlink() and not q.exists():
            try:
                q.stat()
            except OSError as e:
                if e.errno == errno.ELOOP:
                    return q, "a loop of symbolic links"
            return q, f"its target {os.readlink(q)!r} does not exist"
    return None


def check_output_dir(path: Path | str, what: str, writable: bool = True) -> None:
    """``path`` can be a results folder: an existing writable folder, or one that can be created
    (no file in the way, the nearest existing parent writable). Creates nothing. With
    ``writable=False`` only that no file is in the way (a folder that is only read)."""
    p = Path(path)
    broken = _broken_link(p)
    if broken is not None:
        link, why = broken
        where = "is" if link == p else f"lies under {str(link)!r}, which is"
        raise UsageError(f"{what} {str(p)!r} {where} a symbolic link that leads nowhere ({why}); give a folder, "
                         "or a link to one")
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} {str(p)!r} is a file, not a folder; give a folder (it is created if missing)")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise UsageError(f"{what} {str(p)!r} lies under {str(base)!r}, which is a file, not a folder")
    why = _probe(base) if writable else None
    if why:
        where = "" if base == p else f" (its parent {str(base)!r} cannot be written to)"
        raise UsageError(f"{what} {str(p)!r} is not writable: {why}{where}")


def check_output_file(path: Path | str, what: str) -> None:
    """``path`` can be written: not a folder, no file in the way of its folder, that folder (or
    the nearest existing parent, as missing folders are created) writable; an existing FIFO or
    device (written into, see :mod:`ftbench.outfile`) writable itself. Creates nothing."""
    from ftbench.outfile import output_kind

    p = Path(path)
    kind, target = output_kind(p, what)  # a folder or a symlink loop: refused there
    if kind == "stream":  # a FIFO or device is written into, not replaced: it must take writes itself
        if not os.access(target, os.W_OK):
            raise UsageError(f"{what} {str(p)!r} cannot be written: permission denied")
        return
    base = _nearest_existing(target.parent if p.is_symlink() else p.parent)  # a link's file is written where it points
    if not base.is_dir():
        raise UsageError(f"{what} {str(p)!r} lies under {str(base)!r}, which is a file, not a folder")
    why = _probe(base)
    if why:
        raise UsageError(f"{what} {str(p)!r} cannot be written: {why} (in {str(base)!r})")
