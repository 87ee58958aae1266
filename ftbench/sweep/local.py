"""Sequential local execution of a list of runs, skipping those already in the results folder.

The summary every executor returns lives here too; the failed row is in ``task.py``, run descriptions in
``describe.py``.

Executors know nothing of training beyond ``execute``; the runner knows nothing of sweeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftbench.errors import DiskError
from ftbench.results.store import completed_ids
from ftbench.spec import RunSpec
from ftbench.sweep.progress import Progress
from ftbench.sweep.task import (
    Outcome,
    clean_tmp,
    holder,
    run_group,
    run_task,
    set_threads,
    stopped_by_disk,
)


@dataclass
class SweepSummary:
    total: int
    skipped: int
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def count(self, spec: RunSpec, outcome: Outcome) -> None:
        """Account one run's outcome."""
        if outcome.status == "ok":
            self.done += 1
        elif outcome.status == "done":
            self.skipped += 1  # another process finished it first
        else:
            self.failed += 1
            self.failures.append(f"{spec.run_id}: {outcome.error or outcome.status}")


def run_sweep(
    specs: list[RunSpec],
    out_dir: Path,
    device: str = "auto",
    on_result: Callable[[RunSpec, dict[str, Any]], None] | None = None,
    progress: bool | None = None,
    retry_failed: bool = False,
    threads: int | None = None,
) -> SweepSummary:
    """Run every spec without a result in ``out_dir``, one after the other in this process.

    One parquet file per finished run. ``threads`` pins torch's CPU threads (None: leave them).
    Runs another process holds (see :func:`ftbench.sweep.task.claim`) are waited for at the end.
    A full or read-only disk stops the sweep at once (a UsageError saying what was kept).
    """
    try:
        return _run_sweep(specs, Path(out_dir), device, on_result, progress, retry_failed, threads)
    except DiskError as e:
        raise stopped_by_disk(e, out_dir, specs) from None


def _run_sweep(specs: list[RunSpec], out_dir: Path, device: str,
               on_result: Callable[[RunSpec, dict[str, Any]], None] | None, progress: bool | None,
               retry_failed: bool, threads: int | None) -> SweepSummary:
    clean_tmp(out_dir)
    done_ids = completed_ids(out_dir, retry_failed)
    todo = [s for s in specs if s.run_id not in done_ids]
    summary = SweepSummary(total=len(specs), skipped=len(specs) - len(todo))
    previous = set_threads(threads) if threads is not None and todo else None
    t0 = time.perf_counter()
    from ftbench import status

    with Progress(len(todo), progress) as bar, _restore_threads(previous), status.sink(bar.status):
        pending = list(todo)
        while pending:
            held = []
            # Runs that differ only in lr, wd or seed train together where fused training is on
            # (on CUDA by default; ftbench/execution/fused.py); every other group is one run.
            # torch comes with it: imported only when there is work (not for --dry-run).
            from ftbench.execution.fused import fusable_groups

            for group in fusable_groups(pending, device):
                bar.running(len(group))
                if len(group) == 1:
                    outcomes = [run_task(group[0], out_dir, device, retry_failed)]
                else:
                    outcomes = run_group(group, out_dir, device, retry_failed)
                for spec, outcome in zip(group, outcomes):
                    if outcome.status == "busy":
                        held.append(spec)
                        continue
                    summary.count(spec, outcome)
                    bar.advance(spec, outcome)
                    if on_result:
                        on_result(spec, outcome.__dict__)
            bar.running(0)
            if held:
                bar.note(f"waiting for {len(held)} run(s) held by another process "
                         f"(e.g. {held[0].run_id} by {holder(out_dir, held[0].run_id) or '?'})")
                time.sleep(1.0)
            pending = held
    summary.seconds = time.perf_counter() - t0
    return summary


@contextmanager
def _restore_threads(previous: int | None) -> Iterator[None]:
    # The sweep's thread count is the sweep's: the calling process gets its own back.
    try:
        yield
    finally:
        if previous is not None:
            set_threads(previous)
