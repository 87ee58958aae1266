"""Regenerate tests/data/results_small: a hand-made results folder with known numbers.

Run from the repository root: ``python tests/data/make_results_small.py``. The numbers are chosen
by hand so that selection matters: for some cells the learning rate with the best target
*validation* accuracy is not the one with the best *test* accuracy.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from ftbench.results.store import write_result
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve

OUT = Path(__file__).with_name("results_small")

# (shift[/corruption/severity], method, blocks, seed, lr) -> (val_acc, ood_acc, id_acc);
# a bare "corruption" is gaussian_noise at severity 5.
NUMBERS = {
    ("corruption", "surgical", ("1",), 0, 1e-3): (80.0, 70.0, 95.0),
    ("corruption", "surgical", ("1",), 0, 1e-2): (70.0, 90.0, 90.0),  # best test, not chosen
    ("corruption", "surgical", ("1",), 1, 1e-3): (78.0, 74.0, 96.0),
    ("corruption", "surgical", ("1",), 1, 1e-2): (79.0, 76.0, 94.0),
    ("corruption", "surgical", ("last",), 0, 1e-3): (60.0, 61.0, 97.0),
    ("corruption", "surgical", ("last",), 0, 1e-2): (62.0, 63.0, 97.5),
    ("corruption", "surgical", ("last",), 1, 1e-3): (64.0, 65.0, 98.0),
    ("corruption", "surgical", ("last",), 1, 1e-2): (63.0, 99.0, 98.0),  # best test, not chosen
    ("corruption", "full", (), 0, 1e-3): (75.0, 72.0, 93.0),
    ("corruption", "full", (), 1, 1e-3): (75.0, 73.0, 92.0),
    ("corruption/contrast/3", "surgical", ("1",), 0, 1e-3): (85.0, 84.0, 95.0),
    ("corruption/contrast/3", "surgical", ("1",), 1, 1e-3): (87.0, 86.0, 95.0),
    ("corruption/contrast/3", "surgical", ("last",), 0, 1e-3): (40.0, 41.0, 97.0),
    ("corruption/contrast/3", "surgical", ("last",), 1, 1e-3): (42.0, 43.0, 97.0),
    ("corruption/contrast/3", "full", (), 0, 1e-3): (80.0, 80.0, 93.0),
    ("corruption/contrast/3", "full", (), 1, 1e-3): (82.0, 82.0, 93.0),
    ("label-flip", "surgical", ("1",), 0, 1e-3): (50.0, 51.0, 2.0),
    ("label-flip", "surgical", ("1",), 1, 1e-3): (54.0, 55.0, 3.0),
    ("label-flip", "surgical", ("last",), 0, 1e-3): (90.0, 91.0, 1.0),
    ("label-flip", "surgical", ("last",), 1, 1e-3): (92.0, 93.0, 1.0),
    ("label-flip", "full", (), 0, 1e-3): (85.0, 91.0, 2.0),
    ("label-flip", "full", (), 1, 1e-3): (88.0, 93.0, 2.0),
}


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    for (shift, method, blocks, seed, lr), (val, ood, idacc) in sorted(NUMBERS.items()):
        shift, _, rest = shift.partition("/")
        corruption, _, severity = rest.partition("/")
        spec = resolve(RunSpec(shift=shift, method=method, blocks=blocks, seed=seed, lr=lr,
                               corruption=corruption or None, severity=int(severity) if severity else None))
        row = {
            **spec.columns(), "variant": "",
            "shift_level": {"corruption": "input", "label-flip": "output"}[shift],
            "status": "ok", "error": "", "id_acc": idacc, "ood_acc": ood, "val_acc": val,
            "source_val_acc": idacc, "n_target_train": 200, "n_trainable": 1, "n_params": 2,
            "train_steps": 50, "train_seconds": 1.0, "examples_per_second": 1.0, "device": "hand-made",
            "ftbench_version": "0.1.0", "timestamp": dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc),
        }
        write_result(OUT, row)
    # A failed run: recorded, never reported.
    spec = resolve(RunSpec(shift="corruption", method="surgical", blocks=("2",), seed=0))
    from ftbench.sweep.task import failed_row

    row = failed_row(spec, RuntimeError("out of memory"))
    row["timestamp"] = dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc)
    write_result(OUT, row)


if __name__ == "__main__":
    main()
