"""Colored MNIST with a second spurious feature, a corner patch (Meta-IRM §4.4, Table 4).

After Ahuja et al. (2020): the patch id ``z'`` is the label flipped with probability
``p_patch`` (the paper's ``p_{e_2}``), drawn independently of the colour given the label.
``z' = 0`` sets the 3x3 block in the top-left corner, ``z' = 1`` the 2x2 block in the
bottom-right corner.

Decisions:

* image size: the patch is drawn on the 14x14 model input (after the ``[::2, ::2]``
  subsample), so 3x3 and 2x2 are the sizes the network sees;
* value and channels: 1.0 (the maximum intensity after the division by 255) in *every*
  colour channel, so the patch carries no colour; a digit pixel is non-zero in one channel
  only, hence a patched pixel is never confused with a digit pixel;
* randomness: digits, labels and colours are exactly those of ``data=cmnist`` with the same
  environments and ``data_seed`` (the parent builds them); the patch ids are drawn afterwards,
  env by env (train, val, test), from a second generator derived from ``data_seed``
  (:func:`patch_generator`).  Paired validation sets (``val_pairing="shared"``) share one
  uniform draw per digit for the patch too, like their colours.

Binary labels only (``num_classes = 2``): there are two patches.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from omegaconf import MISSING
from torch import Tensor

from metairm_pl.data.cmnist import ColoredMNISTDataModule
from metairm_pl.data.environments import EnvConfig, EnvSpec, check_probability, flip_with_probability
from metairm_pl.data.multienv import EnvironmentSplits
from metairm_pl.errors import ConfigError

PATCH_VALUE = 1.0  # max pixel intensity after /255, written in every colour channel
TOP_LEFT_SIDE = 3  # patch of z' = 0
BOTTOM_RIGHT_SIDE = 2  # patch of z' = 1


@dataclass(frozen=True, kw_only=True)
class PatchEnvSpec(EnvSpec):
    """An :class:`EnvSpec` plus ``p_patch``, the probability that the patch id is not the label."""

    p_patch: float

    def __post_init__(self) -> None:
        super().__post_init__()
        check_probability(f"env {self.name}: p_patch", self.p_patch)


@dataclass
class PatchEnvConfig(EnvConfig):
    """The config schema of one cmnist_patch env: an :class:`EnvConfig` plus ``p_patch``."""

    p_patch: float = MISSING  # patch id = label flipped with this probability


def parse_patch_env(kind: str, env) -> PatchEnvSpec:
    """A PatchEnvSpec from a config mapping; ConfigError when ``p_patch`` is missing."""
    if isinstance(env, PatchEnvSpec):
        return env
    fields = asdict(env) if isinstance(env, EnvSpec) else dict(env)
    if "p_patch" not in fields:
        raise ConfigError(
            f"data.{kind}: env {fields.get('name')!r} has no p_patch: every cmnist_patch env "
            "needs a patch flip rate in [0, 1]."
        )
    return PatchEnvSpec(**fields)


def patch_generator(data_seed: int) -> torch.Generator:
    """The generator of the patch draws: seeded from ``data_seed``, distinct from the colour one."""
    digest = hashlib.sha256(f"cmnist_patch:{int(data_seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:4], "little"))


def add_patches(x: Tensor, patch_ids: Tensor) -> Tensor:
    """A copy of ``x`` ``[n, C, H, W]`` with each example's patch set to PATCH_VALUE in all channels."""
    x = x.clone()
    x[patch_ids == 0, :, :TOP_LEFT_SIDE, :TOP_LEFT_SIDE] = PATCH_VALUE
    x[patch_ids == 1, :, -BOTTOM_RIGHT_SIDE:, -BOTTOM_RIGHT_SIDE:] = PATCH_VALUE
    return x


def patch_environment(x: Tensor, y: Tensor, p_patch: float, generator: torch.Generator) -> Tensor:
    """``x`` with patches whose ids are the labels ``y`` flipped with probability ``p_patch``."""
    return add_patches(x, flip_with_probability(y, p_patch, 2, generator))


class ColoredMNISTPatchDataModule(ColoredMNISTDataModule):
    """Colored MNIST plus the corner patch (see module docstring); envs need ``p_patch``."""

    schema_name = "cmnist_patch"
    env_config = PatchEnvConfig

    def __init__(
        self, train_envs: Sequence, test_envs: Sequence, name: str = "cmnist_patch", num_classes: int = 2, **kwargs
    ) -> None:
        """Arguments as :class:`ColoredMNISTDataModule`; every env also needs ``p_patch``."""
        if num_classes != 2:
            raise ConfigError(f"data.num_classes={num_classes!r} is not allowed for cmnist_patch: use 2 (two patches).")
        super().__init__(
            train_envs=[parse_patch_env("train_envs", env) for env in train_envs or []],
            test_envs=[parse_patch_env("test_envs", env) for env in test_envs or []],
            name=name,
            num_classes=num_classes,
            **kwargs,
        )

    def build_environments(self) -> EnvironmentSplits:
        splits = super().build_environments()
        generator = patch_generator(self.data_seed)
        # Train and test envs may share a name: look rates up within each side separately.
        train_rates = {spec.name: spec.p_patch for spec in self.train_specs}
        test_rates = {spec.name: spec.p_patch for spec in self.test_specs}
        paired = {id(splits.val): self.val_pairing == "shared", id(splits.test): self.test_pairing == "shared"}
        for envs, rates in ((splits.train, train_rates), (splits.val, train_rates), (splits.test, test_rates)):
            if paired.get(id(envs)):
                self._patch_paired(envs, rates, generator)
                continue
            for name, (x, y) in envs.items():
                envs[name] = (patch_environment(x, y, rates[name], generator), y)
        return splits

    @staticmethod
    def _patch_paired(envs: dict, rates: dict, generator: torch.Generator) -> None:
        """Patch paired envs (shared validation or test digits) with one shared uniform draw per
        digit (common random numbers, as their colours): env e flips the patch id where
        ``u < p_patch_e``."""
        if not envs:
            return
        uniform = torch.rand(max(len(y) for _, y in envs.values()), generator=generator)
        for name, (x, y) in envs.items():
            flips = uniform[: len(y)] < rates[name]
            envs[name] = (add_patches(x, torch.where(flips, 1 - y, y)), y)
