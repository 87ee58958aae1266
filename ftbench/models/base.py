"""What a model is to ftbench: a backbone whose parameters are partitioned into named blocks.

Block names are what ``--block`` takes: ``"1"``, ``"2"``, … in input-to-output order, and ``"last"``
for the classifier layer, as the surgical fine-tuning paper numbers them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ftbench.registry import Registry


class BlockModel(nn.Module):
    """A classifier that names its blocks.

    Subclasses implement :meth:`blocks` (block name -> modules, in input-to-output order; together
    they cover every parameter exactly once), :meth:`features` (input -> penultimate features) and
    expose the classifier as ``self.head`` (the ``"last"`` block).
    """

    head: nn.Linear

    def blocks(self) -> OrderedDict[str, list[nn.Module]]:
        raise NotImplementedError

    def features(self, x):  # noqa: ANN001, ANN201 - tensor in, tensor out
        raise NotImplementedError

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.head(self.features(x))

    def residual_units(self) -> list[tuple[str, str]]:
        """The residual units SpotTune may route, input-to-output order: ``(module path, block name)``.

        A unit maps its input to an output of the same kind (``x -> x + f(x)``-style), so a frozen
        and a fine-tuned copy of it can be mixed per input. The path is relative to the model
        (for ``get_submodule``/``set_submodule``). Models without residual units return ``[]``.
        """
        return []

    # Optional: cutting the forward pass at a block boundary, for the frozen-prefix fast path
    # (ftbench/train/prefix.py). A model that overrides both, for every block name but the first,
    # gets the fast path; ``forward_from(b, forward_to(b, x))`` must run exactly ``forward(x)``'s ops.
    def forward_to(self, block: str, x):  # noqa: ANN001, ANN201
        """Input -> the activations entering ``block`` (the output of every block before it)."""
        raise NotImplementedError

    def forward_from(self, block: str, h):  # noqa: ANN001, ANN201
        """The activations entering ``block`` -> logits (runs ``block`` and every block after it)."""
        raise NotImplementedError

    def block_names(self) -> list[str]:
        return list(self.blocks())

    def block_parameters(self, name: str) -> list[nn.Parameter]:
        return [p for m in self.blocks()[name] for p in m.parameters()]


class PiecewiseForward:
    """``forward_to``/``forward_from`` from a list of the forward pass's pieces, one per block.

    A :class:`BlockModel` subclass that lists its forward pass as ``_pieces()`` — ``(block name,
    function)`` pairs in order, together running exactly ``forward(x)``'s ops — inherits this
    mixin (before ``BlockModel``) and so gets the frozen-prefix fast path.
    """

    def _pieces(self) -> list[tuple[str, Callable]]:
        raise NotImplementedError

    def forward_to(self, block: str, x):  # noqa: ANN001, ANN201
        for name, piece in self._pieces():
            if name == block:
                return x
            x = piece(x)
        raise KeyError(block)

    def forward_from(self, block: str, h):  # noqa: ANN001, ANN201
        pieces = self._pieces()
        start = [name for name, _ in pieces].index(block)
        for _, piece in pieces[start:]:
            h = piece(h)
        return h


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it and the names of its blocks (known before building)."""

    build: Callable[[int, int], BlockModel]  # (in_channels, num_classes) -> model
    block_names: tuple[str, ...]
    help: str
    # Its own pretrained weights (timm's, from the hub), if any: (in_channels, num_classes) -> (model
    # with them, their identity, whether its classifier came with them). None: trained on the source
    # split (ftbench/models/pretrain.py).
    weights: Callable[[int, int], tuple[BlockModel, str, bool]] | None = None
    native: tuple[int, int] = (1, 10)  # (in_channels, num_classes) it is made for; `ftbench list models` counts


MODELS: Registry[ModelEntry] = Registry("model")


def get_model_entry(name: str) -> ModelEntry:
    import ftbench.models.small  # noqa: F401  (registers the embedded models)
    import ftbench.models.vit  # noqa: F401
    from ftbench.models.timm_models import lookup  # registers the CIFAR/timm models; any timm model as timm/NAME

    return lookup(name)
