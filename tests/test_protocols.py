"""The two protocols: what each one trains on, selects on and reports (docs/protocols.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from ftbench.data.base import Split
from ftbench.data.digits import Digits, styles
from ftbench.errors import UsageError
from ftbench.methods.base import all_methods
from ftbench.execution.runner import execute, fine_tune
from ftbench.plan.resolve import resolve
from ftbench.spec import LATER_OPTIONS, SPEC_VERSION, RunSpec
from ftbench.train.loop import accuracy

ID_OOD = RunSpec(protocol="id-ood", steps=6)


# RunSpec fields added after protocols: None by default, and then not in the run id.
LATER_SINCE_PROTOCOLS = ("head_init", "schedule", "warmup", "clip_grad", "train_precision", "eval_precision", "augment",
                         "input_transform")


def _old_run_id(spec: RunSpec) -> str:
    """The run id as ftbench computed it before protocols (and head_init) existed (checkpoints/weights only when set)."""
    d = {k: v for k, v in spec.to_dict().items()
         if k not in ("protocol", "data_version", *LATER_SINCE_PROTOCOLS) and not (k in ("checkpoints", "weights") and v is None)}
    # Method options added later (features: full, lp-ft), at the value that means what earlier runs did.
    d["options"] = {k: v for k, v in d["options"].items() if LATER_OPTIONS.get((spec.method, k), object()) != v}
    return hashlib.sha256(json.dumps({"v": SPEC_VERSION, **d}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_few_shot_run_ids_are_unchanged_and_id_ood_ones_differ() -> None:
    for spec in (RunSpec(), RunSpec(shift="label-flip", method="full", seed=2), RunSpec(method="lp-ft")):
        r = resolve(spec)
        assert r.protocol == "few-shot" and r.run_id == _old_run_id(r)
    a, b = resolve(RunSpec(method="full")), resolve(RunSpec(method="full", protocol="id-ood"))
    assert a.run_id != b.run_id and b.shift == "style-noise"
    # The redefined subpopulation shift (writing styles) does not reuse results of the old one.
    sub = resolve(RunSpec(shift="subpopulation", method="full"))
    assert sub.data_version == 2 and sub.run_id != _old_run_id(sub)
    assert resolve(RunSpec(data_version=7)).data_version is None  # not the user's to set


def test_writing_styles_split_each_digit_in_halves_away_from_ties() -> None:
    """Half of each digit per style; the median projection is not a near-tie a float rounding
    difference could flip (the margin is 1e-6 of the pixel scale, far above float64 rounding)."""
    from ftbench.data.digits import _digits

    x, y, _ = _digits()
    st = styles()
    flat = x.reshape(len(x), -1).astype(np.float64)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        assert abs(int(st[idx].sum()) - len(idx) // 2) <= 1
        z = flat[idx] - flat[idx].mean(axis=0)
        proj = np.sort(z @ np.linalg.svd(z, full_matrices=False)[2][0])
        mid = len(idx) // 2
        assert proj[mid] - proj[mid - 1] > 1e-6, c


def _poisoned(monkeypatch: pytest.MonkeyPatch, keep_ood_val: bool) -> None:
    """Replace every OOD split of digits' ID→OOD offering (and the OOD val set unless ``keep_ood_val``)
    by random images with shuffled labels."""
    original = Digits.id_ood

    def poison(s: Split, seed: int) -> Split:
        g = torch.Generator().manual_seed(seed)
        return Split(torch.rand(s.x.shape, generator=g), s.y[torch.randperm(len(s), generator=g)])

    def id_ood(self: Digits, spec: RunSpec):  # noqa: ANN202
        d = original(self, spec)
        tests = {k: poison(v, i) for i, (k, v) in enumerate(d.ood_tests.items())}
        return dataclasses.replace(d, ood_tests=tests, ood_val=d.ood_val if keep_ood_val else poison(d.ood_val, 99))

    monkeypatch.setattr(Digits, "id_ood", id_ood)


@pytest.mark.parametrize("spec", [
    dataclasses.replace(ID_OOD, method="full"),
    dataclasses.replace(ID_OOD, method="lp-ft"),
    dataclasses.replace(ID_OOD, method="linear-probe"),
    dataclasses.replace(ID_OOD, method="wise-ft"),
    dataclasses.replace(ID_OOD, method="surgical", blocks=("1",)),  # its head: the probe of ID train
    dataclasses.replace(ID_OOD, method="bitfit", lr=1e-2),
    dataclasses.replace(ID_OOD, method="full", shots=5, seed=1, checkpoints=3),
    dataclasses.replace(ID_OOD, method="autoft", options=(("trials", 2), ("inner_steps", 2))),
], ids=lambda s: s.method + ("-shots" if s.shots else ""))
def test_no_ood_image_reaches_training(monkeypatch: pytest.MonkeyPatch, spec: RunSpec) -> None:
    """Random images with shuffled labels in place of every OOD split leave the trained weights bit
    for bit the same: no gradient step or probe fit reads them. AutoFT's search reads the OOD val set
    by design (its objective), so for it only the OOD test sets are poisoned."""
    clean = fine_tune(spec, "cpu").model.state_dict()
    _poisoned(monkeypatch, keep_ood_val=spec.method == "autoft")
    tr = fine_tune(spec, "cpu")
    poisoned = tr.model.state_dict()
    assert clean.keys() == poisoned.keys()
    for k in clean:
        assert torch.equal(clean[k], poisoned[k]), k
    assert tr.task.fresh_head and len(tr.task.train) == (50 if spec.shots else 203)


def test_autoft_searches_on_the_ood_val_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one split besides ID train that AutoFT reads is OOD val: poisoning it changes its search."""
    spec = dataclasses.replace(ID_OOD, method="autoft", options=(("trials", 3), ("inner_steps", 3)))
    clean = execute(spec, "cpu")[-1]
    _poisoned(monkeypatch, keep_ood_val=False)
    poisoned = execute(spec, "cpu")[-1]
    searched = [k for k in clean if k.startswith("autoft_") and isinstance(clean[k], float)]
    assert searched and any(clean[k] != poisoned[k] for k in searched)


def test_columns_are_the_named_splits() -> None:
    """val_acc is ID val, ood_val_acc the OOD val set, ood.<set>_acc each OOD test set, ood_acc their
    mean, id_acc ID test: recomputed here from the benchmark's splits with the trained model."""
    spec = resolve(dataclasses.replace(ID_OOD, method="full"))
    tr = fine_tune(spec, "cpu")
    row = execute(spec, "cpu")[-1]
    d = Digits().id_ood(spec)
    assert row["id_acc"] == pytest.approx(accuracy(tr.model, d.test), abs=0)
    assert row["val_acc"] == pytest.approx(accuracy(tr.model, d.val), abs=0)
    assert row["ood_val_acc"] == pytest.approx(accuracy(tr.model, d.ood_val), abs=0)
    for name, split in d.ood_tests.items():
        assert row[f"ood.{name}_acc"] == pytest.approx(accuracy(tr.model, split), abs=0)
    assert row["ood_acc"] == pytest.approx((row["ood.style_acc"] + row["ood.noise_acc"]) / 2)
    assert row["protocol"] == "id-ood" and row["n_target_train"] == len(d.train)
    # Few-shot rows keep their columns and have no per-set ones.
    few = execute(RunSpec(steps=2), "cpu")[-1]
    assert few["protocol"] == "few-shot" and not any(k.startswith("ood.") for k in few)


def _rows(**cols: list) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    base = {"run_id": [f"r{i}" for i in range(n)], "benchmark": ["digits"] * n, "shift": ["style-noise"] * n,
            "method": ["full"] * n, "blocks": [""] * n, "seed": [0] * n, "status": ["ok"] * n,
            "protocol": ["id-ood"] * n, "model": ["digits-resnet"] * n, "id_acc": [90.0] * n}
    return pd.DataFrame({**base, **cols})


def test_selection_uses_the_split_the_caption_names() -> None:
    from ftbench.report.table import build, select

    df = _rows(lr=[1e-3, 1e-2, 1e-1], val_acc=[99.0, 90.0, 80.0], ood_val_acc=[60.0, 70.0, 65.0],
               ood_acc=[1.0, 2.0, 3.0])
    assert select(df, "val")["lr"].tolist() == [1e-3]
    assert select(df, "id-val")["lr"].tolist() == [1e-3]
    assert select(df, "ood-val")["lr"].tolist() == [1e-2]
    assert select(df, "oracle")["lr"].tolist() == [1e-1]
    assert "chosen per seed on ID validation accuracy" in build(df, "methods", "val").caption
    assert "chosen per seed on OOD validation accuracy" in build(df, "methods", "ood-val").caption
    assert "protocol id-ood" in build(df, "methods", "val").caption
    with pytest.raises(UsageError, match="does not apply to runs of protocol 'id-ood'"):
        select(df, "target-val")
    few = _rows(lr=[1e-3], val_acc=[1.0], ood_acc=[1.0]).assign(protocol="few-shot")
    with pytest.raises(UsageError, match="does not apply to runs of protocol 'few-shot'"):
        select(few, "ood-val")
    with pytest.raises(UsageError, match="no ood val split"):
        select(_rows(lr=[1e-3], val_acc=[1.0], ood_acc=[1.0]), "ood-val")


def test_effective_robustness_is_ood_above_the_logit_trend() -> None:
    from ftbench.report.table import _logit, build

    # Trend runs (full) on the line logit(ood) = logit(id) - 1; a linear-probe row 5 points above it.
    ids = np.array([70.0, 80.0, 90.0, 95.0])
    on_line = 100 / (1 + np.exp(-(_logit(ids) - 1.0)))
    df = _rows(lr=[1e-4, 1e-3, 1e-2, 1e-1], val_acc=[1.0, 2.0, 3.0, 4.0], ood_acc=list(on_line))
    df["id_acc"] = ids
    probe_ood = float(100 / (1 + np.exp(-(_logit(np.array([85.0])) - 1.0)))[0] + 5.0)
    df = pd.concat([df, _rows(lr=[None], val_acc=[1.0], ood_acc=[probe_ood]).assign(
        method="linear-probe", id_acc=85.0, run_id="lp")], ignore_index=True)
    grid = build(df, "robustness")
    col = grid.groups[0][0]
    assert grid.cells[("linear-probe", col, "ER")].mean == pytest.approx(5.0, abs=1e-6)
    assert grid.cells[("full", col, "ER")].mean == pytest.approx(0.0, abs=1e-6)  # its best-val run: on the line
    with pytest.raises(UsageError, match="--trend"):
        build(df, "robustness", trend=("lp-ft",))


@pytest.mark.parametrize("method", [m.name for m in all_methods()])
def test_every_method_runs_in_both_protocols_or_says_why(method: str) -> None:
    """Each registered method resolves and trains under both protocols on digits (on its ViT where the
    CNN has no place for the method, on its CLIP where the method needs a text tower), or refuses a
    protocol with one UsageError line."""
    for protocol in ("few-shot", "id-ood"):
        spec = RunSpec(method=method, protocol=protocol, steps=2, options=_fast(method))
        try:
            spec = resolve(spec)
        except UsageError as e:
            if "digits-vit" in str(e) or "transformer" in str(e).lower() or "ViT" in str(e):
                spec = resolve(dataclasses.replace(spec, model="digits-vit"))
            elif "text tower" in str(e):
                assert "\n" not in str(e) and "digits-clip" in str(e)
                spec = resolve(dataclasses.replace(spec, model="digits-clip"))
            else:
                assert method == "none" and protocol == "id-ood", str(e)
                assert "\n" not in str(e) and "linear-probe" in str(e)
                continue
        row = execute(spec, "cpu")[-1]
        assert row["status"] == "ok" and row["protocol"] == protocol
        if protocol == "id-ood":
            assert "ood.style_acc" in row and "ood.noise_acc" in row


def _fast(method: str) -> tuple:
    return {"autoft": (("trials", 2), ("inner_steps", 2))}.get(method, ())


def test_digits_read_without_sklearn_are_load_digits_arrays():
    """The embedded benchmark reads scikit-learn's digits file itself (no 1 s sklearn import in a
    warm run); the arrays must be exactly load_digits' or every digits number would move."""
    import numpy as np
    from sklearn.datasets import load_digits

    from ftbench.data.digits import load_digits_arrays

    images, target = load_digits_arrays()
    d = load_digits()
    assert images.dtype == d.images.dtype and target.dtype == d.target.dtype
    np.testing.assert_array_equal(images, d.images)
    np.testing.assert_array_equal(target, d.target)
