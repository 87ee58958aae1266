"""ftbench: which layers to fine-tune, and how, under distribution shift — measured."""

__version__ = "0.1.0"
