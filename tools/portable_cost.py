#!/usr/bin/env python3
"""What portable numerics (FTBENCH_PORTABLE=1, docs/ci.md) cost: the smoke suite's CPU time in
portable mode against this CPU's native kernels, each from an empty model cache on one thread.

    python tools/portable_cost.py [--repeat N]

Prints each sweep's CPU seconds (user + system of the ftbench process, so other work on a shared
machine slows it less than wall time) and the ratio portable / native. The two modes alternate.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import regen_numbers as rn  # noqa: E402


def cpu_seconds_of_sweep(portable: bool) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="ftbench-cost-") as tmp:
        rn.sweep(rn.SMOKE, Path(tmp) / "results", rn.child_env(Path(tmp) / "cache", pinned=portable))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=1, help="pairs of sweeps to run (default 1)")
    a = p.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(max(1, a.repeat)):
        for mode in (False, True):
            times[mode].append(cpu_seconds_of_sweep(mode))
            print(f"{'portable' if mode else 'native  '}  smoke suite  {times[mode][-1]:7.1f} CPU s", flush=True)
    native, portable = min(times[False]), min(times[True])
    print(f"portable / native CPU time: {portable / native:.2f}x  (best of {len(times[True])} each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
