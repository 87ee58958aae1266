"""Content hashes of the files ftbench reuses: cached source models, resume states, AutoFT journals.

A file that a later process believes (a source model in ``$FTBENCH_CACHE``, a run's resume state
in a shared results folder) gets a *sidecar*, ``<file>.sha256``: a small JSON record of the
SHA-256 and size of the file's bytes and of what the file was written for (``bound``: the cache
key, the run id). A reader believes the file only when the sidecar is there, names the same
``bound`` and matches the bytes; anything else (a replaced or edited file, a file copied from
another key, a file from an older ftbench that wrote no sidecar) is recomputed, never believed.

The writer records the sidecar of the finished temporary file first and renames the file into
place after it, so a process killed in between leaves a sidecar that does not match (recomputed),
never a file that looks checked and is not. This guards against careless edits and stale or
swapped files, not against someone who recomputes the hash on purpose (a results folder is not
a trust boundary: it holds no code to run, see docs/sweeps.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

SUFFIX = ".sha256"
FORMAT = "ftbench-sha256/1"
CHUNK = 1 << 20


def sidecar(path: Path) -> Path:
    """The sidecar of ``path``: ``<path>.sha256``."""
    return path.with_name(path.name + SUFFIX)


def digest(path: Path, length: int | None = None) -> tuple[str, int]:
    """SHA-256 (hex) and size of ``path``'s bytes (its first ``length`` bytes when given)."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while length is None or n < length:
            block = fh.read(CHUNK if length is None else min(CHUNK, length - n))
            if not block:
                break
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def _plain(bound: Any) -> Any:
    return json.loads(json.dumps(bound, sort_keys=True, default=str))


def record(path: Path, bound: Any, content: Path | None = None) -> None:
    """Write ``path``'s sidecar (atomically): the hash of ``content`` (default ``path``), the file
    about to be renamed to ``path``, and ``bound``. Raises OSError when it cannot be written."""
    sha, size = digest(content or path)
    side = sidecar(path)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"format": FORMAT, "sha256": sha, "size": size, "bound": _plain(bound)},
                                  sort_keys=True))
        os.replace(tmp, side)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - a folder we cannot write to: nothing was made
            pass


def recorded(path: Path, bound: Any) -> tuple[dict[str, Any] | None, str]:
    """``path``'s sidecar record if it is one of ours and names ``bound``; else None and why not."""
    try:
        rec = json.loads(sidecar(path).read_text())
    except FileNotFoundError:
        return None, "no content hash recorded with it (written by an older ftbench, or not by ftbench)"
    except (OSError, ValueError) as e:
        return None, f"its content hash record is unreadable ({type(e).__name__})"
    if not (isinstance(rec, dict) and rec.get("format") == FORMAT and isinstance(rec.get("sha256"), str)
            and isinstance(rec.get("size"), int) and not isinstance(rec.get("size"), bool)):
        return None, "its content hash record is not one of ftbench's"
    if rec.get("bound") != _plain(bound):
        return None, "it was written for something else (its content hash record names another key or run)"
    return rec, ""


def check(path: Path, bound: Any) -> str:
    """Empty when ``path`` holds exactly the bytes recorded for ``bound``; else why not (a phrase)."""
    rec, why = recorded(path, bound)
    if rec is None:
        return why
    try:
        sha, size = digest(path)
    except OSError as e:
        return f"unreadable ({type(e).__name__})"
    if (sha, size) != (rec["sha256"], rec["size"]):
        return "its content does not match the hash recorded when it was written (edited or replaced)"
    return ""


def remove(path: Path) -> None:
    """Remove ``path`` and its sidecar (sidecar last: a half-removed pair is a mismatch, not a match)."""
    path.unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)
