"""Regenerate tests/data/baseline_smoke: the committed baseline of the CI regression gate.

Run from the repository root, deliberately, when a change is *meant* to move the smoke numbers
(see docs/ci.md): ``python tests/data/make_baseline_smoke.py``. It runs the bundled ``smoke``
suite on CPU (4 short runs, deterministic given the seeds) into a fresh temporary folder, with a
fresh model cache unless FTBENCH_CACHE is set, then replaces the baseline folder with it. A sweep
skips finished runs, so sweeping into the existing baseline folder would change nothing; that is
why this writes to a new folder first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).with_name("baseline_smoke")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env.setdefault("FTBENCH_CACHE", str(Path(tmp) / "cache"))
        new = Path(tmp) / "baseline_smoke"
        subprocess.run(["ftbench", "sweep", "smoke", "--out", str(new), "--device", "cpu"], check=True, env=env)
        old = OUT.with_name(".baseline_smoke.old")
        shutil.rmtree(old, ignore_errors=True)
        if OUT.exists():
            OUT.rename(old)
        shutil.copytree(new, OUT)
        shutil.rmtree(old, ignore_errors=True)
    print(f"wrote {OUT} ({len(list(OUT.glob('*.parquet')))} runs)", file=sys.stderr)


if __name__ == "__main__":
    main()
