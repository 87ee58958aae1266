"""``ftbench fetch`` end to end against fabricated archives served from 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ftbench.data.fetch import DATASETS, MARKER, Dataset, RemoteFile


class Server:
    """Serves ``files`` with HTTP Range support; can cut or stall the first response of a file."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None]] = []
        self.cut: dict[str, int] = {}  # name -> close the next response after this many bytes
        self.stall: dict[str, int] = {}  # name -> send this many bytes, then hang (until released)
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.log.append((name, rng))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_error(416)
                    return
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if name in server.cut:
                    n = server.cut.pop(name)
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if name in server.stall:
                    n = server.stall.pop(name)
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    server.release.wait(30)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def tar_gz(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            t.addfile(info)
    return buf.getvalue()


PAYLOAD = {"fake/a.txt": b"hello\n", "fake/big.bin": os.urandom(300_000)}


def register(monkeypatch, server: Server, data: bytes, name: str = "fake", checksum: bool = True,
             size: bool = True, url: str | None = None, file: str = "fake.tar.gz") -> Dataset:
    server.files[file] = data
    f = RemoteFile(file, url or f"{server.url}/{file}", len(data) if size else None,
                   md5=hashlib.md5(data).hexdigest() if checksum else None,
                   sha256=hashlib.sha256(data).hexdigest() if checksum else None)
    ds = Dataset(name, "a fabricated dataset", "test licence", name, "1 MB", (f,), required=("fake/a.txt",))
    monkeypatch.setitem(DATASETS._items, name, ds)
    return ds


def leftovers(root: Path) -> list[str]:
    """Everything in the root except the downloads folder."""
    return sorted(p.name for p in root.iterdir() if p.name != ".downloads") if root.exists() else []


def test_fetch_downloads_verifies_extracts_and_is_idempotent(cli, server, monkeypatch, tmp_path: Path) -> None:
    register(monkeypatch, server, tar_gz(PAYLOAD))
    root = tmp_path / "data"
    r = cli("fetch", "--list", "--root", root)
    assert r.code == 0 and "fake" in r.out and "not downloaded" in r.out and "test licence" in r.out and "1 MB" in r.out
    r = cli("fetch", "fake", "--root", root)
    assert r.code == 0, r.err
    assert (root / "fake" / "fake" / "a.txt").read_bytes() == b"hello\n"
    assert (root / "fake" / "fake" / "big.bin").read_bytes() == PAYLOAD["fake/big.bin"]
    assert (root / "fake" / MARKER).is_file()
    assert leftovers(root) == ["fake"] and not (root / ".downloads").exists()  # no empty folder left
    n = len(server.log)
    r = cli("fetch", "fake", "--root", root)
    assert r.code == 0 and "verified" in r.out and len(server.log) == n  # no second download
    assert "ready" in cli("fetch", "--list", "--root", root).out


def test_env_var_sets_the_data_root(cli, server, monkeypatch, tmp_path: Path) -> None:
    register(monkeypatch, server, tar_gz(PAYLOAD))
    monkeypatch.setenv("FTBENCH_DATA", str(tmp_path / "env-root"))
    assert cli("fetch", "fake").code == 0
    assert (tmp_path / "env-root" / "fake" / MARKER).is_file()


def test_a_dropped_connection_is_resumed_with_a_range_request(cli, server, monkeypatch, tmp_path: Path) -> None:
    register(monkeypatch, server, tar_gz(PAYLOAD))
    server.cut["fake.tar.gz"] = 100_000
    r = cli("fetch", "fake", "--root", tmp_path)
    assert r.code == 0, r.err
    assert server.log == [("fake.tar.gz", None), ("fake.tar.gz", "bytes=100000-")]
    assert (tmp_path / "fake" / "fake" / "big.bin").read_bytes() == PAYLOAD["fake/big.bin"]


def test_a_killed_fetch_leaves_nothing_complete_and_the_next_resumes(server, monkeypatch, tmp_path: Path) -> None:
    """SIGKILL a fetch mid-download (a real process); the re-run resumes from the partial file."""
    data = tar_gz(PAYLOAD)
    register(monkeypatch, server, data)
    server.stall["fake.tar.gz"] = 150_000
    root = tmp_path / "data"
    code = (
        "import sys; from ftbench.data.fetch import DATASETS, Dataset, RemoteFile, fetch; from pathlib import Path\n"
        f"f = RemoteFile('fake.tar.gz', {server.url + '/fake.tar.gz'!r}, {len(data)}, md5={hashlib.md5(data).hexdigest()!r})\n"
        "DATASETS.register('fake')(Dataset('fake', 'x', 'x', 'fake', '1 MB', (f,), required=('fake/a.txt',)))\n"
        f"fetch('fake', Path({str(root)!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    part = root / ".downloads" / "fake.tar.gz.part"
    deadline = time.time() + 60
    while not (part.is_file() and part.stat().st_size >= 150_000) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert part.stat().st_size == 150_000
    assert leftovers(root) == []  # nothing that looks like a dataset
    from ftbench.data.fetch import fetch, status

    assert status(DATASETS.get("fake"), root).startswith("partial download")
    fetch("fake", root, say=lambda m: None)
    assert server.log[-1] == ("fake.tar.gz", "bytes=150000-")
    assert (root / "fake" / "fake" / "big.bin").read_bytes() == PAYLOAD["fake/big.bin"]


def test_checksum_mismatch_is_exit_2_and_removes_the_download(cli, server, monkeypatch, tmp_path: Path) -> None:
    ds = register(monkeypatch, server, tar_gz(PAYLOAD))
    bad = RemoteFile(ds.files[0].name, ds.files[0].url, ds.files[0].size, md5="0" * 32)
    monkeypatch.setitem(DATASETS._items, "fake", Dataset("fake", "x", "x", "fake", "1 MB", (bad,), ("fake/a.txt",)))
    r = cli("fetch", "fake", "--root", tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1 and "checksum mismatch for fake.tar.gz: md5" in r.err
    assert leftovers(tmp_path) == [] and not (tmp_path / ".downloads").exists()


@pytest.mark.parametrize("archive", [
    tar_gz({"fake/a.txt": b"x", "../evil.txt": b"pwned"}),
    tar_gz({"fake/a.txt": b"x", "/tmp/ftbench-evil.txt": b"pwned"}),
    tar_gz({"fake/a.txt": b"x"}, links={"fake/passwd": "../../../../etc/passwd"}),
], ids=["dotdot", "absolute", "symlink-out"])
def test_an_archive_escaping_the_folder_is_refused(cli, server, monkeypatch, tmp_path: Path, archive: bytes) -> None:
    register(monkeypatch, server, archive)
    root = tmp_path / "data"
    r = cli("fetch", "fake", "--root", root)
    assert r.code == 2 and "unsafe entry" in r.err and r.err.count("\n") == 1
    assert leftovers(root) == [] and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/ftbench-evil.txt").exists()


def test_a_zip_escaping_the_folder_is_refused(cli, server, monkeypatch, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fake/a.txt", "x")
        z.writestr("../evil.txt", "pwned")
    register(monkeypatch, server, buf.getvalue(), file="fake.zip")
    r = cli("fetch", "fake", "--root", tmp_path / "data")
    assert r.code == 2 and "unsafe entry '../evil.txt'" in r.err
    assert not (tmp_path / "evil.txt").exists() and leftovers(tmp_path / "data") == []


def test_a_truncated_archive_without_checksum_is_exit_2(cli, server, monkeypatch, tmp_path: Path) -> None:
    """WILDS publishes no checksum: a short archive is caught by the gzip/tar integrity check."""
    data = tar_gz(PAYLOAD)
    register(monkeypatch, server, data[: len(data) // 2], checksum=False, size=False)
    r = cli("fetch", "fake", "--root", tmp_path)
    assert r.code == 2 and "truncated or corrupt" in r.err and r.err.count("\n") == 1
    assert leftovers(tmp_path) == []
    assert not (tmp_path / ".downloads").exists()  # discarded: resuming it would only repeat the failure
    server.files["fake.tar.gz"] = data  # the mirror is fixed: the next fetch starts afresh and succeeds
    r = cli("fetch", "fake", "--root", tmp_path)
    assert r.code == 0, r.err
    assert ("fake.tar.gz", None) == server.log[-1]  # a whole download, not a resume of the bad file
    assert (tmp_path / "fake" / "fake" / "big.bin").read_bytes() == PAYLOAD["fake/big.bin"]


def tar_gz_level(entries: dict[str, bytes], level: int) -> bytes:
    """A .tar.gz at gzip ``level``: level 0 stores the bytes (deflate "stored" blocks), so a flipped
    byte in it decompresses cleanly to a changed file, and only the CRC-32 tells."""
    import gzip

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=level, mtime=0)


def flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x20
    return bytes(b)


CSV = b"img_id,img_filename,y,split,place\n" + b"".join(b"%d,bird_%04d.jpg,0,0,1\n" % (i, i) for i in range(200))
GOOD_GZ = tar_gz_level({"fake/a.txt": b"hello\n", "fake/metadata.csv": CSV}, 0)


@pytest.mark.parametrize("damage", [
    flip(GOOD_GZ, GOOD_GZ.index(b"bird_0100")),  # a content byte: metadata.csv would change, quietly
    flip(GOOD_GZ, len(GOOD_GZ) - 8),  # the CRC-32 in the trailer
    flip(GOOD_GZ, len(GOOD_GZ) - 2),  # the length (ISIZE) in the trailer
    GOOD_GZ[:-8],  # the trailer cut off (the tar itself is whole)
    flip(tar_gz(PAYLOAD), len(tar_gz(PAYLOAD)) // 2),  # a byte inside compressed data: zlib's own error
], ids=["content-byte", "crc32", "isize", "no-trailer", "deflate-data"])
def test_an_archive_failing_its_gzip_check_is_refused_and_the_next_fetch_succeeds(
        cli, server, monkeypatch, tmp_path: Path, damage: bytes) -> None:
    """Size known, no checksum (as WILDS publishes): the gzip trailer is the only integrity check."""
    register(monkeypatch, server, damage, checksum=False, size=False)
    root = tmp_path / "data"
    r = cli("fetch", "fake", "--root", root)
    assert r.code == 2 and r.err.count("\n") == 1 and "truncated or corrupt" in r.err, r.err
    assert "Traceback" not in r.err
    assert not root.exists()  # nothing extracted, nothing marked complete, no .part, no empty folder
    server.files["fake.tar.gz"] = GOOD_GZ
    r = cli("fetch", "fake", "--root", root)
    assert r.code == 0, r.err
    assert (root / "fake" / "fake" / "metadata.csv").read_bytes() == CSV


def test_the_wilds_archive_with_a_bad_crc_is_refused(cli, server, monkeypatch, tmp_path: Path) -> None:
    """The case the issue reports: waterbirds (no published size or checksum), its metadata.csv with
    one byte changed in a gzip stored block. tarfile alone stops reading at the tar's end blocks, so
    the CRC-32 after them was never checked and the changed file was extracted and marked ready."""
    import dataclasses

    from wilds_fixtures import make_waterbirds

    from ftbench.data.fetch import MARKER as marker

    src = make_waterbirds(tmp_path / "src")
    (src / marker).unlink()  # the fixture makes a fetched copy; an archive has no marker
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:  # the bundle holds the folder's contents
        for child in sorted(src.iterdir()):
            t.add(child, arcname=child.name)
    import gzip

    good = gzip.compress(raw.getvalue(), compresslevel=0, mtime=0)
    csv = (src / "metadata.csv").read_bytes()
    bad = flip(good, good.index(csv[:40]) + 20)
    ds = DATASETS.get("waterbirds")
    f = dataclasses.replace(ds.files[0], url=f"{server.url}/{ds.files[0].name}")
    assert f.size is None and f.md5 is None and f.sha256 is None  # as registered: only gzip can tell
    monkeypatch.setitem(DATASETS._items, "waterbirds", dataclasses.replace(ds, files=(f,)))
    server.files[f.name] = bad
    root = tmp_path / "data"
    r = cli("fetch", "waterbirds", "--root", root)
    assert r.code == 2 and "truncated or corrupt" in r.err and "CRC" in r.err, r.err
    assert not root.exists()
    assert "not downloaded" in cli("fetch", "--list", "--root", root).out
    server.files[f.name] = good
    assert cli("fetch", "waterbirds", "--root", root).code == 0
    assert (root / "waterbirds_v1.0" / "metadata.csv").read_bytes() == csv


def test_an_unsafe_archive_is_discarded_so_a_fixed_mirror_works(cli, server, monkeypatch, tmp_path: Path) -> None:
    register(monkeypatch, server, tar_gz({"fake/a.txt": b"x", "../evil.txt": b"pwned"}), checksum=False, size=False)
    root = tmp_path / "data"
    assert cli("fetch", "fake", "--root", root).code == 2
    assert not root.exists()
    server.files["fake.tar.gz"] = tar_gz(PAYLOAD)
    r = cli("fetch", "fake", "--root", root)
    assert r.code == 0, r.err
    assert server.log[-1] == ("fake.tar.gz", None)


def test_a_failed_fetch_leaves_no_empty_folders(cli, server, monkeypatch, tmp_path: Path) -> None:
    register(monkeypatch, server, tar_gz(PAYLOAD), url=f"{server.url}/gone.tar.gz")
    root = tmp_path / "a" / "b" / "data"
    assert cli("fetch", "fake", "--root", root).code == 2
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    assert cli("fetch", "fake", "--root", existing).code == 2
    assert existing.is_dir() and not list(existing.iterdir())  # the user's own folder stays


def test_mirror_url_and_local_folder(cli, server, monkeypatch, tmp_path: Path) -> None:
    data = tar_gz(PAYLOAD)
    register(monkeypatch, server, data, url="http://127.0.0.1:9/down/fake.tar.gz")  # the official host is down
    r = cli("fetch", "fake", "--root", tmp_path / "a")
    assert r.code == 2 and "failed" in r.err and "--mirror" in r.err
    assert cli("fetch", "fake", "--root", tmp_path / "b", "--mirror", server.url).code == 0
    local = tmp_path / "copy"
    local.mkdir()
    (local / "fake.tar.gz").write_bytes(data)
    r = cli("fetch", "fake", "--root", tmp_path / "c", "--mirror", local)
    assert r.code == 0, r.err
    assert (tmp_path / "c" / "fake" / "fake" / "a.txt").read_bytes() == b"hello\n"
    r = cli("fetch", "fake", "--root", tmp_path / "d", "--mirror", tmp_path / "nowhere")
    assert r.code == 2 and "mirror has no fake.tar.gz" in r.err


def test_missing_file_on_server_is_exit_2(cli, server, monkeypatch, tmp_path: Path) -> None:
    register(monkeypatch, server, tar_gz(PAYLOAD), url=f"{server.url}/gone.tar.gz")
    r = cli("fetch", "fake", "--root", tmp_path)
    assert r.code == 2 and "HTTP 404" in r.err


def test_archive_without_the_expected_files_is_refused(cli, server, monkeypatch, tmp_path: Path) -> None:
    register(monkeypatch, server, tar_gz({"other/thing.txt": b"x"}))
    r = cli("fetch", "fake", "--root", tmp_path)
    assert r.code == 2 and "does not hold the expected fake/a.txt" in r.err
    assert leftovers(tmp_path) == []


def test_manual_dataset_explains_its_layout_and_validates_it(cli, tmp_path: Path) -> None:
    r = cli("fetch", "imagenet-c", "--root", tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1
    assert "cannot be downloaded" in r.err and "<root>/imagenet-c/<corruption>/<severity 1-5>/<wnid>/*.JPEG" in r.err
    from ftbench.data.fetch import IMAGENET_C

    for c in IMAGENET_C:
        for s in range(1, 6):
            (tmp_path / "imagenet-c" / c / str(s)).mkdir(parents=True)
    r = cli("fetch", "imagenet-c", "--root", tmp_path)
    assert r.code == 2 and "has 0 class folders" in r.err
    for i in range(1000):
        (tmp_path / "imagenet-c" / IMAGENET_C[0] / "1" / f"n{i:08d}").mkdir()
    r = cli("fetch", "imagenet-c", "--root", tmp_path)
    assert r.code == 0 and "ready" in r.out


def test_list_shows_every_dataset_with_size_licence_and_status(cli, tmp_path: Path) -> None:
    r = cli("fetch", "--list", "--root", tmp_path)
    assert r.code == 0
    for name in ["digits", "cifar10", "cifar10-c", "imagenet", "imagenet-c", "breeds", "waterbirds", "celeba",
                 "camelyon17", "fmow", "iwildcam"]:
        assert f"\n{name} " in "\n" + r.out, name
    assert "2.9 GB" in r.out and "CC BY 4.0" in r.out and "not downloaded" in r.out
    r = cli("fetch", "nope", "--root", tmp_path)
    assert r.code == 2 and "unknown dataset 'nope'; accepted: digits, breeds" in r.err


def test_a_full_disk_while_extracting_keeps_the_download(cli, server, monkeypatch, tmp_path: Path) -> None:
    """No room to extract is no fault of the archive: it stays, and the next fetch only extracts."""
    import errno

    register(monkeypatch, server, tar_gz(PAYLOAD))
    root = tmp_path / "data"

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(tarfile.TarFile, "extractall", full)
        r = cli("fetch", "fake", "--root", root)
    assert r.code == 2 and r.err.count("\n") == 1 and "no space left on the device" in r.err, r.err
    assert leftovers(root) == [] and (root / ".downloads" / "fake.tar.gz.part").is_file()
    n = len(server.log)
    r = cli("fetch", "fake", "--root", root)
    assert r.code == 0, r.err
    assert len(server.log) == n  # nothing downloaded again


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_a_data_root_that_cannot_be_a_folder_is_refused_before_downloading(cli, server, monkeypatch, tmp_path: Path,
                                                                           where: str) -> None:
    register(monkeypatch, server, tar_gz(PAYLOAD))
    (tmp_path / "f").write_text("x")
    root = tmp_path / "f" if where == "file" else tmp_path / "f" / "data"
    r = cli("fetch", "fake", "--root", root)
    assert r.code == 2 and r.err.count("\n") == 1 and "data root" in r.err and str(root) in r.err
    assert server.log == []
