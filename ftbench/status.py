"""Progress of long steps inside a run (training a source model), so no wait is silent.

Where it goes, in this order:

* a **sink** set by whoever owns the screen (:func:`sink`): an in-process sweep's progress bar shows
  the step in its description instead of a second live display;
* otherwise, by ``$FTBENCH_PROGRESS`` (``auto`` by default): ``bar`` draws a transient rich bar on
  stderr (epochs, loss, ETA), ``lines`` prints a line when it starts, at every tenth of the work
  (at most one per 5 s) and when it ends (logs, CI), ``off`` prints nothing; ``auto`` is ``bar`` when stderr is a
  terminal and ``lines`` otherwise.

Reporting reads the loss once per report (a device sync on a GPU, at most ~40 per task), and
changes nothing that is computed: tested bit for bit.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

MODES = ("auto", "bar", "lines", "off")
LINE_EVERY_S = 5.0  # lines mode: a line per tenth of the work, at most one per this many seconds
_sink: list[Callable[[str], None]] = []


@contextmanager
def sink(show: Callable[[str], None]) -> Iterator[None]:
    """Within the block, progress messages go to ``show(message)`` (``""`` when a task ends)."""
    _sink.append(show)
    try:
        yield
    finally:
        _sink.pop()


def mode() -> str:
    m = os.environ.get("FTBENCH_PROGRESS", "auto").strip().lower() or "auto"
    if m not in MODES:
        m = "auto"  # the CLI refuses a typo before it starts (ftbench/environment.py); a run under way goes on
    if m == "auto":
        m = "bar" if sys.stderr.isatty() else "lines"
    return m


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s} s"


class Task:
    """A task of ``total`` steps grouped in ``unit``s of ``per_unit`` steps (epochs of batches)."""

    def __init__(self, label: str, total: int, per_unit: int = 1, unit: str = "epoch", about: str = "") -> None:
        self.label, self.total, self.per_unit, self.unit = label, max(1, total), max(1, per_unit), unit
        self.units = -(-self.total // self.per_unit)
        self.every = max(1, self.total // 40)  # how often update() is worth calling
        self.t0 = time.perf_counter()
        self._mode = "sink" if _sink else mode()
        self._next_line = 0.1
        self._printed = 0.0  # elapsed seconds at the last line printed
        self._bar: Any = None
        if self._mode == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=30),
                                 TextColumn("{task.fields[detail]}"), TimeRemainingColumn(),
                                 transient=True, console=Console(file=sys.stderr, force_terminal=True))
            self._bar.__enter__()
            self._id = self._bar.add_task(label, total=self.total, detail="")
        elif self._mode == "lines":
            print(f"{label}: {self.total:,} steps ({self.units} {self.unit}s){'; ' + about if about else ''}",
                  file=sys.stderr, flush=True)

    def _detail(self, step: int, loss: float) -> str:
        return f"{self.unit} {min(self.units, -(-step // self.per_unit))}/{self.units}, loss {loss:.3f}"

    def update(self, step: int, loss: float) -> None:
        """After step ``step`` (1-based) of ``total``, with the latest loss."""
        if self._mode == "off":
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / step * (self.total - step) if step else 0.0
        if self._mode == "sink":
            _sink[-1](f"{self.label}: {self._detail(step, loss)}, ETA {_clock(eta)}")
        elif self._bar is not None:
            self._bar.update(self._id, completed=step, detail=self._detail(step, loss))
        elif (step / self.total >= self._next_line and elapsed - self._printed >= LINE_EVERY_S) \
                or (step == self.total and self._printed > 0):
            while self._next_line <= step / self.total:
                self._next_line += 0.1
            self._printed = elapsed
            print(f"{self.label}: {self._detail(step, loss)}, {_clock(elapsed)} elapsed, ETA {_clock(eta)}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        took = _clock(time.perf_counter() - self.t0)
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
            print(f"{self.label}: done in {took}", file=sys.stderr, flush=True)
        elif self._mode == "sink":
            _sink[-1]("")
        elif self._mode == "lines":
            print(f"{self.label}: done in {took}", file=sys.stderr, flush=True)
