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

    def block_names(self) -> list[str]:
        return list(self.blocks())

    def block_parameters(self, name: str) -> list[nn.Parameter]:
        return [p for m in self.blocks()[name] for p in m.parameters()]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it and the names of its blocks (known before building)."""

    build: Callable[[int, int], BlockModel]  # (in_channels, num_classes) -> model
    block_names: tuple[str, ...]
    help: str


MODELS: Registry[ModelEntry] = Registry("model")


def get_model_entry(name: str) -> ModelEntry:
    import ftbench.models.small  # noqa: F401  (registers the embedded models)

    return MODELS.get(name)
