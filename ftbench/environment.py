"""ftbench's environment variables: what each accepts, read in one place.

A value that is not accepted is one ``error:`` line naming the variable, the value and what is
accepted (docs/cli.md#environment-variables) — checked by every command before it does anything
(:func:`check_environment`), and again by the reader in a worker that reads it. Never "a typo turns
the fast paths off" or "an unreadable budget means the default".

``FTBENCH_DEBUG`` and ``FTBENCH_NO_CATALOG`` are switches: any non-empty value turns them on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ftbench.errors import UsageError

T = TypeVar("T")

ON = ("1", "on", "true", "yes")
OFF = ("0", "off", "false", "no")
FASTPATHS = ("prefix", "fused")
PROGRESS_MODES = ("auto", "bar", "lines", "off")


def _raw(name: str) -> str | None:
    v = os.environ.get(name)
    return None if v is None or not v.strip() else v.strip()


def _bad(name: str, value: str, accepted: str) -> UsageError:
    return UsageError(f"environment variable {name}={value!r} is not accepted; accepted: {accepted}")


def fastpath() -> tuple[str, frozenset[str]]:
    """``$FTBENCH_FASTPATH``: (``auto``, {}) or (``list``, the fast paths on every device)."""
    v = (_raw("FTBENCH_FASTPATH") or "auto").lower()
    if v == "auto":
        return "auto", frozenset()
    if v in (*ON, "all"):
        return "list", frozenset(FASTPATHS)
    if v in (*OFF, "none"):
        return "list", frozenset()
    items = [s.strip() for s in v.split(",")]
    if not all(items) or not set(items) <= set(FASTPATHS):
        raise _bad("FTBENCH_FASTPATH", os.environ["FTBENCH_FASTPATH"],
                   "auto (the default), 1/on/all, 0/off/none, or a comma-separated list of prefix, fused")
    return "list", frozenset(items)


def flag(name: str) -> bool:
    """A 0/1 switch (``FTBENCH_COMPILE``, ``FTBENCH_CHANNELS_LAST``): unset or empty is off."""
    v = (_raw(name) or "0").lower()
    if v in ON:
        return True
    if v in OFF:
        return False
    raise _bad(name, os.environ[name], "1 (or on, true, yes) or 0 (or off, false, no); unset: off")


def _checked(name: str, default: T, convert: Callable[[str], T], ok: Callable[[T], bool], accepted: str) -> T:
    """``convert`` of variable ``name`` where ``ok`` holds; unset or empty: ``default``; else the one-line
    error naming the value and what is ``accepted``."""
    v = _raw(name)
    if v is None:
        return default
    try:
        x = convert(v)
    except ValueError:
        raise _bad(name, os.environ[name], accepted) from None
    if not ok(x):
        raise _bad(name, os.environ[name], accepted)
    return x


def integer(name: str, default: int, low: int, unset: str | None = None) -> int:
    """An integer >= ``low`` (``FTBENCH_FUSE_MAX``, ``FTBENCH_WORKERS``); unset or empty: ``default``
    (``unset``: what unset means, in words, when it is not one number)."""
    words = "a positive integer" if low == 1 else f"an integer >= {low}"
    return _checked(name, default, int, lambda n: n >= low, f"{words} (unset: {unset or default})")


def number(name: str, default: float, positive: bool) -> float:
    """A finite number > 0 (``positive``) or >= 0; unset or empty: ``default``."""
    words = "a finite number > 0" if positive else "a finite number >= 0"
    return _checked(name, default, float, lambda x: math.isfinite(x) and x >= 0 and not (positive and x == 0),
                    f"{words} (unset: {default:g})")


def folder(name: str, expand: bool) -> Path | None:
    """A folder, existing or to be created (``FTBENCH_CACHE``, ``FTBENCH_DATA``: ``~`` expanded when
    ``expand``, as its reader does); None when unset or empty."""
    v = _raw(name)
    if v is None:
        return None
    p = Path(os.environ[name]).expanduser() if expand else Path(os.environ[name])
    q = p
    while not q.exists() and q != q.parent and not q.is_symlink():
        q = q.parent
    if not q.is_dir():
        where = "is" if q == p else f"lies under {str(q)!r}, which is"
        kind = "a dangling symbolic link" if q.is_symlink() and not q.exists() else "a file"
        raise _bad(name, os.environ[name], f"a folder (it is created if missing); {str(p)!r} {where} {kind}")
    return p


def progress() -> str:
    """``$FTBENCH_PROGRESS``: auto, bar, lines or off."""
    v = (_raw("FTBENCH_PROGRESS") or "auto").lower()
    if v not in PROGRESS_MODES:
        raise _bad("FTBENCH_PROGRESS", os.environ["FTBENCH_PROGRESS"], ", ".join(PROGRESS_MODES))
    return v


def device_decode() -> str:
    """``$FTBENCH_DEVICE_DECODE``: '' (on CUDA), '0' or '1'."""
    v = os.environ.get("FTBENCH_DEVICE_DECODE", "").strip()
    if v not in ("", "0", "1"):
        raise UsageError(f"FTBENCH_DEVICE_DECODE must be 0 or 1, got {v!r}")
    return v


# Defaults, here so that a check and a reader cannot disagree.
FUSE_MAX_DEFAULT = 64
PREFIX_CACHE_MB_DEFAULT = 4096
GPU_TFLOPS_DEFAULT = 100.0
WORKERS_UNSET = "up to 8 of this machine's CPUs"


def check_environment() -> None:
    """Raise a UsageError for the first ftbench environment variable whose value is not accepted."""
    fastpath()
    for name in ("FTBENCH_COMPILE", "FTBENCH_CHANNELS_LAST", "FTBENCH_PORTABLE"):
        flag(name)  # FTBENCH_PORTABLE is read before torch loads (ftbench/numerics.py); a typo is said here
    integer("FTBENCH_FUSE_MAX", FUSE_MAX_DEFAULT, 1)
    integer("FTBENCH_WORKERS", 0, 0, WORKERS_UNSET)
    number("FTBENCH_PREFIX_CACHE_MB", PREFIX_CACHE_MB_DEFAULT, positive=False)
    number("FTBENCH_GPU_TFLOPS", GPU_TFLOPS_DEFAULT, positive=True)
    folder("FTBENCH_CACHE", expand=False)  # as ftbench.data.fetch.cache_dir and data_root read them
    folder("FTBENCH_DATA", expand=True)
    progress()
    device_decode()


def user_cache() -> Path:
    """The user's cache folder: ``$XDG_CACHE_HOME`` (XDG base directories), else ``~/.cache``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".cache"


def cache_dir() -> Path:
    """ftbench's cache (source models, generated data, the catalog): ``$FTBENCH_CACHE``, else
    ``$XDG_CACHE_HOME/ftbench`` (``~/.cache/ftbench``)."""
    return Path(os.environ.get("FTBENCH_CACHE") or user_cache() / "ftbench")
