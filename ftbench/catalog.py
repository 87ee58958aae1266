"""A disk cache of what the command line derives from ftbench's code alone: listings, expanded
suites, FLOP counts for ``sweep --dry-run``'s estimate.

Those need the registries of methods, models and benchmarks, and so torch, timm and scikit-learn
(1.5-4 s of imports on a CPU) to print text that changes only when the code does. A fresh process
(``ftbench list ...``, ``ftbench sweep --dry-run``) first looks here; the key is a fingerprint of

* every ``.py`` and ``.toml`` file of the installed ftbench package (path, size, modification time),
  so an edit of an editable install, or another version, is a miss;
* the installed distributions (the ``*.dist-info`` folder names on ``sys.path``, which carry the
  versions: a new timm or torch is a miss);
* what the caller adds (a suites file's text, the working directory, the listing's arguments).

Only a process whose registries were still unimported at its first lookup uses the cache (and
then for all its lookups, so one miss fills every entry it computes): one that had them (a test, a
Python session that registered its own method) computes, since it pays no import and may hold
entries that are not ftbench's. Entries are JSON files under ``$FTBENCH_CACHE/catalog`` written
atomically; an unreadable or foreign one is recomputed and a cache that cannot be written is
skipped, never an error. Errors (a bad suite, an unknown name) are never cached: they are computed
each time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Modules whose presence means the registries are loaded (the cache would spare nothing).
REGISTRY_MODULES = ("ftbench.methods.base", "ftbench.models.base", "ftbench.data.base")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of ftbench's package files and the installed distributions (see the module docstring)."""
    import ftbench

    h = hashlib.sha256(ftbench.__version__.encode())
    root = Path(ftbench.__file__).resolve().parent
    for p in sorted(root.rglob("*")):
        if p.suffix in (".py", ".toml") and "__pycache__" not in p.parts:
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for entry in sys.path:
        try:
            names = sorted(e.name for e in os.scandir(entry or ".") if e.name.endswith(".dist-info"))
        except OSError:
            continue
        h.update(f"{entry}\0{' '.join(names)}\n".encode())
    return h.hexdigest()


_FRESH: list[bool] = []  # decided at the process's first lookup


def usable() -> bool:
    """Whether this process uses the cache: none of the registries was imported at its first lookup
    (and ``$FTBENCH_NO_CATALOG`` is unset)."""
    if not _FRESH:
        _FRESH.append(not any(m in sys.modules for m in REGISTRY_MODULES))
    return _FRESH[0] and not os.environ.get("FTBENCH_NO_CATALOG")


def _path(key: tuple[Any, ...]) -> Path:
    from ftbench.data.fetch import cache_dir

    digest = hashlib.sha256(json.dumps([code_fingerprint(), *key], default=str).encode()).hexdigest()[:24]
    return cache_dir() / "catalog" / f"{digest}.json"


def cached(key: tuple[Any, ...], compute: Callable[[], T]) -> T:
    """``compute()``, from the cache when this process may use it (:func:`usable`) and it holds
    ``key`` for this code; ``compute``'s value must be JSON (lists come back as lists)."""
    if not usable():
        return compute()
    path = _path(key)
    try:
        record = json.loads(path.read_text())
        if record.get("key") == json.loads(json.dumps(list(key), default=str)):
            return record["value"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass  # a miss, or a file that is not one of ours: computed again
    value = compute()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": list(key), "value": value}, default=str))
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache: the answer is still right, only not kept
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return value
