"""Fine-tuning methods; each module registers its own in :data:`ftbench.methods.base.METHODS`."""

from __future__ import annotations

# The built-in methods' names and report row order (``Method.order``), for commands that need only
# these (``report``) and should not import torch to learn them. tests/test_methods.py checks this
# table against the registry.
BUILTIN_ORDER = {
    "none": 0, "zero-shot": 5, "surgical": 10, "linear-probe": 30, "full": 40, "auto-rgn": 42, "auto-snr": 43, "l2-sp": 44,
    "l1-sp": 45, "gradual-unfreeze": 46, "lp-ft": 50, "wise-ft": 60, "spottune": 62, "spottune-global-k": 63,
    "flyp": 64, "autoft": 65, "bitfit": 70, "ln-tune": 71, "adapter": 72, "vpt": 73, "ssf": 74, "lora": 75,
}
BUILTIN_NAMES = tuple(sorted(BUILTIN_ORDER))
# The module of ftbench.methods that registers each built-in method, so that ``run`` imports the one
# it needs (not spottune's, SNR's and the PETL modules with theirs); checked by tests/test_methods.py.
BUILTIN_MODULE = {
    "none": "surgical", "surgical": "surgical", "full": "surgical", "linear-probe": "linear", "lp-ft": "linear",
    "auto-rgn": "rgn", "auto-snr": "snr", "l2-sp": "regularizers", "l1-sp": "regularizers",
    "gradual-unfreeze": "gradual", "wise-ft": "wiseft", "spottune": "spottune", "spottune-global-k": "spottune",
    "autoft": "autoft", "bitfit": "petl", "ln-tune": "petl", "lora": "petl", "adapter": "petl_modules",
    "vpt": "petl_modules", "ssf": "petl_modules", "zero-shot": "flyp", "flyp": "flyp",
}


def method_order() -> dict[str, int]:
    """Method name -> report row order: the built-in table, and any method registered since."""
    import sys

    base = sys.modules.get("ftbench.methods.base")
    extra = {} if base is None else {n: base.METHODS.get(n).order for n in base.METHODS.names()}
    return {**BUILTIN_ORDER, **extra}


def check_method_name(name: str) -> None:
    """Raise the registry's one-line error for a name that is no method, without importing them."""
    import sys

    base = sys.modules.get("ftbench.methods.base")
    if name in BUILTIN_NAMES or (base is not None and name in base.METHODS):
        return
    from ftbench.errors import unknown

    extra = base.METHODS.names() if base is not None else []
    raise unknown("method", name, sorted({*BUILTIN_NAMES, *extra}))
