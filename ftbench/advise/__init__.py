"""``ftbench advise``: which block (and method) to tune for a shift, before the grid (docs/advisor.md)."""
