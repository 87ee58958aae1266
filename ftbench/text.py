"""Text that reaches a terminal: control characters made visible, never passed through.

A value read from a file (a parquet column, a suites file's description, a published-numbers file)
may hold terminal control sequences: ``ESC ] 52 ; c ; ... BEL`` asks some terminals to write the
clipboard, others move the cursor or retitle the window. Everything ftbench prints of such values
goes through :func:`clean`, which writes each C0 and C1 control character (and DEL) as a visible
``\\xNN`` escape instead, so the value is still recognisable and nothing is executed.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and the C1 controls (U+0080..U+009F: 0x9b is a one-byte CSI).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_ALL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _escape(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group()):02x}"


def clean(text: str, newlines: bool = True) -> str:
    """``text`` with every control character written as a visible ``\\xNN`` escape; tab and newline
    are kept when ``newlines`` (prose of several lines), escaped too otherwise (a single value)."""
    return (_CONTROL if newlines else _CONTROL_ALL).sub(_escape, text)


def has_control(text: str) -> bool:
    """Whether :func:`clean` (``newlines=False``) would change ``text``."""
    return _CONTROL_ALL.search(text) is not None
