"""Portable numerics (ftbench/numerics.py): the same bits on every x86-64 CPU.

tests/data/portable/ holds each CPU's smoke results in portable mode, with its fingerprint (made by
``python tools/regen_numbers.py portable``). This machine's results must equal every stored CPU's
bit for bit: the accuracies of each run and the source model's weights (docs/ci.md, "Determinism and
the machine")."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from test_regen_numbers import _tool

ROOT = Path(__file__).resolve().parents[1]

# The operations of a smoke run, printed as digests of their exact bits: a convolution (forward and both
# gradients), a matrix product, a sum, exp, softmax, cross-entropy and its gradient, batch norm, and three
# Adam and SGD steps as ftbench makes its optimizers (make_optimizer).
OPS = """
import hashlib
import ftbench, ftbench.models, torch
from ftbench import numerics
from ftbench.train.loop import make_optimizer
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x = torch.randn(64, 16, 8, 8, generator=g, requires_grad=True)
w = torch.randn(32, 16, 3, 3, generator=g, requires_grad=True)
y = torch.nn.functional.conv2d(x, w, padding=1)
y.square().sum().backward()
with torch.no_grad():
    z = torch.nn.functional.conv2d(x, w, padding=1)
a, b, r = torch.randn(64, 512, generator=g), torch.randn(512, 10, generator=g), torch.randn(100000, generator=g)
lab = torch.randint(0, 10, (64,), generator=g)
logits = (a @ b).requires_grad_()
ce = torch.nn.functional.cross_entropy(logits, lab); ce.backward()
bn = torch.nn.functional.batch_norm(y.detach(), None, None, training=True)
steps = []
for name in ("adam", "sgd"):
    p = [torch.nn.Parameter(t.clone()) for t in (w.detach(), b)]
    opt = make_optimizer(p, name, 3e-3, 5e-4)
    for _ in range(3):
        for t, gr in zip(p, (w.grad, torch.randn(512, 10, generator=g))):
            t.grad = gr.clone()
        opt.step()
    steps += [t.detach() for t in p]
out = [y, x.grad, w.grad, z, a @ b, r.sum(), r.exp(), torch.softmax(a, 1), ce, logits.grad, bn, *steps]
print(numerics.kernels())
print(" ".join(hashlib.sha1(t.detach().contiguous().numpy().tobytes()).hexdigest()[:12] for t in out))
"""

# What differs from one CPU to the next, as far as one machine can vary it: the instruction sets the
# libraries may use. (The cache sizes, which oneDNN's blocking follows, cannot be varied here.)
CAPS = [{}, {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
        {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "AVX2"}]


def _ops(portable: bool, caps: dict[str, str], emulate: str | None = None) -> tuple[str, str]:
    drop = ("FTBENCH_PORTABLE", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR",
            "MKL_ENABLE_INSTRUCTIONS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(caps)
    if portable:
        env["FTBENCH_PORTABLE"] = "1"
    emulator = [QEMU, "-cpu", emulate] if emulate else []
    r = subprocess.run([*emulator, sys.executable, "-c", OPS], env=env, capture_output=True, text=True, check=True)
    label, digests = r.stdout.strip().splitlines()[-2:]
    return label, digests


@pytest.mark.slow  # six Python processes that load torch
def test_portable_kernels_ignore_the_instruction_set_caps() -> None:
    """In portable mode each operation gives the same bits whatever the environment lets the libraries
    use; without it, the same caps change them (so the mode is what makes them equal)."""
    portable = {_ops(True, caps) for caps in CAPS}
    assert len(portable) == 1, portable
    label = portable.pop()[0]
    assert label == "portable: aten=DEFAULT onednn=off nnpack=off mkl=COMPATIBLE,STRICT"
    assert len({_ops(False, caps)[1] for caps in CAPS}) == len(CAPS)


# Another CPU model, emulated (qemu-x86_64 -cpu MODEL: the instructions report MODEL's vendor, family, model,
# instruction sets and cache sizes, which is what MKL, ATen, NumPy and glibc choose their code by): an Intel
# Nehalem (SSE4.2 only, no AVX, no FMA), against this machine's CPU. (An emulated Haswell gives the same digests,
# and .ci/run gates the whole smoke suite under one: each emulated process costs half a minute.)
QEMU = shutil.which("qemu-x86_64")
EMULATED = ("Nehalem-v1",)


@pytest.mark.skipif(QEMU is None, reason="needs qemu-x86_64 to emulate other CPU models (apt-get install "
                                         "qemu-user; .ci/run installs it)")
@pytest.mark.parametrize("cpu", EMULATED)
def test_portable_kernels_give_this_cpus_bits_on_an_emulated_cpu_of_another_model(cpu: str) -> None:
    """Each operation of a smoke run gives, in portable mode, the same bits on an emulated Intel CPU as on
    this machine's. (Before portable mode stepped Adam with torch's fused kernel, its square root came
    from MKL's vector math, which picks its code path by CPU whatever MKL_CBWR says: the Adam steps
    differed.)"""
    assert _ops(True, {}, emulate=cpu) == _ops(True, {})


def test_every_stored_cpu_file_is_complete_and_exact() -> None:
    tool = _tool()
    stored = tool.portable_files()
    baseline = tool._runs(tool._rows(tool.BASELINE))
    current = tool.numbers_digest(baseline)
    assert any(r["baseline"] == current for r in stored.values()), (
        "no CPU's file is made for the committed numbers: `python tools/regen_numbers.py refresh` writes this one's")
    for name, record in stored.items():
        assert name == tool.fingerprint_id(record["fingerprint"])
        assert record["cpu_kernels"] == tool.KERNELS
        for run in record["runs"].values():
            assert all(float.fromhex(run[m][1]) == run[m][0] for m in tool.METRICS)
        if record["baseline"] == current:  # made for these numbers: they are the committed baseline's, exactly
            assert record["runs"] == baseline, name
            assert record["models"], name


def test_a_difference_in_the_last_bit_is_found_and_other_numbers_are_not_compared() -> None:
    tool = _tool()
    stored = tool.portable_files()
    mine = next(r for r in stored.values() if r["baseline"] == tool.numbers_digest(tool._runs(tool._rows(tool.BASELINE))))
    other = copy.deepcopy(mine)
    run = next(iter(other["runs"].values()))
    nudged = math.nextafter(run["ood_acc"][0], math.inf)  # one ulp: every report would print the same
    run["ood_acc"] = [nudged, nudged.hex()]
    old = copy.deepcopy(mine)
    old["baseline"] = "0" * 16
    compared, differences, stale = tool.portable_differences(mine, {"other-cpu": other, "old": old, "same": mine})
    assert compared == ["other-cpu", "same"] and stale == ["old"]
    assert len(differences) == 1 and "other-cpu" in differences[0] and "ood_acc" in differences[0]


@pytest.mark.slow  # the smoke suite (about a minute on one core); .ci/run hands it the gate's run instead
def test_this_cpu_gives_every_stored_cpus_bits() -> None:
    """This machine's portable smoke results, bit for bit those of every CPU stored for these numbers."""
    tool = _tool()
    given = os.environ.get("FTBENCH_PORTABLE_RECORD")  # the gate's record (.ci/run): the same run, not repeated
    if given:
        record = json.loads(Path(given).read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results, cache = Path(tmp) / "results", Path(tmp) / "cache"
            tool.sweep(tool.SMOKE, results, tool.child_env(cache))
            record = tool.portable_record(results, cache)
    assert record["fingerprint"] == tool.machine_fingerprint()
    compared, differences, stale = tool.portable_differences(record, tool.portable_files())
    assert compared, f"no stored CPU's file is made for the committed numbers (stale: {stale})"
    assert not differences, "\n".join(differences)
    assert record["runs"] == tool._runs(tool._rows(tool.BASELINE))


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_portable_mode_steps_with_the_fused_kernel_on_cpu_only(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The foreach step takes Adam's square root from MKL's vector math, whose code path follows the CPU
    (the emulated-CPU test above); portable mode uses torch's fused CPU kernel, users' runs the foreach one."""
    import torch

    from ftbench.train.loop import make_optimizer

    params = [torch.nn.Parameter(torch.ones(3))]
    monkeypatch.setenv("FTBENCH_PORTABLE", "1")
    opt = make_optimizer(iter(params), name, 1e-3, 0.0)  # an iterator, as model.parameters() gives
    assert opt.defaults["fused"] is True and opt.param_groups[0]["params"] == params
    monkeypatch.delenv("FTBENCH_PORTABLE")
    opt = make_optimizer(params, name, 1e-3, 0.0)
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
