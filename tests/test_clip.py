"""CLIP through open_clip (ftbench/models/clip.py), on tiny random configs (no download): the block
partitions and the zero-shot head against open_clip's own zero-shot classifier."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from ftbench.models.clip import ClipClassifier, zero_shot_head

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}


def _tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    vision = ({"layers": 6, "width": 32, "patch_size": 4, "image_size": 16, "head_width": 16} if kind == "vit"
              else {"layers": [1, 1, 1, 1], "width": 8, "image_size": 32, "head_width": 8})
    return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=TEXT).eval()


@pytest.mark.parametrize("kind, names", [("vit", ["1", "2", "3", "last"]), ("rn", ["1", "2", "3", "4", "last"])])
def test_every_image_parameter_is_in_exactly_one_block(kind: str, names: list[str]) -> None:
    clip = _tiny(kind)
    model = ClipClassifier(clip.visual, 16, 5)
    assert model.block_names() == names
    seen = [id(p) for b in model.block_names() for p in model.block_parameters(b)]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.parameters()}
    assert model.block_parameters("last") == list(model.head.parameters())
    if kind == "vit":  # a third of the 6 transformer blocks each; embeddings first, final norm and proj last
        v = clip.visual
        one = {id(p) for p in model.block_parameters("1")}
        three = {id(p) for p in model.block_parameters("3")}
        assert id(v.class_embedding) in one and id(v.positional_embedding) in one
        assert {id(p) for p in v.transformer.resblocks[1].parameters()} <= one
        assert {id(p) for p in v.transformer.resblocks[2].parameters()} <= {id(p) for p in model.block_parameters("2")}
        assert id(v.proj) in three and {id(p) for p in v.ln_post.parameters()} <= three


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_the_zero_shot_head_gives_open_clips_zero_shot_logits(kind: str) -> None:
    """Logits of the zero-shot classifier = logit_scale * normalise(encode_image) @ open_clip's
    build_zero_shot_classifier(model, tokenizer, classes, OpenAI's ImageNet templates)."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    clip = _tiny(kind)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")  # the bundled BPE vocabulary: no download
    classes = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
    size = 16 if kind == "vit" else 32
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = zero_shot_head(clip, tokenizer, classes, OPENAI_IMAGENET_TEMPLATES)(x)
        theirs = clip.logit_scale.exp() * F.normalize(clip.encode_image(x), dim=-1) @ build_zero_shot_classifier(
            clip, tokenizer, classes, OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=5, device="cpu")
    assert ours.shape == (4, len(classes))
    # The same float32 operations but for the class batching (10 vs 5 per batch, which only splits
    # the text encoder's batch) and one matrix product associated differently: rounding of a few
    # 2^-24 relative on logits of magnitude <= logit_scale (14.3 at initialisation).
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(clip.logit_scale.exp().detach()))
