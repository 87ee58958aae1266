"""The Ray executor end to end on a real local Ray instance (started once for the module)."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest
from sweep_support import reference_results, result_set, write_suite

from ftbench.results.store import read_results
from ftbench.spec import RunSpec
from ftbench.plan.suites import expand_suite

SUITE = """
[suites.tiny]
benchmark = "digits"
shift = ["corruption", "label-flip"]
method = "surgical"
block = [1, "last"]
lr = 1e-2
steps = 12
checkpoints = 3
seed = 0
"""


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # Tasks below use functions of this test module: ship them by value (workers cannot import it).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_suite(tmp_path_factory, SUITE)


@pytest.fixture(scope="module")
def reference(suite_file: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return reference_results(suite_file, tmp_path_factory)


def test_ray_sweep_end_to_end(cli, ray_cluster, suite_file: Path, reference: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "results"
    r = cli("sweep", "tiny", "--suites", suite_file, "--out", out, "--executor", "ray", "--device", "cpu",
            "--format", "markdown")
    assert r.code == 0, r.err
    assert "ran 4 runs" in r.err and "[4/4]" in r.err and "| last layer |" in r.out
    pd.testing.assert_frame_equal(result_set(out), reference, check_exact=True)
    assert ray_cluster.is_initialized()  # an instance the sweep did not start is left running
    r = cli("sweep", "tiny", "--suites", suite_file, "--out", out, "--executor", "ray")
    assert r.code == 0 and "0 to run" in r.err


def _misbehave(plan: dict, marker_dir: str, spec: RunSpec, device: str, workdir):
    from ftbench.execution.runner import execute

    what = plan.get(spec.run_id)
    marker = Path(marker_dir) / spec.run_id
    if what == "die" or (what == "die-once" and not marker.exists()):
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if isinstance(what, BaseException):
        raise what
    return execute(spec, device, workdir)


def test_dead_workers_and_out_of_memory_under_ray(ray_cluster, suite_file: Path, reference: pd.DataFrame,
                                                  tmp_path: Path) -> None:
    from ftbench.sweep.ray_executor import RayOptions, run_ray

    specs = expand_suite("tiny", suite_file)
    once, always, mem, normal = specs
    plan = {once.run_id: "die-once", always.run_id: "die", mem.run_id: MemoryError()}
    out = tmp_path / "results"
    summary = run_ray(specs, out, "cpu", progress=False, opts=RayOptions(),
                      execute=functools.partial(_misbehave, plan, str(tmp_path)))
    assert (summary.done, summary.failed) == (2, 2)
    df, _ = read_results(out)
    final = df.drop_duplicates("run_id", keep="last").set_index("run_id")
    assert "WorkerDied: Ray worker died (twice)" in final.loc[always.run_id, "error"]
    assert final.loc[mem.run_id, "error"] == "MemoryError: out of memory"
    got = result_set(out)
    for r in (once.run_id, normal.run_id):  # retried once by Ray: the same result as uninterrupted
        pd.testing.assert_frame_equal(got[got["run_id"] == r].reset_index(drop=True),
                                      reference[reference["run_id"] == r].reset_index(drop=True),
                                      check_exact=True, check_dtype=False)
