"""Tiny synthetic multi-environment data with a planted spurious feature (for tests and demos).

Per example: a clean label ``c ~ Bernoulli(1/2)``; an invariant feature ``(2c - 1) + N(0, 1)``;
the observed label ``y`` = ``c`` flipped with ``p_label_noise``; a spurious feature
``(2z - 1) + N(0, 0.1^2)`` with ``z`` = ``y`` flipped with ``p_color``; the remaining
``n_features - 2`` features are ``N(0, 1)`` noise.  As in Colored MNIST, the spurious
feature predicts ``y`` better than the invariant one in training envs with small
``p_color`` and is reversed in a test env with ``p_color = 0.9``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from metairm_pl.data.environments import EnvSpec, check_probability, flip_with_probability, parse_env_specs
from metairm_pl.data.multienv import EnvironmentSplits, MultiEnvDataModule
from metairm_pl.errors import ConfigError

DEFAULT_ENV_SIZE = 512


def sample_environment(spec: EnvSpec, size: int, n_features: int, generator: torch.Generator):
    clean = torch.randint(0, 2, (size,), generator=generator)
    invariant = (2 * clean - 1).float() + torch.randn(size, generator=generator)
    labels = flip_with_probability(clean, spec.p_label_noise, 2, generator)
    spurious_id = flip_with_probability(labels, spec.p_color, 2, generator)
    spurious = (2 * spurious_id - 1).float() + 0.1 * torch.randn(size, generator=generator)
    noise = torch.randn(size, n_features - 2, generator=generator)
    return torch.cat([invariant[:, None], spurious[:, None], noise], dim=1), labels


class SyntheticDataModule(MultiEnvDataModule):
    """Gaussian features with one invariant and one spurious coordinate (module docstring)."""

    schema_name = "synthetic"

    def __init__(
        self,
        train_envs: Sequence,
        test_envs: Sequence,
        name: str = "synthetic",
        n_features: int = 8,
        val_fraction: float = 0.2,
        data_seed: int = 0,
        full_batch: bool = True,
        batch_size: Optional[int] = None,
    ) -> None:
        super().__init__(full_batch=full_batch, batch_size=batch_size, data_seed=data_seed)
        if n_features < 2:
            raise ConfigError(f"data.n_features={n_features} is not allowed: use an integer >= 2.")
        self.name = name
        self.train_specs = parse_env_specs("train_envs", train_envs)
        self.test_specs = parse_env_specs("test_envs", test_envs)
        self.n_features = n_features
        self.val_fraction = check_probability("data.val_fraction", val_fraction)

    @property
    def num_classes(self) -> int:
        return 2

    def build_environments(self) -> EnvironmentSplits:
        generator = torch.Generator().manual_seed(int(self.data_seed))
        train, val, test = {}, {}, {}
        for spec in self.train_specs:
            size = spec.size or DEFAULT_ENV_SIZE
            train[spec.name] = sample_environment(spec, size, self.n_features, generator)
            val_size = int(round(self.val_fraction * size))
            if val_size:
                val[spec.name] = sample_environment(spec, val_size, self.n_features, generator)
        for spec in self.test_specs:
            test[spec.name] = sample_environment(spec, spec.size or DEFAULT_ENV_SIZE, self.n_features, generator)
        return EnvironmentSplits(train=train, val=val, test=test)
