"""CLIP image classifiers from open_clip, with named blocks and zero-shot heads (issue 16, part 1).

Not registered as models yet: the runner does not yet build zero-shot heads from a benchmark's class
names, so ``--model clip-...`` would only give a CLIP image tower with a head fit on the source,
which is what ``timm/vit_base_patch16_clip_224`` already gives. This module is the tested base for
that: the block partition, the classifier, and the zero-shot head.

**The classifier.** :class:`ClipClassifier` keeps open_clip's image tower (``model.visual``) and a
linear ``head``: ``features(x)`` is the tower's embedding normalised to unit length, as open_clip's
zero-shot evaluation normalises it, and the head maps it to logits. A zero-shot head
(:func:`zero_shot_head`) is open_clip's ``build_zero_shot_classifier`` — per class, the mean over
the prompt templates of the normalised text embeddings, normalised again — times the model's
``logit_scale.exp()`` (100 for OpenAI's weights, as the 100 in open_clip's zero-shot evaluation), with
zero bias. The text tower is not part of the classifier: it is used to build the head.

**Blocks**, as timm's ViT partition (docs/models.md): for a ViT tower, 1 = ``conv1`` (patch
embedding) + ``class_embedding`` + ``positional_embedding`` + ``ln_pre`` + the first third of
``transformer.resblocks``, 2 = the second third, 3 = the last third + ``ln_post`` + ``proj`` (the final
norm and projection end the feature extractor), ``last`` = the head. For a ModifiedResNet tower
(RN50): 1 = the three-convolution stem + ``layer1``, 2/3 = ``layer2``/``layer3``, 4 = ``layer4`` +
the attention pool. Every parameter is in exactly one block (tested on tiny random configs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ftbench.models.base import BlockModel
from ftbench.models.timm_models import _ParamView

# ftbench name -> (open_clip architecture, open_clip pretrained tag): the towers the papers fine-tune.
CLIP_MODELS = {
    "clip-vit-b16": ("ViT-B-16", "openai"),  # surgical Table 1, AutoFT, WiSE-FT, the PETL robustness study
    "clip-vit-b32": ("ViT-B-32", "openai"),  # WiSE-FT
    "clip-vit-l14": ("ViT-L-14", "openai"),  # AutoFT, WiSE-FT
    "clip-rn50": ("RN50", "openai"),  # LP-FT's CLIP ResNet-50
}


class ClipClassifier(BlockModel):
    """open_clip's image tower, unit-normalised, and a linear head (see the module docstring)."""

    def __init__(self, visual: nn.Module, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x), dim=-1)

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        v = self.visual
        if hasattr(v, "transformer"):  # VisionTransformer
            res = list(v.transformer.resblocks)
            d = len(res)
            thirds: list[list[nn.Module]] = [[], [], []]
            for i, blk in enumerate(res):
                thirds[3 * i // d].append(blk)
            embed = _ParamView(v, tuple(n for n in ("class_embedding", "positional_embedding")
                                        if getattr(v, n, None) is not None))
            tail = [v.ln_post] + ([_ParamView(v, ("proj",))] if getattr(v, "proj", None) is not None else [])
            return OrderedDict([("1", [v.conv1, embed, v.ln_pre, *thirds[0]]), ("2", thirds[1]),
                                ("3", [*thirds[2], *tail]), ("last", [self.head])])
        if hasattr(v, "attnpool"):  # ModifiedResNet
            stem = [v.conv1, v.bn1, v.conv2, v.bn2, v.conv3, v.bn3]
            return OrderedDict([("1", [*stem, v.layer1]), ("2", [v.layer2]), ("3", [v.layer3]),
                                ("4", [v.layer4, v.attnpool]), ("last", [self.head])])
        raise ValueError(f"no block partition for open_clip image tower {type(v).__name__}")


def zero_shot_weights(model: Any, tokenizer: Callable, classnames: Sequence[str],
                      templates: Sequence[str | Callable[[str], str]]) -> torch.Tensor:
    """C×D class embeddings (unit rows): open_clip's ``build_zero_shot_classifier``, transposed."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    device = next(model.parameters()).device
    return build_zero_shot_classifier(model, tokenizer, classnames, templates, num_classes_per_batch=10,
                                      device=device, use_tqdm=False).T.contiguous()


def zero_shot_head(clip: Any, tokenizer: Callable, classnames: Sequence[str],
                   templates: Sequence[str | Callable[[str], str]]) -> ClipClassifier:
    """The CLIP model ``clip`` as a zero-shot classifier: its image tower and a head of the class
    prompts' text embeddings times ``logit_scale.exp()``, no bias."""
    w = zero_shot_weights(clip, tokenizer, classnames, templates)
    model = ClipClassifier(clip.visual, w.shape[1], len(classnames))
    with torch.no_grad():
        model.head.weight.copy_(clip.logit_scale.exp() * w)
        model.head.bias.zero_()
    return model
