"""Multi-layer perceptron of the IRM Colored MNIST code, with the grayscale-oracle option."""

from __future__ import annotations

import math

from torch import Tensor, nn

from metairm_pl.errors import ConfigError
from metairm_pl.models.input_cast import AutocastInputCache


class MLP(nn.Module):
    """ReLU MLP over flattened inputs; Xavier-uniform weights and zero biases.

    Splits into :meth:`features` and :attr:`classifier` (the last ``nn.Linear``) for methods
    that read the representation (IB-IRM) or the classifier's per-sample gradients (Fishr).

    Args:
        input_shape: shape of one example, e.g. ``(2, 14, 14)`` (channels first).
        num_outputs: 1 logit for binary tasks, k for k classes.
        hidden_dim: width of every hidden layer.
        n_hidden_layers: number of hidden layers (2 in the IRM code).
        grayscale: sum the colour channels before the first layer, which removes the colour
            feature (the "ERM (grayscale)" oracle).
        reuse_input_cast: under autocast, cast an input that recurs unchanged (a full batch)
            to the autocast dtype once (:class:`AutocastInputCache`); results are unchanged.
            Off for grayscale, whose first-layer input is a new sum at every call.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        hidden_dim: int = 390,
        n_hidden_layers: int = 2,
        grayscale: bool = False,
        reuse_input_cast: bool = True,
    ) -> None:
        super().__init__()
        if hidden_dim <= 0 or n_hidden_layers < 0:
            raise ConfigError(
                f"model.hidden_dim={hidden_dim}, model.n_hidden_layers={n_hidden_layers}: "
                "hidden_dim must be positive and n_hidden_layers >= 0."
            )
        if grayscale and len(input_shape) < 2:
            raise ConfigError("model.grayscale=true needs channel-first image inputs (C, H, W).")
        self.grayscale = grayscale
        in_features = math.prod(input_shape[1:]) if grayscale else math.prod(input_shape)
        widths = [in_features] + [hidden_dim] * n_hidden_layers + [num_outputs]
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            linear = nn.Linear(fan_in, fan_out)
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if index < len(widths) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)
        # Not a submodule or buffer: no parameters, nothing in the state dict.
        self.input_cache = AutocastInputCache() if reuse_input_cast and not grayscale else None

    @property
    def classifier(self) -> nn.Linear:
        """The last layer: logits = ``classifier(features(x))``."""
        return self.layers[-1]

    def features(self, x: Tensor) -> Tensor:
        """The classifier's input (the last hidden layer's ReLU output; the input itself with no
        hidden layer), computed by exactly the ops :meth:`forward` applies before the last layer."""
        return self.layers[:-1](self._prepared(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self._prepared(x))

    def _prepared(self, x: Tensor) -> Tensor:
        if self.grayscale:
            x = x.sum(dim=1)
        x = x.flatten(start_dim=1)
        if self.input_cache is not None:
            x = self.input_cache(x)  # the first layer is an nn.Linear: autocast's own cast
        return x
