"""Writing a file the user named (``report -o``, ``--summary``, ``--plot``): never half a file, never
a device node replaced.

A regular file, or a path that does not exist yet, is written to a temporary file in its folder and
renamed into place, so a reader never sees half a table. Anything else that already exists — a FIFO,
a character device (``/dev/stdout``, ``/dev/null``), a socket — is not ours to replace: the bytes are
written into it, as ``cmd > PATH`` would. A symlink is followed: the file it points to is written
(atomically if that is a regular file), the link itself stays.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ftbench.errors import UsageError, disk_error

# Paths whose entries are the kernel's, never files to rename over (/dev/stdout -> /proc/self/fd/1).
_KERNEL_TREES = ("/dev/", "/proc/", "/sys/")


def output_kind(path: Path | str, what: str) -> tuple[str, Path]:
    """How ``path`` is written: ``("stream", path)`` into an existing non-regular file (FIFO, device),
    or ``("atomic", target)``: a temporary file renamed onto ``target``, the real path (symlinks
    resolved) of a regular file or of a file still to be made. A folder, or a path that cannot be
    looked at (a symlink loop), is a :class:`UsageError` naming ``what``."""
    p = Path(path)
    try:
        st = os.stat(p)  # follows symlinks: the kind of what would be written
    except (FileNotFoundError, NotADirectoryError):  # not there yet (the folder check says more)
        st = None
    except OSError as e:
        raise UsageError(f"{what} {str(p)!r} cannot be written: {e.strerror or e}") from None
    real = Path(os.path.realpath(p))
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {str(p)!r} is a folder; give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        return "stream", p
    if str(p.absolute()).startswith(_KERNEL_TREES) or str(real).startswith(_KERNEL_TREES):
        return "stream", p  # /dev/stdout redirected to a file: write through the descriptor, rename nothing
    return "atomic", real


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _write_all(fh, payload: bytes) -> None:  # noqa: ANN001 - a binary file object (tests fail it half-way)
    fh.write(payload)


def write_output(path: Path | str, data: str | bytes, what: str) -> None:
    """Write ``data`` to the file the user named ``path`` (see the module docstring).

    A full or read-only disk is a :class:`~ftbench.errors.DiskError` (one ``error:`` line) and leaves
    neither a temporary file nor a changed ``path``; another failed write is a UsageError."""
    payload = data.encode() if isinstance(data, str) else data
    kind, target = output_kind(path, what)
    if kind == "stream":
        try:
            with open(target, "wb") as fh:
                _write_all(fh, payload)
        except OSError as e:
            raise disk_error(e, target) or UsageError(f"cannot write {what} {str(target)!r}: "
                                                      f"{e.strerror or e}") from None
        return
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as fh:
            _write_all(fh, payload)
        # A rewritten file keeps its permissions; a new one gets what open() would give it (mkstemp's are 0600).
        os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode) if target.exists() else 0o666 & ~_umask())
        os.replace(tmp, target)
        tmp = None
    except OSError as e:
        raise disk_error(e, target) or UsageError(f"cannot write {what} {str(target)!r}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:  # pragma: no cover - nothing was made
                pass
