"""Each layer's activations of a network, with θ or with an adapted parameter dict θ'.

For a network whose hidden layers end in ``nn.ReLU`` modules (``MLP``, the bag-of-words
MLP), the layers are ``hidden1`` … ``hiddenL``, the outputs of the ReLUs in module order,
and ``output``, the network's output (the logits).  Aliases: ``last_hidden`` (the input of
the classifier layer) and ``output``.  Activations are shaped ``(neurons, datapoints)``,
float32 on the CPU, as :mod:`metairm_pl.analysis.pwcca` expects::

    acts = capture_activations(run.network, x)   # {"hidden1": (390, 10000), ..., "output": (1, 10000)}
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metairm_pl.errors import ConfigError

OUTPUT_LAYER = "output"
LAST_HIDDEN = "last_hidden"
HIDDEN_PREFIX = "hidden"
DEFAULT_CHUNK_SIZE = 8192


def hidden_modules(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[("hidden1", relu1), ...]``: the network's ``nn.ReLU`` modules in module order."""
    relus = [module for module in network.modules() if isinstance(module, nn.ReLU)]
    return [(f"{HIDDEN_PREFIX}{index}", module) for index, module in enumerate(relus, start=1)]


def layer_names(network: nn.Module) -> list[str]:
    """``["hidden1", ..., "hiddenL", "output"]``."""
    return [name for name, _ in hidden_modules(network)] + [OUTPUT_LAYER]


def resolve_layer(network: nn.Module, layer: str) -> str:
    """The canonical name of ``layer`` (``last_hidden`` → ``hiddenL``); ConfigError if unknown."""
    names = layer_names(network)
    if layer == LAST_HIDDEN:
        if len(names) < 2:
            raise ConfigError("layer 'last_hidden' does not exist: the network has no hidden layer.")
        return names[-2]
    if layer not in names:
        raise ConfigError(f"layer {layer!r} does not exist: the network's layers are {names} (or '{LAST_HIDDEN}').")
    return layer


def capture_activations(
    network: nn.Module,
    x: Tensor,
    params: Optional[Mapping[str, Tensor]] = None,
    layers: Optional[Sequence[str]] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, Tensor]:
    """``{layer: activations (neurons, datapoints)}`` of ``network`` on the inputs ``x``.

    With ``params`` (a parameter dict θ', e.g. from ``inner_loop.adapt``) the network is
    run through ``torch.func.functional_call``; its own parameters are not modified.
    ``layers``: names or aliases (default: every layer, in order). Forward hooks on the
    ReLU modules record the hidden layers; ``output`` is the network's return value
    (flattened to ``(datapoints, outputs)`` before transposing). No gradient is kept.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size!r} is invalid: use a positive integer.")
    wanted = [resolve_layer(network, layer) for layer in (layers or layer_names(network))]
    chunks: dict[str, list[Tensor]] = {name: [] for name in wanted}
    handles = []

    def recorder(name: str):
        def hook(module, inputs, output):
            chunks[name].append(output.detach().flatten(start_dim=1).float().cpu())

        return hook

    for name, module in hidden_modules(network):
        if name in chunks:
            handles.append(module.register_forward_hook(recorder(name)))
    try:
        with torch.no_grad():
            for start in range(0, len(x), chunk_size):
                batch = x[start : start + chunk_size]
                output = network(batch) if params is None else functional_call(network, dict(params), (batch,))
                if OUTPUT_LAYER in chunks:
                    chunks[OUTPUT_LAYER].append(output.detach().flatten(start_dim=1).float().cpu())
                expected = start // chunk_size + 1
                reused = [name for name, recorded in chunks.items() if len(recorded) != expected]
                if reused:
                    raise ConfigError(
                        f"layer(s) {reused} ran more (or less) than once per forward pass: a ReLU module that is "
                        "applied several times cannot name one layer; give each hidden layer its own nn.ReLU."
                    )
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(recorded).T for name, recorded in chunks.items()}
