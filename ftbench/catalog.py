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
atomically, each with a SHA-256 of its key, value and the files the value was computed from
(:func:`depends_on`: a suite's weights files, by resolved path, size and mtime); an unreadable,
foreign, edited or malformed one (the caller passes its schema) is recomputed with a notice, one
whose files changed is a plain miss, and a cache that cannot be written is skipped, never an error.
Errors (a bad suite, an unknown name) are never cached: they are computed each time.
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
    from ftbench.environment import cache_dir

    digest = hashlib.sha256(json.dumps([code_fingerprint(), *key], default=str).encode()).hexdigest()[:24]
    return cache_dir() / "catalog" / f"{digest}.json"


# The files the answers now being computed read (innermost last): see depends_on.
_DEPS: list[list[list[Any]]] = []


def file_identity(given: str | Path) -> list[Any]:
    """``[given, resolved path, size, mtime_ns]`` of a file an answer depends on (None for a missing one).

    Not a content hash: that would read every weights file (gigabytes) on each ``--dry-run``, which
    the cache is there to make instant. The resolved path follows a re-pointed symlink, and a file
    rewritten in place (a copy, ``torch.save``) gets a new mtime, as the code fingerprint assumes.
    """
    p = Path(given).expanduser()
    try:
        st = p.stat()
        return [str(given), str(p.resolve()), st.st_size, st.st_mtime_ns]
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return [str(given), None, None, None]


def depends_on(path: str | Path) -> None:
    """Record that the answer being computed (if any) depends on file ``path`` (a suite's weights
    file, read by ``resolve_weights``): a cached answer is believed only while every file it
    depends on has the identity it had (:func:`file_identity`), so a re-pointed ``cur.pt`` symlink
    or a replaced weights file is a miss."""
    if _DEPS:
        _DEPS[-1].append(file_identity(path))


def _digest(key: Any, value: Any, deps: Any) -> str:
    return hashlib.sha256(json.dumps({"key": key, "value": value, "deps": deps}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def _believed(record: Any, key: list[Any], check: Callable[[Any], bool] | None) -> str:
    """Empty when ``record`` is the entry ftbench wrote for ``key`` and still holds; else why not."""
    if not (isinstance(record, dict) and set(record) == {"key", "value", "deps", "sha256"}
            and isinstance(record["deps"], list)):
        return "not an entry of this ftbench"
    if record["key"] != key:
        return "written for another key"
    if record["sha256"] != _digest(record["key"], record["value"], record["deps"]):
        return "its content does not match its hash (edited)"
    if not all(isinstance(d, list) and len(d) == 4 and isinstance(d[0], str) for d in record["deps"]):
        return "not an entry of this ftbench"
    try:
        ok = check is None or check(record["value"])
    except Exception:  # a checker meeting a malformed value is a failed check, never a traceback
        ok = False
    return "" if ok else "its value is not of the expected form"


def markup_lines(value: Any, count: int | None = None) -> bool:
    """A schema for :func:`cached`: a list of strings (``count`` of them when given), each valid rich
    markup (they are printed as markup: a malformed tag would end in a traceback)."""
    from rich.markup import render

    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return False
    if count is not None and len(value) != count:
        return False
    for line in value:
        render(line)  # raises MarkupError on a malformed tag (a failed check)
    return True


def cached(key: tuple[Any, ...], compute: Callable[[], T], check: Callable[[Any], bool] | None = None) -> T:
    """``compute()``, from the cache when this process may use it (:func:`usable`) and it holds
    ``key`` for this code; ``compute``'s value must be JSON (lists come back as lists).

    An entry is believed only when it is exactly what ftbench wrote for ``key`` (a SHA-256 of key,
    value and the files it was computed from, :func:`depends_on`), those files are unchanged, and
    ``check(value)`` (the caller's schema) holds; otherwise it is computed again, with a one-line
    notice on stderr when an entry was there but not believed.
    """
    if not usable():
        return compute()
    path = _path(key)
    plain_key = json.loads(json.dumps(list(key), default=str))
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        record = None  # a miss, or a file that is not JSON: computed again
    if record is not None:
        try:
            why = _believed(record, plain_key, check)
        except RecursionError:  # nested beyond what json.dumps takes: not ours
            why = "not an entry of this ftbench"
        # A file it was computed from changed (a re-pointed symlink): a plain miss, no notice.
        if not why and record["deps"] == [file_identity(d[0]) for d in record["deps"]]:
            return record["value"]
        if why:
            print(f"notice: ignored the catalog cache entry {path} ({why}); computed again", file=sys.stderr)
    _DEPS.append([])
    try:
        value = compute()
    finally:
        deps = _DEPS.pop()
    if _DEPS:  # an answer computed inside another depends on its files too
        _DEPS[-1].extend(deps)
    stored = json.loads(json.dumps(value, default=str))  # as it will read back
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": plain_key, "value": stored, "deps": deps,
                                   "sha256": _digest(plain_key, stored, deps)}))
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache: the answer is still right, only not kept
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return value
