"""The Ray executor: one Ray task per run, on an existing cluster (``--address``) or a local one.

A task asks for ``num_cpus`` and ``num_gpus`` (fractional GPUs let several small runs share one;
Ray sets ``CUDA_VISIBLE_DEVICES`` for the task) and returns the run's result rows; the driver
writes them, so the nodes need no filesystem shared with the driver. The driver claims each run
(see :func:`ftbench.sweep.task.claim`) for as long as its task is in flight, so a second sweep on
the same results folder does not submit it too. Ray reruns a task whose worker process died
(``max_retries=1``); a run whose second worker dies too is recorded as ``failed``.
"""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftbench.errors import DiskError, UsageError
from ftbench.results.store import completed_ids, write_result
from ftbench.spec import RunSpec
from ftbench.sweep.local import SweepSummary
from ftbench.sweep.progress import Progress
from ftbench.sweep.task import (BUSY_RETRY_S, Execute, Outcome, RunQueue, WorkerDied, claim, clean_tmp, execute_rows,
                                failed_row, has_result, read_outcome)

# How long the driver waits for a cluster's address to accept a connection (a host that drops packets
# answers nothing: Ray itself would retry for minutes).
CONNECT_TIMEOUT_S = 10.0
CLIENT_PREFIX = "ray://"


def _client_extra_error() -> ImportError | None:
    """Why Ray's client extra cannot be used (``grpc``, which ``pip install "ray[client]"`` brings), or None."""
    try:
        import grpc  # noqa: F401
    except ImportError as e:
        return e
    return None


def check_client_extra(address: str | None) -> None:
    """Refuse a Ray Client address (``ray://host:port``) when Ray's client extra is missing."""
    if address and address.startswith(CLIENT_PREFIX) and _client_extra_error() is not None:
        raise UsageError(f"cannot use the Ray cluster at {address!r}: a Ray Client address (ray://) needs Ray's "
                         "client extra (grpc, not installed): pip install \"ray[client]\"")


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, within ``timeout`` seconds, an address of the form ``[ray://]host:port`` that accepts no
    TCP connection (``auto`` and other forms are left to Ray)."""
    host, sep, port = address.removeprefix(CLIENT_PREFIX).rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, OverflowError) as e:
        why = "no answer" if isinstance(e, TimeoutError) else (getattr(e, "strerror", None) or str(e))
        raise UsageError(f"cannot connect to the Ray cluster at {address!r}: {why} (waited at most {timeout:g} s); "
                         "check the address and that the cluster is up") from None


@dataclass
class RayOptions:
    """Ray settings (flags, or a ``[suites.NAME.ray]`` table)."""

    address: str | None = None  # None: start a local Ray instance for this sweep
    gpus_per_job: float | None = None  # None: 1/per_gpu when the cluster has GPUs and device is not cpu
    cpus_per_job: float = 1.0
    jobs: int | None = None  # runs in flight at once; for a local instance also its CPU count / cpus_per_job
    per_gpu: int = 1

    def check(self) -> None:
        if self.cpus_per_job <= 0:
            raise UsageError(f"ray cpus-per-job must be > 0, got {self.cpus_per_job}")
        if self.gpus_per_job is not None and self.gpus_per_job < 0:
            raise UsageError(f"ray gpus-per-job must be >= 0, got {self.gpus_per_job}")
        if self.jobs is not None and self.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {self.jobs}")
        if self.per_gpu < 1:
            raise UsageError(f"--per-gpu must be >= 1, got {self.per_gpu}")
        check_client_extra(self.address)


def ray_run(spec: RunSpec, device: str, threads: int, workdir: str,
            execute: Execute | None = None) -> list[dict[str, Any]]:
    """The body of a Ray task: run one spec, return its rows (a failure is a ``failed`` row)."""
    from ftbench.sweep.task import set_threads

    set_threads(threads)
    return execute_rows(spec, device, Path(workdir), execute)


def run_ray(
    specs: list[RunSpec],
    out_dir: Path | str,
    device: str = "auto",
    threads: int = 1,
    retry_failed: bool = False,
    progress: bool | None = None,
    opts: RayOptions | None = None,
    execute: Execute | None = None,
) -> SweepSummary:
    """Run every spec without a result in ``out_dir`` as Ray tasks; results are written here.

    ``execute`` replaces :func:`ftbench.execution.runner.execute` in the tasks (tests use it).
    """
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs ray: pip install 'ftbench[ray]'") from None
    from ftbench.execution.runner import work_dir

    opts = opts or RayOptions()
    opts.check()
    if opts.address and not ray.is_initialized():
        check_reachable(opts.address)  # before anything is written
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_tmp(out_dir)
    done_ids = completed_ids(out_dir, retry_failed)
    todo = [s for s in specs if s.run_id not in done_ids]
    summary = SweepSummary(total=len(specs), skipped=len(specs) - len(todo))
    if not todo:
        return summary
    t0 = time.perf_counter()
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if opts.address:
            kw["address"] = opts.address
        elif opts.jobs:
            kw["num_cpus"] = max(1, int(round(opts.jobs * opts.cpus_per_job)))
        try:
            ray.init(**kw)
        except (ConnectionError, TimeoutError) as e:
            raise UsageError(f"cannot connect to the Ray cluster at {opts.address!r}: {e}") from None
        started = True
    try:
        resources = ray.cluster_resources()
        gpus = opts.gpus_per_job
        if gpus is None:
            gpus = 1.0 / opts.per_gpu if resources.get("GPU", 0) and device != "cpu" else 0.0
        if device == "cuda" and not gpus:
            raise UsageError("--device cuda with the Ray executor needs GPUs in the cluster (--gpus-per-job)")
        fits = int(resources.get("CPU", 1) // opts.cpus_per_job) or 1
        if gpus:
            fits = min(fits, int(resources.get("GPU", 0) // gpus) or 1)
        window = opts.jobs or fits
        task = ray.remote(num_cpus=opts.cpus_per_job, num_gpus=gpus, max_retries=1)(ray_run)
        _drive(ray, task, todo, out_dir, device, threads, retry_failed, progress, window, summary, work_dir, execute)
    finally:
        if started:
            ray.shutdown()
    summary.seconds = time.perf_counter() - t0
    return summary


def _drive(ray: Any, task: Any, todo: list[RunSpec], out_dir: Path, device: str, threads: int,
           retry_failed: bool, progress: bool | None, window: int, summary: SweepSummary, work_dir: Any,
           execute: Execute | None) -> None:
    from ftbench.execution.runner import discard_work

    runs = RunQueue(todo)
    inflight: dict[Any, tuple[RunSpec, ExitStack]] = {}

    def finish(spec: RunSpec, outcome: Outcome) -> None:
        summary.count(spec, outcome)
        bar.advance(spec, outcome)

    with Progress(len(todo), progress) as bar:
        try:
            while runs or inflight:
                while len(inflight) < window:
                    spec = runs.pop()
                    if spec is None:
                        break
                    stack = ExitStack()
                    if not stack.enter_context(claim(out_dir, spec.run_id)):
                        stack.close()
                        runs.hold(spec, out_dir, bar.note)
                        continue
                    if has_result(out_dir, spec.run_id, retry_failed):  # finished by someone else meanwhile
                        stack.close()
                        finish(spec, Outcome(spec.run_id, "done"))
                        continue
                    ref = task.remote(spec, device, threads, str(work_dir(out_dir, spec.run_id)), execute)
                    inflight[ref] = (spec, stack)
                bar.running(len(inflight))
                if not inflight:
                    time.sleep(BUSY_RETRY_S)
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    spec, stack = inflight.pop(ref)
                    with stack:  # the claim is held until the result is written
                        rows = _rows(ray, ref, spec)
                        write_result(out_dir, rows)
                        discard_work(work_dir(out_dir, spec.run_id), rows)
                    finish(spec, read_outcome(out_dir, spec.run_id) or Outcome.of(rows[-1]))
                bar.running(len(inflight))
        finally:
            for ref, (_, stack) in inflight.items():
                ray.cancel(ref, force=True)
                stack.close()


def _rows(ray: Any, ref: Any, spec: RunSpec) -> list[dict[str, Any]]:
    """A task's rows; a task that raised or whose workers died becomes a ``failed`` row."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, DiskError):
            raise DiskError(cause.path, cause.reason) from None
        if isinstance(cause, UsageError):
            raise UsageError(str(cause)) from None
        return [failed_row(spec, cause if isinstance(cause, BaseException) else e)]
    except ray.exceptions.RayError as e:  # worker crashed / killed for memory / node died, after a retry
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return [failed_row(spec, WorkerDied(f"Ray worker died (twice): {type(e).__name__}: {first}"[:500]))]
