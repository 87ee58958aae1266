"""The WILDS benchmarks (ftbench/data/wilds_data.py) on tiny fabricated copies of the real file
layouts (tests/wilds_fixtures.py), read through the ``wilds`` package itself, in both protocols
(few-shot target and ID→OOD).

Every fabricated image is flat grey at the level of its position in the wilds dataset, so the
decoded pixels of a split say exactly which examples it holds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import wilds_fixtures
from ftbench.data import wilds_data
from ftbench.data.base import Split, get_benchmark
from ftbench.data.stream import StreamSplit, decode
from ftbench.errors import UsageError
from ftbench.protocols.base import get_protocol
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve

NAMES = ("waterbirds", "celeba", "camelyon17", "fmow", "iwildcam")
SIZE = 16  # the image side in these tests (real: 96-448 px)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wilds-data")
    for name in NAMES:
        wilds_fixtures.make(name, path)
    return path


@pytest.fixture
def data(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FTBENCH_DATA", str(root))
    for name in NAMES:
        monkeypatch.setitem(wilds_data.SIZE, name, SIZE)
    return root


def levels(split: Split | StreamSplit) -> np.ndarray:
    """The grey level of each image of a split: the wilds dataset position it was read from."""
    x = split.x if isinstance(split, Split) else torch.cat(list(split.batches()))
    mean = torch.tensor(wilds_data.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(wilds_data.STD).view(1, 3, 1, 1)
    px = torch.round((x * std + mean) * 255)
    assert torch.equal(px.amin(dim=(1, 2, 3)), px.amax(dim=(1, 2, 3)))  # flat grey, as written
    return px[:, 0, 0, 0].long().numpy()


def positions(split: Split | StreamSplit) -> np.ndarray:
    if isinstance(split, StreamSplit):
        assert split.index is not None
        return split.index
    return levels(split)


def spec_of(name: str, **kw) -> RunSpec:
    return resolve(RunSpec(benchmark=name, model="resnet26-cifar", blocks=("last",), **kw))


# --- splits and roles -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_roles_follow_the_wilds_splits_disjoint_and_seeded(data: Path, name: str) -> None:
    bench = get_benchmark(name)
    d = bench.data()
    spec = spec_of(name, shots=2)
    s, t = bench.source(spec), bench.target(spec)
    roles = {"source_train": positions(s.train), "source_val": positions(s.val), "source_test": positions(s.test),
             "target_train": positions(t.train), "target_val": positions(t.val), "target_test": positions(t.test)}
    # Labels and metadata rows travel with the images.
    for role, split in zip(roles, (s.train, s.val, s.test, t.train, t.val, t.test)):
        idx = torch.from_numpy(roles[role])
        assert torch.equal(split.y.cpu(), d.y[idx]) and torch.equal(split.meta.cpu(), d.meta[idx]), role
        assert len(set(roles[role].tolist())) == len(roles[role]), role
    # Pairwise disjoint.
    names = list(roles)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(roles[a].tolist()) & set(roles[b].tolist()), (a, b)
    # Which WILDS split each role comes from.
    split_of = {k: set(d.indices(k).tolist()) for k in d.split_ids}
    inside = {"source_train": "train", "target_test": "test"}
    if name in ("waterbirds", "celeba"):
        inside.update(source_val="train", source_test="train", target_train="val", target_val="val")
        assert set(roles["target_test"].tolist()) == split_of["test"]  # all of WILDS test
        n_source = len(roles["source_train"]) + len(roles["source_val"]) + len(roles["source_test"])
        assert n_source == len(split_of["train"])
    else:
        inside.update(source_val="id_val", source_test="id_test" if name != "camelyon17" else "id_val",
                      target_train="test", target_val="test")
        assert set(roles["source_train"].tolist()) == split_of["train"]
    for role, split_name in inside.items():
        assert set(roles[role].tolist()) <= split_of[split_name], role
    assert t.info["shift_level"] == ("output" if name in ("waterbirds", "celeba") else "natural")
    assert s.num_classes == t.num_classes == d.num_classes
    assert s.key["size"] == SIZE and t.train.x.shape[1:] == (3, SIZE, SIZE)

    # Few-shot: `shots` per group (waterbirds, celeba) or per class, up to what the pool has.
    strata = bench.strata(d, roles["target_train"])
    pool, _, _ = bench.target_roles(d)
    for st, n in zip(*np.unique(bench.strata(d, pool), return_counts=True)):
        assert int((strata == st).sum()) == min(2, int(n))
    # The seed draws the set; the same seed draws the same set, nested across shots.
    again = bench.target(spec)
    assert torch.equal(again.train.x, t.train.x) and torch.equal(again.train.y, t.train.y)
    other = positions(bench.target(spec_of(name, shots=2, seed=1)).train)
    assert set(other.tolist()) != set(roles["target_train"].tolist()) and len(other) == len(roles["target_train"])
    one = positions(bench.target(spec_of(name, shots=1)).train)
    assert set(one.tolist()) < set(roles["target_train"].tolist())


def test_partition_sizes_of_each_protocol(data: Path) -> None:
    """Waterbirds: a tenth of each train group held out twice; half of each val group is the pool,
    the other half (at most 100) target_val. Camelyon17: id_val halved; a quarter of each class of
    OOD test (at most 1000) is the pool, a quarter (at most 250) target_val. iWildCam: a class with
    fewer than 4 test images stays in target_test whole."""
    wb = get_benchmark("waterbirds")
    d = wb.data()
    train, val, test = wb.source_roles(d)
    assert (len(train), len(val), len(test)) == (36, 4, 4)  # groups of 12, 10, 10, 12: 1 + 1 held out each
    pool, tval, _ = wb.target_roles(d)
    assert (len(pool), len(tval)) == (16, 16)  # 8 per group
    cam = get_benchmark("camelyon17")
    d = cam.data()
    assert [len(r) for r in cam.source_roles(d)] == [36, 6, 6]
    assert [len(r) for r in cam.target_roles(d)] == [8, 8, 16]  # 16 per class in OOD test
    iw = get_benchmark("iwildcam")
    d = iw.data()
    pool, tval, ttest = iw.target_roles(d)
    assert 3 not in set(d.y[torch.from_numpy(pool)].tolist()) and (d.y[torch.from_numpy(ttest)] == 3).sum() == 2
    # carve() itself: per stratum the sizes asked for, the rest last; fixed (DATA_SEED), sorted.
    idx = np.arange(100, 120)
    parts = wilds_data.carve(idx, idx % 2, lambda n: (3, 2))
    assert [len(p) for p in parts] == [6, 4, 10] and all((np.diff(p) > 0).all() for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, wilds_data.carve(idx, idx % 2, lambda n: (3, 2))))


@pytest.mark.parametrize("name", NAMES)
def test_each_example_reads_the_file_wilds_reads(data: Path, name: str) -> None:
    """The file list replays each dataset's get_input (FMoW's sequestered rows shift its file numbers)."""
    d = get_benchmark(name).data()
    ds = wilds_data.load_wilds_dataset(name, data)
    assert len(d.paths) == len(ds)
    for i in range(0, len(ds), 7):
        ours = decode(d.paths[i]).permute(1, 2, 0).numpy()
        theirs = np.asarray(ds.get_input(i).convert("RGB"))
        assert np.array_equal(ours, theirs), i
        assert int(ours[0, 0, 0]) == i  # the fabricated level is the position


@pytest.mark.parametrize("name", NAMES)
def test_transform_is_wilds_eval_transform(name: str) -> None:
    """WildsTransform against WILDS' own (PIL) transform steps for the dataset, on a smooth image of
    the dataset's real resolution scaled down to 1/4 (so sizes stay small)."""
    from PIL import Image
    from torchvision import transforms as T

    size = 56
    w, h = {"waterbirds": (75, 60), "celeba": (178 // 4, 218 // 4), "camelyon17": (24, 24), "fmow": (56, 56),
            "iwildcam": (100, 70)}[name]
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8, generator=g), size=(h, w), mode="bilinear")
    img = (img[0] * 255).round().to(torch.uint8)
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    kind = {"waterbirds": "resize-crop", "celeba": "crop-resize"}.get(name, "resize")
    if kind == "resize-crop":  # image_resize_and_center_crop with resize_scale 256/224
        ref = T.Compose([T.Resize((int(size * 256 / 224),) * 2), T.CenterCrop(size)])
    elif kind == "crop-resize":  # image_base: CenterCrop(min(original_resolution)), Resize(target)
        ref = T.Compose([T.CenterCrop(min(w, h)), T.Resize((size, size))])
    else:
        ref = T.Resize((size, size))
    ours = wilds_data.WildsTransform(kind, size)(img).float()
    theirs = torch.from_numpy(np.asarray(ref(pil))).permute(2, 0, 1).float()
    assert ours.shape == theirs.shape == (3, size, size)
    # torchvision's tensor resize (antialiased, float) against PIL's (fixed-point, uint8): PIL rounds
    # its filter coefficients and each output to integers, so pixels differ by a few grey levels
    # (of 255), on average well under one; a wrong crop or size would differ by tens.
    assert (ours - theirs).abs().mean() < 1.0 and (ours - theirs).abs().max() <= 4


# --- metrics ----------------------------------------------------------------------------------

def test_worst_group_and_macro_f1_on_a_hand_worked_case() -> None:
    # Groups (attribute, y): (0,0) 2/2 right, (1,0) 1/2, (0,1) 0/1, (1,1) 1/1 -> worst 0 %.
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    meta = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0], [0, 1], [1, 1]])
    pred = torch.tensor([0, 0, 0, 1, 0, 1])
    split = Split(torch.zeros(6, 3, 1, 1), y, meta)
    out = wilds_data.worst_group_metrics(pred, split, attribute=0, y=1, adjusted=True)
    assert out["worst_group_acc"] == 0.0
    # adjusted: landbird/land 1.0·3498 + landbird/water 0.5·184 + waterbird/land 0·56 + waterbird/water 1·1057
    assert out["adj_avg_acc"] == pytest.approx(100 * (3498 + 92 + 1057) / (3498 + 184 + 56 + 1057))
    # Macro-F1 over the classes present in y: class 0: TP 3, FP 1, FN 1 -> 0.75; class 1: TP 1, FP 1, FN 1 -> 0.5.
    m = wilds_data.macro_metrics(pred, split)
    assert m["macro_f1"] == pytest.approx(62.5) and m["macro_recall"] == pytest.approx(100 * (3 / 4 + 1 / 2) / 2)


def _wilds_reference(name: str, results: dict[str, float]) -> dict[str, float]:
    """Our metric names -> wilds' eval results (fractions -> %)."""
    key = {"waterbirds": {"worst_group_acc": "acc_wg", "adj_avg_acc": "adj_acc_avg"},
           "celeba": {"worst_group_acc": "acc_wg"},
           "camelyon17": {"worst_slide_acc": "acc_wg"},
           "fmow": {"worst_region_acc": "acc_worst_region", "worst_year_acc": "acc_worst_year"},
           "iwildcam": {"macro_f1": "F1-macro_all", "macro_recall": "recall-macro_all"}}[name]
    return {ours: 100 * results[theirs] for ours, theirs in key.items()}


@pytest.mark.parametrize("name", NAMES)
def test_metrics_equal_wilds_eval(data: Path, name: str) -> None:
    """On random predictions, each role's metrics equal `dataset.eval` of wilds itself (whose group
    averaging runs on ftbench's torch_scatter stand-in when torch_scatter is not installed)."""
    bench = get_benchmark(name)
    ds = wilds_data.load_wilds_dataset(name, data)
    spec = spec_of(name, shots=2)
    s, t = bench.source(spec), bench.target(spec)
    assert "torch_scatter" in sys.modules
    g = torch.Generator().manual_seed(1)
    full = bench.images(bench.data())
    for split, metrics in ((s.test, s.metrics), (t.val, t.metrics), (t.test, t.metrics), (full, t.metrics)):
        for _ in range(3):
            right = torch.rand(len(split), generator=g) < 0.6  # mostly right, so groups differ
            wrong = torch.randint(0, ds.n_classes, (len(split),), generator=g)
            pred = torch.where(right, split.y, wrong)
            results, _ = ds.eval(pred, split.y, split.meta)
            ours = metrics(pred, split)
            # Percentages from counts: ours in float64, wilds' in float32 (relative 6e-8 of <= 100 is
            # 6e-6); 1e-4 of a point is far below one image of any split.
            assert ours == pytest.approx(_wilds_reference(name, results), abs=1e-4)
            acc = 100 * float((pred == split.y).double().mean())
            if "acc_avg" in results:
                assert acc == pytest.approx(100 * results["acc_avg"], abs=1e-4)


def test_torch_scatter_stand_in_matches_a_direct_group_mean() -> None:
    v = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    g = torch.tensor([0, 0, 2, 2, 2])
    assert torch.equal(wilds_data._scatter(v, g, dim_size=4, reduce="mean"), torch.tensor([0.5, 0.0, 2 / 3, 0.0]))
    assert torch.equal(wilds_data._scatter(v, g, dim_size=3, reduce="sum"), torch.tensor([1.0, 0.0, 2.0]))


# --- bad input --------------------------------------------------------------------------------

def test_missing_data_is_one_error_line_naming_fetch(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTBENCH_DATA", str(tmp_path / "empty"))
    for name in NAMES:
        assert get_benchmark(name).status() == f"not downloaded: ftbench fetch {name}"
    r = cli("run", "--benchmark", "fmow", "--model", "resnet26-cifar", "--weights", "scratch", "--block", "last",
            "--steps", "1", "--out", tmp_path / "out")
    assert r.code == 2 and r.err.count("\n") == 1 and r.err.startswith("error: fmow data not found under ")
    assert "`ftbench fetch fmow`" in r.err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))


def test_shots_and_other_flags_out_of_range(cli, data: Path) -> None:
    with pytest.raises(UsageError, match=r"shots must be an integer in 1..66 \(per group\) for benchmark 'waterbirds'"):
        resolve(RunSpec(benchmark="waterbirds", shots=67))
    with pytest.raises(UsageError, match=r"shots must be an integer in 1..100 \(per class\)"):
        resolve(RunSpec(benchmark="iwildcam", shots=101))
    with pytest.raises(UsageError, match=r"^shots must be a positive integer, got 0$"):
        resolve(RunSpec(benchmark="iwildcam", shots=0))
    # Within the real data's range but more than this copy's pool holds (4 per group).
    with pytest.raises(UsageError, match=r"shots must be an integer in 1..4 \(per group\) for benchmark 'celeba' with"):
        get_benchmark("celeba").target(spec_of("celeba", shots=5))
    assert len(get_benchmark("fmow").target(spec_of("fmow", shots=50)).train) == 9  # up to shots: all 3 per class
    r = cli("run", "--benchmark", "camelyon17", "--corruption", "fog")
    assert r.code == 2 and "--corruption/--severity do not apply to benchmark 'camelyon17'" in r.err
    r = cli("run", "--benchmark", "camelyon17", "--shift", "time")
    assert r.code == 2 and "unknown shift for benchmark 'camelyon17': 'time'; accepted: hospital" in r.err
    default = resolve(RunSpec(benchmark="celeba"))
    assert (default.shots, default.shift, default.model) == (50, "spurious-gender", "resnet50")


def test_corrupt_image_and_damaged_metadata_are_usage_errors(cli, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    folder = wilds_fixtures.make("waterbirds", tmp_path)
    monkeypatch.setenv("FTBENCH_DATA", str(tmp_path))
    monkeypatch.setitem(wilds_data.SIZE, "waterbirds", SIZE)
    bench = get_benchmark("waterbirds")
    victim = Path(bench.data().paths[int(positions(bench.target(spec_of("waterbirds", shots=1)).train)[0])])
    victim.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(UsageError, match=f"cannot read image {victim}"):
        bench.target(spec_of("waterbirds", shots=1))
    r = cli("run", "--benchmark", "waterbirds", "--model", "resnet26-cifar", "--weights", "scratch", "--block",
            "last", "--steps", "1", "--shots", "1", "--device", "cpu", "--out", tmp_path / "out")
    assert r.code == 2 and r.err.count("\n") == 1 and "cannot read image" in r.err
    assert not list((tmp_path / "out").rglob("*.parquet")) if (tmp_path / "out").exists() else True
    # A metadata file without the columns wilds reads.
    pd.read_csv(folder / "metadata.csv").drop(columns=["place"]).to_csv(folder / "metadata.csv", index=False)
    wilds_data.load.cache_clear()
    with pytest.raises(UsageError, match=r"the waterbirds data in .* cannot be read by wilds \(KeyError"):
        bench.data()
    wilds_data.load.cache_clear()


def test_importing_the_module_is_cheap_and_wilds_stays_offline() -> None:
    code = ("import sys, threading; import ftbench.data.wilds_data as w; "
            "assert 'wilds' not in sys.modules and 'torchvision' not in sys.modules and 'pandas' not in sys.modules; "
            "w.import_wilds(); assert 'wilds' in sys.modules and 'outdated' not in sys.modules; "
            "assert threading.active_count() == 1, threading.enumerate(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1],
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# --- end to end -------------------------------------------------------------------------------

METRIC_COLUMNS = {"waterbirds": ("worst_group_acc", "adj_avg_acc"), "celeba": ("worst_group_acc",),
                  "camelyon17": ("worst_slide_acc",), "fmow": ("worst_region_acc", "worst_year_acc"),
                  "iwildcam": ("macro_f1", "macro_recall")}


@pytest.mark.parametrize("name", NAMES)
def test_cli_run_end_to_end(cli, data: Path, tmp_path: Path, name: str) -> None:
    r = cli("run", "--benchmark", name, "--model", "resnet26-cifar", "--weights", "scratch", "--method", "surgical",
            "--block", "last", "--steps", "3", "--shots", "2", "--device", "cpu", "--out", tmp_path)
    assert r.code == 0, r.err
    files = list(tmp_path.glob("*.parquet"))
    assert len(files) == 1
    row = pd.read_parquet(files[0]).iloc[0]
    bench = get_benchmark(name)
    assert (row.benchmark, row["shift"], row.status) == (name, next(iter(bench.shifts)), "ok")
    assert row.shift_level == bench.shifts[row["shift"]].level
    assert row.n_target_train == len(bench.target(resolve(RunSpec(benchmark=name, shots=2))).train)
    for col in ("id_acc", "val_acc", "ood_acc"):
        assert 0 <= row[col] <= 100, col
    for metric in METRIC_COLUMNS[name]:
        for prefix in ("id_", "val_", "ood_"):
            assert 0 <= row[prefix + metric] <= 100, prefix + metric
    assert bench.main_metric in ("acc", *METRIC_COLUMNS[name])


# --- the ID→OOD protocol ----------------------------------------------------------------------

# Each scored role of protocol id-ood (column prefix; "train" = what fine-tunes) and the WILDS split
# it must be, whole: WILDS' official splits for the natural shifts (Camelyon17 has no id_test: ID
# test is id_val); for Waterbirds / CelebA, WILDS test is both ID test and the OOD test set.
NATURAL_ROLES = {"train": "train", "val": "id_val", "id": "id_test", "ood_val": "val", "ood.test": "test"}
SPURIOUS_ROLES = {"train": "train", "val": "val", "id": "test", "ood.test": "test"}
ID_OOD_ROLES = {"waterbirds": SPURIOUS_ROLES, "celeba": SPURIOUS_ROLES, "fmow": NATURAL_ROLES,
                "iwildcam": NATURAL_ROLES, "camelyon17": {**NATURAL_ROLES, "id": "id_val"}}


def id_ood_spec(name: str, weights: Path, **kw) -> RunSpec:
    return resolve(RunSpec(benchmark=name, protocol="id-ood", model="resnet26-cifar", weights=str(weights),
                           method="linear-probe", **kw))


@pytest.mark.parametrize("name", NAMES)
def test_id_ood_roles_are_the_wilds_get_subset_splits(data: Path, weights: Path, name: str) -> None:
    """Every role of the ID→OOD task holds exactly the examples of its WILDS split as
    ``dataset.get_subset(split)`` of wilds itself gives them, with their labels and metadata."""
    ds = wilds_data.load_wilds_dataset(name, data)
    task = get_protocol("id-ood").task(get_benchmark(name), id_ood_spec(name, weights))
    splits = {"train": task.train, **{s.prefix: s.split for s in task.scored}}
    assert set(splits) == set(ID_OOD_ROLES[name])  # no other role
    y, meta = torch.as_tensor(ds.y_array).long(), torch.as_tensor(ds.metadata_array).long()
    for role, split_name in ID_OOD_ROLES[name].items():
        expected = ds.get_subset(split_name).indices
        got = positions(splits[role])
        assert len(expected) > 0 and np.array_equal(got, expected), (role, split_name)
        if isinstance(splits[role], Split):  # decoded into memory: the pixels say which images
            assert np.array_equal(levels(splits[role]), expected), role
        t = torch.from_numpy(expected)
        assert torch.equal(splits[role].y.cpu(), y[t]) and torch.equal(splits[role].meta.cpu(), meta[t]), role
    # Nothing fine-tuning sees is scored: ID train is disjoint from every other role.
    train = set(positions(task.train).tolist())
    assert all(not train & set(positions(s.split).tolist()) for s in task.scored)
    # AutoFT's search split is WILDS' OOD val where there is one; Waterbirds / CelebA have none.
    if "ood_val" in ID_OOD_ROLES[name]:
        assert np.array_equal(positions(task.search), ds.get_subset("val").indices)
    else:
        assert task.search is None and not get_benchmark(name).id_ood_has_val
    assert task.num_classes == ds.n_classes and task.fresh_head and task.pretraining is None
    assert task.ood_prefixes == ("ood.test",)
    assert task.info["shift_level"] == get_benchmark(name).id_ood_shift.level


def test_id_ood_shots_draw_per_group_or_class_from_wilds_train(data: Path, weights: Path) -> None:
    """--shots k: k examples per (label, attribute) group for Waterbirds (as in the few-shot protocol),
    per class for FMoW, all from WILDS train, drawn by the seed and nested across k."""
    proto = get_protocol("id-ood")
    for name in ("waterbirds", "fmow"):
        bench = get_benchmark(name)
        d = bench.data()
        train = set(d.indices("train").tolist())

        def drawn(shots: int, seed: int = 0, bench=bench, name: str = name) -> np.ndarray:
            return levels(proto.task(bench, id_ood_spec(name, weights, shots=shots, seed=seed)).train)

        three = drawn(3)
        assert set(three.tolist()) <= train
        strata = bench.strata(d, three)
        assert sorted(np.unique(strata, return_counts=True)[1].tolist()) == [3] * (4 if name == "waterbirds" else 3)
        assert set(drawn(2).tolist()) < set(three.tolist())
        assert set(drawn(3, seed=1).tolist()) != set(three.tolist())
    # More than the copy's smallest train group (10), or than the real data's (56 waterbirds on land).
    with pytest.raises(UsageError, match=r"shots must be at most 10 per class of ID train for benchmark 'waterbirds'"):
        proto.task(get_benchmark("waterbirds"), id_ood_spec("waterbirds", weights, shots=11))
    with pytest.raises(UsageError, match=r"shots must be 1\.\.56 per class of ID train for benchmark 'waterbirds'"):
        id_ood_spec("waterbirds", weights, shots=57)


@pytest.mark.parametrize("name", NAMES)
def test_id_ood_cli_run_end_to_end(cli, data: Path, weights: Path, tmp_path: Path, name: str) -> None:
    r = cli("run", "--protocol", "id-ood", "--benchmark", name, "--model", "resnet26-cifar", "--weights", weights,
            "--method", "lp-ft", "--steps", "2", "--device", "cpu", "--out", tmp_path)
    assert r.code == 0, r.err
    files = list(tmp_path.glob("*.parquet"))
    assert len(files) == 1
    rows = pd.read_parquet(files[0])
    row = rows[rows["final"]].iloc[0]
    bench = get_benchmark(name)
    assert (row.protocol, row.benchmark, row["shift"], row.status) == ("id-ood", name, bench.id_ood_shift.name, "ok")
    assert row.n_target_train == len(bench.data().indices("train"))  # all of WILDS train
    natural = name not in ("waterbirds", "celeba")
    prefixes = ["id", "val", "ood.test", "ood"] + (["ood_val"] if natural else [])
    for prefix in prefixes:
        for metric in ("acc", *METRIC_COLUMNS[name]):
            assert 0 <= row[f"{prefix}_{metric}"] <= 100, f"{prefix}_{metric}"
    assert ("ood_val_acc" in row.index) == natural
    # One OOD test set: the headline OOD columns are its own.
    assert row.ood_acc == row["ood.test_acc"] and row[f"ood_{METRIC_COLUMNS[name][0]}"] == row[
        f"ood.test_{METRIC_COLUMNS[name][0]}"]
    if not natural:  # WILDS test is ID test (average) and the OOD set (worst group) at once
        assert row.id_acc == row["ood.test_acc"] and row.id_worst_group_acc == row.ood_worst_group_acc
        assert row.ood_worst_group_acc <= row.ood_acc
    if name == "camelyon17":  # no id_test: ID test is id_val
        assert row.id_acc == row.val_acc


def test_id_ood_refuses_scratch_and_an_empty_split(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   weights: Path) -> None:
    """The protocol fine-tunes a given pretrained model: --weights scratch (or a model without hub
    weights) is one error line; so is a copy whose metadata leave a WILDS split the protocol scores empty."""
    folder = wilds_fixtures.make("iwildcam", tmp_path)
    monkeypatch.setenv("FTBENCH_DATA", str(tmp_path))
    monkeypatch.setitem(wilds_data.SIZE, "iwildcam", SIZE)
    out = tmp_path / "out"
    for extra in (["--weights", "scratch"], []):
        r = cli("run", "--protocol", "id-ood", "--benchmark", "iwildcam", "--model", "resnet26-cifar", *extra,
                "--method", "linear-probe", "--device", "cpu", "--out", out)
        assert r.code == 2 and r.err.count("\n") == 1, r.err
        assert r.err.startswith("error: protocol id-ood fine-tunes a pretrained model")
    meta = pd.read_csv(folder / "metadata.csv")
    meta.loc[meta["split"] == "id_test", "split"] = "id_val"  # wilds reads it; its id_test is empty
    meta.to_csv(folder / "metadata.csv", index=False)
    wilds_data.load.cache_clear()
    try:
        r = cli("run", "--protocol", "id-ood", "--benchmark", "iwildcam", "--model", "resnet26-cifar", "--weights",
                weights, "--method", "linear-probe", "--device", "cpu", "--out", out)
    finally:
        wilds_data.load.cache_clear()
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "WILDS split 'id_test' (ID test in protocol id-ood)" in r.err and "is empty" in r.err
    assert not out.exists() or not list(out.rglob("*.parquet"))
