"""Sequential local execution of a list of runs, skipping those already in the results folder.

Executors know nothing of training beyond ``execute``; the runner knows nothing of sweeps.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftbench.errors import UsageError
from ftbench.results.store import completed_ids, write_result
from ftbench.spec import RunSpec


@dataclass
class SweepSummary:
    total: int
    skipped: int
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def failed_row(spec: RunSpec, error: BaseException) -> dict[str, Any]:
    """A result row recording a run that raised, so the sweep goes on and the failure is visible."""
    import datetime as dt

    import ftbench

    return {
        **spec.columns(), "variant": "", "shift_level": "",
        "status": "failed", "error": f"{type(error).__name__}: {error}"[:2000],
        "id_acc": float("nan"), "ood_acc": float("nan"), "val_acc": float("nan"),
        "source_val_acc": float("nan"), "ftbench_version": ftbench.__version__,
        "timestamp": dt.datetime.now(dt.timezone.utc),
    }


def run_sweep(
    specs: list[RunSpec],
    out_dir: Path,
    device: str = "auto",
    on_result: Callable[[RunSpec, dict[str, Any]], None] | None = None,
    progress: bool | None = None,
    retry_failed: bool = False,
) -> SweepSummary:
    """Run every spec without a result in ``out_dir``; one parquet file per finished run."""
    from ftbench.train.runner import execute, work_dir

    done_ids = completed_ids(out_dir, retry_failed)
    todo = [s for s in specs if s.run_id not in done_ids]
    summary = SweepSummary(total=len(specs), skipped=len(specs) - len(todo))
    t0 = time.perf_counter()
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(len(todo), show_bar)
    with bar:
        for spec in todo:
            try:
                rows = execute(spec, device, work_dir(out_dir, spec.run_id))
            except UsageError:
                raise
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a failing run is recorded and does not stop the sweep
                rows = [failed_row(spec, e)]
                summary.failures.append(f"{spec.run_id}: {rows[0]['error']}")
                if os.environ.get("FTBENCH_DEBUG"):
                    traceback.print_exc(file=sys.stderr)
            write_result(out_dir, rows)
            row = rows[-1]
            if row["status"] == "ok":
                summary.done += 1
            else:
                summary.failed += 1
            bar.advance(spec, row)
            if on_result:
                on_result(spec, row)
    summary.seconds = time.perf_counter() - t0
    return summary


def describe(spec: RunSpec) -> str:
    """One-line description of a run, naming every field set (so distinct runs read differently)."""
    from ftbench.methods.base import get_method

    shift = spec.shift + (f":{spec.corruption}-{spec.severity}" if spec.corruption else "")
    parts = [f"{spec.benchmark}/{shift}", spec.method + (f" block {spec.blocks_label()}" if spec.blocks else "")]
    variant = get_method(spec.method)(spec).variant()
    if variant:
        parts.append(variant)
    for name in ("lr", "wd", "steps", "epochs", "batch_size", "optimizer", "shots"):
        v = getattr(spec, name)
        if v is not None:
            parts.append(f"{name}={v:g}" if isinstance(v, float) else f"{name}={v}")
    parts.append(f"seed={spec.seed}")
    return " ".join(parts)


class _Progress:
    """A rich progress bar on a terminal; one plain line per run otherwise (CI logs)."""

    def __init__(self, total: int, rich: bool) -> None:
        self.total, self.rich, self.count = total, rich, 0
        self._p: Any = None

    def __enter__(self) -> _Progress:
        if self.rich and self.total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                               TimeRemainingColumn(), TextColumn("{task.description}"), transient=True)
            self._p.__enter__()
            self._task = self._p.add_task("", total=self.total)
        return self

    def advance(self, spec: RunSpec, row: dict[str, Any]) -> None:
        self.count += 1
        msg = (f"{describe(spec)}: OOD {row['ood_acc']:.1f} ID {row['id_acc']:.1f}"
               if row["status"] == "ok" else f"{describe(spec)}: {row['status']} ({row['error']})")
        if self._p is not None:
            self._p.update(self._task, advance=1, description=msg)
        else:
            print(f"[{self.count}/{self.total}] {msg}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
