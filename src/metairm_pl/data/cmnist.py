"""Colored MNIST DataModule (IRM protocol; k-class variant of Choe et al. 2020).

Splits, as in facebookresearch/InvariantRiskMinimization:

* training environments: MNIST ``train[:50000]`` (``train_pool_size``), shuffled with ``data_seed``, dealt to the
  n training environments by interleaving (env i takes examples ``i, i+n, i+2n, ...``; for
  two envs the even/odd split of the official code), each truncated to its ``size``;
* test environments: MNIST ``train[50000:]`` (10,000 digits), coloured independently for
  every test environment;
* validation (``val_source="heldout"``, default): for each training env, ``val_fraction``
  x its size digits from the MNIST *test* set (unused by the IRM protocol), disjoint across
  envs, coloured with that env's parameters.  The training envs keep their full 25,000
  examples, so the protocol is unchanged.  ``val_source="split"`` instead carves the
  validation set out of the env's own examples (its training part shrinks accordingly).
  ``val_pairing="shared"`` (heldout only) builds every env's validation set from the *same*
  held-out digits with common random numbers for label noise and colour
  (:func:`colour_digits_coupled`), drawn from a generator of their own; the training and
  test envs are exactly those of ``"independent"``.  Each validation env keeps its exact distribution, but the
  across-env differences of a colour-blind model vanish, so the std of the training envs'
  validation losses (Meta-IRM's stopping signal) measures the use of colour rather than
  the sampling noise of two disjoint sets (≈0.006 with 2,500 digits per env).

``test_pairing="shared"`` builds every test env from the same test digits (the first
``max(size)`` of the test pool) with common random numbers for label noise and colour,
from a generator of its own, so test envs differ only where their colour rates differ and
a comparison across them (Fig. 10's PWCCA) sees the same datapoints; the default
``"independent"`` draws each test env's noise and colour on its own, as the IRM protocol.

Knobs of the paper's experiments: ``train_env_size`` sets every training env's size
(reduced data, Table 3: 25,000 / 12,500 / 6,250) and ``label_noise_gap`` spreads the
training envs' label noise (Fig. 4).

All randomness (shuffle, label noise, colour) comes from one ``torch.Generator`` seeded by
``data_seed``, separate from the model seed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Sequence

import torch

from metairm_pl.data.environments import (
    EnvSpec,
    check_probability,
    colour_digits,
    colour_digits_coupled,
    parse_env_specs,
)
from metairm_pl.data.multienv import EnvironmentSplits, MultiEnvDataModule
from metairm_pl.errors import ConfigError

TRAIN_POOL_SIZE = 50_000
VAL_SOURCES = ("heldout", "split")
VAL_PAIRINGS = ("independent", "shared")
TEST_PAIRINGS = ("independent", "shared")
SHARED_VAL_SEED_OFFSET = 7_919  # shared validation draws: generator seeded data_seed + this
SHARED_TEST_SEED_OFFSET = 104_729  # shared test draws: generator seeded data_seed + this


def with_size(specs: list[EnvSpec], size: Optional[int]) -> list[EnvSpec]:
    """Every env resized to ``size`` (the reduced-data knob of Table 3 / Fig. 5); None keeps them."""
    if size is None:
        return specs
    return [replace(spec, size=size) for spec in specs]


def with_label_noise_gap(specs: list[EnvSpec], gap: float) -> list[EnvSpec]:
    """Spread the label noise of the training envs by ``gap`` around their configured values
    (Fig. 4): in order of increasing ``p_color``, the envs get ``+gap/2`` ... ``-gap/2``
    (evenly spaced).  With the default envs, p_color 0.1 gets 0.25 + gap/2 and p_color 0.2
    gets 0.25 - gap/2, as the Meta-IRM paper states (§4.3).  Note: the code of Choe et al.
    2020 (kakaobrain/irm-empirical-study) assigns the gap the other way round (p_color 0.2
    gets the higher noise); to follow that code, set the envs' ``p_label_noise`` directly.
    """
    check_probability("data.label_noise_gap", gap)
    if gap == 0.0 or len(specs) < 2:
        return specs
    order = sorted(range(len(specs)), key=lambda index: specs[index].p_color)
    shifted = list(specs)
    for rank, index in enumerate(order):
        offset = gap / 2 - gap * rank / (len(specs) - 1)
        noise = specs[index].p_label_noise + offset
        shifted[index] = replace(specs[index], p_label_noise=round(noise, 12))
    return shifted


def _load_mnist(data_dir: str, allow_download: bool):
    from metairm_pl.data.mnist_source import load_mnist

    return load_mnist(data_dir, allow_download=allow_download)


class ColoredMNISTDataModule(MultiEnvDataModule):
    """Colored MNIST with environments given as config lists (see module docstring)."""

    schema_name = "cmnist"
    config_defaults = {"data_dir": "${paths.data_dir}"}
    runtime_arguments = ("mnist_loader",)  # tests pass a loader of fake digits

    def __init__(
        self,
        train_envs: Sequence,
        test_envs: Sequence,
        data_dir: str = "data",
        name: str = "cmnist",
        num_classes: int = 2,
        val_fraction: float = 0.1,
        val_source: str = "heldout",
        val_pairing: str = "shared",
        test_pairing: str = "independent",
        data_seed: int = 0,
        full_batch: bool = True,
        batch_size: Optional[int] = None,
        allow_download: bool = True,
        train_pool_size: int = TRAIN_POOL_SIZE,
        train_env_size: Optional[int] = None,
        label_noise_gap: float = 0.0,
        mnist_loader: Optional[Callable] = None,
    ) -> None:
        super().__init__(full_batch=full_batch, batch_size=batch_size, data_seed=data_seed)
        self.name = name
        self.train_specs = with_label_noise_gap(
            with_size(parse_env_specs("train_envs", train_envs), train_env_size), label_noise_gap
        )
        self.test_specs = parse_env_specs("test_envs", test_envs)
        if num_classes not in (2, 5, 10):
            raise ConfigError(f"data.num_classes={num_classes!r} is not allowed: use 2, 5 or 10.")
        check_probability("data.val_fraction", val_fraction)
        if val_source not in VAL_SOURCES:
            raise ConfigError(f"data.val_source={val_source!r} is not allowed: use one of {list(VAL_SOURCES)}.")
        if val_pairing not in VAL_PAIRINGS:
            raise ConfigError(f"data.val_pairing={val_pairing!r} is not allowed: use one of {list(VAL_PAIRINGS)}.")
        if val_pairing == "shared" and val_source != "heldout":
            raise ConfigError(
                f"data.val_pairing=shared needs val_source=heldout (got {val_source!r}): split "
                "validation sets come from each env's own digits and cannot be shared; set "
                "data.val_pairing=independent."
            )
        if test_pairing not in TEST_PAIRINGS:
            raise ConfigError(f"data.test_pairing={test_pairing!r} is not allowed: use one of {list(TEST_PAIRINGS)}.")
        self.test_pairing = test_pairing
        self._num_classes = num_classes
        self.val_fraction = float(val_fraction)
        self.val_source = val_source
        self.val_pairing = val_pairing
        self.data_dir = data_dir
        self.allow_download = allow_download
        self.train_pool_size = train_pool_size
        self.mnist_loader = mnist_loader or (lambda: _load_mnist(data_dir, allow_download))
        self.check_sizes(pool_size=train_pool_size)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def check_sizes(self, pool_size: int, heldout_size: int = 10_000) -> None:
        """Fail early when an env asks for more examples than its share of the data."""
        share = pool_size // len(self.train_specs)
        for spec in self.train_specs:
            if spec.size is not None and spec.size > share:
                raise ConfigError(
                    f"env {spec.name}: size={spec.size} exceeds the data available to it: "
                    f"{pool_size} training digits shared by {len(self.train_specs)} envs give at most "
                    f"{share} per env."
                )
        if self.val_source == "split" and self.val_fraction >= 1.0:
            raise ConfigError(
                f"data.val_fraction={self.val_fraction} with val_source=split leaves the training envs "
                "empty: use a fraction below 1."
            )
        if self.val_source == "heldout":
            sizes = [self._val_size(spec, share) for spec in self.train_specs]
            needed = max(sizes) if self.val_pairing == "shared" else sum(sizes)
            if needed > heldout_size:
                raise ConfigError(
                    f"data.val_fraction={self.val_fraction} asks for {needed} held-out validation digits "
                    f"but only {heldout_size} exist: lower val_fraction or use val_source=split."
                )

    def _val_size(self, spec: EnvSpec, share: int) -> int:
        return int(round(self.val_fraction * (spec.size or share)))

    def build_environments(self) -> EnvironmentSplits:
        mnist = self.mnist_loader()
        pool_size = self.train_pool_size
        if len(mnist.train_images) <= pool_size:
            raise ConfigError(
                f"data.train_pool_size={pool_size} leaves no test digits: MNIST train has "
                f"{len(mnist.train_images)} images."
            )
        test_pool = (mnist.train_images[pool_size:], mnist.train_labels[pool_size:])
        self.check_sizes(pool_size=pool_size, heldout_size=len(mnist.test_images))
        generator = torch.Generator().manual_seed(int(self.data_seed))

        order = torch.randperm(pool_size, generator=generator)
        pool_images, pool_digits = mnist.train_images[:pool_size][order], mnist.train_labels[:pool_size][order]
        heldout_order = torch.randperm(len(mnist.test_images), generator=generator)
        heldout_images, heldout_digits = mnist.test_images[heldout_order], mnist.test_labels[heldout_order]

        n_envs, share = len(self.train_specs), pool_size // len(self.train_specs)
        train, val, heldout_start = {}, {}, 0
        for index, spec in enumerate(self.train_specs):
            images, digits = pool_images[index::n_envs], pool_digits[index::n_envs]
            size = spec.size or share
            images, digits = images[:size], digits[:size]
            val_size = self._val_size(spec, share)
            if self.val_source == "split":
                val_images, val_digits = images[:val_size], digits[:val_size]
                images, digits = images[val_size:], digits[val_size:]
            else:
                stop = heldout_start + val_size
                val_images, val_digits = heldout_images[heldout_start:stop], heldout_digits[heldout_start:stop]
                heldout_start = stop
            train[spec.name] = colour_digits(images, digits, spec, self.num_classes, generator)
            if val_size > 0 and self.val_pairing == "independent":
                val[spec.name] = colour_digits(val_images, val_digits, spec, self.num_classes, generator)
            elif val_size > 0:  # burn the same draws, so train and test envs match "independent"
                torch.rand(2 * len(val_digits), generator=generator)
        if self.val_pairing == "shared":
            val = self._shared_validation(heldout_images, heldout_digits, share)

        for spec in self.test_specs:
            if spec.size is not None and spec.size > len(test_pool[0]):
                raise ConfigError(
                    f"test env {spec.name}: size={spec.size} exceeds the {len(test_pool[0])} test digits."
                )
        if self.test_pairing == "shared":
            test = self._shared_test(*test_pool)
        else:
            test = {}
            for spec in self.test_specs:
                images, digits = test_pool
                images, digits = images[: spec.size], digits[: spec.size]  # size None: all
                test[spec.name] = colour_digits(images, digits, spec, self.num_classes, generator)
        return EnvironmentSplits(train=train, val=val, test=test)

    def _shared_test(self, images, digits) -> dict:
        """Test envs on the same digits with coupled draws (``test_pairing=shared``)."""
        sizes = {spec.name: spec.size or len(images) for spec in self.test_specs}
        n = max(sizes.values(), default=0)
        generator = torch.Generator().manual_seed(int(self.data_seed) + SHARED_TEST_SEED_OFFSET)
        built = colour_digits_coupled(images[:n], digits[:n], self.test_specs, self.num_classes, generator)
        return {name: (x[: sizes[name]], y[: sizes[name]]) for name, (x, y) in built.items()}

    def _shared_validation(self, heldout_images, heldout_digits, share: int) -> dict:
        """Validation envs on the same held-out digits with coupled draws (``val_pairing=shared``)."""
        sizes = {spec.name: self._val_size(spec, share) for spec in self.train_specs}
        n = max(sizes.values())
        if n == 0:
            return {}
        generator = torch.Generator().manual_seed(int(self.data_seed) + SHARED_VAL_SEED_OFFSET)
        built = colour_digits_coupled(
            heldout_images[:n], heldout_digits[:n], self.train_specs, self.num_classes, generator
        )
        return {name: (x[: sizes[name]], y[: sizes[name]]) for name, (x, y) in built.items() if sizes[name] > 0}
