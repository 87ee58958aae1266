"""Portable numerics: the same floating-point results on every x86-64 CPU, for the committed numbers.

On CPU, torch (and NumPy) pick their kernels at run time from what the CPU offers: ATen's own
kernels by instruction set (AVX-512, AVX2 or plain x86-64), oneDNN's convolutions by instruction
set *and* by the CPU's cache sizes (its loop blocking, and so the order in which it sums), NNPACK's
convolutions likewise, MKL's BLAS by CPU, NumPy's loops by instruction set and OpenBLAS (NumPy's
LAPACK) by CPU model. Each rounds differently, and a few training steps make a last-bit difference
into whole points of accuracy (docs/ci.md, "Determinism and the machine").

``FTBENCH_PORTABLE=1`` in the environment turns on a mode in which no kernel is chosen by the CPU:

* ATen's generic kernels (``ATEN_CPU_CAPABILITY=default``);
* oneDNN off (``torch.backends.mkldnn``) and NNPACK off (``torch.backends.nnpack``), so a
  convolution is ATen's own (im2col and a matrix product);
* MKL's BLAS in conditional-numerical-reproducibility mode ``COMPATIBLE,STRICT``
  (``MKL_CBWR``), which Intel documents to give the same results on every x86 CPU, Intel's or not,
  whatever the alignment of the operands;
* NumPy's baseline loops only (``NPY_ENABLE_CPU_FEATURES=X86_V2``) and OpenBLAS's generic x86-64
  kernels (``OPENBLAS_CORETYPE=Prescott``).

It is slower (docs/ci.md gives the measured cost) and is meant for the regression gate and the
numbers this repository commits (tools/regen_numbers.py), not for users' runs. The environment
variables are read by the libraries when they load, so :func:`setup_environment` runs when
``ftbench`` is imported (before torch or NumPy, in ftbench's own processes); :func:`apply` sets
the torch flags and runs when ftbench's models are imported. Every result row records the kernels
it ran on (:func:`kernels`, the ``cpu_kernels`` column).
"""

from __future__ import annotations

import os

VARIABLE = "FTBENCH_PORTABLE"
# Set (overriding any inherited value) in portable mode, before the libraries load.
ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "NPY_ENABLE_CPU_FEATURES": "X86_V2",
    "OPENBLAS_CORETYPE": "Prescott",
}
# Removed in portable mode. Other caps may stay: oneDNN is off, and MKL's CNR mode ignores
# MKL_ENABLE_INSTRUCTIONS (measured: docs/ci.md).
REMOVED = ("NPY_DISABLE_CPU_FEATURES",)  # (a list of features to turn off, beside the list turned on)
# The cpu_kernels column of a row made in portable mode.
LABEL = "portable: aten=DEFAULT onednn=off nnpack=off mkl=COMPATIBLE,STRICT"


def portable() -> bool:
    """Whether ``$FTBENCH_PORTABLE`` asks for portable numerics (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def setup_environment() -> None:
    """In portable mode, put :data:`ENVIRONMENT` in this process's environment (and its children's)."""
    if portable():
        for k in REMOVED:
            os.environ.pop(k, None)
        os.environ.update(ENVIRONMENT)


def apply() -> None:
    """In portable mode, turn torch's oneDNN and NNPACK convolutions off (process-wide)."""
    if portable():
        import torch

        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)


def kernels() -> str:
    """Which CPU kernels torch runs in this process, for the ``cpu_kernels`` column: ``aten=AVX2
    onednn=native mkl=native``, an ``ONEDNN_MAX_CPU_ISA`` / ``MKL_CBWR`` (or
    ``MKL_ENABLE_INSTRUCTIONS``) cap replacing native; :data:`LABEL` in portable mode when every
    part of it is in effect."""
    import torch

    aten = torch.backends.cpu.get_cpu_capability()
    mkldnn, nnpack = torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()
    if (portable() and aten == "DEFAULT" and not mkldnn and not nnpack
            and os.environ.get("MKL_CBWR") == ENVIRONMENT["MKL_CBWR"]):
        return LABEL
    parts = [f"aten={aten}"]
    for name, variables in (("onednn", ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")),
                            ("mkl", ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS"))):
        cap = next((os.environ[v] for v in variables if os.environ.get(v)), "native")
        parts.append(f"{name}={'off' if name == 'onednn' and not mkldnn else cap}")
    return " ".join(parts)
