"""``ftbench fetch``: download, verify and safely extract benchmark data into a data root.

Layout of a data root (``--root``, ``$FTBENCH_DATA``, default ``~/.cache/ftbench/data``)::

    <root>/<folder>/                 a complete dataset (holds .ftbench-complete.json)
    <root>/.downloads/<file>.part    an interrupted download, resumed by the next fetch
    <root>/.extract-<folder>-<pid>/  an extraction in progress (removed by the next fetch)

A dataset folder appears only by an atomic rename of a fully extracted and verified tree that
already holds its completion marker, so a killed fetch never leaves anything that looks complete.
Downloads resume with HTTP ``Range`` requests; archives are checked against published checksums
(MD5/SHA-256) where the publisher gives one, otherwise against the published size and the
archive's own integrity: the compressed stream is read to its end before anything is extracted,
so gzip's CRC-32 and length trailer (bzip2's and xz's checks likewise) are verified — tarfile
alone stops at the tar's end-of-archive blocks and never reaches the trailer, which is why a
WILDS archive (no published checksum) with a flipped byte used to be extracted. Extraction
refuses entries that would land outside the target folder (absolute paths, ``..``, links that
point out, devices). A download that fails any of these checks is deleted, so the next fetch
downloads it afresh instead of resuming a bad file. Data that cannot be downloaded (ImageNet, ImageNet-C, BREEDS) are validated
in place and the expected layout is printed when they are missing.

Written by hand rather than with ``torchvision.datasets.utils``: that helper neither resumes,
nor extracts safely, nor writes atomically, and it has no mirror support.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ftbench.environment import cache_dir, user_cache  # noqa: F401 - cache_dir is part of this module's API
from ftbench.errors import DiskError, UsageError, disk_error
from ftbench.registry import Registry
from ftbench.validate import check_output_dir

MARKER = ".ftbench-complete.json"
CHUNK = 1 << 20
ATTEMPTS = 3  # connection attempts per file in one fetch; the next fetch resumes anyway


def data_root(root: Path | str | None = None) -> Path:
    """``root``, else ``$FTBENCH_DATA``, else ``$XDG_CACHE_HOME/ftbench/data`` (``~/.cache/ftbench/data``)."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("FTBENCH_DATA")
    return Path(env).expanduser() if env else user_cache() / "ftbench" / "data"


@dataclass(frozen=True)
class RemoteFile:
    """One archive of a dataset. ``name`` is unique across datasets: it is the file's name under
    a ``--mirror`` and in ``.downloads``."""

    name: str
    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    into: str | None = None  # not an archive: placed as this path in the dataset folder, as downloaded


@dataclass(frozen=True)
class Dataset:
    """A dataset ``ftbench fetch`` knows: its archives (or, for manual data, its expected layout)."""

    name: str
    help: str
    licence: str
    folder: str  # under the data root; for WILDS the folder name the ``wilds`` package expects
    size: str  # human-readable download size
    files: tuple[RemoteFile, ...] = ()
    required: tuple[str, ...] = ()  # paths (relative to the folder) a complete copy has
    layout: str = ""  # manual datasets: where and how the user puts them
    check: Callable[[Path], list[str]] | None = None  # extra layout check: problems found

    @property
    def manual(self) -> bool:
        return not self.files

    def problems(self, root: Path) -> list[str]:
        """What is missing from ``<root>/<folder>`` (empty: the data are usable)."""
        folder = root / self.folder
        if not folder.is_dir():
            return [f"{folder} does not exist"]
        if not self.manual and not (folder / MARKER).is_file():
            return [f"{folder} has no completion marker ({MARKER}); it was not written by a finished fetch"]
        found = [f"missing {folder / r}" for r in self.required if not (folder / r).exists()]
        if not found and self.check is not None:
            found = self.check(folder)
        return found


DATASETS: Registry[Dataset] = Registry("dataset")


def register(ds: Dataset) -> Dataset:
    DATASETS.register(ds.name)(ds)
    return ds


# --- the registry ---------------------------------------------------------------------------

def _wnid_folders(path: Path, expected: int) -> list[str]:
    if not path.is_dir():
        return [f"missing {path}"]
    n = sum(1 for d in path.iterdir() if d.is_dir() and d.name.startswith("n") and d.name[1:].isdigit())
    return [] if n == expected else [f"{path} has {n} class folders n########, expected {expected}"]


def _imagenet_check(folder: Path) -> list[str]:
    return _wnid_folders(folder / "val", 1000)


# The 15 corruptions of the ImageNet-C benchmark (the 4 extra ones are optional in the archive).
IMAGENET_C = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
              "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
              "jpeg_compression")


def _imagenet_c_check(folder: Path) -> list[str]:
    problems = []
    for c in IMAGENET_C:
        for s in range(1, 6):
            p = folder / c / str(s)
            if not p.is_dir():
                problems.append(f"missing {p}")
    if problems:
        return problems[:3] + ([f"... and {len(problems) - 3} more"] if len(problems) > 3 else [])
    return _wnid_folders(folder / IMAGENET_C[0] / "1", 1000)


CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta")
CIFAR10_C_FILES = ("labels.npy", "gaussian_noise.npy", "shot_noise.npy", "impulse_noise.npy", "defocus_blur.npy",
                   "glass_blur.npy", "motion_blur.npy", "zoom_blur.npy", "snow.npy", "frost.npy", "fog.npy",
                   "brightness.npy", "contrast.npy", "elastic_transform.npy", "pixelate.npy",
                   "jpeg_compression.npy", "speckle_noise.npy", "gaussian_blur.npy", "spatter.npy", "saturate.npy")

register(Dataset(
    "cifar10", "CIFAR-10 (source of cifar10-c and cifar10-flip)", "no licence stated; Krizhevsky 2009, cite the tech report",
    "cifar10", "170 MB",
    (RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                170_498_071, md5="c58f30108f718f92721af3b95e74349a"),),
    required=tuple(f"cifar-10-batches-py/{f}" for f in CIFAR10_FILES),
))
register(Dataset(
    "cifar10-c", "CIFAR-10-C: 19 corruptions x 5 severities of the CIFAR-10 test set (Hendrycks & Dietterich 2019)",
    "CC BY 4.0 (Zenodo record 2535967)", "cifar10-c", "2.9 GB",
    (RemoteFile("CIFAR-10-C.tar", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1",
                2_918_471_680, md5="56bf5dcef84df0e2308c6dcbcbbd8499",
                sha256="c72763e101c723b7c507b96205f7e938912a5d587376173b825850cf3cb876a7"),),
    required=tuple(f"CIFAR-10-C/{f}" for f in CIFAR10_C_FILES),
))
register(Dataset(
    "imagenet", "ImageNet ILSVRC-2012 (source of imagenet-c, living17, entity30)",
    "ImageNet terms of access (non-commercial research); not redistributable", "imagenet", "~150 GB",
    required=("train", "val"), check=_imagenet_check,
    layout="<root>/imagenet/{train,val}/<wnid>/*.JPEG — val sorted into its 1000 wnid folders "
           "(e.g. with the valprep.sh script); download from https://image-net.org after accepting its terms",
))
register(Dataset(
    "imagenet-c", "ImageNet-C: 15+4 corruptions x 5 severities of ImageNet val (Hendrycks & Dietterich 2019)",
    "CC BY 4.0 (Zenodo record 2235448)", "imagenet-c", "~70 GB",
    check=_imagenet_c_check,
    layout="<root>/imagenet-c/<corruption>/<severity 1-5>/<wnid>/*.JPEG — the extracted "
           "{noise,blur,weather,digital}.tar from https://zenodo.org/records/2235448",
))
register(Dataset(
    "breeds", "BREEDS hierarchy files for living17 / entity30 (Santurkar et al. 2021); images come from imagenet",
    "MIT (MadryLab/BREEDS-Benchmarks)", "breeds", "1 MB",
    required=("class_hierarchy.txt", "dataset_class_info.json", "node_names.txt"),
    layout="<root>/breeds/{class_hierarchy.txt,dataset_class_info.json,node_names.txt} from "
           "https://github.com/MadryLab/BREEDS-Benchmarks (folder imagenet_class_hierarchy/modified), "
           "plus the imagenet dataset",
))

# The OOD test sets of LP-FT, WiSE-FT, AutoFT and the PETL robustness study (benchmarks `imagenet` and
# `cifar10`). Their authors publish no checksums (STL-10's MD5 is torchvision's); sizes and SHA-256 are
# TensorFlow Datasets' records of the same URLs (tensorflow_datasets/url_checksums/*.txt), so a copy that is
# not byte-identical is refused. ImageNet-V2's current host (Hugging Face) is not the URL TFDS recorded:
# size only. ImageNet-Sketch has neither: it is checked by the zip's CRCs and its 1000 class folders.
def _numbered_folders(path: Path, expected: int) -> list[str]:
    if not path.is_dir():
        return [f"missing {path}"]
    n = sum(1 for d in path.iterdir() if d.is_dir() and d.name.isdigit())
    return [] if n == expected else [f"{path} has {n} class folders 0..{expected - 1}, expected {expected}"]


IMAGENET_V2_FOLDER = "imagenetv2-matched-frequency-format-val"
register(Dataset(
    "imagenet-v2", "ImageNet-V2 MatchedFrequency: 10,000 new test images of the 1000 classes (Recht et al. 2019)",
    "MIT (modestyachts/ImageNetV2); images from Flickr, research use", "imagenet-v2", "1.3 GB",
    (RemoteFile("imagenetv2-matched-frequency.tar.gz",
                "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz",
                1_253_959_680),),  # TFDS's SHA-256 is of the retired S3 copy: not checked against this one
    required=(IMAGENET_V2_FOLDER,), check=lambda f: _numbered_folders(f / IMAGENET_V2_FOLDER, 1000),
))
register(Dataset(
    "imagenet-r", "ImageNet-R: 30,000 renditions (art, cartoons, ...) of 200 ImageNet classes (Hendrycks et al. 2021)",
    "MIT (hendrycks/imagenet-r); research use", "imagenet-r", "2.2 GB",
    (RemoteFile("imagenet-r.tar", "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar", 2_191_079_936,
                sha256="18c6bf493b39a0d975d48e587437f562caab9c52ae6327dcfa9dd8eb54aa1b52"),),
    required=("imagenet-r",), check=lambda f: _wnid_folders(f / "imagenet-r", 200),
))
register(Dataset(
    "imagenet-a", "ImageNet-A: 7,500 natural adversarial images of 200 ImageNet classes (Hendrycks et al. 2021)",
    "MIT (hendrycks/natural-adv-examples); research use", "imagenet-a", "0.7 GB",
    (RemoteFile("imagenet-a.tar", "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar", 687_552_512,
                sha256="3bb3632277e6ba6392ea64c02ddbf4dd2266c9caffd6bc09c9656d28f012589e"),),
    required=("imagenet-a",), check=lambda f: _wnid_folders(f / "imagenet-a", 200),
))
register(Dataset(
    "imagenet-sketch", "ImageNet-Sketch: 50,889 black-and-white sketches of the 1000 classes (Wang et al. 2019)",
    "MIT (HaohanWang/ImageNet-Sketch); images from Google search, research use", "imagenet-sketch", "7.8 GB",
    (RemoteFile("ImageNet-Sketch.zip",
                "https://huggingface.co/datasets/songweig/imagenet_sketch/resolve/main/data/ImageNet-Sketch.zip"),),
    required=("sketch",), check=lambda f: _wnid_folders(f / "sketch", 1000),
))
_C101 = "https://raw.githubusercontent.com/modestyachts/CIFAR-10.1/master/datasets/"
register(Dataset(
    "cifar10.1", "CIFAR-10.1 v6: 2,000 new test images of the 10 CIFAR-10 classes (Recht et al. 2018)",
    "MIT (modestyachts/CIFAR-10.1); images from Tiny Images, research use", "cifar10.1", "6 MB",
    (RemoteFile("cifar10.1_v6_data.npy", _C101 + "cifar10.1_v6_data.npy", 6_144_128,
                sha256="2997188e5816f5bd545dc77771b6227828c28146049fcecf3fa10775474cacc6",
                into="cifar10.1_v6_data.npy"),
     RemoteFile("cifar10.1_v6_labels.npy", _C101 + "cifar10.1_v6_labels.npy", 8_128,
                md5="09a97fb7c430502fcbd69d95093a3f85",
                sha256="ae40beda001693674edc94d925ee8268cfe68905f8f9aff800c8dcdfcd6c9448",
                into="cifar10.1_v6_labels.npy")),
    required=("cifar10.1_v6_data.npy", "cifar10.1_v6_labels.npy"),
))
register(Dataset(
    "stl10", "STL-10: 96x96 images of 10 classes, 9 shared with CIFAR-10 (Coates et al. 2011); its test split",
    "no licence stated; images from ImageNet, research use", "stl10", "2.6 GB",
    (RemoteFile("stl10_binary.tar.gz", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", 2_640_397_119,
                md5="91f7769df0f17e558f3565bffb0c7dfb",
                sha256="f31fd99273a1acb8609c8db427cebb1de3f71de77758cdc0e22956e1289b9866"),),
    required=("stl10_binary/test_X.bin", "stl10_binary/test_y.bin"),
))

# WILDS: the package's own download URLs and compressed sizes (wilds 2.0.0 datasets/*_dataset.py);
# WILDS publishes no checksums, so these are verified by size (where published) and by the gzip CRC.
_WILDS = (
    ("waterbirds", "waterbirds_v1.0", "0x505056d5cdea4e4eaa0e242cbfe2daa4", None, "~0.5 GB",
     "Waterbirds (Sagawa et al. 2020): birds on land/water backgrounds; worst-group accuracy",
     "CUB-200-2011 + Places: research use"),
    ("celeba", "celebA_v1.0", "0xfe55077f5cd541f985ebf9ec50473293", 1_308_557_312, "1.3 GB",
     "CelebA hair colour with gender as spurious attribute; worst-group accuracy",
     "CelebA agreement: non-commercial research only"),
    ("camelyon17", "camelyon17_v1.0", "0xe45e15f39fb54e9d9e919556af67aabe", 10_658_709_504, "10.7 GB",
     "Camelyon17-WILDS tumour patches, hospitals as domains; accuracy", "CC0 1.0"),
    ("fmow", "fmow_v1.1", "0xaec91eb7c9d548ebb15e1b5e60f966ab", 53_893_324_800, "53.9 GB",
     "FMoW-WILDS satellite images over time and regions; worst-region accuracy", "FMoW Challenge licence"),
    ("iwildcam", "iwildcam_v2.0", "0x6313da2b204647e79a14b468131fcd64", 11_957_420_032, "12.0 GB",
     "iWildCam2020-WILDS camera traps; macro-F1", "CDLA-Permissive 1.0"),
)
# What the wilds 2.0.0 dataset classes read from each folder; wilds loads a folder only when its
# RELEASE_v<version>.txt is there (WILDSDataset.dataset_exists_locally).
_WILDS_REQUIRED = {
    "waterbirds": ("RELEASE_v1.0.txt", "metadata.csv"),
    "celeba": ("RELEASE_v1.0.txt", "list_attr_celeba.csv", "list_eval_partition.csv", "img_align_celeba"),
    "camelyon17": ("RELEASE_v1.0.txt", "metadata.csv", "patches"),
    "fmow": ("RELEASE_v1.1.txt", "rgb_metadata.csv", "country_code_mapping.csv", "images"),
    "iwildcam": ("RELEASE_v2.0.txt", "metadata.csv", "train"),
}
for _name, _folder, _bundle, _size, _human, _help, _licence in _WILDS:
    register(Dataset(
        _name, _help, _licence, _folder, _human,
        (RemoteFile(f"{_folder}.tar.gz", f"https://worksheets.codalab.org/rest/bundles/{_bundle}/contents/blob/",
                    _size),),
        required=_WILDS_REQUIRED[_name],
    ))


# --- status -----------------------------------------------------------------------------------

def status(ds: Dataset, root: Path) -> str:
    """One word or phrase: ready, partial download, not downloaded, missing (manual data)."""
    if not ds.problems(root):
        return "ready"
    if ds.manual:
        return f"missing (place it by hand under {root}; `ftbench fetch {ds.name}` says which files)"
    parts = [root / ".downloads" / f"{f.name}.part" for f in ds.files]
    have = sum(p.stat().st_size for p in parts if p.is_file())
    if have:
        total = sum(f.size or 0 for f in ds.files)
        pct = f" ({100 * have / total:.0f}%)" if total else ""
        return f"partial download{pct}, resumable"
    return "not downloaded"


# --- download ---------------------------------------------------------------------------------

def _source(f: RemoteFile, mirror: str | None) -> str:
    if mirror is None:
        return f.url
    if "://" in mirror and not mirror.startswith("file://"):
        return mirror.rstrip("/") + "/" + f.name
    base = Path(mirror[len("file://"):] if mirror.startswith("file://") else mirror).expanduser()
    return str(base / f.name)


def _hashes(path: Path) -> dict[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def _copy_into(src: BinaryIO, dst: BinaryIO, progress: Callable[[int], None]) -> int:
    n = 0
    read = getattr(src, "read1", src.read)  # read1: write what has arrived (a killed fetch keeps it)
    while chunk := read(CHUNK):
        dst.write(chunk)
        n += len(chunk)
        progress(n)
    return n


def _reporter(name: str, start: int, total: int | None, say: Callable[[str], None]) -> Callable[[int], None]:
    """A progress callback that says how far a download is, every tenth of the file."""
    shown = [int(10 * start / total) if total else 0]

    def progress(n: int) -> None:
        if total:
            tenth = int(10 * (start + n) / total)
            if tenth > shown[0]:
                shown[0] = tenth
                say(f"  {name}: {start + n:,} / {total:,} bytes ({10 * tenth}%)")

    return progress


def _download(f: RemoteFile, src: str, part: Path, say: Callable[[str], None]) -> None:
    """Bring ``part`` to the complete file, resuming what is there. Raises UsageError on failure."""
    if "://" not in src:  # a local mirror folder
        p = Path(src)
        if not p.is_file():
            raise UsageError(f"mirror has no {f.name}: {p} does not exist")
        have = part.stat().st_size if part.is_file() else 0
        try:
            with open(p, "rb") as s, open(part, "ab") as d:
                s.seek(have)
                shutil.copyfileobj(s, d, CHUNK)
        except OSError as e:  # a full disk keeps what was copied: the next fetch goes on from there
            raise disk_error(e, part) or UsageError(f"copy of {p} to {part} failed: {e.strerror or e}") from None
        return
    last_error = ""
    for attempt in range(1, ATTEMPTS + 1):
        have = part.stat().st_size if part.is_file() else 0
        if f.size is not None and have == f.size:
            return
        if f.size is not None and have > f.size:
            part.unlink()  # longer than the published file: not a prefix of it, start over
            have = 0
        req = urllib.request.Request(src, headers={"User-Agent": "ftbench-fetch"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                code = resp.status
                if have and code != 206:  # server ignored the range: start over
                    have = 0
                length = resp.headers.get("Content-Length")
                expected = int(length) if length is not None and length.isdigit() else None
                if have:
                    say(f"  resuming {f.name} at {have:,} bytes")
                with open(part, "ab" if have else "wb") as out:
                    got = _copy_into(resp, out, _reporter(f.name, have, f.size or (have + (expected or 0)), say))
                if expected is not None and got < expected:
                    raise ConnectionError(f"connection closed after {got:,} of {expected:,} bytes")
                return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # range not satisfiable: we already have the whole file
                return
            if e.code == 404:
                raise UsageError(f"{src} not found (HTTP 404); use --mirror URL_OR_DIR with a copy of {f.name}") from None
            last_error = f"HTTP {e.code}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            found = disk_error(e)
            if found is not None and not isinstance(e, urllib.error.URLError):  # our write, not the network
                raise DiskError(part, found.reason) from None
            last_error = str(getattr(e, "reason", e))
        if attempt < ATTEMPTS:
            time.sleep(0.2 * attempt)
    have = part.stat().st_size if part.is_file() else 0
    kept = (f"{have:,} bytes kept in {part}, run the same fetch again to resume" if have else
            "nothing was downloaded; run the same fetch again when the host is reachable")
    raise UsageError(f"download of {f.name} from {src} failed ({last_error}); {kept}, or use --mirror URL_OR_DIR")


def _verify(f: RemoteFile, part: Path) -> dict[str, str]:
    """Check size and checksums; a mismatching file is removed (it cannot be resumed into shape)."""
    size = part.stat().st_size
    if f.size is not None and size != f.size:
        part.unlink()
        raise UsageError(f"{f.name} has {size:,} bytes, expected {f.size:,}; the file was removed, run fetch again")
    got = _hashes(part)
    for kind in ("md5", "sha256"):
        want = getattr(f, kind)
        if want and got[kind] != want.lower():
            part.unlink()
            raise UsageError(f"checksum mismatch for {f.name}: {kind} {got[kind]}, expected {want}; "
                             f"the file was removed, run fetch again (or check your --mirror)")
    return {"size": str(size), **got}


# --- extraction -------------------------------------------------------------------------------

def _inside(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not p.is_absolute() and ".." not in p.parts and not (p.parts and ":" in p.parts[0])


def _stream(archive: Path) -> BinaryIO:
    """``archive`` opened for reading, decompressed by its magic bytes (gzip, bzip2, xz, or none)."""
    with open(archive, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(archive, "rb")  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        return bz2.BZ2File(archive, "rb")  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(archive, "rb")  # type: ignore[return-value]
    return open(archive, "rb")


def _read_to_end(stream: BinaryIO) -> None:
    """Read what is left of ``stream``: a compressed stream checks its CRC/length at its end
    (gzip raises BadGzipFile on a mismatch, EOFError when the trailer is missing)."""
    while stream.read(CHUNK):
        pass


def _extract(archive: Path, dest: Path, label: str) -> None:
    """Extract ``archive`` into ``dest``; refuse any entry that would land outside it, and any
    archive whose compressed stream fails its own integrity check (before extracting anything)."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                    if not _inside(info.filename) or is_link:
                        raise UsageError(f"archive {label} has an unsafe entry {info.filename!r} "
                                         "(absolute path, '..' or link); nothing was extracted")
                bad = z.testzip()
                if bad is not None:
                    raise UsageError(f"archive {label} is corrupt (bad CRC in {bad!r}); nothing was extracted")
                z.extractall(dest)
            return
        with _stream(archive) as stream, tarfile.open(fileobj=stream, mode="r:") as t:
            members = t.getmembers()  # reads up to the tar's end blocks: a truncated archive fails here
            for m in members:
                escapes = not _inside(m.name)
                if m.issym() or m.islnk():
                    target = m.linkname if m.islnk() else str(PurePosixPath(m.name).parent / m.linkname)
                    escapes = escapes or not _inside(target) or m.linkname.startswith("/")
                if escapes or m.isdev():
                    raise UsageError(f"archive {label} has an unsafe entry {m.name!r} (it would be written outside "
                                     "the dataset folder, or is a device); nothing was extracted")
            # tarfile stops at the end-of-archive blocks; the padding after them and the
            # compressor's trailer (gzip: CRC-32 and length) are only checked by reading on.
            _read_to_end(stream)
            t.extractall(dest, members=members, filter="data")  # seeks back: a second pass
    except UsageError:
        raise
    except OSError as e:
        found = disk_error(e, dest)  # the extraction's own writes: the archive is fine, keep it
        if found is not None:
            raise found from None
        raise UsageError(f"archive {label} is truncated or corrupt ({type(e).__name__}: {e}); nothing was "
                         "extracted") from None
    except (tarfile.TarError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError) as e:
        raise UsageError(f"archive {label} is truncated or corrupt ({type(e).__name__}: {e}); nothing was "
                         "extracted") from None


# --- fetch ------------------------------------------------------------------------------------

def fetch(name: str, root: Path, mirror: str | None = None, say: Callable[[str], None] = print) -> str:
    """Make dataset ``name`` ready under ``root``; return a one-line outcome. UsageError on failure.

    Idempotent: a dataset already complete is verified (marker and required files) and left alone.
    """
    ds = DATASETS.get(name)
    folder = root / ds.folder
    if not ds.problems(root):
        return f"{name}: ready in {folder} (verified)"
    if ds.manual:
        found = ds.problems(root)
        raise UsageError(f"{name} cannot be downloaded by ftbench ({ds.licence}); expected {ds.layout}; "
                         f"found: {found[0]}" + (f" (+{len(found) - 1} more)" if len(found) > 1 else ""))
    if folder.exists():  # incomplete: not written by a finished fetch (or damaged since)
        raise UsageError(f"{folder} exists but is not a complete {name} ({ds.problems(root)[0]}); "
                         "move it away and fetch again")
    check_output_dir(root, "data root")  # a file in the way, or read-only: say so before downloading
    created = [p for p in (root, *root.parents) if not p.exists()]  # removed again if left empty
    root.mkdir(parents=True, exist_ok=True)
    downloads = root / ".downloads"
    try:
        _fetch_files(ds, root, downloads, mirror, say)
    finally:
        for p in (downloads, *created):  # no empty folders left behind, whatever happened
            try:
                p.rmdir()
            except OSError:
                pass  # not empty (a resumable download, other data) or not ours
    return f"{name}: ready in {folder}"


def _fetch_files(ds: Dataset, root: Path, downloads: Path, mirror: str | None, say: Callable[[str], None]) -> None:
    """Download, verify and extract ``ds`` into ``<root>/<folder>``. A download that fails
    verification (size, checksum, integrity, unsafe entry, wrong contents) is deleted: resuming it
    would only repeat the failure. A download cut short is kept: the next fetch resumes it."""
    folder = root / ds.folder
    for stale in root.glob(f".extract-{ds.folder}-*"):  # left by a killed fetch
        shutil.rmtree(stale, ignore_errors=True)
    downloads.mkdir(exist_ok=True)
    verified: dict[str, dict[str, str]] = {}
    for f in ds.files:
        part = downloads / f"{f.name}.part"
        src = _source(f, mirror)
        say(f"  {ds.name}: {f.name} <- {src}")
        _download(f, src, part, say)
        verified[f.name] = _verify(f, part)
    parts = [downloads / f"{f.name}.part" for f in ds.files]
    tmp = root / f".extract-{ds.folder}-{os.getpid()}"
    tmp.mkdir()
    try:
        for f, part in zip(ds.files, parts):
            if f.into is not None:  # a plain file (CIFAR-10.1's .npy): verified above, placed as it is
                try:
                    (tmp / f.into).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(part, tmp / f.into)
                except OSError as e:  # no room: the download is good, keep it for the next fetch
                    raise disk_error(e, tmp) or UsageError(f"cannot place {f.name} in {tmp}: {e.strerror or e}") from None
                continue
            try:
                _extract(part, tmp, f.name)
            except DiskError:
                raise  # no room to extract: the download is good, keep it for the next fetch
            except UsageError as e:
                part.unlink(missing_ok=True)
                raise UsageError(f"{e}; the download was removed, run fetch again (or check your --mirror)") from None
        missing = [r for r in ds.required if not (tmp / r).exists()]
        wrong = ds.check(tmp) if not missing and ds.check is not None else []  # e.g. ImageNet-R's 200 classes
        if wrong:
            problem = wrong[0].replace(str(tmp), str(folder))
            if all(f.md5 or f.sha256 for f in ds.files):  # the published bytes: the layout rule is what is off
                raise UsageError(f"archive of {ds.name} matches its published checksum but not the layout ftbench "
                                 f"expects ({problem}); the download is kept; please report this")
            for part in parts:
                part.unlink(missing_ok=True)
            raise UsageError(f"archive of {ds.name} is not a complete copy: {problem}; the download was removed; "
                             "is the mirror's copy the right file?")
        if missing:
            for part in parts:  # which of them is the wrong file cannot be told: none is kept
                part.unlink(missing_ok=True)
            raise UsageError(f"archive of {ds.name} does not hold the expected {missing[0]}"
                             + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                             + "; the download was removed; is the mirror's copy the right file?")
        marker = {"dataset": ds.name, "files": verified, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        os.replace(tmp, folder)  # the one step that makes the dataset visible
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for part in parts:
        part.unlink(missing_ok=True)
