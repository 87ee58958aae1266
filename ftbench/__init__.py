"""ftbench: which layers to fine-tune, and how, under distribution shift — measured."""

__version__ = "0.1.0"

from ftbench import numerics as _numerics

_numerics.setup_environment()  # FTBENCH_PORTABLE: before torch and NumPy load (ftbench/numerics.py)
