"""Class names and prompt templates for zero-shot heads (CLIP models, docs/models.md#clip).

A benchmark's :class:`Prompts` say what its classes are called and how the papers' code turns a
class name into captions; ``ftbench/models/clip.py`` embeds the captions with a CLIP text tower and
averages them per class (open_clip's ``build_zero_shot_classifier``). Each table names the file of
the released code it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prompts:
    """Class names in label order and templates: text with one ``{}``, or a function of the name (as
    open_clip's ``OPENAI_IMAGENET_TEMPLATES``)."""

    classnames: tuple[str, ...]
    templates: tuple[Any, ...]
    source: str = ""  # where the names and templates come from

    def captions(self, label: int) -> list[str]:
        """Every template filled with class ``label``'s name."""
        name = self.classnames[label]
        return [t(name) if callable(t) else t.format(name) for t in self.templates]

    def relabelled(self, order: tuple[int, ...] | list[int]) -> Prompts:
        """The prompts of a task whose label ``i`` is this task's class ``order[i]``."""
        return Prompts(tuple(self.classnames[j] for j in order), self.templates, self.source)


# CLIP's prompts for MNIST (openai/CLIP, data/prompts.md): digits are handwritten numbers too.
DIGITS = Prompts(tuple(str(d) for d in range(10)), ('a photo of the number: "{}".',),
                 "openai/CLIP data/prompts.md (MNIST)")
