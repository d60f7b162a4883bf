"""A linear model: one ``nn.Linear`` over the flattened input (the linear unit-tests' model)."""

from __future__ import annotations

import math

from torch import Tensor, nn


class LinearModel(nn.Module):
    """``y = W x + b`` with PyTorch's default initialisation, as the linear unit-tests' reference.

    Its :meth:`features` are the (flattened) input itself and its :attr:`classifier` the layer, so
    methods that read the classifier's input or its per-sample gradients (IB-IRM, Fishr) run on it.

    Args:
        input_shape: shape of one example, e.g. ``(10,)``.
        num_outputs: 1 (a binary logit, or a regression output), or k logits.
    """

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(math.prod(input_shape), num_outputs)

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(start_dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
