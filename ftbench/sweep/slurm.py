"""The Slurm executor: runs submitted as a job array through submitit.

Each array task runs a chunk of ``runs_per_job`` runs, one after the other, with the same
claim/skip/run/write steps as a local worker (:func:`ftbench.sweep.task.run_task`), and writes each
run's result file into the results folder itself, so the folder must be on a filesystem the nodes
share. Tasks are ``submitit`` checkpointable: on preemption or time-out (Slurm's ``USR2`` signal,
``signal_delay_s`` before the limit) the task is requeued with the same runs; on restart, runs
with a result are skipped and a run with checkpoints resumes from its last one. Whatever a run
raises once the task got a stop signal (``USR2``, or the ``TERM`` Slurm sends before it kills a job:
e.g. Slurm's TERM killing submitit's ``scontrol requeue`` while its handler runs inside the run) is
blamed on the stop, not the run: nothing is recorded, and the task waits for its requeue or its end
(:func:`ftbench.sweep.task.watch_stop_signals`).

The driver follows the jobs with ``squeue`` (``sacct`` needs accounting, which small clusters often
lack) and the result files; a task that ends without a result for one of its runs (killed, out of
memory, node failure) gets its missing runs submitted once more, then recorded as ``failed``. The
array's job ids are kept in ``<results>/.slurm/submitted.json``, so rerunning the command while the
jobs are still queued or running follows them instead of submitting the runs again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftbench.errors import DiskError, UsageError
from ftbench.results.store import completed_ids, result_path
from ftbench.spec import RunSpec
from ftbench.sweep.local import SweepSummary
from ftbench.sweep.progress import Progress
from ftbench.sweep.task import (Outcome, Preempted, check_stopped, clean_tmp, has_result, read_outcome, record_failure,
                                run_group, run_task, set_threads, stop_signals_received, watch_stop_signals)

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
          "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
POLL_S = 1.0
STOP_WAIT_S = 600.0  # after an interrupted run, how long a task waits for the preemption signal or its kill


@dataclass
class SlurmOptions:
    """Job-array settings (flags, or a ``[suites.NAME.slurm]`` table)."""

    partition: str | None = None
    time: int = 60  # minutes per array task
    gpus_per_job: int | float = 0
    cpus_per_job: int = 1
    mem_gb: float | None = None
    runs_per_job: int = 1
    jobs: int | None = None  # array tasks running at once (None: as many as Slurm allows)
    signal_delay_s: int = 90  # USR2 this long before the time limit: checkpoint and requeue
    additional: dict[str, Any] = field(default_factory=dict)  # extra sbatch options, e.g. {account = "x"}
    setup: list[str] = field(default_factory=list)  # shell lines before the task (module load ...)
    wait: bool = True

    def check(self) -> None:
        for name in ("time", "cpus_per_job", "runs_per_job"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"slurm {name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_job != int(self.gpus_per_job):
            raise UsageError(f"slurm gpus-per-job must be a whole number, got {self.gpus_per_job}")
        self.gpus_per_job = int(self.gpus_per_job)
        if self.gpus_per_job < 0:
            raise UsageError(f"slurm gpus-per-job must be >= 0, got {self.gpus_per_job}")
        if self.jobs is not None and self.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {self.jobs}")


try:  # submitit is an optional extra: the class below exists only where it is installed
    import submitit

    class SlurmChunk(submitit.helpers.Checkpointable):
        """An array task: run its runs one after the other; requeued as is on preemption/time-out."""

        def __call__(self, specs: list[RunSpec], out_dir: str, device: str, threads: int,
                     retry_failed: bool) -> list[Outcome]:
            usr_sig = submitit.JobEnvironment._usr_sig()
            # submitit has installed its handlers (USR2: checkpoint and requeue; TERM: ignored).
            with watch_stop_signals(usr_sig, signal.SIGTERM):
                try:
                    try:
                        return self._run(specs, out_dir, device, threads, retry_failed)
                    except Exception as e:  # raised outside a run (between runs, writing a result)
                        check_stopped("", e)
                        raise
                except Preempted as p:
                    _wait_for_requeue(p, signal.Signals(usr_sig).name)
                    raise  # not reached

        def _run(self, specs: list[RunSpec], out_dir: str, device: str, threads: int,
                 retry_failed: bool) -> list[Outcome]:
            from ftbench.execution.fused import fusable_groups

            set_threads(threads)
            outcomes = []
            # The job's runs that fuse (on GPU nodes by default) train together, as in a local sweep.
            for group in fusable_groups(specs, device):
                try:
                    outcomes += (run_group(group, out_dir, device, retry_failed) if len(group) > 1
                                 else [run_task(group[0], out_dir, device, retry_failed)])
                except DiskError:
                    raise  # a full or read-only results disk: recording a failure would fail too, and mislead
                except UsageError as e:  # e.g. data not fetched on this node: visible, retried with --retry-failed
                    outcomes += [record_failure(spec, out_dir, UsageError(str(e)), retry_failed)
                                 or Outcome(spec.run_id, "busy") for spec in group]
            return outcomes

    def _wait_for_requeue(p: Preempted, usr_sig: str) -> None:
        """After a run was interrupted (:class:`Preempted`): say so, then leave the job to Slurm and
        submitit. Once the preemption signal was handled, its handler (which requeued the job, or was
        cut short by the requeue's TERM) ends the task; after a TERM alone, wait for that signal
        (whose handler checkpoints, requeues and exits) or Slurm's KILL, at most STOP_WAIT_S."""
        print(f"ftbench: {p}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + STOP_WAIT_S
        try:
            while usr_sig not in stop_signals_received() and time.monotonic() < deadline:
                time.sleep(0.5)
        except Exception:  # noqa: BLE001 - the preemption handler raised while we waited (cut short too)
            pass
        raise SystemExit(-1)  # as submitit's handler exits; the driver resubmits a task that was not requeued


except ImportError:  # pragma: no cover
    submitit = None  # type: ignore[assignment]


def _require() -> None:
    if submitit is None:
        raise UsageError("--executor slurm needs submitit: pip install 'ftbench[slurm]'")
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise UsageError("--executor slurm needs the Slurm commands sbatch and squeue on PATH")


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """``{job_id: state}`` of the given jobs (array tasks as ``ARRAY_TASK``), finished ones included
    while Slurm remembers them (MinJobAge); a job Slurm no longer knows is absent."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    if not arrays:
        return {}
    r = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(arrays)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        if "Invalid job id" in r.stderr:
            return {}  # all of them gone
        raise RuntimeError(f"squeue failed: {r.stderr.strip()}")
    states = {}
    for line in r.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        states[jid] = state.split()[0] if state else "UNKNOWN"
    return states


def _job_error(out_dir: Path, job_id: str) -> str:
    """The last line of an array task's stderr log, and where the log is (for a failure message)."""
    from submitit.core.utils import JobPaths

    path = JobPaths(out_dir / ".slurm" / "%j", job_id=job_id, task_id=0).stderr
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"; no log at {path}"
    return f": {lines[-1][:300]} (log {path})" if lines else f"; log {path}"


def _state_file(out_dir: Path) -> Path:
    return out_dir / ".slurm" / "submitted.json"


def _load_submitted(out_dir: Path) -> dict[str, str]:
    try:
        return dict(json.loads(_state_file(out_dir).read_text()))
    except (OSError, ValueError):
        return {}


def _save_submitted(out_dir: Path, submitted: dict[str, str]) -> None:
    path = _state_file(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(submitted, sort_keys=True))
    os.replace(tmp, path)


def _submit(chunks: list[list[RunSpec]], out_dir: Path, device: str, threads: int, retry_failed: bool,
            opts: SlurmOptions, name: str) -> list[Any]:
    executor = submitit.AutoExecutor(folder=out_dir / ".slurm" / "%j", cluster="slurm")
    params: dict[str, Any] = {"timeout_min": int(opts.time), "cpus_per_task": int(opts.cpus_per_job),
                              "name": name, "slurm_signal_delay_s": int(opts.signal_delay_s)}
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.gpus_per_job:
        params["gpus_per_node"] = int(opts.gpus_per_job)
    if opts.mem_gb:
        params["mem_gb"] = opts.mem_gb
    if opts.jobs:
        params["slurm_array_parallelism"] = int(opts.jobs)
    if opts.additional:
        params["slurm_additional_parameters"] = dict(opts.additional)
    if opts.setup:
        params["slurm_setup"] = list(opts.setup)
    executor.update_parameters(**params)
    n = len(chunks)
    try:
        return executor.map_array(SlurmChunk(), chunks, [str(out_dir)] * n, [device] * n, [threads] * n,
                                  [retry_failed] * n)
    except subprocess.CalledProcessError as e:
        out = (e.output or b"").decode(errors="replace") if isinstance(e.output, bytes) else str(e.output or "")
        raise UsageError(f"sbatch refused the job array: {' '.join(out.split())[:300]}") from None


def run_slurm(
    specs: list[RunSpec],
    out_dir: Path | str,
    device: str = "auto",
    threads: int = 1,
    retry_failed: bool = False,
    progress: bool | None = None,
    opts: SlurmOptions | None = None,
    name: str = "ftbench",
) -> SweepSummary:
    """Submit every spec without a result in ``out_dir`` as a Slurm job array and wait for them
    (unless ``opts.wait`` is False: then submit and return)."""
    _require()
    opts = opts or SlurmOptions()
    opts.check()
    logging.getLogger("submitit").setLevel(logging.ERROR)  # it warns on every sacct it cannot run
    out_dir = Path(out_dir).resolve()  # the nodes need the absolute path
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_tmp(out_dir)
    done_ids = completed_ids(out_dir, retry_failed)
    todo = [s for s in specs if s.run_id not in done_ids]
    summary = SweepSummary(total=len(specs), skipped=len(specs) - len(todo))
    by_id = {s.run_id: s for s in todo}
    t0 = time.perf_counter()
    since = time.time() - 1.0

    # Runs already submitted by an earlier invocation whose job is still queued or running: follow them.
    submitted = _load_submitted(out_dir)
    live = squeue_states(list({submitted[r] for r in by_id if r in submitted}))
    following = {r: submitted[r] for r in by_id if live.get(submitted.get(r, ""), "") in ACTIVE}
    attempts: dict[str, int] = {}

    def submit(runs: list[RunSpec]) -> None:
        chunks = [runs[i : i + opts.runs_per_job] for i in range(0, len(runs), opts.runs_per_job)]
        jobs = _submit(chunks, out_dir, device, threads, retry_failed, opts, name)
        for job, chunk in zip(jobs, chunks):
            for s in chunk:
                submitted[s.run_id] = following[s.run_id] = str(job.job_id)
                attempts[s.run_id] = attempts.get(s.run_id, 0) + 1
        _save_submitted(out_dir, submitted)

    fresh = [s for s in todo if s.run_id not in following]
    if fresh:
        submit(fresh)
    if not opts.wait:
        ids = sorted({j.split("_")[0] for j in following.values()})
        print(f"submitted {len(fresh)} runs ({len(todo) - len(fresh)} already queued) as Slurm job(s) "
              f"{', '.join(ids)}; logs in {out_dir / '.slurm'}; run the same command again to wait for them",
              file=sys.stderr)
        summary.seconds = time.perf_counter() - t0
        return summary

    def finished(run_id: str) -> Outcome | None:
        # A result written by this sweep (with --retry-failed an old failed file may be there already).
        path = result_path(out_dir, run_id)
        try:
            fresh_file = path.stat().st_mtime >= since
        except OSError:
            return None
        if fresh_file or has_result(out_dir, run_id, retry_failed):
            return read_outcome(out_dir, run_id)
        return None

    with Progress(len(todo), progress) as bar:
        try:
            while following:
                states = squeue_states(list(set(following.values())))
                for run_id in list(following):
                    outcome = finished(run_id)
                    if outcome is not None:
                        del following[run_id]
                        summary.count(by_id[run_id], outcome)
                        bar.advance(by_id[run_id], outcome)
                # Tasks Slurm says are over, with runs still missing: once more, then failed.
                gone = {j for j in set(following.values()) if states.get(j, "GONE") not in ACTIVE}
                if gone:
                    time.sleep(POLL_S)  # the filesystem may show a just-written result late
                    retry = []
                    for run_id in [r for r, j in following.items() if j in gone]:
                        if finished(run_id) is not None:
                            continue  # counted on the next pass
                        job_id = following.pop(run_id)
                        state = states.get(job_id, "no longer known to Slurm")
                        if attempts.get(run_id, 1) < 2:
                            bar.note(f"Slurm job {job_id} ended ({state}) without a result for {run_id}; "
                                     "submitting it again")
                            retry.append(by_id[run_id])
                        else:
                            outcome = record_failure(by_id[run_id], out_dir,
                                                     f"Slurm job {job_id} ended ({state}) without a result "
                                                     f"(twice){_job_error(out_dir, job_id)}", retry_failed)
                            if outcome is None:
                                bar.note(f"run {run_id} is held by another process; not waiting for it")
                                continue
                            summary.count(by_id[run_id], outcome)
                            bar.advance(by_id[run_id], outcome)
                    if retry:
                        submit(retry)
                bar.running(sum(1 for j in set(following.values()) if states.get(j) == "RUNNING"))
                if following:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            ids = sorted({j.split("_")[0] for j in following.values()})
            if ids:
                bar.note(f"interrupted; Slurm job(s) {', '.join(ids)} go on: run the same command to wait "
                         f"for them again, or scancel {' '.join(ids)}")
            raise
    summary.seconds = time.perf_counter() - t0
    return summary
