"""Methods of models with a text tower (CLIP, ftbench/models/clip.py): the zero-shot classifier, and
FLYP (Goyal, Kumar, Garg, Kolter & Raghunathan, 2023, "Finetune like you pretrain: Improved
finetuning of zero-shot vision models", CVPR 2023).

``zero-shot`` trains nothing: the head is the text tower's embedding of the task's class prompts
(the run's ``head_init`` is ``zero-shot``), the α = 0 end of WiSE-FT and the first row of every
CLIP table.

``flyp`` fine-tunes as CLIP was pretrained, as the released code (locuslab/FLYP) does: each training
image is paired with a caption — its class name in one of the task's templates, drawn per image and
step (the release writes one row per (image, template) and shuffles them) — and the image tower, the
text tower and the logit scale are trained together with CLIP's contrastive loss (open_clip's
``ClipLoss``: symmetric cross-entropy over the batch's image-caption similarities times
``logit_scale.exp()``; images of one class are each other's negatives, as in the release). The
classifier is never trained: after fine-tuning it is the zero-shot head rebuilt from the
fine-tuned text tower with every template, times the fine-tuned logit scale (and so at each
checkpoint). Weight decay is AdamW's (decoupled), as the release's AdamW. The image tower trains in
train mode (``bn=train``), as the release's ``model.train()`` (``src/models/flyp_loss.py:57, 80``): a
ResNet tower's BatchNorm normalises with batch statistics and updates its running statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dataclasses

import torch
from torch import nn

from ftbench.errors import UsageError
from ftbench.methods.base import BN_OPTION, DECAY_OPTION, METHODS, Method, decay_arguments

if TYPE_CHECKING:
    from ftbench.data.prompts import Prompts
    from ftbench.models.base import ModelEntry
    from ftbench.train.context import TrainContext


def require_text(method: str, model: str, entry: ModelEntry) -> None:
    """One UsageError unless model ``model`` has a text tower."""
    if not entry.zero_shot:
        from ftbench.models.base import MODELS, register_builtin_models

        register_builtin_models()
        with_text = [n for n in MODELS.names() if MODELS.get(n).zero_shot]
        raise UsageError(f"method {method!r} needs a model with a text tower (a zero-shot head from class prompts); "
                         f"model {model!r} has none; models with one: {', '.join(with_text)}")


def task_prompts(ctx: TrainContext, method: str) -> Prompts:
    """The task's class prompts, or one UsageError naming the benchmark that has none."""
    p = ctx.target.prompts
    if p is None:
        raise UsageError(f"method {method!r} needs the class names of benchmark {ctx.spec.benchmark!r} "
                         "for its zero-shot head, and ftbench has none for it (docs/models.md#clip)")
    return p


class Captions:
    """Token rows of every (class, template) caption of ``prompts``, tokenised once, on the model's
    device; :meth:`sample` draws one template per label."""

    def __init__(self, model: nn.Module, prompts: Prompts, generator: torch.Generator) -> None:
        caps = [c for i in range(len(prompts.classnames)) for c in prompts.captions(i)]
        self.t = len(prompts.templates)
        self.tokens = model.tokenize(caps).view(len(prompts.classnames), self.t, -1)
        self.generator = generator

    def sample(self, y: torch.Tensor) -> torch.Tensor:
        r = torch.randint(self.t, (y.shape[0],), generator=self.generator).to(y.device)
        return self.tokens[y, r]


class ContrastiveLoss:
    """CLIP's loss between a batch's image embeddings and the embeddings of captions of their labels."""

    def __init__(self, model: nn.Module, prompts: Prompts, generator: torch.Generator) -> None:
        from open_clip.loss import ClipLoss

        self.model = model
        self.captions = Captions(model, prompts, generator)
        self.loss = ClipLoss()

    def __call__(self, image: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``image``: unit image embeddings of the batch; ``y``: its labels. The text tower runs under the
        loop's autocast too (bf16 on CUDA), as the image tower does; the loss is computed in float32."""
        from ftbench.train.loop import autocast

        with autocast(y.device):
            text = self.model.encode_text(self.captions.sample(y))
        text = text.float()
        return self.loss(image, text, self.model.logit_scale().float())


class ImageEmbeddings(nn.Module):
    """The model's unit image embeddings (what FLYP's loss compares with the captions)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


@METHODS.register("zero-shot")
class ZeroShot(Method):
    """The zero-shot classifier: the text tower's embeddings of the class prompts; nothing trains."""

    name = "zero-shot"
    builds_head = True  # --head-init has no effect: see Method.builds_head
    help = "nothing: the head is the text tower's embedding of the class prompts (models with a text tower)"
    paper = "Radford et al. 2021 (CLIP); the alpha = 0 end of WiSE-FT"
    order = 5
    uses = frozenset()

    @classmethod
    def check_entry(cls, model: str, entry: ModelEntry) -> None:
        require_text(cls.name, model, entry)

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return []

    def head_init(self, block_names: list[str]) -> str:
        return "fresh"  # run() makes the head from the text tower: no probe (or zero-shot head) before it

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        ctx.set_trainable([], bn="frozen")
        ctx.model.set_zero_shot_head(task_prompts(ctx, self.name))  # also under a protocol that keeps its head
        return {"head_init": "zero-shot"}


@METHODS.register("flyp")
class Flyp(Method):
    """Contrastive fine-tuning of both towers with the class prompts; the head is the rebuilt zero-shot head."""

    name = "flyp"
    builds_head = True  # --head-init has no effect: see Method.builds_head
    help = ("image and text towers and logit scale, CLIP's contrastive loss on (image, class caption) pairs; "
            "head = zero-shot head of the fine-tuned text tower (models with a text tower)")
    paper = "Goyal et al. 2023, Finetune like you pretrain"
    order = 64
    options = {
        "decay": DECAY_OPTION,
        # Default 'train' (the release); 'frozen' is what flyp did before the option existed, and keeps those runs' ids.
        "bn": dataclasses.replace(BN_OPTION, default="train", help=(
            "BatchNorm of the image tower (clip-rn50): 'train' = batch statistics, running stats updated, as the "
            "release's model.train() (flyp_loss.py:57, 80); 'frozen' = running stats kept (eval mode)")),
    }

    @classmethod
    def check_entry(cls, model: str, entry: ModelEntry) -> None:
        require_text(cls.name, model, entry)

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        # The image blocks train; the head is rebuilt from the trained text tower (and so starts "fresh":
        # the loss never reads it, so a zero-shot head before training would only be computed twice).
        return list(block_names)

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        prompts = task_prompts(ctx, self.name)
        model = ctx.model
        image = ctx.set_trainable([b for b in ctx.block_names if b != "last"], bn=self.opts["bn"])
        model.head.requires_grad_(False)
        text = model.text_parameters()
        for p in text:
            p.requires_grad_(True)
        model.text.train()
        loss = ContrastiveLoss(model, prompts, torch.Generator().manual_seed(self.spec.seed))
        checkpoint = ctx.on_checkpoint
        if checkpoint is not None:  # checkpoint rows are scored with the head of the text tower as it is then
            def rebuilt(step: int) -> None:
                model.set_zero_shot_head(prompts)
                checkpoint(step)

            ctx.on_checkpoint = rebuilt
        try:
            ctx.fit(image + text, net=ImageEmbeddings(model), loss_fn=loss,
                    **decay_arguments(self.opts["decay"], float(self.spec.wd or 0.0)))
        finally:
            ctx.on_checkpoint = checkpoint
            model.text.eval()
            for p in text:
                p.requires_grad_(False)
        model.set_zero_shot_head(prompts)
        return {"head_init": "zero-shot", "flyp_text_params": sum(p.numel() for p in text),
                "flyp_logit_scale": float(model.logit_scale())}
