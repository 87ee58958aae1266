"""Models and the benchmark's image size: the one-line refusal and the fixes it suggests."""

from __future__ import annotations

import pytest


def test_the_size_error_suggests_fixes_that_fit() -> None:
    """What check_input_fits suggests for a ViT on 8x8 digits does fit; a CNN that fits passes."""
    import re

    from ftbench.errors import UsageError
    from ftbench.models.base import check_input_fits

    with pytest.raises(UsageError) as e:
        check_input_fits("timm/vit_tiny_patch16_224", 1, (8, 8), "digits")
    fixes = [f.rstrip(",;") for f in re.findall(r"timm/vit_tiny_patch16_224:\S+", str(e.value).split("build the ViT")[1])]
    assert len(fixes) == 2
    for fix in fixes:
        check_input_fits(fix, 1, (8, 8), "digits")  # no error
    for fits in ("digits-resnet", "digits-vit", "timm/resnet18"):
        check_input_fits(fits, 1, (8, 8), "digits")
