"""A small timm Vision Transformer for the embedded benchmark, partitioned the way ViT papers name
its parts: block 1 = patch embedding + class token + position embedding + transformer blocks 0–1,
block 2 = transformer blocks 2–3, block 3 = transformer blocks 4–5 + the final LayerNorm,
last = the classifier.

The final LayerNorm (``vit.norm``) goes with block 3, not with the classifier: it is the last
operation of the feature extractor (``features()`` returns normalised class tokens, and a linear
probe fits only ``head`` on them), and timm itself groups ``norm`` with the last transformer block
(``VisionTransformer.group_matcher``: ``(r'^norm', (99999,))``). So ``"last"`` is exactly
``self.head``, as for every other model.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ftbench.models.base import MODELS, BlockModel, ModelEntry

# Architecture (documented in docs/benchmarks.md#digits-vit): 2×2 patches of an 8×8 image give a
# 4×4 grid = 16 patch tokens + 1 class token; 6 pre-norm blocks of width 64, 4 heads of 16, MLP 256 (ViT ratio 4).
IMG_SIZE = 8
PATCH_SIZE = 2
EMBED_DIM = 64
DEPTH = 6
NUM_HEADS = 4
MLP_RATIO = 4.0
BLOCKS_PER_STAGE = 2  # transformer blocks per ftbench block: 6 / 3


class _Embedding(nn.Module):
    """A view of the ViT's class token and position embedding as one module, for :meth:`DigitsViT.blocks`.

    Built afresh on each call and never registered as a submodule, so the parameters stay the ViT's
    own (one ``state_dict`` key each, moved by ``.to()`` with the ViT) and are counted once.
    """

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.cls_token = vit.cls_token
        self.pos_embed = vit.pos_embed


class DigitsViT(BlockModel):
    """timm ``VisionTransformer`` (class token, ``global_pool='token'``) + a separate linear head.

    Module paths (relative to this model, for ``get_submodule``/peft ``target_modules``):
    ``vit.patch_embed.proj`` (Conv2d), ``vit.cls_token``, ``vit.pos_embed``, ``vit.blocks.<i>``
    (``i`` = 0..5) with ``.norm1``, ``.attn.qkv``, ``.attn.proj``, ``.norm2``, ``.mlp.fc1``,
    ``.mlp.fc2``; ``vit.norm`` (final LayerNorm); ``head`` (the classifier). The timm model is built
    with ``num_classes=0`` so its own head is ``Identity`` and ``self.vit(x)`` is the pooled,
    normalised class token.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.vit = VisionTransformer(
            img_size=IMG_SIZE, patch_size=PATCH_SIZE, in_chans=in_channels, num_classes=0,
            global_pool="token", class_token=True, embed_dim=EMBED_DIM, depth=DEPTH, num_heads=NUM_HEADS,
            mlp_ratio=MLP_RATIO, qkv_bias=True,
        )
        self.head = nn.Linear(EMBED_DIM, num_classes)

    def reset_parameters(self) -> None:
        """Re-draw the class token and position embedding as timm initialises them.

        Pretraining re-initialises every module with ``reset_parameters`` under the recipe's seed;
        these two are parameters of the ViT itself (no module of their own to reset), so without
        this they would keep whatever the global RNG gave at construction.
        """
        with torch.no_grad():
            nn.init.trunc_normal_(self.vit.pos_embed, std=0.02)
            nn.init.normal_(self.vit.cls_token, std=1e-6)

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        b = list(self.vit.blocks)
        k = BLOCKS_PER_STAGE
        return OrderedDict([
            ("1", [self.vit.patch_embed, _Embedding(self.vit), *b[0:k]]),
            ("2", b[k : 2 * k]),
            ("3", [*b[2 * k : 3 * k], self.vit.norm]),
            ("last", [self.head]),
        ])

    def residual_units(self) -> list[tuple[str, str]]:
        # Each timm Block is x -> x + attn(norm1(x)) -> x + mlp(norm2(x)): same shape in and out.
        return [(f"vit.blocks.{i}", str(1 + i // BLOCKS_PER_STAGE)) for i in range(DEPTH)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)


MODELS.register("digits-vit")(
    ModelEntry(
        build=lambda cin, n: DigitsViT(cin, n),
        block_names=("1", "2", "3", "last"),
        help="ViT (timm) for 8x8 images: 2x2 patches, width 64, 6 blocks, 4 heads; "
        "blocks 1 (embeddings + blocks 0-1), 2 (blocks 2-3), 3 (blocks 4-5 + final norm), last",
    )
)
