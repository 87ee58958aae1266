"""Errors that mean "the user asked for something we cannot do".

The CLI turns any :class:`UsageError` into one line on stderr and exit code 2, so every check of
user input raises it with a message naming the bad value and what would be accepted.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable


class UsageError(ValueError):
    """Bad user input: unknown name, impossible block, malformed config or results file."""


def unknown(kind: str, value: object, accepted: Iterable[object]) -> UsageError:
    """Build the standard "unknown X 'v'; accepted: a, b, c" error."""
    choices = ", ".join(str(a) for a in accepted)
    return UsageError(f"unknown {kind} {value!r}; accepted: {choices}")


# errno values that mean "this disk takes no more writes": every later write there fails the same
# way, so a sweep must stop at once instead of failing (or retrying) each remaining run.
DISK_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "file too large for the file system",
}
# Also a write that cannot succeed, when it is known to be a write (reading can fail so too).
PERMISSION_ERRNOS: dict[int, str] = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


class DiskError(UsageError):
    """Writing under ``path`` failed because its disk is full, over quota or read-only (or the
    folder is not writable): one ``error:`` line, exit 2, like any input that cannot be used."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot write {self.path}: {reason}")

    def __reduce__(self) -> tuple:  # pickled across processes (Ray, submitit) with both fields
        return (DiskError, (self.path, self.reason))


def disk_error(exc: BaseException, path: object = None, writing: bool = True) -> DiskError | None:
    """The :class:`DiskError` that ``exc`` stands for, or None if it is no disk problem.

    Looks through ``exc``'s causes and contexts too: torch.save reports a full disk as a
    RuntimeError raised while handling the OSError of the failed write. ``path`` names what was
    being written when the error does not (pyarrow's do not). ``writing``: ``exc`` comes from a
    write, so a permission error is one too (not so for an error from anywhere in a run).
    """
    kinds = {**DISK_ERRNOS, **PERMISSION_ERRNOS} if writing else DISK_ERRNOS
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskError):
            return e
        if isinstance(e, OSError) and e.errno in kinds:
            return DiskError(path if path is not None else (e.filename or "?"), kinds[e.errno])
        e = e.__cause__ or e.__context__
    return None
