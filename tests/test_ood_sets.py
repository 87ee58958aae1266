"""The ID→OOD benchmarks ``cifar10`` (-> CIFAR-10.1 v6, STL-10) and ``imagenet`` (-> ImageNet-V2, -R,
-Sketch, -A) on fabricated copies in the layouts ``ftbench fetch`` produces, and the fetch of those
datasets from fabricated files served on 127.0.0.1 (the registered entries, with their sizes and
checksums swapped for the fabricated bytes')."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ftbench.data import cifar, imagenet
from ftbench.data.base import Split, get_benchmark
from ftbench.data.fetch import DATASETS, MARKER
from ftbench.errors import UsageError
from ftbench.protocols.base import get_protocol
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.train.loop import evaluate
from test_cifar import make_cifar_root
from test_fetch import Server
from test_imagenet_data import LEAF, WNIDS, image_ids, make_root, write_jpeg

N_C101, N_STL = 40, 50


def make_cifar_ood(root: Path) -> dict[str, np.ndarray]:
    """CIFAR-10.1 (uint8 N×32×32×3 + int32 labels, as published) and STL-10's test binaries (3 planes
    of 96×96, column-major; labels 1..10) next to the fabricated CIFAR-10."""
    rng = np.random.default_rng(7)
    c_x = rng.integers(0, 256, (N_C101, 32, 32, 3), dtype=np.uint8)
    c_y = np.repeat(np.arange(10), N_C101 // 10).astype(np.int32)
    (root / "cifar10.1").mkdir()
    np.save(root / "cifar10.1" / "cifar10.1_v6_data.npy", c_x)
    np.save(root / "cifar10.1" / "cifar10.1_v6_labels.npy", c_y)
    (root / "cifar10.1" / MARKER).write_text(json.dumps({"dataset": "cifar10.1"}))
    s_x = rng.integers(0, 256, (N_STL, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W)
    s_y = (np.arange(N_STL) % 10 + 1).astype(np.uint8)  # 1..10
    folder = root / "stl10" / "stl10_binary"
    folder.mkdir(parents=True)
    s_x.transpose(0, 1, 3, 2).tofile(folder / "test_X.bin")  # column-major planes
    s_y.tofile(folder / "test_y.bin")
    (root / "stl10" / MARKER).write_text(json.dumps({"dataset": "stl10"}))
    return {"c101_x": c_x, "c101_y": c_y, "stl_x": s_x, "stl_y": s_y}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("cifar-ood")
    arrays = make_cifar_root(root)
    arrays.update(make_cifar_ood(root))
    return root, arrays


@pytest.fixture
def cifar_data(cifar_root, monkeypatch) -> dict[str, np.ndarray]:
    monkeypatch.setenv("FTBENCH_DATA", str(cifar_root[0]))
    return cifar_root[1]


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(cifar.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cifar.STD).view(1, 3, 1, 1)
    return x * std + mean


def test_cifar10_ood_sets_are_cifar10_1_and_stl10_mapped_as_lp_ft(cifar_data, weights: Path) -> None:
    spec = resolve(RunSpec(benchmark="cifar10", protocol="id-ood", model="resnet26-cifar", weights=str(weights),
                           method="linear-probe"))
    assert spec.shift == "natural"
    bench = get_benchmark("cifar10")
    t = get_protocol("id-ood").task(bench, spec)
    roles = {s.prefix: s for s in t.scored}
    assert set(roles) == {"id", "val", "ood.cifar10.1", "ood.stl10"} and t.search is None and t.pretraining is None
    assert all(s.classes is None for s in t.scored)  # every set is scored on the 10 logits, as LP-FT
    # ID: the CIFAR-10 source task's splits (the few-shot benchmarks' source_train / source_val / test).
    s = get_benchmark("cifar10-c").source(resolve(RunSpec(benchmark="cifar10-c")))
    assert torch.equal(t.train.x, s.train.x) and torch.equal(roles["val"].split.x, s.val.x)
    assert torch.equal(roles["id"].split.y, s.test.y)
    # CIFAR-10.1: HWC uint8 -> CHW, labels as published.
    c101 = roles["ood.cifar10.1"].split
    want = torch.from_numpy(cifar_data["c101_x"].transpose(0, 3, 1, 2).copy()).float() / 255
    torch.testing.assert_close(_unnormalise(c101.x), want, atol=1e-5, rtol=0)
    assert c101.y.tolist() == cifar_data["c101_y"].tolist()
    # STL-10: monkey (STL 7, 0-based) dropped; labels mapped to CIFAR's; each 3×3 block averaged.
    stl = roles["ood.stl10"].split
    y0 = cifar_data["stl_y"].astype(int) - 1
    keep = y0 != 7
    assert len(stl) == int(keep.sum()) and 6 not in stl.y.tolist()  # no frog: CIFAR 6 has no STL class
    assert stl.y.tolist() == [cifar.STL_TO_CIFAR[v] for v in y0[keep]]
    src = cifar_data["stl_x"][keep].astype(np.float64) / 255
    blocks = src.reshape(-1, 3, 32, 3, 32, 3).mean(axis=(3, 5))
    np.testing.assert_allclose(_unnormalise(stl.x).numpy(), blocks, atol=1e-5)


def test_cifar10_runs_id_ood_only_and_lands_both_sets_as_columns(cli, cifar_data, weights: Path,
                                                                 tmp_path: Path) -> None:
    r = cli("run", "--protocol", "id-ood", "--benchmark", "cifar10", "--model", "resnet26-cifar", "--weights",
            weights, "--method", "lp-ft", "--steps", "2", "--device", "cpu", "--out", tmp_path)
    assert r.code == 0, r.err
    rows = pd.read_parquet(next(tmp_path.glob("*.parquet")))
    row = rows[rows["final"]].iloc[0]
    assert (row.protocol, row["shift"], row.status) == ("id-ood", "natural", "ok")
    assert row.ood_acc == pytest.approx((row["ood.cifar10.1_acc"] + row["ood.stl10_acc"]) / 2)
    r = cli("run", "--benchmark", "cifar10", "--model", "resnet26-cifar", "--weights", weights, "--out",
            tmp_path / "fs")
    assert r.code == 2 and r.err.count("\n") == 1 and "--protocol id-ood" in r.err
    assert not (tmp_path / "fs").exists() or not list((tmp_path / "fs").glob("*.parquet"))


def test_damaged_stl10_is_one_error_line(cli, cifar_root, weights: Path, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    for d in ("cifar10", "cifar10.1", "stl10"):
        (root / d).mkdir(parents=True)
        for p in (cifar_root[0] / d).rglob("*"):
            if p.is_file():
                (root / d / p.relative_to(cifar_root[0] / d)).parent.mkdir(parents=True, exist_ok=True)
                (root / d / p.relative_to(cifar_root[0] / d)).write_bytes(p.read_bytes())
    (root / "stl10" / "stl10_binary" / "test_X.bin").write_bytes(b"\0" * 100)  # truncated
    monkeypatch.setenv("FTBENCH_DATA", str(root))
    cifar._stl10_test.cache_clear()
    r = cli("run", "--protocol", "id-ood", "--benchmark", "cifar10", "--model", "resnet26-cifar", "--weights",
            weights, "--method", "linear-probe", "--out", tmp_path / "o")
    cifar._stl10_test.cache_clear()
    assert r.code == 2 and r.err.count("\n") == 1 and "STL-10" in r.err and "fetch stl10" in r.err, r.err


# --- imagenet -> V2 / R / Sketch / A ---------------------------------------------------------

# The published 200 classes (positions in the sorted 1000; the fabricated wnids stand at those
# positions); the ones among LEAF hold images.
R_CLASSES = [WNIDS[i] for i in imagenet.IMAGENET_R_CLASSES]
A_CLASSES = [WNIDS[i] for i in imagenet.IMAGENET_A_CLASSES]
N_OOD = 2  # images per class of an OOD set


def make_imagenet_ood(root: Path, ids: dict[str, int]) -> None:
    def add(path: Path, size: tuple[int, int] = (20, 20)) -> None:
        ids[str(path)] = len(ids)
        write_jpeg(path, ids[str(path)], size)

    v2 = root / "imagenet-v2" / imagenet.DATASETS.get("imagenet-v2").required[0]
    for k in range(1000):
        (v2 / str(k)).mkdir(parents=True)
    for w in LEAF[:6]:
        for j in range(N_OOD):
            add(v2 / str(WNIDS.index(w)) / f"{j:040x}.jpeg")
    for name, classes, sub in (("imagenet-r", R_CLASSES, "imagenet-r"), ("imagenet-a", A_CLASSES, "imagenet-a"),
                               ("imagenet-sketch", WNIDS, "sketch")):
        for w in classes:
            (root / name / sub / w).mkdir(parents=True)
        for w in [c for c in classes if c in LEAF][:10]:
            for j in range(N_OOD):
                add(root / name / sub / w / f"{name}_{j}.{'JPEG' if sub == 'sketch' else 'jpg'}")
        (root / name / sub / "README.txt").write_text("not a class\n")
    for name in imagenet.IMAGENET_OOD:
        (root / name / MARKER).write_text(json.dumps({"dataset": name}))


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("imagenet-ood")
    ids = make_root(root)
    make_imagenet_ood(root, ids)
    return root, ids


@pytest.fixture
def imagenet_data(imagenet_root, monkeypatch) -> dict[str, int]:
    monkeypatch.setenv("FTBENCH_DATA", str(imagenet_root[0]))
    monkeypatch.setenv("FTBENCH_WORKERS", "0")
    monkeypatch.setattr(imagenet, "IMAGE_SIZE", 16)
    monkeypatch.setattr(imagenet, "RESIZE", 18)
    return imagenet_root[1]


def test_imagenet_ood_sets_labels_and_200_class_scoring(imagenet_data, weights: Path) -> None:
    spec = resolve(RunSpec(benchmark="imagenet", protocol="id-ood", model="resnet26-cifar", weights=str(weights),
                           method="linear-probe"))
    t = get_protocol("id-ood").task(get_benchmark("imagenet"), spec)
    roles = {s.prefix: s for s in t.scored}
    assert list(roles)[2:] == ["ood_val"] + [f"ood.{n}" for n in ("imagenet-v2", "imagenet-r", "imagenet-sketch",
                                                                  "imagenet-a")]
    assert t.num_classes == 1000 and t.search is roles["ood_val"].split
    by_id = {i: p for p, i in imagenet_data.items()}
    for prefix, s in roles.items():
        if not prefix.startswith("ood."):
            continue
        x = torch.cat(list(s.split.batches(64)))
        paths = [by_id[i] for i in image_ids(x)]
        assert len(paths) == len(s.split) > 0
        name = prefix[4:]
        assert all(f"/{name}/" in p for p in paths)
        # The label is the ImageNet class: V2's folder is the class index, the others' the wnid.
        want = [int(Path(p).parent.name) if name == "imagenet-v2" else WNIDS.index(Path(p).parent.name) for p in paths]
        assert s.split.y.tolist() == want, name
    # R and A are scored on wise-ft's CLASS_SUBLIST (hendrycks' masks): R starts 1, 2, 4, 6, A 6, 11, 13, 15.
    assert roles["ood.imagenet-r"].classes[:4] == (1, 2, 4, 6) and len(roles["ood.imagenet-r"].classes) == 200
    assert roles["ood.imagenet-a"].classes[:4] == (6, 11, 13, 15) and len(roles["ood.imagenet-a"].classes) == 200
    assert roles["ood.imagenet-v2"].classes is None and roles["ood.imagenet-sketch"].classes is None


def test_imagenet_ood_val_is_autoft_s_draw_of_imagenet_c_and_autoft_searches_on_it(cli, imagenet_data, weights: Path,
                                                                                     tmp_path: Path, monkeypatch) -> None:
    """``imagenet``'s OOD val set is AutoFT's ImageNet search set: a fixed draw of ImageNet-C's 15 corruptions
    at severity 5 (here 12 of the fabricated copy's 30 such images), labelled by their class folder;
    it is the protocol's search split, so ``autoft`` runs on ``imagenet`` instead of refusing it."""
    monkeypatch.setattr(imagenet, "OOD_VAL_SIZE", 12)
    spec = resolve(RunSpec(benchmark="imagenet", protocol="id-ood", model="resnet26-cifar", weights=str(weights),
                           method="linear-probe"))
    t = get_protocol("id-ood").task(get_benchmark("imagenet"), spec)
    assert t.search is not None and len(t.search) == 12
    assert [s.prefix for s in t.scored if s.role == "ood-val"] == ["ood_val"]
    by_id = {i: p for p, i in imagenet_data.items()}
    paths = [by_id[i] for i in image_ids(torch.cat(list(t.search.batches(64))))]
    assert all(any(f"/imagenet-c/{c}/5/" in p for c in imagenet.IMAGENET_C) for p in paths)
    assert t.search.y.tolist() == [WNIDS.index(Path(p).parent.name) for p in paths]
    again = get_protocol("id-ood").task(get_benchmark("imagenet"), dataclasses.replace(spec, seed=1)).search
    assert again.images.paths == t.search.images.paths  # drawn once, not per run
    r = cli("run", "--protocol", "id-ood", "--benchmark", "imagenet", "--model", "resnet26-cifar", "--weights",
            weights, "--method", "autoft", "--set", "trials=2", "--set", "inner_steps=2", "--steps", "2",
            "--device", "cpu", "--out", tmp_path)
    assert r.code == 0, r.err
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[-1]
    assert row.autoft_search_examples == 12 and 0 <= row.ood_val_acc <= 100


def test_scoring_on_a_class_subset_takes_the_best_of_those_logits() -> None:
    """A model whose top logit is outside the subset is scored by its best logit inside it."""
    logits = torch.tensor([[5.0, 1.0, 3.0, 0.0], [0.0, 2.0, 1.0, 9.0], [1.0, 0.0, 0.5, 0.0]])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 4, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(logits.T)
    split = Split(torch.eye(3).view(3, 3, 1, 1), torch.tensor([2, 1, 2]))
    assert evaluate(model, split)[0] == pytest.approx(0.0)  # argmax over all: 0, 3, 0
    assert evaluate(model, split, classes=(1, 2))[0] == pytest.approx(100.0)  # over {1, 2}: 2, 1, 2
    assert evaluate(model, split, classes=(2,))[0] == pytest.approx(200 / 3)


def test_imagenet_cli_run_lands_the_four_sets(cli, imagenet_data, weights: Path, tmp_path: Path) -> None:
    r = cli("run", "--protocol", "id-ood", "--benchmark", "imagenet", "--model", "resnet26-cifar", "--weights",
            weights, "--method", "linear-probe", "--device", "cpu", "--out", tmp_path)
    assert r.code == 0, r.err
    row = pd.read_parquet(next(tmp_path.glob("*.parquet"))).iloc[-1]
    sets = [row[f"ood.{n}_acc"] for n in imagenet.IMAGENET_OOD]
    assert row.ood_acc == pytest.approx(sum(sets) / 4)


def test_a_set_with_a_foreign_class_folder_is_refused(imagenet_root, weights: Path, tmp_path: Path,
                                                      monkeypatch) -> None:
    root, _ = imagenet_root
    stray, kept = root / "imagenet-a" / "imagenet-a" / "n99999999", root / "imagenet-a" / "imagenet-a" / A_CLASSES[-1]
    kept.rename(stray)  # still 200 class folders, one of them no ImageNet class
    try:
        monkeypatch.setenv("FTBENCH_DATA", str(root))
        spec = resolve(RunSpec(benchmark="imagenet", protocol="id-ood", model="resnet26-cifar", weights=str(weights),
                               method="linear-probe"))
        with pytest.raises(UsageError, match="n99999999 is not an ImageNet class.*imagenet-a"):
            get_benchmark("imagenet").id_ood(spec)
        other = root / "imagenet-a" / "imagenet-a" / WNIDS[0]  # an ImageNet class, but not one of A's 200
        stray.rename(other)
        stray = other
        with pytest.raises(UsageError, match=f"not imagenet-a's 200 classes .ImageNet class 0 .{WNIDS[0]}. is extra"):
            get_benchmark("imagenet").id_ood(spec)
    finally:
        stray.rename(kept)


# --- fetch ------------------------------------------------------------------------------------

def _serve(monkeypatch, server: Server, name: str, payloads: dict[str, bytes]) -> None:
    """Point registered dataset ``name`` at ``server``, its sizes and checksums those of ``payloads``."""
    ds = DATASETS.get(name)
    files = []
    for f in ds.files:
        data = payloads[f.name]
        server.files[f.name] = data
        files.append(dataclasses.replace(f, url=f"{server.url}/{f.name}", size=len(data),
                                         md5=f.md5 and hashlib.md5(data).hexdigest(),
                                         sha256=f.sha256 and hashlib.sha256(data).hexdigest()))
    monkeypatch.setitem(DATASETS._items, name, dataclasses.replace(ds, files=tuple(files)))


def _tar(entries: dict[str, bytes], folders: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:  # a plain tar, as hendrycks' imagenet-r.tar
        for d in folders:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            t.addfile(info)
        for n, data in entries.items():
            info = tarfile.TarInfo(n)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    return buf.getvalue()


def test_fetch_places_cifar10_1_and_extracts_stl10_and_imagenet_r(cli, cifar_root, monkeypatch,
                                                                  tmp_path: Path) -> None:
    server = Server()
    try:
        src = cifar_root[0]
        _serve(monkeypatch, server, "cifar10.1", {f.name: (src / "cifar10.1" / f.name).read_bytes()
                                                  for f in DATASETS.get("cifar10.1").files})
        stl = {f"stl10_binary/{n}": (src / "stl10" / "stl10_binary" / n).read_bytes() for n in ("test_X.bin", "test_y.bin")}
        import gzip

        _serve(monkeypatch, server, "stl10", {"stl10_binary.tar.gz": gzip.compress(_tar(stl, ["stl10_binary"]))})
        _serve(monkeypatch, server, "imagenet-r", {"imagenet-r.tar": _tar(
            {"imagenet-r/README.txt": b"x", f"imagenet-r/{R_CLASSES[0]}/art_0.jpg": b"jpeg"},
            ["imagenet-r"] + [f"imagenet-r/{w}" for w in R_CLASSES])})
        root = tmp_path / "data"
        for name in ("cifar10.1", "stl10", "imagenet-r"):
            r = cli("fetch", name, "--root", root)
            assert r.code == 0, r.err
            assert not DATASETS.get(name).problems(root), name
        for f in ("cifar10.1_v6_data.npy", "cifar10.1_v6_labels.npy"):
            assert (root / "cifar10.1" / f).read_bytes() == (src / "cifar10.1" / f).read_bytes()
        assert (root / "stl10" / "stl10_binary" / "test_y.bin").read_bytes() == stl["stl10_binary/test_y.bin"]
        assert "ready" in cli("fetch", "--list", "--root", root).out
        # A copy with 199 class folders is not ImageNet-R.
        _serve(monkeypatch, server, "imagenet-r", {"imagenet-r.tar": _tar(
            {}, ["imagenet-r"] + [f"imagenet-r/{w}" for w in R_CLASSES[1:]])})
        r = cli("fetch", "imagenet-r", "--root", tmp_path / "other")
        assert r.code == 2 and r.err.count("\n") == 1 and "has 199 class folders n########, expected 200" in r.err
        # It matched its checksum: the published bytes, kept (the layout rule would be what is wrong).
        assert "the download is kept" in r.err and (tmp_path / "other" / ".downloads" / "imagenet-r.tar.part").is_file()
        assert not (tmp_path / "other" / "imagenet-r").exists()
        # Without a checksum (ImageNet-Sketch), a copy of the wrong layout is removed.
        _serve(monkeypatch, server, "imagenet-sketch", {"ImageNet-Sketch.zip": _zip(
            {f"sketch/{w}/sketch_0.JPEG": b"jpeg" for w in WNIDS[:999]})})
        r = cli("fetch", "imagenet-sketch", "--root", tmp_path / "sk")
        assert r.code == 2 and "has 999 class folders" in r.err and "the download was removed" in r.err
        assert not (tmp_path / "sk").exists() or not any((tmp_path / "sk").rglob("*.part"))
    finally:
        server.close()



def test_stl10_binary_is_read_as_its_format_defines(tmp_path: Path, monkeypatch) -> None:
    """STL-10's test_X.bin, byte by byte as its page defines it: per image the red, green and blue
    planes of 96×96, each plane column-major (its first 96 bytes are the first *column*); labels 1..10."""
    per = 3 * 96 * 96
    raw = np.zeros(2 * per, np.uint8)
    raw[1] = 200  # image 0, red plane, column 0, row 1
    raw[96] = 100  # image 0, red plane, column 1, row 0
    raw[per + 96 * 96 + 5] = 50  # image 1, green plane, column 0, row 5
    folder = tmp_path / "stl10" / "stl10_binary"
    folder.mkdir(parents=True)
    raw.tofile(folder / "test_X.bin")
    np.asarray([4, 8], np.uint8).tofile(folder / "test_y.bin")  # STL cat (4th) -> CIFAR 3; monkey (8th) dropped
    x, y = cifar._stl10_test.__wrapped__(str(tmp_path))
    assert y.tolist() == [3] and x.shape == (1, 3, 96, 96)
    assert x[0, 0, 1, 0] == 200 and x[0, 0, 0, 1] == 100 and int(x.sum()) == 300
    np.asarray([4, 3], np.uint8).tofile(folder / "test_y.bin")  # car (3rd) -> CIFAR automobile, 1
    x, y = cifar._stl10_test.__wrapped__(str(tmp_path))
    assert y.tolist() == [3, 1] and x[1, 1, 5, 0] == 50
