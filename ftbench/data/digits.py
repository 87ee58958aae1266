"""The embedded benchmark: scikit-learn's bundled 8×8 handwritten digits (1,797 images).

Needs no download. The images are split once, deterministically and stratified by digit, into a
source pool and a disjoint target pool; the source model is pretrained on the source pool and the
three shifts — one per level of the surgical fine-tuning paper — are built from the target pool:

* ``corruption`` (input level): target images corrupted (``--corruption``, ``--severity``);
* ``subpopulation`` (feature level): each digit's images fall into two writing styles (:func:`styles`);
  the source sees one style of every digit, the target the other, under the same labels — sub-populations
  that share their class's features, as BREEDS' ImageNet sub-classes share their super-class's;
* ``label-flip`` (output level): target labels permuted y -> 9 - y, as CIFAR-Flip does.

Fine-tuning sees ``shots`` labelled target images per class, drawn from the target-train pool with
the run's seed; target validation and test splits are fixed, so every seed is scored on the same
images.

In the ID→OOD protocol (``--protocol id-ood``, shift ``style-noise``), the source model pretrained on
``source_train`` (all digits, both styles: a broader population than the ID task) is fine-tuned on one
writing style of clean digits (ID) and scored on two OOD test sets of different kinds: the other
style (``style``, feature level) and the ID test images with gaussian noise (``noise``, input level);
its OOD val set is ID val under four other corruptions. See docs/benchmarks.md and docs/protocols.md.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ftbench.data import corruptions
from ftbench.data.base import BENCHMARKS, Benchmark, IdOodSplits, ShiftInfo, SourceTask, Split, TargetTask
from ftbench.data.prompts import DIGITS
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
# ID→OOD: the OOD test corruption (as the few-shot default) and the OOD val set's corruptions, cycled
# over the ID val images: another distribution than either OOD test set, as AutoFT asks of its OOD val.
ID_OOD_NOISE = ("gaussian_noise", 5)
OOD_VAL_CORRUPTIONS = ("contrast", "defocus_blur", "impulse_noise", "pixelate")
OOD_VAL_SEVERITY = 3
ID_VAL_DRAW = 1  # seeds the fixed draw of ID val from the held-out style-0 images (data version 2)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``(images N×8×8 float64, target N int)``, the arrays of
    ``sklearn.datasets.load_digits()``.

    Read as ``load_digits`` reads it (``np.loadtxt`` of ``sklearn/datasets/data/digits.csv.gz``),
    but found without importing scikit-learn, whose import costs a warm ``ftbench run`` more than a
    second; falls back to ``load_digits`` itself where the file is not where scikit-learn keeps it.
    tests/test_protocols.py checks that both give the same arrays."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    roots = spec.submodule_search_locations if spec is not None and spec.submodule_search_locations else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, mode="rt", encoding="utf-8") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)
    from sklearn.datasets import load_digits  # pragma: no cover (an unusual install)

    d = load_digits()  # pragma: no cover
    return d.images, d.target  # pragma: no cover


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    images, target = load_digits_arrays()
    x = (images.astype(np.float32) / 16.0)[:, None]  # N×1×8×8 in [0, 1]
    y = target.astype(np.int64)
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


@functools.lru_cache(maxsize=1)
def styles() -> np.ndarray:
    """The writing style of each of the 1,797 images: 0 or 1, half of each digit's images each.

    Per digit, the images are centred and projected on their first principal component — the main
    way that digit's writing varies (slant, loops, strokes) — and the lower half of the projections is
    style 0. The component's sign is fixed by making its largest-magnitude entry positive, so the
    split does not depend on the LAPACK build's choice of sign. A linear classifier trained on one
    style of every digit loses 20-35 points on the other (docs/benchmarks.md), while both share the
    digit's shape: a feature-level shift with one label space.
    """
    x, y, _ = _digits()
    flat = x.reshape(len(x), -1).astype(np.float64)
    out = np.zeros(len(y), dtype=np.int64)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        z = flat[idx] - flat[idx].mean(axis=0)
        axis = np.linalg.svd(z, full_matrices=False)[2][0]
        axis = axis * np.sign(axis[np.argmax(np.abs(axis))])
        order = np.argsort(z @ axis, kind="stable")
        out[idx[order[len(idx) // 2:]]] = 1
    return out


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))


def _corruption_seed(name: str, severity: int, role: str) -> int:
    return zlib.crc32(f"digits/{name}/{severity}/{role}".encode())


def _corrupt(xs: np.ndarray, name: str, severity: int, role: str) -> np.ndarray:
    """Images ``xs`` under corruption ``name``, seeded by (corruption, severity, role)."""
    return corruptions.corrupt(torch.from_numpy(xs), name, severity, seed=_corruption_seed(name, severity, role),
                               scale=corruption_scale(name)).numpy()


_MAX_SHOTS: dict[str, int] = {}  # shift -> most shots per class its target pool allows


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
            "subpopulation", "feature", "writing styles: source sees style 0 of every digit, target style 1"
        ),
        "label-flip": ShiftInfo("label-flip", "output", "target labels permuted y -> 9 - y"),
    }
    id_ood_shift = ShiftInfo("style-noise", "mixed", "ID: writing style 0 of every digit, clean; OOD test: style 1 "
                             "(feature level) and the ID test images with gaussian noise s5 (input level)")
    id_ood_sets = {"style": "feature", "noise": "input"}
    id_ood_has_val = True
    id_ood_pretrains = True

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
        most = self._max_shots(spec.shift)
        if not (isinstance(shots, int) and 1 <= shots <= most):
            raise UsageError(f"shots must be an integer in 1..{most} for benchmark 'digits', got {shots!r}")
        changes["shots"] = shots
        return dataclasses.replace(spec, **changes)

    def data_version(self, spec: RunSpec) -> int | None:
        # 2: subpopulation = writing styles (was: super-classes {d, d+5}, an output-level shift);
        # id-ood: ID val and test halves of the held-out style-0 images (was: ID val = target_val, 85 images).
        return 2 if spec.shift == "subpopulation" or spec.protocol == "id-ood" else None

    def source(self, spec: RunSpec) -> SourceTask:
        x, y, roles = _digits()
        # subpopulation: the source sees one writing style; every other shift, and the ID→OOD
        # protocol's pretraining, all the source images.
        keep = styles() == 0 if spec.shift == "subpopulation" else np.ones(len(y), dtype=bool)

        def take(role: str) -> Split:
            idx = roles[role][keep[roles[role]]]
            return _split(x[idx], y[idx])

        key: dict[str, Any] = {"benchmark": "digits", "classes": list(range(10)), "data_seed": DATA_SEED,
                               "fractions": FRACTIONS}
        if spec.shift == "subpopulation":
            key["style"] = 0
        return SourceTask(key, 10, take("source_train"), take("source_val"), take("source_test"), prompts=DIGITS)

    @staticmethod
    def _target_roles(shift: str) -> dict[str, np.ndarray]:
        """(few-shot pool, target_val, target_test) positions of ``shift``."""
        _, _, roles = _digits()
        if shift != "subpopulation":
            return {"target_pool": roles["target_pool"], "target_val": roles["target_val"],
                    "target_test": roles["target_test"]}
        # The other style, from the whole partition: the source model never saw a style-1 image, and
        # the style halves of the target roles alone leave too few images of some digits to draw from.
        other = styles() == 1

        def of(*names: str) -> np.ndarray:
            idx = np.sort(np.concatenate([roles[n] for n in names]))
            return idx[other[idx]]

        return {"target_pool": of("source_train", "target_pool"), "target_val": of("source_val", "target_val"),
                "target_test": of("source_test", "target_test")}

    def _max_shots(self, shift: str) -> int:
        if shift not in _MAX_SHOTS:  # asked once per spec a suite resolves: computed once per shift
            _, y, _ = _digits()
            pool = y[self._target_roles(shift)["target_pool"]]
            _MAX_SHOTS[shift] = int(min(np.sum(pool == c) for c in range(10)))
        return _MAX_SHOTS[shift]

    def target(self, spec: RunSpec) -> TargetTask:
        x, y, _ = _digits()
        relabel = (lambda v: 9 - v) if spec.shift == "label-flip" else (lambda v: v)
        r = self._target_roles(spec.shift)

        def take(role: str, idx: np.ndarray) -> Split:
            xs = x[idx]
            if spec.shift == "corruption":
                xs = _corrupt(xs, spec.corruption, spec.severity, role)
            return _split(xs, relabel(y[idx]))

        pool = r["target_pool"]
        rng = np.random.default_rng([DATA_SEED, spec.seed])
        few = np.sort(np.concatenate([rng.permutation(pool[y[pool] == d])[: spec.shots] for d in range(10)]))
        # Corrupt the whole pool once, then take the few-shot rows: a given image gets the same
        # corruption whichever seed draws it.
        pool_split = take("target_pool", pool)
        pos = np.searchsorted(pool, few)
        train = Split(pool_split.x[pos], pool_split.y[pos])
        return TargetTask(
            10, train, take("target_val", r["target_val"]), take("target_test", r["target_test"]),
            info={"shift_level": self.shifts[spec.shift].level},
            # label-flip: target label i is digit 9 - i, and is called so
            prompts=DIGITS.relabelled([9 - i for i in range(10)]) if spec.shift == "label-flip" else DIGITS,
        )

    # --- the ID→OOD protocol ------------------------------------------------------------------

    @staticmethod
    def _id_ood_roles() -> dict[str, np.ndarray]:
        """Positions of ID train / val / test (style 0) and the style-1 OOD test set; disjoint from
        ``source_train``, which pretrains the model.

        ID val and ID test split the clean style-0 images of ``target_val``, ``source_test`` and
        ``target_test`` in half, per digit (ID val was ``target_val``'s 85 images until data version 2:
        so few that several runs of a cell often reached 100 %, docs/benchmarks.md)."""
        _, y, roles = _digits()
        st = styles()

        def of(style: int, *names: str) -> np.ndarray:
            idx = np.sort(np.concatenate([roles[n] for n in names]))
            return idx[st[idx] == style]

        held = of(0, "target_val", "source_test", "target_test")
        rng = np.random.default_rng([DATA_SEED, ID_VAL_DRAW])
        val = np.sort(np.concatenate([rng.permutation(held[y[held] == c])[: int(np.sum(y[held] == c)) // 2]
                                      for c in range(10)]))
        return {"train": of(0, "source_val", "target_pool"), "val": val, "test": np.setdiff1d(held, val),
                "ood_style": of(1, "source_test", "target_test")}

    def id_ood_max_shots(self) -> int:
        _, y, _ = _digits()
        train = y[self._id_ood_roles()["train"]]
        return int(min(np.sum(train == c) for c in range(10)))

    def id_ood(self, spec: RunSpec) -> IdOodSplits:
        x, y, _ = _digits()
        r = self._id_ood_roles()

        def split(idx: np.ndarray, xs: np.ndarray | None = None) -> Split:
            return _split(x[idx] if xs is None else xs, y[idx])

        noise, sev = ID_OOD_NOISE
        val = r["val"]
        # The OOD val set: each ID val image under one of OOD_VAL_CORRUPTIONS, cycled by position.
        ood_val = np.empty_like(x[val])
        for k, name in enumerate(OOD_VAL_CORRUPTIONS):
            part = np.arange(k, len(val), len(OOD_VAL_CORRUPTIONS))
            ood_val[part] = _corrupt(x[val[part]], name, OOD_VAL_SEVERITY, "id_ood_val")
        return IdOodSplits(
            10, split(r["train"]), split(val), split(r["test"]),
            ood_tests={"style": split(r["ood_style"]),
                       "noise": split(r["test"], _corrupt(x[r["test"]], noise, sev, "id_ood_test"))},
            ood_val=split(val, ood_val),
            prompts=DIGITS,
        )

    def status(self) -> str:
        return "bundled with scikit-learn (no download needed)"
