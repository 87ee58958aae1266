"""The runner floor: one run (``runner``) and fused groups of runs (``fused``) executed, result rows out."""
