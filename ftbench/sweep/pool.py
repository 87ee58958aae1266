"""The local executor: a pool of worker processes, one per GPU slot or ``--jobs`` CPU workers.

Workers are spawned (not forked: CUDA and torch's thread pools do not survive a fork), each with
its own ``CUDA_VISIBLE_DEVICES`` when there are GPUs, and each pinned to ``threads`` torch threads.
The driver hands one run at a time to an idle worker; the worker claims the run (an exclusive
lock, see :mod:`ftbench.sweep.task`), runs it and writes its result file itself, so a finished run
survives the driver's death. Workers die with the driver (``PR_SET_PDEATHSIG`` on Linux), so a
killed sweep leaves no orphan still training.

A worker that dies while running (SIGKILL, the OOM killer, a segfault) is noticed through its
process sentinel: if its run has no result, the run is queued again once, and recorded as
``failed`` (error ``WorkerDied: ...``) if its second worker dies too. A new worker takes the dead
one's place.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from ftbench.errors import DiskError, UsageError, disk_error
from ftbench.results.store import completed_ids
from ftbench.spec import RunSpec
from ftbench.sweep.local import SweepSummary
from ftbench.sweep.progress import Progress
from ftbench.sweep.task import (BUSY_RETRY_S, Execute, Outcome, RunQueue, clean_tmp, has_result, read_outcome,
                                record_failure, run_task, stopped_by_disk)

MAX_ATTEMPTS = 2  # a run whose worker dies is run once more; a second death records it as failed


def visible_gpus(device: str = "auto") -> list[str]:
    """The GPU ids a worker may be given as ``CUDA_VISIBLE_DEVICES`` (none with ``--device cpu``)."""
    if device == "cpu":
        return []
    import torch

    n = torch.cuda.device_count()
    if n == 0:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in env.split(",") if x.strip()] if env else [str(i) for i in range(n)]
    return ids[:n]


def worker_slots(device: str = "auto", jobs: int | None = None, per_gpu: int = 1,
                 limit: int | None = None) -> list[str | None]:
    """One entry per worker: its GPU id, or None for a CPU worker.

    With GPUs: ``jobs`` workers (default: ``per_gpu`` per GPU), ``per_gpu`` consecutive workers
    sharing each GPU. Without: ``jobs`` CPU workers (default 1). At most ``limit`` (the runs to
    do: more workers would idle), so a huge ``--jobs`` costs nothing.
    """
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    if per_gpu < 1:
        raise UsageError(f"--per-gpu must be >= 1, got {per_gpu}")
    gpus = visible_gpus(device)
    n = jobs or (len(gpus) * per_gpu if gpus else 1)
    n = max(1, min(n, limit)) if limit is not None else n
    if gpus:
        return [gpus[(i // per_gpu) % len(gpus)] for i in range(n)]
    return [None] * n


@dataclass
class _Worker:
    gpu: str | None
    process: Any  # multiprocessing.context.SpawnProcess
    conn: Connection
    spec: RunSpec | None = None


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the driver dies; exit if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # pragma: no cover - no prctl: the closed pipe ends the worker instead
            pass
    if os.getppid() != parent:
        os._exit(0)


def _worker_main(conn: Connection, parent: int, out_dir: str, device: str, threads: int,
                 retry_failed: bool, execute: Execute | None) -> None:
    """A worker: take a spec, run it (writing its result), report, until told to stop."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    from ftbench import status
    from ftbench.sweep.task import set_threads

    set_threads(threads)
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return  # the driver is gone
        if spec is None:
            return
        try:
            # A long step inside the run (training a source model) shows in the driver's progress.
            with status.sink(lambda m: conn.send(("status", m))):
                msg: tuple[str, Any] = ("outcome", run_task(spec, out_dir, device, retry_failed, execute))
        except DiskError as e:  # the driver stops the sweep: every other run would fail the same way
            msg = ("disk", (e.path, e.reason))
        except UsageError as e:
            msg = ("usage", str(e))
        try:
            conn.send(msg)
        except (BrokenPipeError, OSError):
            return


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the out-of-memory killer?)" if -exitcode == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with code {exitcode}"


def run_pool(
    specs: list[RunSpec],
    out_dir: Path | str,
    device: str = "auto",
    jobs: int | None = None,
    per_gpu: int = 1,
    threads: int = 1,
    retry_failed: bool = False,
    progress: bool | None = None,
    execute: Execute | None = None,
) -> SweepSummary:
    """Run every spec without a result in ``out_dir`` on a pool of worker processes.

    ``execute`` replaces :func:`ftbench.execution.runner.execute` in the workers (a picklable,
    importable function; tests use it to kill workers). A full or read-only disk (in any worker,
    or here) stops the sweep at once: the running workers are stopped, none is respawned, and a
    UsageError says which path and what was kept.
    """
    try:
        return _run_pool(specs, Path(out_dir), device, jobs, per_gpu, threads, retry_failed, progress, execute)
    except DiskError as e:
        try:  # the workers stopped mid-write are dead (their claims released): remove their temp files
            clean_tmp(out_dir)
        except (OSError, UsageError):
            pass  # a read-only disk: nothing could have been written there either
        raise stopped_by_disk(e, out_dir, specs) from None


def _run_pool(specs: list[RunSpec], out_dir: Path, device: str, jobs: int | None, per_gpu: int, threads: int,
              retry_failed: bool, progress: bool | None, execute: Execute | None) -> SweepSummary:
    import multiprocessing as mp

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise disk_error(e, out_dir) or e
    clean_tmp(out_dir)
    done_ids = completed_ids(out_dir, retry_failed)
    todo = [s for s in specs if s.run_id not in done_ids]
    summary = SweepSummary(total=len(specs), skipped=len(specs) - len(todo))
    slots = worker_slots(device, jobs, per_gpu, limit=len(todo))
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    runs = RunQueue(todo)
    attempts: Counter[str] = Counter()
    idle_deaths = 0
    workers: list[_Worker] = []

    def start(gpu: str | None) -> _Worker:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, daemon=True, name=f"ftbench-worker-{gpu or 'cpu'}",
                           args=(child, os.getpid(), str(out_dir), device, threads, retry_failed, execute))
        # The child's environment is copied at start: set its GPU and thread count around start().
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        return _Worker(gpu, proc, parent)

    def finish(w: _Worker, spec: RunSpec, outcome: Outcome) -> None:
        summary.count(spec, outcome)
        bar.advance(spec, outcome)

    def died(w: _Worker) -> None:
        nonlocal idle_deaths
        w.process.join(5.0)  # its exit code, once it has finished exiting (else "None")
        reason = _death(w.process.exitcode)
        w.conn.close()
        spec, w.spec = w.spec, None
        workers.remove(w)
        if spec is None:
            idle_deaths += 1
            if idle_deaths > 2 * len(slots) + 2:
                raise RuntimeError(f"sweep workers keep dying before running anything ({reason})")
        elif has_result(out_dir, spec.run_id, retry_failed):  # it wrote its result, then died
            finish(w, spec, read_outcome(out_dir, spec.run_id) or Outcome(spec.run_id, "done"))
        else:
            attempts[spec.run_id] += 1
            if attempts[spec.run_id] < MAX_ATTEMPTS:
                bar.note(f"{reason} while running {spec.run_id}; running it again")
                runs.append(spec)
            else:
                outcome = record_failure(spec, out_dir, f"{reason} (twice)", retry_failed)
                if outcome is None:  # someone else holds it now
                    runs.hold(spec)
                else:
                    finish(w, spec, outcome)
        if runs or any(x.spec for x in workers):
            workers.append(start(w.gpu))

    with Progress(len(todo), progress) as bar:
        try:
            workers.extend(start(gpu) for gpu in (slots if todo else []))
            while runs or any(w.spec for w in workers):
                for w in workers:
                    if w.spec is None and w.process.is_alive():
                        spec = runs.pop()
                        if spec is None:
                            break
                        w.spec = spec
                        w.conn.send(spec)
                bar.running(sum(1 for w in workers if w.spec))
                waitables: list[Any] = [w.conn for w in workers if w.spec] + [w.process.sentinel for w in workers]
                ready = set(wait(waitables, timeout=BUSY_RETRY_S if runs.held else None))
                for w in list(workers):
                    if w.conn in ready or (w.process.sentinel in ready and w.conn.poll()):
                        try:
                            kind, value = w.conn.recv()
                        except (EOFError, OSError):
                            died(w)
                            continue
                        if kind == "status":  # the run goes on
                            bar.status(value)
                            continue
                        spec, w.spec = w.spec, None
                        assert spec is not None
                        if kind == "disk":
                            raise DiskError(*value)
                        if kind == "usage":
                            raise UsageError(value)
                        if value.status == "busy":
                            runs.hold(spec, out_dir, bar.note)
                        else:
                            finish(w, spec, value)
                    if w.process.sentinel in ready and not w.process.is_alive() and w in workers:
                        died(w)
                bar.running(sum(1 for w in workers if w.spec))
        finally:
            _stop(workers)
    summary.seconds = time.perf_counter() - t0
    return summary


def _stop(workers: list[_Worker]) -> None:
    """Ask idle workers to exit; kill the ones still running (interrupt, error)."""
    for w in workers:
        try:
            if w.spec is None:
                w.conn.send(None)
            else:
                w.process.kill()
        except (BrokenPipeError, OSError):
            pass
    deadline = time.monotonic() + 5.0
    for w in workers:
        w.process.join(max(0.0, deadline - time.monotonic()))
        if w.process.is_alive():
            w.process.kill()
            w.process.join(1.0)
        w.conn.close()
