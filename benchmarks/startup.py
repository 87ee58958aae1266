"""How long ftbench's commands take to start, against a bare ``import torch`` measured in the same run.

    python benchmarks/startup.py              # 5 repetitions of each command, medians
    python benchmarks/startup.py --repeat 11

Each command runs as a user runs it, a fresh ``python -m ftbench.cli ...`` process, and is timed
from start to exit. The reference, ``python -c "import torch"``, runs interleaved with them, round
by round, so a machine shared with other jobs slows both alike. The printed ratio is command time
over reference time: a command that imports torch cannot be below about 1.0; a command that needs
no torch should be well below it. Not a test (machines are noisy): docs/performance.md records
what it printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tests" / "data" / "results_small"

REFERENCE = ("import torch", [sys.executable, "-c", "import torch"])


def commands(tmp: Path) -> list[tuple[str, list[str]]]:
    ft = [sys.executable, "-m", "ftbench.cli"]
    return [
        ("ftbench --version", [*ft, "--version"]),
        ("ftbench --help", [*ft, "--help"]),
        ("ftbench report RESULTS", [*ft, "report", str(RESULTS), "--format", "markdown"]),
        ("ftbench list protocols", [*ft, "list", "protocols"]),
        ("ftbench list recipes", [*ft, "list", "recipes"]),
        ("ftbench list methods", [*ft, "list", "methods"]),
        ("ftbench list suites", [*ft, "list", "suites"]),
        ("ftbench sweep smoke --dry-run", [*ft, "sweep", "smoke", "--dry-run", "--out", str(tmp / "dry")]),
        # A warm run: the source model is in the cache (made by the warm-up below), 10 steps.
        ("ftbench run --steps 10 (warm cache)", [*ft, "run", "--steps", "10", "--out", str(tmp / "run")]),
    ]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       check=False)
    took = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"startup: {' '.join(cmd[2:])} failed with exit code {r.returncode}: {r.stderr.strip()[-300:]}")
    return took


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="rounds (default 5); the median of each is printed")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ftbench-startup-") as tmpdir:
        tmp = Path(tmpdir)
        env = {**os.environ, "FTBENCH_CACHE": str(tmp / "cache"), "PYTHONPATH": str(ROOT)}
        cmds = commands(tmp)
        # Warm-up, not timed: fills the model cache and the OS file cache of every import.
        for _, cmd in [REFERENCE, *cmds]:
            timed(cmd, env)
        times: dict[str, list[float]] = {name: [] for name, _ in [REFERENCE, *cmds]}
        for _ in range(a.repeat):
            for name, cmd in [REFERENCE, *cmds]:
                times[name].append(timed(cmd, env))
                if name.startswith("ftbench run"):
                    shutil.rmtree(tmp / "run", ignore_errors=True)  # so the next round runs again
    ref = statistics.median(times[REFERENCE[0]])
    print(f"start-up times, median of {a.repeat} rounds, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'command':40s} {'seconds':>8s} {'÷ import torch':>15s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:40s} {m:8.2f} {m / ref:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
