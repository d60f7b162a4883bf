"""Environment specifications and the Colored MNIST construction (IRM protocol, k classes).

The binary construction follows facebookresearch/InvariantRiskMinimization
(``code/colored_mnist/main.py``): 14x14 subsample, label ``digit < 5``, label noise by
flipping with ``p_label_noise``, colour = label flipped with ``p_color``, the other colour
channel zeroed, pixels divided by 255.  For ``num_classes = k > 2`` (Choe et al. 2020) the
digits are collapsed into k classes, and "flipping" becomes ``label + 1 mod k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import MISSING
from torch import Tensor

from metairm_pl.errors import ConfigError


def check_probability(name: str, value: float) -> float:
    """Return ``value`` if it lies in [0, 1]; otherwise raise a ConfigError naming it."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={value!r} is not a probability: allowed values are in [0, 1].")
    return float(value)


@dataclass(frozen=True)
class EnvSpec:
    """One environment: its name, spurious-feature flip rate, label noise and size.

    ``size=None`` means "all examples available to this environment".
    """

    name: str
    p_color: float
    p_label_noise: float = 0.25
    size: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"environment name {self.name!r} must be non-empty and contain no '/'.")
        check_probability(f"env {self.name}: p_color", self.p_color)
        check_probability(f"env {self.name}: p_label_noise", self.p_label_noise)
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0):
            raise ConfigError(
                f"env {self.name}: size={self.size!r} is not allowed: use a positive integer, "
                "or null for all available examples."
            )


@dataclass
class EnvConfig:
    """The config schema of one env in ``data.train_envs``/``data.test_envs`` (an :class:`EnvSpec`)."""

    name: str = MISSING
    p_color: float = MISSING
    p_label_noise: float = 0.25
    size: Optional[int] = None


def parse_env_specs(kind: str, envs) -> list[EnvSpec]:
    """Turn a config list of env mappings into validated EnvSpecs (unique names, non-empty)."""
    if envs is None or len(envs) == 0:
        raise ConfigError(f"data.{kind} is empty: at least one environment is required.")
    specs = [env if isinstance(env, EnvSpec) else EnvSpec(**dict(env)) for env in envs]
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"data.{kind}: environment names must be unique, repeated: {duplicates}.")
    return specs


def flip_with_probability(labels: Tensor, p: float, num_classes: int, generator: torch.Generator) -> Tensor:
    """Replace each label by ``label + 1 mod k`` with probability ``p`` (a flip when k = 2)."""
    flips = torch.rand(labels.shape, generator=generator) < p
    return torch.where(flips, (labels + 1) % num_classes, labels)


def digits_to_classes(digits: Tensor, num_classes: int) -> Tensor:
    """Collapse digits 0-9 into classes: binary ``digit < 5`` (IRM code), else ``digit // (10/k)``."""
    if num_classes == 2:
        return (digits < 5).long()
    if 10 % num_classes != 0:
        raise ConfigError(f"num_classes={num_classes} is not allowed: use 2, 5 or 10 for MNIST.")
    return torch.div(digits, 10 // num_classes, rounding_mode="floor").long()


def colour_digits(
    images: Tensor, digits: Tensor, spec: EnvSpec, num_classes: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Build one environment from uint8 digit images ``[n, 28, 28]``.

    Returns ``x`` float ``[n, k', 14, 14]`` with ``k' = max(2, k)`` colour channels (only the
    channel of the sampled colour is non-zero) and integer labels ``y`` ``[n]``.
    Random draws, in order: label noise, then colour, both from ``generator``.
    """
    clean_labels = digits_to_classes(digits, num_classes)
    labels = flip_with_probability(clean_labels, spec.p_label_noise, num_classes, generator)
    colours = flip_with_probability(labels, spec.p_color, num_classes, generator)
    return _coloured_images(images, colours, num_classes), labels


def colour_digits_coupled(
    images: Tensor, digits: Tensor, specs: list[EnvSpec], num_classes: int, generator: torch.Generator
) -> dict[str, tuple[Tensor, Tensor]]:
    """The same digits built as every env of ``specs``, with common random numbers.

    One uniform draw per digit decides label noise and one decides colour, shared by all
    envs: env e flips the label where ``u_noise < p_label_noise_e`` and the colour where
    ``u_colour < p_color_e``.  Each env on its own has exactly the distribution of
    :func:`colour_digits`; across envs only the rates differ, so envs with equal label
    noise get identical labels and a model that ignores colour gets identical losses on
    them.  Used for paired validation sets (``val_pairing="shared"``).
    """
    clean_labels = digits_to_classes(digits, num_classes)
    u_noise = torch.rand(clean_labels.shape, generator=generator)
    u_colour = torch.rand(clean_labels.shape, generator=generator)
    built = {}
    for spec in specs:
        labels = torch.where(u_noise < spec.p_label_noise, (clean_labels + 1) % num_classes, clean_labels)
        colours = torch.where(u_colour < spec.p_color, (labels + 1) % num_classes, labels)
        built[spec.name] = (_coloured_images(images, colours, num_classes), labels)
    return built


def _coloured_images(images: Tensor, colours: Tensor, num_classes: int) -> Tensor:
    """uint8 ``[n, 28, 28]`` digits subsampled to 14x14 and written into their colour channel, /255."""
    small = images[:, ::2, ::2].float()
    channels = max(2, num_classes)
    x = torch.zeros(len(images), channels, *small.shape[1:])
    x[torch.arange(len(images)), colours] = small
    return x / 255.0
