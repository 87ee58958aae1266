"""Loading the repository's scripts (benchmarks/*.py, tools/*.py), which are not a package, as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str, name: str) -> ModuleType:
    """The script at ``REPO/relative`` imported as module ``name`` (registered in ``sys.modules``, so
    dataclasses and pickling inside it find their module)."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
