"""The CIFAR-10 benchmarks (cifar10-c, cifar10-c-gen, cifar10-flip) on a tiny fabricated copy of the
real file layout: CIFAR-10's python pickles and CIFAR-10-C's .npy files, as `ftbench fetch` leaves them.

Every fabricated image carries its own index in its pixels, so a test can tell exactly which images
each split holds: train image i has channel 2 = i % 256 and channel 1 = i // 256 at every pixel;
test image i (0..199) has channel 2 = i. In CIFAR-10-C files channel 1 = 40 × severity and channel 0
tells the corruption apart.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ftbench.data import cifar, corruptions
from ftbench.data.base import get_benchmark
from ftbench.data.fetch import CIFAR10_C_FILES, MARKER
from ftbench.errors import UsageError
from ftbench.train import pretrain
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve

TRAIN_PER_CLASS, TEST_PER_CLASS = 30, 20
N_TRAIN, N_TEST = 10 * TRAIN_PER_CLASS, 10 * TEST_PER_CLASS
FILLED = {"gaussian_noise": 10, "fog": 20}  # corruption -> channel-0 value; the other files are empty


def make_cifar_root(root: Path) -> dict[str, np.ndarray]:
    """Write a tiny CIFAR-10 + CIFAR-10-C under ``root`` in the layout `ftbench fetch` produces."""
    rng = np.random.default_rng(123)
    train_y = rng.permutation(np.repeat(np.arange(10), TRAIN_PER_CLASS))
    test_y = rng.permutation(np.repeat(np.arange(10), TEST_PER_CLASS))
    train_x = np.zeros((N_TRAIN, 3, 32, 32), np.uint8)
    train_x[:, 0] = (25 * train_y)[:, None, None]  # a class signal, so pretraining has something to learn
    train_x[:, 1] = (np.arange(N_TRAIN) // 256)[:, None, None]
    train_x[:, 2] = (np.arange(N_TRAIN) % 256)[:, None, None]
    test_x = rng.integers(0, 256, (N_TEST, 3, 32, 32), dtype=np.uint8)
    test_x[:, 2] = np.arange(N_TEST)[:, None, None]

    batches = root / "cifar10" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for b in range(5):
        part = slice(b * N_TRAIN // 5, (b + 1) * N_TRAIN // 5)
        d = {b"batch_label": f"training batch {b + 1} of 5".encode(), b"labels": train_y[part].tolist(),
             b"data": train_x[part].reshape(-1, 3072), b"filenames": [b"x.png"] * (N_TRAIN // 5)}
        (batches / f"data_batch_{b + 1}").write_bytes(pickle.dumps(d, protocol=2))
    d = {b"batch_label": b"testing batch 1 of 1", b"labels": test_y.tolist(), b"data": test_x.reshape(-1, 3072),
         b"filenames": [b"x.png"] * N_TEST}
    (batches / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    (batches / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}, protocol=2))
    (root / "cifar10" / MARKER).write_text(json.dumps({"dataset": "cifar10"}))

    c_dir = root / "cifar10-c" / "CIFAR-10-C"
    c_dir.mkdir(parents=True)
    np.save(c_dir / "labels.npy", np.tile(test_y, 5).astype(np.uint8))
    for f in CIFAR10_C_FILES:
        name = f.removesuffix(".npy")
        if name == "labels":
            continue
        if name not in FILLED:
            np.save(c_dir / f, np.zeros((0, 32, 32, 3), np.uint8))
            continue
        x = np.zeros((5, N_TEST, 32, 32, 3), np.uint8)
        x[..., 0] = FILLED[name]
        x[..., 1] = (40 * np.arange(1, 6))[:, None, None, None]
        x[..., 2] = np.arange(N_TEST)[None, :, None, None]
        np.save(c_dir / f, x.reshape(5 * N_TEST, 32, 32, 3))
    (root / "cifar10-c" / MARKER).write_text(json.dumps({"dataset": "cifar10-c"}))
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("cifar-data")
    return root, make_cifar_root(root)


@pytest.fixture
def data(fabricated, monkeypatch) -> dict[str, np.ndarray]:
    root, arrays = fabricated
    monkeypatch.setenv("FTBENCH_DATA", str(root))
    monkeypatch.setitem(cifar.PRETRAIN_RECIPE, "epochs", 2)  # the recipe, not its code, is tiny here
    return arrays


def pixels(split_x: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: the uint8 images a Split was built from."""
    mean = torch.tensor(cifar.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cifar.STD).view(1, 3, 1, 1)
    return torch.round((split_x * std + mean) * 255).to(torch.uint8).numpy()


def test_list_and_status(cli, data, tmp_path: Path, monkeypatch) -> None:
    r = cli("list", "benchmarks")
    assert r.code == 0, r.err
    for name in ("cifar10-c", "cifar10-c-gen", "cifar10-flip"):
        assert f"{name}:" in r.out
    assert "--shift label-flip [output level]" in r.out
    assert get_benchmark("cifar10-c").status() == "ready"
    monkeypatch.setenv("FTBENCH_DATA", str(tmp_path))
    assert get_benchmark("cifar10-c").status() == "not downloaded: ftbench fetch cifar10 cifar10-c"
    assert get_benchmark("cifar10-flip").status() == "not downloaded: ftbench fetch cifar10"


def test_source_splits_are_stratified_disjoint_and_fixed(data) -> None:
    bench = get_benchmark("cifar10-c")
    s = bench.source(resolve(RunSpec(benchmark="cifar10-c", shots=5)))
    assert s.train.x.dtype == torch.float32 and s.train.x.shape[1:] == (3, 32, 32)
    assert (len(s.train), len(s.val), len(s.test)) == (270, 30, 200)
    train = pixels(s.train.x)
    idx_train = train[:, 1, 0, 0].astype(int) * 256 + train[:, 2, 0, 0]
    val = pixels(s.val.x)
    idx_val = val[:, 1, 0, 0].astype(int) * 256 + val[:, 2, 0, 0]
    assert not set(idx_train) & set(idx_val) and set(idx_train) | set(idx_val) == set(range(N_TRAIN))
    assert np.array_equal(s.train.y.numpy(), data["train_y"][idx_train])
    assert np.bincount(s.val.y.numpy(), minlength=10).tolist() == [3] * 10
    assert np.array_equal(pixels(s.test.x), data["test_x"])  # ID test: the clean test set
    assert np.array_equal(s.test.y.numpy(), data["test_y"])
    # One source task (and cached model) for the three benchmarks, pretrained with the CIFAR recipe.
    flip = get_benchmark("cifar10-flip").source(resolve(RunSpec(benchmark="cifar10-flip", shots=5)))
    assert flip.key == s.key and s.recipe == cifar.PRETRAIN_RECIPE
    assert pretrain.cache_path("digits-resnet", s, torch.device("cpu")) != pretrain.cache_path(
        "digits-resnet", s.__class__(s.key, 10, s.train, s.val, s.test), torch.device("cpu"))


def _target_indices(split_x: torch.Tensor) -> np.ndarray:
    return pixels(split_x)[:, 2, 0, 0].astype(int)


def test_cifar10_c_reads_the_corruption_and_severity_slice(data) -> None:
    bench = get_benchmark("cifar10-c")
    for name, sev in [("gaussian_noise", 5), ("gaussian_noise", 2), ("fog", 3)]:
        spec = resolve(RunSpec(benchmark="cifar10-c", corruption=name, severity=sev, shots=5))
        t = bench.target(spec)
        for split in (t.train, t.val, t.test):
            px = pixels(split.x)
            assert (px[:, 0] == FILLED[name]).all() and (px[:, 1] == 40 * sev).all()
            assert np.array_equal(split.y.numpy(), data["test_y"][px[:, 2, 0, 0]])  # labels.npy, same rows
    assert resolve(RunSpec(benchmark="cifar10-c")).severity == 5  # the paper's default
    assert resolve(RunSpec(benchmark="cifar10-c")).shots == 100
    assert resolve(RunSpec(benchmark="cifar10-c")).model == "resnet26-cifar"


def test_target_splits_sizes_disjoint_and_seeded(data) -> None:
    bench = get_benchmark("cifar10-c")

    def target(seed: int, shots: int = 5):
        return bench.target(resolve(RunSpec(benchmark="cifar10-c", shots=shots, seed=seed)))

    t0 = target(0)
    # Per class of 20 test images: 1 val (max(1, round(0.2))), 10 in the pool, 9 test.
    assert (len(t0.train), len(t0.val), len(t0.test)) == (50, 10, 90)
    for split, n in ((t0.train, 5), (t0.val, 1), (t0.test, 9)):
        assert np.bincount(split.y.numpy(), minlength=10).tolist() == [n] * 10
    train, val, test = (set(_target_indices(s.x)) for s in (t0.train, t0.val, t0.test))
    assert len(train) == 50 and not (train & val or train & test or val & test)
    again = target(0)
    assert torch.equal(again.train.x, t0.train.x) and torch.equal(again.train.y, t0.train.y)
    t1 = target(1)
    assert set(_target_indices(t1.train.x)) != train  # another seed, another few-shot draw
    assert torch.equal(t1.val.x, t0.val.x) and torch.equal(t1.test.x, t0.test.x)  # scored on the same images
    assert train <= set(_target_indices(target(0, shots=8).train.x))  # k shots within m shots
    with pytest.raises(UsageError, match=r"shots must be an integer in 1\.\.10 for benchmark 'cifar10-c'"):
        target(0, shots=11)


def test_flip_permutes_labels_of_clean_test_images(data) -> None:
    spec = resolve(RunSpec(benchmark="cifar10-flip", shots=5))  # the default --shift means its one shift
    assert (spec.shift, spec.corruption, spec.severity) == ("label-flip", None, None)
    t = get_benchmark("cifar10-flip").target(spec)
    c = get_benchmark("cifar10-c").target(resolve(RunSpec(benchmark="cifar10-c", shots=5)))
    for flipped, corrupted in ((t.train, c.train), (t.val, c.val), (t.test, c.test)):
        idx = _target_indices(flipped.x)
        assert np.array_equal(pixels(flipped.x), data["test_x"][idx])
        assert np.array_equal(flipped.y.numpy(), 9 - data["test_y"][idx])
        assert np.array_equal(idx, _target_indices(corrupted.x))  # the same partition as cifar10-c
    with pytest.raises(UsageError, match="apply only to --shift corruption, not 'label-flip'"):
        resolve(RunSpec(benchmark="cifar10-flip", shift="label-flip", corruption="fog"))
    with pytest.raises(UsageError, match="unknown shift for benchmark 'cifar10-flip': 'corruption'; accepted: label-flip"):
        resolve(RunSpec(benchmark="cifar10-flip", corruption="fog"))


def test_gen_applies_the_torch_corruption_deterministically(data, model_cache: Path) -> None:
    spec = resolve(RunSpec(benchmark="cifar10-c-gen", corruption="gaussian_noise", severity=3, shots=5))
    t = get_benchmark("cifar10-c-gen").target(spec)
    # By hand: corrupt the clean test set (one chunk) with the documented seed, truncate to uint8.
    x = torch.from_numpy(data["test_x"]).float() / 255
    y = corruptions.corrupt(x, "gaussian_noise", 3, seed=cifar.generation_seed("gaussian_noise", 3, 0), scale="cifar")
    expected = (y * 255 + 1e-3).floor().clamp(0, 255).to(torch.uint8).numpy()
    assert not np.array_equal(expected, data["test_x"])
    # Channel 2 of the clean images is the index; noise changes it, so use the clean partition.
    val, pool, test = cifar.target_roles(data["test_y"])
    assert np.array_equal(pixels(t.test.x), expected[test]) and np.array_equal(pixels(t.val.x), expected[val])
    assert np.array_equal(t.test.y.numpy(), data["test_y"][test])
    # Cached on disk; regenerated identically when the cache is gone.
    files = list((model_cache / "cifar10-c-gen").glob("gaussian_noise-3-*.npy"))
    assert len(files) == 1 and np.array_equal(np.load(files[0]), expected)
    files[0].unlink()
    cifar._generated.cache_clear()
    assert torch.equal(get_benchmark("cifar10-c-gen").target(spec).test.x, t.test.x)
    with pytest.raises(UsageError, match="unknown corruption for benchmark 'cifar10-c-gen'"):
        resolve(RunSpec(benchmark="cifar10-c-gen", corruption="inversion"))  # not a CIFAR-10-C corruption


def test_gen_images_replaced_in_the_cache_are_regenerated(data, model_cache: Path, capsys) -> None:
    """Other valid images of the right shape put in the cache file (issue 27): not believed."""
    spec = resolve(RunSpec(benchmark="cifar10-c-gen", corruption="gaussian_noise", severity=2, shots=5))
    t = get_benchmark("cifar10-c-gen").target(spec)
    (path,) = (model_cache / "cifar10-c-gen").glob("gaussian_noise-2-*.npy")
    np.save(path, np.zeros_like(np.load(path)))
    cifar._generated.cache_clear()
    capsys.readouterr()
    assert torch.equal(get_benchmark("cifar10-c-gen").target(spec).test.x, t.test.x)
    assert "are not used" in capsys.readouterr().err and np.load(path).any()


def test_missing_or_damaged_data_is_one_error_line(cli, tmp_path: Path, monkeypatch, fabricated) -> None:
    monkeypatch.setenv("FTBENCH_DATA", str(tmp_path))
    r = cli("run", "--benchmark", "cifar10-c", "--method", "surgical", "--block", "1", "--steps", "2",
            "--model", "digits-resnet", "--out", tmp_path / "out")
    assert r.code == 2
    assert r.err == (f"error: cifar10-c data not found under {tmp_path}: run `ftbench fetch cifar10 cifar10-c` "
                     "(or --mirror)\n")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))
    monkeypatch.setenv("FTBENCH_DATA", str(fabricated[0]))
    r = cli("run", "--benchmark", "cifar10-c", "--corruption", "snow", "--shots", "5", "--steps", "1",
            "--out", tmp_path / "out")  # the fabricated snow.npy holds no images
    assert r.code == 2 and r.err.count("\n") == 1 and "snow.npy is not a CIFAR-10-C file" in r.err
    r = cli("run", "--benchmark", "cifar10-c", "--corruption", "inversion")
    assert r.code == 2 and "unknown corruption for benchmark 'cifar10-c': 'inversion'; accepted: brightness" in r.err


@pytest.mark.parametrize("args, shift", [
    (["--benchmark", "cifar10-c", "--corruption", "gaussian_noise", "--severity", "5", "--block", "1"], "corruption"),
    (["--benchmark", "cifar10-flip", "--block", "last"], "label-flip"),
])
def test_cli_run_end_to_end_on_cpu(cli, data, tmp_path: Path, args: list[str], shift: str) -> None:
    r = cli("run", *args, "--method", "surgical", "--steps", "2", "--model", "digits-resnet", "--shots", "5",
            "--device", "cpu", "--out", tmp_path)
    assert r.code == 0, r.err
    files = list(tmp_path.glob("*.parquet"))
    assert len(files) == 1
    row = pd.read_parquet(files[0]).iloc[0]
    assert (row.benchmark, row["shift"], row.status, row.n_target_train) == (args[1], shift, "ok", 50)
    assert row.shift_level == ("input" if shift == "corruption" else "output")
    assert 0 <= row.ood_acc <= 100 and 0 <= row.id_acc <= 100


def test_crop_flip_augmentation_crops_and_flips_each_image() -> None:
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    seen = []
    aug = pretrain.CropFlip(lambda t: seen.append(t) or t).train()  # type: ignore[arg-type]
    torch.manual_seed(0)
    for _ in range(20):
        aug(x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    shapes = set()
    for out in seen:
        for i in range(2):
            crops = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
            match = [k for k, c in enumerate(crops) if torch.equal(out[i], c) or torch.equal(out[i], c.flip(2))]
            assert match, "every output image is a 32x32 crop of the padded image, maybe flipped"
            shapes.add(match[0])
    assert len(shapes) > 5  # offsets vary
    aug.eval()
    assert aug(x) is x  # no augmentation in eval mode


def test_digits_pretraining_cache_key_is_unchanged_by_the_recipe_hook() -> None:
    import hashlib

    source = get_benchmark("digits").source(resolve(RunSpec()))
    assert source.recipe is None and pretrain.recipe_of(source) is pretrain.RECIPE
    # The key as computed before benchmarks could bring their own recipe: digits' cached models stay valid.
    key = {"v": pretrain.PRETRAIN_VERSION, "model": "digits-resnet", "source": source.key, "recipe": pretrain.RECIPE,
           "device": "cpu"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    assert pretrain.cache_path("digits-resnet", source, torch.device("cpu")).name == f"digits-resnet-{digest}.pt"
