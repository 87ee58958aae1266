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
import re
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
# What any PyTorch training process pays before its first step: torch.optim's first optimizer imports
# torch._dynamo (1-2 s on a CPU), whoever calls it.
REFERENCE_OPT = ("import torch + first optimizer",
                 [sys.executable, "-c", "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"])
RUN = "ftbench run --steps 10 (warm cache)"


def commands(tmp: Path) -> list[tuple[str, list[str], bool]]:
    """(name, argv, cold): a cold command runs with an empty cache (no catalog) each round."""
    ft = [sys.executable, "-m", "ftbench.cli"]
    return [
        ("ftbench --version", [*ft, "--version"], False),
        ("ftbench --help", [*ft, "--help"], False),
        ("ftbench report RESULTS", [*ft, "report", str(RESULTS), "--format", "markdown"], False),
        ("ftbench list protocols", [*ft, "list", "protocols"], False),
        ("ftbench list recipes", [*ft, "list", "recipes"], False),
        ("ftbench list methods", [*ft, "list", "methods"], False),
        ("ftbench list models", [*ft, "list", "models"], False),
        ("ftbench list benchmarks", [*ft, "list", "benchmarks"], False),
        ("ftbench list suites", [*ft, "list", "suites"], False),
        ("ftbench sweep smoke --dry-run", [*ft, "sweep", "smoke", "--dry-run", "--out", str(tmp / "dry")], False),
        ("ftbench list methods (empty catalog)", [*ft, "list", "methods"], True),
        ("ftbench list suites (empty catalog)", [*ft, "list", "suites"], True),
        ("ftbench sweep smoke --dry-run (empty c.)", [*ft, "sweep", "smoke", "--dry-run", "--out", str(tmp / "dry")],
         True),
        # A warm run: the source model is in the cache (made by the warm-up below), 10 steps.
        (RUN, [*ft, "run", "--steps", "10", "--out", str(tmp / "run")], False),
    ]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                       check=False)
    took = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"startup: {' '.join(cmd[2:])} failed with exit code {r.returncode}: {r.stderr.strip()[-300:]}")
    return took, r.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="rounds (default 5); the median of each is printed")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ftbench-startup-") as tmpdir:
        tmp = Path(tmpdir)
        env = {**os.environ, "FTBENCH_CACHE": str(tmp / "cache"), "PYTHONPATH": str(ROOT)}
        env.pop("FTBENCH_NO_CATALOG", None)
        refs = [(REFERENCE[0], REFERENCE[1], False), (REFERENCE_OPT[0], REFERENCE_OPT[1], False)]
        cmds = [*refs, *commands(tmp)]
        # Warm-up, not timed: fills the model cache, the catalog and the OS file cache of every import.
        for _, cmd, _ in cmds:
            timed(cmd, env)
        times: dict[str, list[float]] = {name: [] for name, _, _ in cmds}
        train: list[float] = []
        for k in range(a.repeat):
            for name, cmd, cold in cmds:
                e = {**env, "FTBENCH_CACHE": str(tmp / f"cold-{k}-{len(times[name])}")} if cold else env
                took, stdout = timed(cmd, e)
                times[name].append(took)
                if name == RUN:
                    shutil.rmtree(tmp / "run", ignore_errors=True)  # so the next round runs again
                    found = re.search(r"([0-9.]+) s on ", stdout)
                    train.append(float(found.group(1)) if found else float("nan"))
    ref = statistics.median(times[REFERENCE[0]])
    print(f"start-up times, median of {a.repeat} rounds, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'command':42s} {'seconds':>8s} {'÷ import torch':>15s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:42s} {m:8.2f} {m / ref:15.2f}")
    run, opt, own = statistics.median(times[RUN]), statistics.median(times[REFERENCE_OPT[0]]), statistics.median(train)
    print(f"run: {run:.2f} s, of which {own:.2f} s training (its train_seconds; evaluation is counted as overhead)")
    print(f"run ÷ (import torch + its training)                 {run / (ref + own):5.2f}")
    print(f"run ÷ (import torch + first optimizer + its training) {run / (opt + own):5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
