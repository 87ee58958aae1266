"""The catalog cache (ftbench/catalog.py): listings and expanded suites without importing torch, the
same answers as computing them, and a miss whenever the code, the installed packages or the suites
file change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftbench import catalog


def _fresh(cache: Path, *argv: str) -> tuple[str, str]:
    """``ftbench ARGV`` in a new process with cache ``cache``: (stdout, whether torch was imported)."""
    code = (f"import sys; from ftbench.cli import main; rc = main({list(argv)!r}); "
            "print(rc, 'torch' in sys.modules, file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "FTBENCH_NO_CATALOG"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                       env={**env, "FTBENCH_CACHE": str(cache), "COLUMNS": "200"})
    rc, torch_imported = r.stderr.strip().splitlines()[-1].split()
    assert rc == "0", r.stderr
    return r.stdout, torch_imported


@pytest.mark.parametrize("argv", [("list", "methods"), ("list", "models", "digits-resnet"),
                                  ("sweep", "smoke", "--dry-run", "--out", "{OUT}")])
def test_a_second_fresh_process_answers_the_same_without_torch(tmp_path: Path, argv: tuple[str, ...]) -> None:
    argv = tuple(a.replace("{OUT}", str(tmp_path / "out")) for a in argv)
    first, torch_first = _fresh(tmp_path / "cache", *argv)
    second, torch_second = _fresh(tmp_path / "cache", *argv)
    assert (torch_first, torch_second) == ("True", "False")
    assert second == first


def test_a_changed_suites_file_is_a_miss(tmp_path: Path) -> None:
    suites = tmp_path / "suites.toml"
    suites.write_text('[suites.mine]\ndescription = "mine"\nmethod = ["surgical"]\nblock = ["1", "last"]\nsteps = 2\n')
    out, _ = _fresh(tmp_path / "cache", "list", "suites", "--suites", str(suites))
    assert "mine (2 runs)" in out
    suites.write_text('[suites.mine]\ndescription = "mine"\nmethod = ["surgical"]\nblock = ["1", "2", "last"]\nsteps = 2\n')
    out, torch_imported = _fresh(tmp_path / "cache", "list", "suites", "--suites", str(suites))
    assert "mine (3 runs)" in out and torch_imported == "True"


def test_expanded_suites_survive_the_cache_exactly() -> None:
    """A cached suite is RunSpec.to_dict through JSON and back: every bundled suite's specs, and so
    their run ids, must come back equal."""
    from ftbench.spec import RunSpec
    from ftbench.plan.suites import default_suites_file, expand_suite, suite_descriptions

    path = default_suites_file()
    for name in suite_descriptions(path):
        specs = expand_suite(name, path)
        back = [RunSpec.from_dict(d) for d in json.loads(json.dumps([s.to_dict() for s in specs], default=str))]
        assert back == specs, name
        assert [s.run_id for s in back] == [s.run_id for s in specs]


def test_lookups_hit_miss_and_never_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(catalog, "_FRESH", [True])
    calls: list[int] = []

    def compute() -> list[str]:
        calls.append(1)
        return ["a", "b"]

    assert catalog.cached(("k", 1), compute) == ["a", "b"] and len(calls) == 1
    assert catalog.cached(("k", 1), compute) == ["a", "b"] and len(calls) == 1  # a hit
    assert catalog.cached(("k", 2), compute) == ["a", "b"] and len(calls) == 2  # another key
    (entry,) = [p for p in (tmp_path / "catalog").iterdir() if json.loads(p.read_text())["key"] == ["k", 1]]
    entry.write_text("{not json")
    assert catalog.cached(("k", 1), compute) == ["a", "b"] and len(calls) == 3  # unreadable: computed
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "blocked"))
    (tmp_path / "blocked").write_text("a file where the cache folder would be")  # (chmod does not stop root)
    assert catalog.cached(("k", 1), compute) == ["a", "b"] and len(calls) == 4  # cannot be written: answered
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(catalog, "_FRESH", [False])  # a process that had the registries: computes
    assert catalog.cached(("k", 2), compute) == ["a", "b"] and len(calls) == 5


def test_the_fingerprint_follows_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Touching one file of the package changes it (an edit of an editable install is a miss)."""
    target = Path(catalog.__file__)
    st = target.stat()
    catalog.code_fingerprint.cache_clear()
    before = catalog.code_fingerprint()
    try:
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        catalog.code_fingerprint.cache_clear()
        assert catalog.code_fingerprint() != before
    finally:
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        catalog.code_fingerprint.cache_clear()
    assert catalog.code_fingerprint() == before
