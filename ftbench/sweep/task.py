"""One run of a sweep, as every executor runs it: claim it, skip it if done, run it, write it.

The results folder is the sweep's only state. A run is *claimed* with an exclusive ``flock`` on
``<results>/.work/<run_id>.lock`` before it runs, so two workers (of one sweep or of two sweeps
sharing a folder, e.g. a local pool and a Slurm array) never run the same id at the same time.
The kernel drops the lock when its holder dies, however it dies (SIGKILL, OOM killer, node
reboot), so a crash never leaves a run claimed. After claiming, the worker checks again whether the
run has a result (another worker may have finished it in between), so each run is done once.

A run that raises after its process was told to stop (a Slurm job being preempted, timed out or
requeued: see :func:`watch_stop_signals`) is not recorded as ``failed``: the stop caused the error
(e.g. Slurm's TERM killed submitit's ``scontrol requeue`` child while its handler ran inside the
run), so :class:`Preempted` is raised instead, nothing is written, and the requeued job runs it.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftbench.errors import DiskError, UsageError, disk_error
from ftbench.results.store import is_done, result_path, write_result
from ftbench.spec import RunSpec

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; one sweep per folder there
    fcntl = None  # type: ignore[assignment]

Execute = Callable[[RunSpec, str, Any], list[dict[str, Any]]]


@dataclass(frozen=True)
class Outcome:
    """What became of one run, as reported to the sweep's driver.

    ``status`` is a result status (``ok``, ``failed``, ``diverged``), or ``done`` (someone else
    finished it first: nothing was run), or ``busy`` (another process holds the run: not run here).
    """

    run_id: str
    status: str
    id_acc: float = float("nan")
    ood_acc: float = float("nan")
    error: str = ""

    @classmethod
    def of(cls, row: dict[str, Any]) -> Outcome:
        return cls(row["run_id"], row["status"], row["id_acc"], row["ood_acc"], row.get("error") or "")

    @property
    def ran(self) -> bool:
        """True when this process produced the run's result (as opposed to done/busy)."""
        return self.status not in ("done", "busy")


BUSY_RETRY_S = 1.0  # how often a run held by another process is tried again


class RunQueue:
    """The runs an executor still has to start: fresh ones in order, then those another process
    holds (each tried again :data:`BUSY_RETRY_S` after it was found held)."""

    def __init__(self, specs: list[RunSpec]) -> None:
        self.pending: deque[RunSpec] = deque(specs)
        self.held: dict[str, tuple[RunSpec, float]] = {}  # run id -> (spec, when to try again)

    def __bool__(self) -> bool:
        return bool(self.pending or self.held)

    def append(self, spec: RunSpec) -> None:
        self.pending.append(spec)

    def pop(self) -> RunSpec | None:
        """The next run to start now, or None (nothing pending, no held run due yet)."""
        if self.pending:
            return self.pending.popleft()
        now = time.monotonic()
        for run_id, (spec, when) in self.held.items():
            if when <= now:
                del self.held[run_id]
                return spec
        return None

    def hold(self, spec: RunSpec, out_dir: Path | str | None = None,
             note: Callable[[str], None] | None = None) -> None:
        """Try ``spec`` again later; ``note`` says so (with the holder) the first time it is held."""
        if note is not None and spec.run_id not in self.held:
            note(f"run {spec.run_id} is held by another process ({holder(out_dir, spec.run_id) or '?'}); "
                 "waiting for it")
        self.held[spec.run_id] = (spec, time.monotonic() + BUSY_RETRY_S)


def lock_path(out_dir: Path | str, run_id: str) -> Path:
    return Path(out_dir) / ".work" / f"{run_id}.lock"


@contextmanager
def claim(out_dir: Path | str, run_id: str) -> Iterator[bool]:
    """Try to take run ``run_id`` of ``out_dir`` exclusively; yields False if another process has it.

    The lock file holds the holder's host and pid (for messages only). Lock files are left in place:
    unlinking a flock'ed file lets two processes hold "the" lock on two different inodes.
    """
    path = lock_path(out_dir, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise disk_error(e, path) or e
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    yield False
                    return
                raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.uname().nodename if hasattr(os, 'uname') else ''} {os.getpid()}\n".encode())
        except OSError as e:  # a full disk: the lock holds all the same, but nothing more can be written
            raise disk_error(e, path) or e
        yield True
    finally:
        os.close(fd)  # releases the lock


def holder(out_dir: Path | str, run_id: str) -> str:
    """``host pid`` of the last process that claimed the run (for messages)."""
    try:
        return lock_path(out_dir, run_id).read_text().strip()
    except OSError:
        return ""


def has_result(out_dir: Path | str, run_id: str, retry_failed: bool = False) -> bool:
    """Whether run ``run_id`` counts as done in ``out_dir`` (see ``completed_ids``)."""
    path = result_path(Path(out_dir), run_id)
    return path.is_file() and is_done(path, retry_failed)


def read_outcome(out_dir: Path | str, run_id: str) -> Outcome | None:
    """The outcome recorded in a run's result file (its final row), or None without a readable one."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(result_path(Path(out_dir), run_id),
                             columns=["run_id", "status", "id_acc", "ood_acc", "error"]).to_pylist()
    except Exception:
        return None
    return Outcome.of(rows[-1]) if rows else None


def clean_tmp(out_dir: Path | str) -> int:
    """Remove temporary result files left by killed writers; return how many were removed.

    ``.<run_id>.parquet.<pid>.tmp`` (and a temporary file in the run's scratch folder
    ``.work/<run_id>/``, e.g. of its resume state) is stale when nobody holds run ``run_id``: every
    sweep writer holds the run's claim while it writes.
    """
    p = Path(out_dir)
    if not p.is_dir():
        return 0
    removed = 0
    stale = [(f, f.name[1:].split(".parquet.")[0]) for f in p.glob(".*.parquet.*.tmp")]
    stale += [(f, f.parent.name) for f in p.glob(".work/*/.*.tmp")]
    for f, run_id in stale:
        with claim(p, run_id) as mine:
            if mine:
                f.unlink(missing_ok=True)
                removed += 1
    return removed


def set_threads(threads: int) -> int:
    """Pin torch's intra-op threads (returns the previous count): CPU results depend on the thread
    count, and runs sharing cores are faster single-threaded than oversubscribed."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    return previous


class Preempted(BaseException):
    """What a run raised after its process received a stop signal (:func:`watch_stop_signals`): the
    stop, not the run, is its cause, so nothing is recorded and the run is left to the requeued job.

    A BaseException, so that no ``except Exception`` on its way records it as the run's failure.
    """

    def __init__(self, run_id: str, signals: str, error: BaseException) -> None:
        super().__init__(run_id, signals, error)
        self.run_id, self.signals, self.error = run_id, signals, error

    def __str__(self) -> str:
        what = f"run {self.run_id}" if self.run_id else "the job"
        return (f"{what} was interrupted by {self.signals} ({type(self.error).__name__}: {self.error}); "
                "not recorded: it is left to the requeued job")


_stop_signals: list[str] = []  # the stop signals this process received (names, in order)


def stop_signals_received() -> tuple[str, ...]:
    """The stop signals this process received so far (names, e.g. ``SIGTERM``), in order."""
    return tuple(_stop_signals)


def check_stopped(run_id: str, error: BaseException) -> None:
    """Raise :class:`Preempted` (from ``error``) if a stop signal was received: ``error`` was then
    raised while the signal was handled (its handler runs inside the run) or after it."""
    if _stop_signals:
        raise Preempted(run_id, ", ".join(_stop_signals), error) from error


@contextmanager
def watch_stop_signals(*signums: int) -> Iterator[None]:
    """Within the block, note each of ``signums`` as it arrives, *before* calling the handler that
    was installed for it (submitit's checkpoint-and-requeue, which runs inside whatever run is in
    progress and can raise there); from then on a run that raises is :class:`Preempted`, not failed.
    Signals without a Python handler are left alone, and so is every signal outside the main thread
    (only it can set handlers). On exit the handlers are put back."""
    previous: dict[int, Any] = {}
    for signum in signums if threading.current_thread() is threading.main_thread() else ():
        before = signal.getsignal(signum)
        if not callable(before) or signum in previous:
            continue

        def noted(num: int, frame: Any, before: Callable[..., Any] = before) -> None:
            _stop_signals.append(signal.Signals(num).name)
            before(num, frame)

        previous[signum] = before
        signal.signal(signum, noted)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)
        _stop_signals.clear()


def execute_rows(spec: RunSpec, device: str, workdir: Path | None, execute: Execute | None = None) -> list[dict[str, Any]]:
    """Run ``spec``; an exception (including running out of memory) becomes one ``failed`` row.

    A :class:`UsageError` (e.g. a benchmark's data not fetched) is raised: it would fail every run.
    Anything raised after a stop signal (:func:`watch_stop_signals`) is raised as :class:`Preempted`.
    """
    if execute is None:
        from ftbench.execution import runner

        execute = runner.execute  # looked up at call time (tests patch it)
    try:
        return execute(spec, device, workdir)
    except Exception as e:  # includes MemoryError and torch.cuda.OutOfMemoryError
        check_stopped(spec.run_id, e)
        if isinstance(e, UsageError):
            raise
        found = disk_error(e, writing=False)
        if found is not None:  # a full or read-only disk fails every later run too: stop, record nothing
            raise found from None
        if os.environ.get("FTBENCH_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        row = failed_row(spec, e)
        _free_memory()
        return [row]


def _free_memory() -> None:
    # After an out-of-memory error the next run needs the memory back.
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


def run_task(spec: RunSpec, out_dir: Path | str, device: str = "auto", retry_failed: bool = False,
             execute: Execute | None = None) -> Outcome:
    """Claim, run and record one run of a sweep; the run's result file is written atomically."""
    from ftbench.execution.runner import discard_work, work_dir

    out_dir = Path(out_dir)
    with claim(out_dir, spec.run_id) as mine:
        if not mine:
            return Outcome(spec.run_id, "busy")
        if has_result(out_dir, spec.run_id, retry_failed):
            return Outcome(spec.run_id, "done")
        rows = execute_rows(spec, device, work_dir(out_dir, spec.run_id), execute)
        write_result(out_dir, rows)
        discard_work(work_dir(out_dir, spec.run_id), rows)  # only once the row is safe
        return Outcome.of(rows[-1])


def run_group(specs: list[RunSpec], out_dir: Path | str, device: str = "auto", retry_failed: bool = False,
              execute: Execute | None = None) -> list[Outcome]:
    """:func:`run_task` for a group of runs that train together (``ftbench.execution.fused``): each run
    is claimed and re-checked as :func:`run_task` does; those claimed and not done train fused (one
    of them alone trains as usual) and each gets its own result file. One outcome per spec, in order.

    If fused training raises (other than a usage error), the claimed runs are run one by one, so a
    fast-path failure costs time, never a run.
    """
    from contextlib import ExitStack

    from ftbench.execution import fused
    from ftbench.execution.runner import discard_work, work_dir

    out_dir = Path(out_dir)
    outcomes: dict[str, Outcome] = {}
    with ExitStack() as stack:
        todo = []
        for spec in specs:
            if not stack.enter_context(claim(out_dir, spec.run_id)):
                outcomes[spec.run_id] = Outcome(spec.run_id, "busy")
            elif has_result(out_dir, spec.run_id, retry_failed):
                outcomes[spec.run_id] = Outcome(spec.run_id, "done")
            else:
                todo.append(spec)
        rows: dict[str, list[dict[str, Any]]] = {}
        if len(todo) > 1 and execute is None:
            try:
                rows = fused.run_fused(todo, device, {s.run_id: work_dir(out_dir, s.run_id) for s in todo})
            except Exception as e:
                check_stopped(", ".join(s.run_id for s in todo), e)
                if isinstance(e, UsageError):
                    raise
                print(f"warning: fused training of {len(todo)} runs failed ({type(e).__name__}: {e}); "
                      "running them one by one", file=sys.stderr)
                _free_memory()
                rows = {}
        for spec in todo:
            r = rows.get(spec.run_id) or execute_rows(spec, device, work_dir(out_dir, spec.run_id), execute)
            write_result(out_dir, r)
            discard_work(work_dir(out_dir, spec.run_id), r)
            outcomes[spec.run_id] = Outcome.of(r[-1])
    return [outcomes[s.run_id] for s in specs]


def failed_row(spec: RunSpec, error: BaseException) -> dict[str, Any]:
    """A result row recording a run that raised, so the sweep goes on and the failure is visible."""
    import datetime as dt

    import ftbench

    # MemoryError usually has no message; say what it means.
    message = str(error) or ("out of memory" if isinstance(error, MemoryError) else "")
    return {
        **spec.columns(), "variant": "", "shift_level": "",
        "status": "failed", "error": f"{type(error).__name__}: {message}"[:2000],
        "id_acc": float("nan"), "ood_acc": float("nan"), "val_acc": float("nan"),
        "source_val_acc": float("nan"), "ftbench_version": ftbench.__version__,
        "timestamp": dt.datetime.now(dt.timezone.utc),
    }


def record_failure(spec: RunSpec, out_dir: Path | str, error: BaseException | str,
                   retry_failed: bool = False) -> Outcome | None:
    """Write a ``failed`` row for a run whose worker or job died (``error`` as a message or an
    exception); None if another process holds the run. If the run has a result after all (its
    worker wrote it just before dying), that result's outcome is returned and nothing is written."""
    with claim(out_dir, spec.run_id) as mine:
        if not mine:
            return None
        if has_result(out_dir, spec.run_id, retry_failed):
            return read_outcome(out_dir, spec.run_id)
        row = failed_row(spec, WorkerDied(error) if isinstance(error, str) else error)
        write_result(out_dir, [row])
        return Outcome.of(row)


def stopped_by_disk(e: DiskError, out_dir: Path | str, specs: list[RunSpec]) -> UsageError:
    """The one-line error that ends a sweep whose disk filled up or turned read-only: which path,
    why, and what was kept (finished runs are whole files; a run cut short is redone next time)."""
    from ftbench.results.store import completed_ids

    ids = {s.run_id for s in specs}
    try:
        kept = len(completed_ids(out_dir) & ids)
    except OSError:  # pragma: no cover - the folder cannot even be listed
        kept = 0
    return UsageError(f"{e}; the sweep stopped: {kept} of {len(ids)} runs are done and kept in {out_dir} "
                      f"(no partial result files), the other {len(ids) - kept} are not; make room (or make it "
                      "writable) and run the same command again to do them")


class WorkerDied(RuntimeError):
    """The process running a run ended without writing its result (killed, out of memory, ...)."""
