"""Choosing and configuring an executor: ``local`` (a process pool), ``slurm`` or ``ray``.

Slurm and Ray settings come from flags, or from a ``[suites.NAME.slurm]`` / ``[suites.NAME.ray]``
table of the suites file (flags win), e.g.::

    [suites.paper.slurm]
    partition = "gpu"
    time = 120            # minutes per array task
    gpus_per_job = 1
    runs_per_job = 4
    additional = { account = "my-lab" }
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from ftbench.errors import DiskError, UsageError, unknown
from ftbench.plan.suites import load_suites, table_line
from ftbench.spec import RunSpec
from ftbench.sweep.local import SweepSummary, run_sweep
from ftbench.sweep.task import stopped_by_disk
from ftbench.validate import SETTING_NUMBERS, check_settings

EXECUTORS = ("local", "slurm", "ray")
# Suite-table keys per executor and the types they take.
SETTINGS: dict[str, dict[str, tuple[type, ...]]] = {
    "slurm": {"partition": (str,), "time": (int,), "gpus_per_job": (int,), "cpus_per_job": (int,),
              "mem_gb": (int, float), "runs_per_job": (int,), "jobs": (int,), "signal_delay_s": (int,),
              "additional": (dict,), "setup": (list,)},
    "ray": {"address": (str,), "gpus_per_job": (int, float), "cpus_per_job": (int, float), "jobs": (int,)},
}


def _line(text: str, suite: str, executor: str, key: str | None) -> int | None:
    """Line of ``key`` in ``[suites.SUITE.EXECUTOR]`` (or of ``EXECUTOR = {...}`` in the suite)."""
    at = table_line(text, rf"\s*\[suites\.{re.escape(suite)}\.{re.escape(executor)}\]", key)
    return at if at is not None else table_line(text, rf"\s*\[suites\.{re.escape(suite)}\]", executor)


def suite_settings(suite: str, path: Path, executor: str) -> dict[str, Any]:
    """The ``[suites.SUITE.EXECUTOR]`` table of a suites file, checked (an error names line and key)."""
    if executor not in SETTINGS:
        return {}
    suites, text = load_suites(path)
    table = suites.get(suite)
    raw = table.get(executor, {}) if isinstance(table, dict) else {}
    where = f"{path}:{_line(text, suite, executor, None)}: suite {suite!r}"
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: {executor} must be a table of settings")
    accepted = SETTINGS[executor]
    for key, value in raw.items():
        where = f"{path}:{_line(text, suite, executor, key)}: suite {suite!r}"
        if key not in accepted:
            raise UsageError(f"{where}: unknown {executor} setting {key!r}; accepted: {', '.join(accepted)}")
        if isinstance(value, bool) or not isinstance(value, accepted[key]):
            kinds = " or ".join(t.__name__ for t in accepted[key])
            raise UsageError(f"{where}: {executor} setting {key!r} must be {kinds}, got {value!r}")
        if key in SETTING_NUMBERS and (problem := SETTING_NUMBERS[key].problem(value)):
            raise UsageError(f"{where}: {executor} setting {key!r} {problem}")
    return dict(raw)


def prepare(executor: str, settings: dict[str, Any] | None = None, *, device: str = "auto", jobs: int | None = None,
            per_gpu: int = 1, threads: int = 1) -> Any:
    """Check an executor's settings before anything runs; returns its options (None for local)."""
    if executor not in EXECUTORS:
        raise unknown("executor", executor, EXECUTORS)
    check_settings({"threads": threads, "jobs": jobs, "per_gpu": per_gpu, **(settings or {})})
    settings = dict(settings or {})
    if jobs is not None:
        settings["jobs"] = jobs
    if executor == "local":
        other = sorted(k for k in settings if k != "jobs")
        if other:
            raise UsageError(f"{', '.join(_flag(k) for k in other)}: not an option of --executor local")
        return None
    if executor == "slurm":
        from ftbench.sweep.slurm import SlurmOptions

        if "cpus_per_job" in settings:
            settings["cpus_per_job"] = int(settings["cpus_per_job"])
        opts = _options(SlurmOptions, settings, "slurm")
        if opts.gpus_per_job == 0 and device == "cuda":
            opts.gpus_per_job = 1
        opts.check()
        return opts
    from ftbench.sweep.ray_executor import RayOptions

    opts = _options(RayOptions, {**settings, "per_gpu": per_gpu}, "ray")
    opts.check()
    return opts


def run(
    executor: str,
    specs: list[RunSpec],
    out_dir: Path,
    *,
    device: str = "auto",
    threads: int = 1,
    retry_failed: bool = False,
    progress: bool | None = None,
    jobs: int | None = None,
    per_gpu: int = 1,
    settings: dict[str, Any] | None = None,
    name: str = "ftbench",
) -> SweepSummary:
    """Run the specs without results on ``executor``; ``settings`` are the Slurm/Ray options
    (suite table merged with flags)."""
    opts = prepare(executor, settings, device=device, jobs=jobs, per_gpu=per_gpu, threads=threads)
    if executor == "local":
        from ftbench.sweep.pool import run_pool, worker_slots

        slots = worker_slots(device, jobs, per_gpu, limit=len(specs))
        if len(slots) == 1:  # one worker: run in this process (no spawn cost), same per-run steps
            return run_sweep(specs, out_dir, device, progress=progress, retry_failed=retry_failed, threads=threads)
        return run_pool(specs, out_dir, device, jobs=len(slots), per_gpu=per_gpu, threads=threads,
                        retry_failed=retry_failed, progress=progress)
    try:
        if executor == "slurm":
            from ftbench.sweep.slurm import run_slurm

            return run_slurm(specs, out_dir, device, threads, retry_failed, progress, opts, name=name)
        from ftbench.sweep.ray_executor import run_ray

        return run_ray(specs, out_dir, device, threads, retry_failed, progress, opts)
    except DiskError as e:  # the local executors say so themselves
        raise stopped_by_disk(e, out_dir, specs) from None


def _options(cls: Any, settings: dict[str, Any], executor: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(k for k in settings if k not in names)
    if bad:
        raise UsageError(f"{', '.join(_flag(k) for k in bad)}: not an option of --executor {executor}")
    return cls(**settings)


def _flag(setting: str) -> str:
    return "--no-wait" if setting == "wait" else "--" + setting.replace("_", "-")
