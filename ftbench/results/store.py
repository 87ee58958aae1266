"""The results folder: one parquet file per run, ``<run_id>.parquet``, written atomically.

A run's file is written to a hidden temporary name in the same folder and renamed into place, so a
folder never holds a half-written result under a real name; readers ignore hidden files. The
columns are documented in docs/results.md; ``SCHEMA`` fixes the types of the core columns, and
methods may add columns of their own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ftbench.errors import UsageError

SCHEMA_VERSION = 1
SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("benchmark", pa.string()),
        ("shift", pa.string()),
        ("shift_level", pa.string()),
        ("corruption", pa.string()),
        ("severity", pa.int64()),
        ("shots", pa.int64()),
        ("model", pa.string()),
        ("weights", pa.string()),  # --weights: a state-dict file, "scratch", or null (the model's default)
        ("method", pa.string()),
        ("blocks", pa.string()),
        ("variant", pa.string()),
        ("options", pa.string()),  # JSON object of the method options
        ("lr", pa.float64()),
        ("wd", pa.float64()),
        ("steps", pa.int64()),
        ("epochs", pa.int64()),
        ("batch_size", pa.int64()),
        ("optimizer", pa.string()),
        ("seed", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("id_acc", pa.float64()),
        ("ood_acc", pa.float64()),
        ("val_acc", pa.float64()),
        ("source_val_acc", pa.float64()),
        ("step", pa.int64()),  # optimizer steps done when evaluated
        ("final", pa.bool_()),  # False for checkpoint rows (--checkpoints), True for the end of training
        ("checkpoints", pa.int64()),
        ("n_target_train", pa.int64()),
        ("n_trainable", pa.int64()),
        ("n_params", pa.int64()),
        ("train_steps", pa.int64()),
        ("train_seconds", pa.float64()),
        ("examples_per_second", pa.float64()),
        ("device", pa.string()),
        ("threads", pa.int64()),  # torch CPU threads (0 on GPU): CPU results depend on it
        ("ftbench_version", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        # What CPU results depend on (docs/ci.md); the regression gate prints which ones differ.
        ("torch_version", pa.string()),
        ("timm_version", pa.string()),
        ("numpy_version", pa.string()),
        ("cpu_model", pa.string()),  # the host CPU, also for GPU runs (the GPU is in `device`)
        ("cpu_kernels", pa.string()),  # instruction set of torch's CPU kernels, e.g. "aten=AVX2 onednn=native mkl=native"
    ]
)
REQUIRED = ("run_id", "benchmark", "shift", "method", "blocks", "seed", "status", "id_acc", "ood_acc", "val_acc")


def result_path(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / f"{run_id}.parquet"


def write_result(out_dir: Path | str, rows: dict[str, Any] | list[dict[str, Any]]) -> Path:
    """Write one run's row(s) to ``<out_dir>/<run_id>.parquet`` atomically; return the path."""
    rows = [rows] if isinstance(rows, dict) else rows
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    norm = []
    for r in rows:
        r = dict(r)
        if not isinstance(r.get("options"), str):
            r["options"] = json.dumps(r.get("options") or {}, sort_keys=True)
        norm.append(r)
    extra = [k for k in norm[0] if k not in SCHEMA.names]
    fields = [f for f in SCHEMA] + [pa.field(k, pa.array([r.get(k) for r in norm]).type) for k in extra]
    table = pa.Table.from_pylist(norm, schema=pa.schema(fields, metadata={"ftbench_schema": str(SCHEMA_VERSION)}))
    path = result_path(out, norm[0]["run_id"])
    tmp = out / f".{path.name}.{os.getpid()}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class Problem:
    """A file in a results folder that could not be used, and why."""

    path: Path
    reason: str


def _check(table: pa.Table, path: Path) -> str | None:
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        return f"not an ftbench results file (missing columns: {', '.join(missing)})"
    if table.num_rows == 0:
        return "no rows"
    return None


def read_results(results_dir: Path | str) -> tuple[pd.DataFrame, list[Problem]]:
    """All rows of a results folder (or one parquet file), plus the files that were skipped."""
    p = Path(results_dir)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.glob("*.parquet") if not f.name.startswith("."))
    else:
        raise UsageError(f"results folder or file {str(p)!r} does not exist")
    frames, problems = [], []
    for f in files:
        try:
            table = pq.read_table(f)
        except Exception as e:  # corrupt, truncated, not parquet
            problems.append(Problem(f, f"unreadable parquet ({str(e).splitlines()[0][:120]})"))
            continue
        reason = _check(table, f)
        if reason:
            problems.append(Problem(f, reason))
            continue
        frames.append(table.to_pandas())
    if p.is_file() and problems:
        raise UsageError(f"cannot use results file {str(p)!r}: {problems[0].reason}")
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCHEMA.names))
    return df, problems


def completed_ids(results_dir: Path | str, retry_failed: bool = False) -> set[str]:
    """Run ids with a readable result file in ``results_dir``.

    With ``retry_failed``, runs recorded as failed or diverged do not count as done.
    """
    p = Path(results_dir)
    if not p.is_dir():
        return set()
    done = set()
    for f in p.glob("*.parquet"):
        if f.name.startswith("."):
            continue
        try:
            if retry_failed:
                statuses = pq.read_table(f, columns=["status"]).column("status").to_pylist()
                if not statuses or any(s != "ok" for s in statuses):
                    continue
            elif pq.read_metadata(f).num_rows == 0:
                continue
        except Exception:
            continue  # corrupt: the run is not done and will be redone, overwriting the file
        done.add(f.stem)
    return done
