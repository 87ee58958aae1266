"""The ImageNet benchmarks (imagenet-c, imagenet-c-gen, living17, entity30) on a tiny fabricated copy of
the real layouts: ``<root>/imagenet/{train,val}/<wnid>/*.JPEG`` with 1000 class folders in val,
``<root>/imagenet-c/<corruption>/<severity>/<wnid>/*.JPEG``, and the three BREEDS hierarchy files in
their published formats.

Every fabricated image is one flat colour that encodes its own id (red = 5 × (id % 50), green =
5 × (id // 50)), so a test can tell which file an in-memory split holds after decoding, resizing
and JPEG rounding.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ftbench.data import corruptions, imagenet
from ftbench.data.base import get_benchmark
from ftbench.data.fetch import IMAGENET_C
from ftbench.data.stream import StreamSplit, decode, resize_center_crop
from ftbench.errors import UsageError
from ftbench.protocols.base import get_protocol
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve

WNIDS = [f"n{i:08d}" for i in range(1000)]  # the 1000 ImageNet class folders (sorted: label = position)
LEAF = [WNIDS[100 + k] for k in range(28)]  # the classes that hold images (and the BREEDS leaves)
N_TRAIN, N_VAL, N_C = 12, 4, 10  # images per class: ImageNet train, ImageNet val, ImageNet-C
C_CLASSES = LEAF[:3]  # classes of the fabricated ImageNet-C
C_FILLED = {("gaussian_noise", 5): 40, ("fog", 3): 80}  # corruption, severity -> blue value of its images

# The fabricated BREEDS hierarchy: "parent child" edges. Levels (longest path from the root
# n00001740): n00004258 1, n09000001 2, n09000002 3 (the shortcut from n00004258 does not make it
# 2), n09000010/11/12/13/20 4, n09000101/102/104/105/106 and LEAF[16..23] 5.
EDGES = [("n00001740", "n00004258"), ("n00004258", "n09000001"), ("n09000001", "n09000002"),
         ("n00004258", "n09000002"), ("n09000002", "n09000010"), ("n09000002", "n09000011"),
         ("n09000010", "n09000101"), ("n09000010", "n09000102"), ("n09000102", "n09000103"),
         ("n09000011", "n09000104"), ("n09000011", "n09000105"), ("n00001740", "n09000003"),
         ("n09000003", "n09000004"), ("n09000004", "n09000005"), ("n09000005", "n09000012"),
         ("n09000005", "n09000013"), ("n09000013", "n09000106"), ("n09000005", "n09000020"),
         ("n09000020", "n09000021")]  # n09000020 leads to no ImageNet class: pruned, as in robustness
EDGES += [("n09000101", LEAF[k]) for k in range(0, 5)] + [("n09000103", LEAF[k]) for k in range(5, 9)]
EDGES += [("n09000104", LEAF[k]) for k in range(9, 12)] + [("n09000105", LEAF[k]) for k in range(12, 16)]
EDGES += [("n09000012", LEAF[k]) for k in range(16, 24)] + [("n09000106", LEAF[k]) for k in range(24, 28)]


def colour(i: int) -> tuple[int, int]:
    return 5 * (i % 50), 5 * (i // 50)


def write_jpeg(path: Path, i: int, size: tuple[int, int], blue: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    r, g = colour(i)
    Image.new("RGB", size, (r, g, blue)).save(path, quality=95)


def make_root(root: Path) -> dict[str, int]:
    """Write the fabricated data under ``root``; returns file path -> image id."""
    ids: dict[str, int] = {}

    def add(path: Path, size: tuple[int, int], blue: int = 128) -> None:
        ids[str(path)] = len(ids)
        write_jpeg(path, ids[str(path)], size, blue)

    for w in WNIDS:  # fetch's check: val holds all 1000 class folders
        (root / "imagenet" / "val" / w).mkdir(parents=True)
        (root / "imagenet-c" / "gaussian_noise" / "1" / w).mkdir(parents=True)
    for w in LEAF:
        for j in range(N_TRAIN):
            add(root / "imagenet" / "train" / w / f"{w}_{j}.JPEG", (24, 20))  # W x H: resized to 18 high, cropped
        for j in range(N_VAL):
            add(root / "imagenet" / "val" / w / f"ILSVRC2012_val_{w}_{j}.JPEG", (20, 24))
    for c in IMAGENET_C:
        for s in range(1, 6):
            (root / "imagenet-c" / c / str(s)).mkdir(parents=True, exist_ok=True)
    for (c, s), blue in C_FILLED.items():
        for w in C_CLASSES:
            for j in range(N_C):  # the same file names for every corruption, as in ImageNet-C
                add(root / "imagenet-c" / c / str(s) / w / f"ILSVRC2012_val_c{w}_{j}.JPEG", (16, 16), blue)
    breeds = root / "breeds"
    breeds.mkdir()
    (breeds / "class_hierarchy.txt").write_text("".join(f"{p} {c}\n" for p, c in EDGES))
    (breeds / "dataset_class_info.json").write_text(json.dumps([[i, w, f"class {i}"] for i, w in enumerate(WNIDS)]))
    nodes = sorted({n for e in EDGES for n in e if n not in LEAF})
    (breeds / "node_names.txt").write_text("".join(f"{n}\tnode {n[-3:]}\n" for n in nodes))
    return ids


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("imagenet-data")
    return root, make_root(root)


@pytest.fixture
def data(fabricated, monkeypatch) -> dict[str, int]:
    root, ids = fabricated
    monkeypatch.setenv("FTBENCH_DATA", str(root))
    monkeypatch.setenv("FTBENCH_WORKERS", "0")
    monkeypatch.setattr(imagenet, "IMAGE_SIZE", 16)
    monkeypatch.setattr(imagenet, "RESIZE", 18)
    monkeypatch.setitem(imagenet.PRETRAIN_RECIPE, "epochs", 1)  # the recipe, not its code, is tiny here
    monkeypatch.setitem(imagenet.PRETRAIN_RECIPE, "batch_size", 32)
    return ids


def files(split: StreamSplit) -> list[str]:
    """The file of every example of a streamed split, in order."""
    paths = split.images.paths
    return [paths[i] for i in (range(len(paths)) if split.index is None else split.index)]


def image_ids(x: torch.Tensor) -> list[int]:
    """Undo the normalisation and read each image's id from its colour."""
    mean = torch.tensor(imagenet.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(imagenet.STD).view(1, 3, 1, 1)
    px = torch.round((x * std + mean) * 255)[:, :, 8, 8]
    return [int(round(r / 5)) + 50 * int(round(g / 5)) for r, g in px[:, :2].tolist()]


def label_of(path: str) -> int:
    return WNIDS.index(Path(path).parent.name)


def test_list_and_status(cli, data, tmp_path: Path, monkeypatch) -> None:
    r = cli("list", "benchmarks")
    assert r.code == 0, r.err
    for name in ("imagenet-c", "imagenet-c-gen", "living17", "entity30"):
        assert f"{name}:" in r.out and get_benchmark(name).status() == "ready"
    assert "--shift subpopulation [feature level]" in r.out
    monkeypatch.setenv("FTBENCH_DATA", str(tmp_path))
    assert get_benchmark("imagenet-c").status() == (f"missing (place it by hand under {tmp_path}; `ftbench fetch "
                                                    "imagenet` says which files): ftbench fetch imagenet imagenet-c")
    assert get_benchmark("living17").status().endswith(": ftbench fetch imagenet breeds")


def test_imagenet_source_streams_train_val_and_holds_out_source_val(data) -> None:
    spec = resolve(RunSpec(benchmark="imagenet-c"))
    assert (spec.corruption, spec.severity, spec.shots, spec.model) == ("gaussian_noise", 5, 5, "resnet50")
    s = get_benchmark("imagenet-c").source(spec)
    assert s.num_classes == 1000 and all(isinstance(p, StreamSplit) for p in (s.train, s.val, s.test))
    train, val, test = files(s.train), files(s.val), files(s.test)
    all_train = [p for p in data if "/imagenet/train/" in p]
    assert not set(train) & set(val) and set(train) | set(val) == set(all_train)
    # One of 12 per class held out (at most a tenth, at least one): 28 source_val images.
    assert len(val) == 28 and {label_of(p) for p in val} == {100 + k for k in range(28)}
    assert sorted(test) == sorted(p for p in data if "/imagenet/val/" in p)
    for split, paths in ((s.train, train), (s.val, val), (s.test, test)):
        assert split.y.tolist() == [label_of(p) for p in paths]  # label = position of the wnid in the sorted 1000
    xb = next(s.test.batches(8))
    assert xb.shape == (8, 3, 16, 16) and xb.dtype == torch.float32  # resized to 18, centre 16 crop
    assert image_ids(xb) == [data[p] for p in test[:8]]
    assert s.key["image_size"] == 16 and s.key["n_train"] == len(train)
    assert get_benchmark("imagenet-c-gen").source(resolve(RunSpec(benchmark="imagenet-c-gen"))).key == s.key


def test_imagenet_c_target_partition_is_fixed_disjoint_and_seeded(data) -> None:
    bench = get_benchmark("imagenet-c")

    def target(seed: int = 0, shots: int = 3, corruption: str = "gaussian_noise", severity: int = 5):
        return bench.target(resolve(RunSpec(benchmark="imagenet-c", corruption=corruption, severity=severity,
                                            shots=shots, seed=seed)))

    t = target()
    assert t.num_classes == 1000 and t.info == {"shift_level": "input"}
    val, test = files(t.val), files(t.test)
    # Per class of 10 ImageNet-C images: 2 target_val, a pool of 4, 4 target_test; 3 shots drawn from the pool.
    assert len(val) == 6 and len(test) == 12 and len(t.train) == 9
    assert all("/imagenet-c/gaussian_noise/5/" in p for p in val + test)
    train_ids = image_ids(t.train.x)
    by_id = {i: p for p, i in data.items()}
    train = [by_id[i] for i in train_ids]
    assert all("/imagenet-c/gaussian_noise/5/" in p for p in train)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    for split, paths in ((t.train, train), (t.val, val), (t.test, test)):
        assert split.y.tolist() == [label_of(p) for p in paths]
        assert np.bincount(split.y.numpy(), minlength=1000)[[100, 101, 102]].tolist() == [len(paths) // 3] * 3
    again = target()
    assert torch.equal(again.train.x, t.train.x) and files(again.test) == test
    other = target(seed=1)
    assert set(image_ids(other.train.x)) != set(train_ids) and files(other.val) == val and files(other.test) == test
    assert set(train_ids) <= set(image_ids(target(shots=4).train.x))  # k shots within m shots
    # Another corruption holds the same file names: the same images are val / test.
    fog = target(corruption="fog", severity=3)
    assert [Path(p).name for p in files(fog.test)] == [Path(p).name for p in test]
    with pytest.raises(UsageError, match=r"shots must be an integer in 1\.\.4 for benchmark 'imagenet-c' with the data"):
        target(shots=5)


def test_imagenet_c_bad_input_is_a_usage_error(data) -> None:
    with pytest.raises(UsageError, match="unknown corruption for benchmark 'imagenet-c': 'inversion'; accepted: brightness"):
        resolve(RunSpec(benchmark="imagenet-c", corruption="inversion"))
    with pytest.raises(UsageError, match="severity must be an integer in 1..5, got 6"):
        resolve(RunSpec(benchmark="imagenet-c", severity=6))
    with pytest.raises(UsageError, match=r"shots must be an integer in 1\.\.20 for benchmark 'imagenet-c', got 21"):
        resolve(RunSpec(benchmark="imagenet-c", shots=21))
    with pytest.raises(UsageError, match="lacks speckle_noise at severity 5 .the 4 extra corruptions come in"):
        get_benchmark("imagenet-c").target(resolve(RunSpec(benchmark="imagenet-c", corruption="speckle_noise", shots=1)))
    with pytest.raises(UsageError, match="no images"):  # a severity folder of the copy that holds no images
        get_benchmark("imagenet-c").target(resolve(RunSpec(benchmark="imagenet-c", corruption="snow", shots=1)))


def test_imagenet_c_gen_corrupts_imagenet_val_as_make_imagenet_c(data) -> None:
    spec = resolve(RunSpec(benchmark="imagenet-c-gen", corruption="gaussian_noise", severity=3, shots=1))
    t = get_benchmark("imagenet-c-gen").target(spec)
    test = files(t.test)
    assert all("/imagenet/val/" in p for p in test) and t.test.y.tolist() == [label_of(p) for p in test]
    got = next(t.test.uint8_batches(4))
    for k in range(4):
        # By hand: decode, resize 18 + centre crop 16, corrupt with the file's seed, truncate to
        # uint8, JPEG at quality 85 (how make_imagenet_c.py saves its images).
        clean = resize_center_crop(16, 18)(decode(test[k])).float()[None] / 255
        seed = imagenet.generation_seed("gaussian_noise", 3, Path(test[k]).name)
        y = corruptions.corrupt(clean, "gaussian_noise", 3, seed=seed, scale="imagenet")
        y = torch.floor(y * 255 + 1e-3).clamp(0, 255) / 255
        expected = torch.round(corruptions.jpeg(y, 85)[0] * 255).to(torch.uint8)
        assert torch.equal(got[k], expected)
        assert (got[k].float() - clean[0] * 255).abs().mean() > 10  # strongly corrupted, not the clean image
    again = get_benchmark("imagenet-c-gen").target(spec)
    assert torch.equal(next(again.test.uint8_batches(4)), got)  # the same images every time


# The BREEDS splits of the fabricated hierarchy as robustness 1.2.1.post2 computes them:
# robustness.tools.breeds_helpers.make_living17(breeds, split="rand") / make_entity30(...) run on
# these very files (with its unimportable `from ..datasets import DATASETS` stubbed out), subclass
# numbers mapped back to wnids. By hand: living17 = nodes at level 5 below n00004258 with >= 4
# classes (n09000104 has 3; n09000106 is not a living thing); entity30 = level-4 nodes with >= 8
# classes (n09000011 has 7, n09000013 4, n09000020 none: pruned).
EXPECTED = {
    "living17": ("n09000101", "n09000102", "n09000105"),
    "entity30": ("n09000010", "n09000012"),
}
EXPECTED_SPLITS = {  # (source, target) subclasses per superclass, in robustness' order
    "living17": ([["n00000102", "n00000104"], ["n00000105", "n00000106"], ["n00000115", "n00000113"]],
                 [["n00000101", "n00000103"], ["n00000108", "n00000107"], ["n00000114", "n00000112"]]),
    "entity30": ([["n00000104", "n00000101", "n00000106", "n00000102"], ["n00000122", "n00000120", "n00000121", "n00000116"]],
                 [["n00000103", "n00000100", "n00000105", "n00000107"], ["n00000123", "n00000119", "n00000117", "n00000118"]]),
}


def test_breeds_split_follows_robustness_breeds_helpers(data, fabricated) -> None:
    info = fabricated[0] / "breeds"
    for task, supers in EXPECTED.items():
        split = imagenet.breeds_split(info, task)
        assert split.superclasses == supers
        assert split.names == tuple(f"node {s[-3:]}" for s in supers)
        src, tgt = EXPECTED_SPLITS[task]
        assert [list(g) for g in split.source] == src and [list(g) for g in split.target] == tgt
        for s, t in zip(split.source, split.target):
            assert len(s) == len(t) == (2 if task == "living17" else 4) and not set(s) & set(t)


def test_breeds_roles_labels_and_few_shot(data) -> None:
    for task in ("living17", "entity30"):
        bench = get_benchmark(task)
        spec = resolve(RunSpec(benchmark=task, shots=3))
        assert (spec.shift, spec.corruption, spec.severity) == ("subpopulation", None, None)
        split = imagenet.breeds_split(Path(imagenet.data_root()) / "breeds", task)
        sup = {w: c for c, g in enumerate(split.source) for w in g}
        tup = {w: c for c, g in enumerate(split.target) for w in g}
        s, t = bench.source(spec), bench.target(spec)
        assert s.num_classes == t.num_classes == len(split.superclasses)
        assert t.info == {"shift_level": "feature"}
        src_train, src_val, src_test = files(s.train), files(s.val), files(s.test)
        tgt_val, tgt_test = files(t.val), files(t.test)
        sub = lambda p: Path(p).parent.name  # noqa: E731
        assert {sub(p) for p in src_train + src_val + src_test} == set(sup)  # source sees only source subclasses
        assert {sub(p) for p in tgt_val + tgt_test} == set(tup)
        assert all("/imagenet/train/" in p for p in src_train + src_val + tgt_val)
        # target_test: every ImageNet val image of the target subclasses (the BREEDS test set).
        assert sorted(tgt_test) == sorted(p for p in data if "/imagenet/val/" in p and sub(p) in tup)
        assert sorted(src_test) == sorted(p for p in data if "/imagenet/val/" in p and sub(p) in sup)
        assert len(src_val) == len(sup) and len(tgt_val) == len(tup)  # one of 12 per subclass
        for split_, paths, labels in ((s.train, src_train, sup), (s.val, src_val, sup), (s.test, src_test, sup),
                                      (t.val, tgt_val, tup), (t.test, tgt_test, tup)):
            assert split_.y.tolist() == [labels[sub(p)] for p in paths]  # label = superclass position
        by_id = {i: p for p, i in data.items()}
        train = [by_id[i] for i in image_ids(t.train.x)]
        assert all("/imagenet/train/" in p and sub(p) in tup for p in train) and not set(train) & set(tgt_val)
        assert t.train.y.tolist() == [tup[sub(p)] for p in train]
        assert np.bincount(t.train.y.numpy()).tolist() == [3] * len(split.superclasses)
        other = bench.target(resolve(RunSpec(benchmark=task, shots=3, seed=1)))
        assert set(image_ids(other.train.x)) != set(image_ids(t.train.x)) and files(other.val) == tgt_val
        assert s.key["benchmark"] == task and s.recipe == imagenet.PRETRAIN_RECIPE
    with pytest.raises(UsageError, match="apply only to --shift corruption, not 'subpopulation'"):
        resolve(RunSpec(benchmark="living17", shift="subpopulation", corruption="fog"))
    with pytest.raises(UsageError, match=r"shots must be an integer in 1\.\.22 for benchmark 'living17' with the data"):
        get_benchmark("living17").target(resolve(RunSpec(benchmark="living17", shots=23)))


@pytest.mark.parametrize("name, shift, n_train", [
    ("imagenet-c", "corruption", 6), ("imagenet-c-gen", "corruption", 56), ("living17", "subpopulation", 6),
    ("entity30", "subpopulation", 4)])
def test_cli_run_end_to_end_on_cpu(cli, data, tmp_path: Path, name: str, shift: str, n_train: int) -> None:
    r = cli("run", "--benchmark", name, "--model", "resnet26-cifar", "--weights", "scratch", "--method",
            "surgical", "--block", "last", "--steps", "3", "--shots", "2", "--device", "cpu", "--out", tmp_path)
    assert r.code == 0, r.err
    files_ = list(tmp_path.glob("*.parquet"))
    assert len(files_) == 1
    row = pd.read_parquet(files_[0]).iloc[0]
    assert (row.benchmark, row["shift"], row.status, row.n_target_train) == (name, shift, "ok", n_train)
    assert row.shift_level == ("input" if shift == "corruption" else "feature")
    assert 0 <= row.ood_acc <= 100 and 0 <= row.id_acc <= 100 and 0 <= row.val_acc <= 100


def test_missing_data_is_one_error_line_and_writes_nothing(cli, tmp_path: Path, monkeypatch, fabricated) -> None:
    monkeypatch.setenv("FTBENCH_DATA", str(tmp_path))
    out = tmp_path / "out"
    r = cli("run", "--benchmark", "imagenet-c", "--method", "surgical", "--block", "last", "--steps", "2",
            "--model", "resnet26-cifar", "--out", out)
    assert r.code == 2 and r.err.count("\n") == 1 and r.err.startswith(f"error: imagenet-c data not found under {tmp_path}: ")
    assert "<root>/imagenet/{train,val}/<wnid>/*.JPEG" in r.err and "`ftbench fetch imagenet imagenet-c`" in r.err
    assert not out.exists() or not list(out.glob("*.parquet"))
    # ImageNet in place, the BREEDS files not.
    (tmp_path / "imagenet").symlink_to(fabricated[0] / "imagenet")
    r = cli("run", "--benchmark", "entity30", "--method", "surgical", "--block", "last", "--steps", "2",
            "--model", "resnet26-cifar", "--out", out)
    assert r.code == 2 and r.err.count("\n") == 1
    assert f"{tmp_path / 'breeds'} does not exist" in r.err and "MadryLab/BREEDS-Benchmarks" in r.err
    assert not out.exists() or not list(out.glob("*.parquet"))


# --- the ID→OOD protocol (LP-FT's BREEDS) -----------------------------------------------------

def test_breeds_id_ood_roles_follow_lp_ft(data, weights: Path) -> None:
    """ID = the source subclasses (train: their ImageNet train images less ID val, which is the
    few-shot source_val; ID test: their ImageNet val images); the one OOD test set is the target
    subclasses' ImageNet val images; no OOD val; labels are superclasses."""
    proto = get_protocol("id-ood")
    for task_name in ("living17", "entity30"):
        bench = get_benchmark(task_name)
        spec = resolve(RunSpec(benchmark=task_name, protocol="id-ood", model="resnet26-cifar", weights=str(weights),
                               method="linear-probe"))
        assert spec.shift == "subpopulation" and spec.shots is None
        split = imagenet.breeds_split(Path(imagenet.data_root()) / "breeds", task_name)
        sup = {w: c for c, g in enumerate(split.source) for w in g}
        tup = {w: c for c, g in enumerate(split.target) for w in g}
        t = proto.task(bench, spec)
        roles = {"train": t.train, **{s.prefix: s.split for s in t.scored}}
        assert set(roles) == {"train", "id", "val", "ood.unseen-subclasses"} and t.search is None
        assert t.num_classes == len(split.superclasses) and t.pretraining is None and t.fresh_head
        def sub(p: str) -> str:
            return Path(p).parent.name

        paths = {role: files(s) for role, s in roles.items()}
        train_files = {p for p in data if "/imagenet/train/" in p and sub(p) in sup}
        assert set(paths["train"]) | set(paths["val"]) == train_files and not set(paths["train"]) & set(paths["val"])
        assert len(paths["val"]) == len(sup)  # 1 of 12 per source subclass (at most a tenth, at least one)
        assert sorted(paths["id"]) == sorted(p for p in data if "/imagenet/val/" in p and sub(p) in sup)
        assert sorted(paths["ood.unseen-subclasses"]) == sorted(
            p for p in data if "/imagenet/val/" in p and sub(p) in tup)
        for role, ps in paths.items():
            labels = tup if role.startswith("ood") else sup
            assert roles[role].y.tolist() == [labels[sub(p)] for p in ps], role
        # The few-shot protocol's source roles are the same files (one source model for both).
        s = bench.source(resolve(RunSpec(benchmark=task_name, shots=3)))
        assert (files(s.train), files(s.val), files(s.test)) == (paths["train"], paths["val"], paths["id"])
        # --shots k: k per superclass, from ID train only.
        few = proto.task(bench, dataclasses.replace(spec, shots=3)).train
        by_id = {i: p for p, i in data.items()}
        assert {by_id[i] for i in image_ids(few.x)} <= set(paths["train"])
        assert np.bincount(few.y.numpy()).tolist() == [3] * len(split.superclasses)


@pytest.mark.parametrize("name", ["living17", "entity30"])
def test_breeds_id_ood_cli_run_end_to_end(cli, data, weights: Path, tmp_path: Path, name: str) -> None:
    r = cli("run", "--protocol", "id-ood", "--benchmark", name, "--model", "resnet26-cifar", "--weights", weights,
            "--method", "lp-ft", "--steps", "2", "--device", "cpu", "--out", tmp_path)
    assert r.code == 0, r.err
    assert "unseen-subclasses" in r.out
    files_ = list(tmp_path.glob("*.parquet"))
    assert len(files_) == 1
    rows = pd.read_parquet(files_[0])
    row = rows[rows["final"]].iloc[0]
    n_sub = 2 if name == "living17" else 4
    n_super = len(imagenet.breeds_split(Path(imagenet.data_root()) / "breeds", name).superclasses)
    assert (row.protocol, row["shift"], row.shift_level, row.status) == ("id-ood", "subpopulation", "feature", "ok")
    assert row.n_target_train == n_super * n_sub * (N_TRAIN - 1)  # every source image less ID val
    for col in ("id_acc", "val_acc", "ood.unseen-subclasses_acc"):
        assert 0 <= row[col] <= 100, col
    assert row.ood_acc == row["ood.unseen-subclasses_acc"] and "ood_val_acc" not in rows.columns
    r = cli("run", "--protocol", "id-ood", "--benchmark", name, "--model", "resnet26-cifar", "--weights", "scratch",
            "--method", "lp-ft", "--out", tmp_path / "no")
    assert r.code == 2 and r.err.count("\n") == 1 and "protocol id-ood fine-tunes a pretrained model" in r.err
