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
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ftbench.errors import UsageError, disk_error

if TYPE_CHECKING:
    import pandas as pd  # imported where results are read: writing a row needs pyarrow only

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
        ("protocol", pa.string()),  # few-shot | id-ood (ftbench/protocols); absent in older files = few-shot
        ("data_version", pa.int64()),  # the benchmark's revision of the shift's data; null = the first
        ("head_init", pa.string()),  # id-ood: zero-shot / fresh as the classifier started; null = the method's default
        ("schedule", pa.string()),  # the loop's lr schedule: cosine, or null = constant
        ("warmup", pa.int64()),  # linear lr warm-up in optimizer steps; null = none
        ("clip_grad", pa.float64()),  # gradient clipping by global norm; null = none
        ("train_precision", pa.string()),  # --train-precision fp32|bf16; null = the device's default
        ("eval_precision", pa.string()),  # --eval-precision fp32|bf16; null = the device's default
        ("augment", pa.string()),  # --augment crop|crop-flip; null = none
        ("input_transform", pa.string()),  # the model's own input transform (its key); null = the benchmark's
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
        ("val_loss", pa.float64()),  # mean cross-entropy on val (selection's tie-break); absent in older files
        ("source_val_loss", pa.float64()),  # ... on source val (few-shot)
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
        ("train_dtype", pa.string()),  # the autocast precision training ran in: fp32 or bf16
        ("eval_dtype", pa.string()),  # ... and evaluation
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


def check_result_slots(out_dir: Path | str, run_ids: list[str]) -> None:
    """A UsageError, before any run, if the result file of one of ``run_ids`` cannot be written because
    something other than a file holds its name (a folder ``<run_id>.parquet``, a FIFO, a device)."""
    for run_id in run_ids:
        path = result_path(Path(out_dir), run_id)
        if path.exists() and not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file"
            raise UsageError(f"cannot write the result of run {run_id}: {str(path)!r} is {what}; move it out of "
                             "the results folder and run the same command again")


def write_result(out_dir: Path | str, rows: dict[str, Any] | list[dict[str, Any]]) -> Path:
    """Write one run's row(s) to ``<out_dir>/<run_id>.parquet`` atomically; return the path.

    A full or read-only disk is a :class:`~ftbench.errors.DiskError` naming the file (and leaves
    neither a temporary file nor a changed result)."""
    rows = [rows] if isinstance(rows, dict) else rows
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise disk_error(e, out) or e
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
    except OSError as e:
        raise disk_error(e, path) or e
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - a read-only disk: no temporary file could be made either
            pass
    return path


@dataclass(frozen=True)
class Problem:
    """A file in a results folder that could not be used, and why."""

    path: Path
    reason: str


# Columns holding measurements (the metric columns of every benchmark: id_acc, ood_worst_group_acc,
# val_..., source_val_...): numbers, whatever their name, so ``report --metric`` can average them.
METRIC_PREFIXES = ("id_", "ood_", "val_", "source_val_")


def _kind(t: pa.DataType) -> str:
    """The family of an Arrow type, as a reader of the column cares: number, string, bool, time."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return "null"  # no values at all (e.g. an optional column never set): fits any column
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_timestamp(t):
        return "time"
    return str(t)


def _problem(schema: pa.Schema, num_rows: int) -> str | None:
    """Why a file with ``schema`` and ``num_rows`` is not ftbench results (None: it is)."""
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        return f"not an ftbench results file (missing columns: {', '.join(missing)})"
    if num_rows == 0:
        return "no rows"
    for field in schema:
        want = _kind(SCHEMA.field(field.name).type) if field.name in SCHEMA.names else \
            "number" if field.name.startswith(METRIC_PREFIXES) else None
        have = _kind(field.type)
        if want is not None and have not in (want, "null"):
            return f"column {field.name!r} holds {have} values, expected {want}s"
    return None


def _ids_problem(run_ids: list[Any], path: Path) -> str | None:
    """A folder's ``<run_id>.parquet`` holds rows of that run only (else the name would lie about
    what is done: a sweep would skip a run whose result is not there)."""
    others = sorted({str(i) for i in run_ids} - {path.stem})
    if others:
        return f"holds rows of run {others[0]}, not of run {path.stem} its name says"
    return None


def _load(f: Path, in_folder: bool) -> tuple[pd.DataFrame | None, str | None]:
    """The rows of result file ``f`` as a DataFrame, or None and why it cannot be used (see
    :func:`read_results`): the one check behind both what ``report`` reads and what ``sweep`` counts
    as done, so no file can be skipped by the one and left out by the other."""
    if not f.is_file():
        return None, "not a regular file (a folder or device named like a result file)"
    try:
        table = pq.read_table(f)
    except Exception as e:  # corrupt, truncated, not parquet
        return None, _unreadable(e)
    reason = _problem(table.schema, table.num_rows)
    if reason is None and in_folder:
        reason = _ids_problem(table.column("run_id").to_pylist(), f)
    if reason:
        return None, reason
    try:
        return table.to_pandas(), None
    except Exception as e:  # e.g. malformed pandas metadata in the file's schema
        return None, _unreadable(e)


def _unreadable(e: Exception) -> str:
    return f"unreadable parquet ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"


def _clean_strings(df: pd.DataFrame) -> pd.DataFrame:
    """String values with control characters made visible (:func:`ftbench.text.clean`): every value
    of a results file may end up printed on a terminal."""
    import pandas as pd

    from ftbench.text import clean, has_control

    names = {c: clean(c, newlines=False) for c in df.columns if isinstance(c, str) and has_control(c)}
    if names:  # a column name is printed too (an OOD set's sub-column, the accepted --metric values)
        df = df.rename(columns=names)
    for col in df.columns:
        values = df[col]
        if isinstance(values.dtype, pd.CategoricalDtype):  # a dictionary column: its values are the categories
            values = values.astype(object)
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            bad = values.map(lambda v: isinstance(v, str) and has_control(v))
            if bad.any():
                df[col] = values.map(lambda v: clean(v, newlines=False) if isinstance(v, str) else v)
    return df


def read_results(results_dir: Path | str) -> tuple[pd.DataFrame, list[Problem]]:
    """All rows of a results folder (or one parquet file), plus the files that were skipped.

    A file is used when it is a regular file of readable parquet with the ftbench columns, at least
    one row, column types that fit (numbers in metric columns: see :func:`_problem`), pandas can
    convert it and, in a folder, it holds only rows of the run its name says. One file given by
    itself may have any name; a problem with it is a :class:`UsageError`. The files this uses are
    exactly those :func:`completed_ids` counts as done. Control characters in string values are
    made visible (``\\x1b``), since any value may be printed on a terminal.
    """
    import pandas as pd

    p = Path(results_dir)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.glob("*.parquet") if not f.name.startswith("."))
    else:
        raise UsageError(f"results folder or file {str(p)!r} does not exist")
    frames, problems = [], []
    for f in files:
        frame, reason = _load(f, in_folder=not p.is_file())
        if frame is None:
            problems.append(Problem(f, reason or "unusable"))
            continue
        frames.append(frame)
    if p.is_file() and problems:
        raise UsageError(f"cannot use results file {str(p)!r}: {problems[0].reason}")
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCHEMA.names))
    return _clean_strings(df), problems


def is_done(path: Path | str, retry_failed: bool = False) -> bool:
    """Whether ``<results>/<run_id>.parquet`` at ``path`` is a finished run: a file
    :func:`read_results` would use (the same check: readable, ftbench columns of fitting types,
    rows of that run id only). With ``retry_failed``, a run recorded as failed or diverged is not
    done. A file that is not (corrupt, foreign) is rerun, and the rerun replaces it."""
    frame, _ = _load(Path(path), in_folder=True)
    if frame is None:
        return False
    return not retry_failed or all(s == "ok" for s in frame["status"])


def completed_ids(results_dir: Path | str, retry_failed: bool = False) -> set[str]:
    """Run ids with a finished result file in ``results_dir`` (see :func:`is_done`).

    With ``retry_failed``, runs recorded as failed or diverged do not count as done.
    """
    p = Path(results_dir)
    if not p.is_dir():
        return set()
    return {f.stem for f in p.glob("*.parquet") if not f.name.startswith(".") and is_done(f, retry_failed)}
