"""One-line descriptions of runs, for the dry run's listing and the progress display."""

from __future__ import annotations

from ftbench.spec import RunSpec


def describe_all(specs: list[RunSpec]) -> list[str]:
    """:func:`describe` of each spec; in a fresh process from the catalog cache (ftbench/catalog.py),
    keyed by the run ids, which determine the specs."""
    import hashlib

    from ftbench.catalog import cached, markup_lines

    ids = hashlib.sha256(" ".join(s.run_id for s in specs).encode()).hexdigest()
    return cached(("describe", ids), lambda: [describe(s) for s in specs], lambda v: markup_lines(v, len(specs)))


def describe(spec: RunSpec) -> str:
    """One-line description of a run, naming every field set (so distinct runs read differently)."""
    from ftbench.methods.base import get_method

    shift = spec.shift + (f":{spec.corruption}-{spec.severity}" if spec.corruption else "")
    parts = [f"{spec.benchmark}/{shift}", spec.method + (f" block {spec.blocks_label()}" if spec.blocks else "")]
    variant = get_method(spec.method)(spec).variant()
    if variant:
        parts.append(variant)
    parts += spec.settings()
    parts.append(f"seed={spec.seed}")
    if spec.protocol != type(spec).protocol:  # the default (few-shot) is not spelled out
        parts.append(f"protocol={spec.protocol}")
    return " ".join(parts)
