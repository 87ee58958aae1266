"""Display names for paper-ready output: methods, shifts and corruptions as the papers write them.

The tables and figures key their rows and columns by ftbench's own names (``lp-ft``, ``block 1``,
``corruption (gaussian_noise, s5)``); ``--format latex`` prints these display names instead
(``LP-FT``, ``Block 1``, ``Gaussian noise s5``). A name missing from the tables is shown as it is.
"""

from __future__ import annotations

import re

# Every built-in method (ftbench.methods.BUILTIN_ORDER; a test keeps the two in step).
METHOD_NAMES = {
    "none": "No fine-tuning", "zero-shot": "Zero-shot", "surgical": "Surgical", "linear-probe": "LP", "full": "FT",
    "auto-rgn": "Auto-RGN", "auto-snr": "Auto-SNR", "l2-sp": "L2-SP", "l1-sp": "L1-SP",
    "gradual-unfreeze": "Gradual unfreezing", "lp-ft": "LP-FT", "wise-ft": "WiSE-FT", "spottune": "SpotTune",
    "spottune-global-k": "SpotTune (global-k)", "flyp": "FLYP", "autoft": "AutoFT", "bitfit": "BitFit",
    "ln-tune": "LN-tune", "adapter": "Adapter", "vpt": "VPT", "ssf": "SSF", "lora": "LoRA",
}

# Shift kinds (the ``shift`` column) of the bundled benchmarks.
SHIFT_NAMES = {
    "corruption": "corruption", "label-flip": "label flip", "subpopulation": "subpopulation",
    "style-noise": "style noise", "spurious-background": "spurious background", "spurious-gender": "spurious gender",
    "hospital": "hospital", "time": "time", "camera": "camera",
}

# The corruptions of ftbench.data.corruptions (ImageNet-C / CIFAR-10-C names).
CORRUPTION_NAMES = {
    "gaussian_noise": "Gaussian noise", "shot_noise": "shot noise", "impulse_noise": "impulse noise",
    "speckle_noise": "speckle noise", "defocus_blur": "defocus blur", "glass_blur": "glass blur",
    "motion_blur": "motion blur", "zoom_blur": "zoom blur", "gaussian_blur": "Gaussian blur", "snow": "snow",
    "frost": "frost", "fog": "fog", "spatter": "spatter", "contrast": "contrast", "brightness": "brightness",
    "saturate": "saturate", "elastic_transform": "elastic transform", "pixelate": "pixelate",
    "jpeg_compression": "JPEG compression", "inversion": "inversion",
}


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def row_name(method: str, blocks: str, variant: str, alphas: set[float] | None = None) -> str:
    """'Block 1', 'Blocks 1,2', 'Last layer' for surgical rows; the method's display name otherwise,
    with ``(α = a)`` for a WiSE-FT row whose every cell and seed chose the one alpha ``a``."""
    if method == "surgical":
        label = "Last layer" if blocks == "last" else (f"Blocks {blocks}" if "," in blocks else f"Block {blocks}")
    else:
        label = method_name(method) + (f" [{blocks}]" if blocks else "")
    extra = [variant] if variant else []
    if method == "wise-ft" and alphas is not None and len(alphas) == 1:
        extra.insert(0, f"α = {next(iter(alphas)):g}")
    return label + (f" ({', '.join(extra)})" if extra else "")


_CORRUPTED = re.compile(r"corruption \(([^,()]+), s(\d+)\)")


def corruption_name(corruption: str, severity: int | None = None) -> str:
    name = CORRUPTION_NAMES.get(corruption, corruption.replace("_", " "))
    return name if severity is None else f"{name} s{severity}"


def column_name(label: str) -> str:
    """A table's column label in display names: ``corruption (gaussian_noise, s5)`` -> ``Gaussian
    noise s5``, ``label-flip`` -> ``label flip``, ``<benchmark>/<shift> [...]`` keeps its benchmark
    and bracket."""
    label = _CORRUPTED.sub(lambda m: corruption_name(m.group(1), int(m.group(2))), label)
    bench, slash, rest = label.rpartition("/")
    head, space, tail = rest.partition(" ")
    if head in SHIFT_NAMES:
        rest = SHIFT_NAMES[head] + space + tail
    else:  # a corruptions-table column: "gaussian_noise s5"
        m = re.fullmatch(r"([a-z_]+) s(\d+)", rest)
        if m and m.group(1) in CORRUPTION_NAMES:
            rest = corruption_name(m.group(1), int(m.group(2)))
    return bench + slash + rest
