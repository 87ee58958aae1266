"""Errors that mean "the user asked for something we cannot do".

The CLI turns any :class:`UsageError` into one line on stderr and exit code 2, so every check of
user input raises it with a message naming the bad value and what would be accepted.
"""

from __future__ import annotations

from collections.abc import Iterable


class UsageError(ValueError):
    """Bad user input: unknown name, impossible block, malformed config or results file."""


def unknown(kind: str, value: object, accepted: Iterable[object]) -> UsageError:
    """Build the standard "unknown X 'v'; accepted: a, b, c" error."""
    choices = ", ".join(str(a) for a in accepted)
    return UsageError(f"unknown {kind} {value!r}; accepted: {choices}")
