"""Backbones, their block partitions and input transforms."""

from ftbench import numerics as _numerics

_numerics.apply()  # FTBENCH_PORTABLE: torch's oneDNN and NNPACK off before any model computes
