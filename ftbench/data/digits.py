"""The embedded benchmark: scikit-learn's bundled 8×8 handwritten digits (1,797 images).

Needs no download. The images are split once, deterministically and stratified by digit, into a
source pool and a disjoint target pool; the source model is pretrained on the source pool and the
three shifts — one per level of the surgical fine-tuning paper — are built from the target pool:

* ``corruption`` (input level): target images corrupted (``--corruption``, ``--severity``);
* ``subpopulation`` (feature level): 5 super-classes {d, d+5}; the source sees digits 0-4, the
  target digits 5-9 under the same super-class labels, as BREEDS does with ImageNet sub-classes;
* ``label-flip`` (output level): target labels permuted y -> 9 - y, as CIFAR-Flip does.

Fine-tuning sees ``shots`` labelled target images per class, drawn from the target-train pool with
the run's seed; target validation and test splits are fixed, so every seed is scored on the same
images. See docs/benchmarks.md for the protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ftbench.data import corruptions
from ftbench.data.base import BENCHMARKS, Benchmark, ShiftInfo, SourceTask, Split, TargetTask
from ftbench.errors import UsageError, unknown

if TYPE_CHECKING:
    from ftbench.spec import RunSpec

DATA_SEED = 0  # the fixed partition of the 1,797 images; not the run seed
# Fractions of each digit's images per role; the rest is target_test.
FRACTIONS = {"source_train": 0.35, "source_val": 0.10, "source_test": 0.15, "target_pool": 0.12, "target_val": 0.10}
# Severity constants: per-pixel corruptions (noise, contrast) use ImageNet-C's, the stronger
# published set (CIFAR-10-C's severity-5 gaussian noise leaves the source model at ~99%: no shift).
# Spatial corruptions are defined in pixels, so they use CIFAR-10-C's, published for the resolution
# closest to 8 px (ImageNet-C's 3-10 px defocus radius would erase an 8 px digit at every severity).
SPATIAL_CORRUPTIONS = {"defocus_blur", "pixelate", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur", "snow",
                       "frost", "fog", "spatter", "elastic_transform"}


def corruption_scale(name: str) -> str:
    """The published severity set digits uses for corruption ``name``."""
    return "cifar" if name in SPATIAL_CORRUPTIONS else "imagenet"

DEFAULT_CORRUPTION = "gaussian_noise"
DEFAULT_SEVERITY = 5
SUPERCLASS_SOURCE = (0, 1, 2, 3, 4)  # super-class k = {k, k + 5}: source sub-class k, target k + 5


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # N×1×8×8 in [0, 1]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(DATA_SEED)
    roles: dict[str, list[np.ndarray]] = {k: [] for k in [*FRACTIONS, "target_test"]}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for role, frac in FRACTIONS.items():
            n = int(round(frac * len(idx)))
            roles[role].append(idx[start : start + n])
            start += n
        roles["target_test"].append(idx[start:])
    return x, y, {k: np.sort(np.concatenate(v)) for k, v in roles.items()}


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))


def _corruption_seed(name: str, severity: int, role: str) -> int:
    return zlib.crc32(f"digits/{name}/{severity}/{role}".encode())


@BENCHMARKS.register("digits")
class Digits(Benchmark):
    name = "digits"
    help = "embedded: scikit-learn's 8x8 digits, no download; corruption / subpopulation / label-flip"
    default_model = "digits-resnet"
    default_shots = 20
    shifts = {
        "corruption": ShiftInfo(
            "corruption", "input", "target images corrupted (--corruption NAME --severity 1..5)",
            ("corruption", "severity"),
        ),
        "subpopulation": ShiftInfo(
            "subpopulation", "feature", "5 super-classes {d, d+5}: source sub-classes 0-4, target 5-9"
        ),
        "label-flip": ShiftInfo("label-flip", "output", "target labels permuted y -> 9 - y"),
    }

    def resolve(self, spec: RunSpec) -> RunSpec:
        if spec.shift not in self.shifts:
            raise unknown(f"shift for benchmark {self.name!r}:", spec.shift, list(self.shifts))
        changes: dict[str, Any] = {}
        if spec.shift == "corruption":
            name = spec.corruption or DEFAULT_CORRUPTION
            if name not in corruptions.names():
                raise unknown("corruption", name, corruptions.names())
            sev = DEFAULT_SEVERITY if spec.severity is None else spec.severity
            if not (isinstance(sev, int) and 1 <= sev <= 5):
                raise UsageError(f"severity must be an integer in 1..5, got {sev!r}")
            changes.update(corruption=name, severity=sev)
        elif spec.corruption is not None or spec.severity is not None:
            raise UsageError(
                f"--corruption/--severity apply only to --shift corruption, not {spec.shift!r}"
            )
        shots = self.default_shots if spec.shots is None else spec.shots
        most = self._max_shots()
        if not (isinstance(shots, int) and 1 <= shots <= most):
            raise UsageError(f"shots must be an integer in 1..{most} for benchmark 'digits', got {shots!r}")
        changes["shots"] = shots
        return dataclasses.replace(spec, **changes)

    @staticmethod
    def _max_shots() -> int:
        _, y, roles = _digits()
        pool = y[roles["target_pool"]]
        return int(min(np.sum(pool == c) for c in range(10)))

    def _classes(self, spec: RunSpec) -> tuple[list[int], list[int], int]:
        """(source digits, target digits, number of classes) for the spec's shift."""
        if spec.shift == "subpopulation":
            return list(SUPERCLASS_SOURCE), [d + 5 for d in SUPERCLASS_SOURCE], 5
        return list(range(10)), list(range(10)), 10

    def source(self, spec: RunSpec) -> SourceTask:
        x, y, roles = _digits()
        src, _, n = self._classes(spec)
        label = {d: i for i, d in enumerate(src)}

        def take(role: str) -> Split:
            idx = roles[role][np.isin(y[roles[role]], src)]
            return _split(x[idx], np.array([label[int(v)] for v in y[idx]], dtype=np.int64))

        key = {"benchmark": "digits", "classes": src, "data_seed": DATA_SEED, "fractions": FRACTIONS}
        return SourceTask(key, n, take("source_train"), take("source_val"), take("source_test"))

    def target(self, spec: RunSpec) -> TargetTask:
        x, y, roles = _digits()
        _, tgt, n = self._classes(spec)
        if spec.shift == "subpopulation":
            relabel = {d: i for i, d in enumerate(tgt)}
        elif spec.shift == "label-flip":
            relabel = {d: 9 - d for d in tgt}
        else:
            relabel = {d: d for d in tgt}

        def take(role: str, idx: np.ndarray) -> Split:
            xs = x[idx]
            if spec.shift == "corruption":
                t = corruptions.corrupt(
                    torch.from_numpy(xs), spec.corruption, spec.severity,
                    seed=_corruption_seed(spec.corruption, spec.severity, role), scale=corruption_scale(spec.corruption),
                )
                xs = t.numpy()
            return _split(xs, np.array([relabel[int(v)] for v in y[idx]], dtype=np.int64))

        pool = roles["target_pool"][np.isin(y[roles["target_pool"]], tgt)]
        rng = np.random.default_rng([DATA_SEED, spec.seed])
        few = np.sort(np.concatenate([rng.permutation(pool[y[pool] == d])[: spec.shots] for d in tgt]))

        def role_idx(role: str) -> np.ndarray:
            return roles[role][np.isin(y[roles[role]], tgt)]

        # Corrupt the whole pool once, then take the few-shot rows: a given image gets the same
        # corruption whichever seed draws it.
        pool_split = take("target_pool", pool)
        pos = np.searchsorted(pool, few)
        train = Split(pool_split.x[pos], pool_split.y[pos])
        return TargetTask(
            n, train, take("target_val", role_idx("target_val")), take("target_test", role_idx("target_test")),
            info={"shift_level": self.shifts[spec.shift].level},
        )

    def status(self) -> str:
        return "bundled with scikit-learn (no download needed)"
