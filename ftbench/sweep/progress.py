"""The sweep's progress display, shared by every executor.

On a terminal: one rich progress bar with runs done/total, runs in flight, failures, the ETA and
the latest result. Elsewhere (CI logs, files): one plain line per finished run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ftbench.spec import RunSpec
from ftbench.sweep.task import Outcome


STATUS_EVERY_S = 10.0


class Progress:
    """Progress of ``total`` runs; use as a context manager, then :meth:`advance` per finished run."""

    def __init__(self, total: int, rich: bool | None = None, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.rich = self.stream.isatty() if rich is None else rich
        self.count = self.failed = self.in_flight = 0
        self._p: Any = None
        self._latest = ""  # the bar's description: the latest result
        self._status_at = -STATUS_EVERY_S

    def __enter__(self) -> Progress:
        if self.rich and self.total:
            from rich.console import Console
            from rich.table import Column
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(
                TextColumn("[bold]sweep"), BarColumn(bar_width=30), MofNCompleteColumn(),
                TextColumn("{task.fields[in_flight]} running", table_column=Column(no_wrap=True)),
                TextColumn("{task.fields[failed]} failed", table_column=Column(no_wrap=True)),
                TimeRemainingColumn(), TextColumn("{task.description}", table_column=Column(no_wrap=True)),
                transient=True, console=Console(file=self.stream, force_terminal=True),
            )
            self._p.__enter__()
            self._task = self._p.add_task("", total=self.total, in_flight=0, failed=0)
        return self

    def running(self, n: int) -> None:
        """Set the number of runs in flight."""
        if n != self.in_flight:
            self.in_flight = n
            if self._p is not None:
                self._p.update(self._task, in_flight=n)

    def status(self, message: str) -> None:
        """Progress of a step inside a running run (ftbench.status: a source model being trained), shown
        in the bar's description on a terminal, elsewhere as a line at most every STATUS_EVERY_S;
        ``""`` when that step ends."""
        if self._p is not None:
            self._p.update(self._task, description=self._fit(message) or self._latest)
        elif message and time.monotonic() - self._status_at >= STATUS_EVERY_S:
            self._status_at = time.monotonic()
            print(message, file=self.stream, flush=True)

    def _fit(self, msg: str) -> str:
        """``msg`` cut to the width the bar's counts leave for the description."""
        room = max(20, self._p.console.width - 80)
        return msg if len(msg) <= room else msg[: room - 1] + "…"

    def note(self, message: str) -> None:
        """A line that is not a result (a retried run, a run held elsewhere)."""
        if self._p is not None:
            self._p.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    def advance(self, spec: RunSpec, outcome: Outcome) -> None:
        """Count one finished run and show its result."""
        from ftbench.sweep.describe import describe

        self.count += 1
        if outcome.status == "ok":
            result = f"OOD {outcome.ood_acc:.1f} ID {outcome.id_acc:.1f}"
        elif outcome.status == "done":
            result = "finished by another process"
        else:
            self.failed += 1
            from ftbench.text import clean

            result = clean(f"{outcome.status} ({outcome.error})", newlines=False)  # an error may quote a file's text
        if self._p is not None:
            # The latest result first (the run's description is cut to the width the counts leave).
            self._latest = self._fit(f"{result} · {describe(spec)}")
            self._p.update(self._task, advance=1, description=self._latest, failed=self.failed)
        else:
            print(f"[{self.count}/{self.total}] {describe(spec)}: {result}", file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
