"""The linear unit-tests for invariance discovery (Aubin, Słowik, Arjovsky, Bottou, Lopez-Paz 2021;
facebookresearch/InvarianceUnitTests, ``scripts/datasets.py``): six small problems whose
invariant predictor is known, as one data family (``data=linear_unit_tests data.problem=...``).

Every example has ``dim_inv`` invariant and ``dim_spu`` spurious coordinates; the input is their
concatenation times ``scramble`` (the identity, or for the ``s`` variants a random orthogonal
matrix, the Q of a QR decomposition of a Gaussian matrix). Per environment:

* ``Example1`` (regression, "cause and effect with heteroskedastic noise"): environment
  scales ``σ_e`` 0.1, 1.5, 2 (more envs: ``10^U(-2, 1)``); ``x ~ N(0, σ_e²)``,
  ``y = x W_xy + N(0, σ_e²)``, ``z = y W_yz + N(0, 1)``; the target is ``Σ y`` (the error is
  the mean squared error);
* ``Example2`` (classification, "cows and camels"): groups drawn with probabilities from the
  env's ``p`` (background agrees with the animal) and ``s`` (cow): (0.95, 0.3), (0.97, 0.5),
  (0.99, 0.7) (more envs: ``U(0.9, 1)``, ``U(0.3, 0.7)``); the animal's features are 1e-2 times
  the background's; the label is the sign of the invariant features' sum;
* ``Example3`` (classification, "small invariant margin, large spurious margin"): invariant
  means ±0.1, spurious means ±``μ_e`` with ``μ_e ~ N(0, I)`` per env.

Splits as the reference: *train* and *validation* are independent draws from each training
env; the *test* envs are the same envs with the spurious block shuffled across examples
(the reference's test split), named like them. ``oracle=true`` trains and validates on
shuffled data too (the reference's Oracle). Every draw comes, in the reference's order, from
one generator seeded with ``data_seed`` (the reference seeds torch's global one the same way),
so given the same seed the environments equal the reference's (``tests/data/test_linear_unit_tests.py``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from metairm_pl.algorithms.base import REGRESSION
from metairm_pl.data.multienv import EnvironmentSplits, MultiEnvDataModule
from metairm_pl.errors import ConfigError

PROBLEMS = ("Example1", "Example1s", "Example2", "Example2s", "Example3", "Example3s")
EXAMPLE2_ENVS = ((0.95, 0.3), (0.97, 0.5), (0.99, 0.7))  # (p: background agrees, s: cow)
EXAMPLE1_SCALES = (0.1, 1.5, 2.0)


class _Problem:
    """One problem's parameters (drawn at construction) and its sampler."""

    regression = False

    def __init__(self, dim_inv: int, dim_spu: int, n_envs: int, scrambled: bool, generator: torch.Generator) -> None:
        self.dim_inv, self.dim_spu, self.generator = dim_inv, dim_spu, generator
        self.envs = self.draw_envs(n_envs)
        dim = dim_inv + dim_spu
        self.scramble = torch.linalg.qr(self.randn(dim, dim), mode="reduced")[0] if scrambled else torch.eye(dim)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.generator)

    def uniform(self, low: float, high: float) -> float:
        return torch.zeros(1).uniform_(low, high, generator=self.generator).item()

    def shuffled(self, block: Tensor) -> Tensor:
        return block[torch.randperm(len(block), generator=self.generator)]

    def draw_envs(self, n_envs: int) -> list:
        raise NotImplementedError

    def sample(self, n: int, env: int, test: bool) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class _Example1(_Problem):
    regression = True

    def draw_envs(self, n_envs: int) -> list:
        scales = list(EXAMPLE1_SCALES[:n_envs]) + [10 ** self.uniform(-2, 1) for _ in range(3, n_envs)]
        self.w_xy = self.randn(self.dim_inv, self.dim_inv) / self.dim_inv
        self.w_yz = self.randn(self.dim_inv, self.dim_spu) / self.dim_spu
        return scales

    def sample(self, n: int, env: int, test: bool) -> tuple[Tensor, Tensor]:
        sd = self.envs[env]
        x = self.randn(n, self.dim_inv) * sd
        y = x @ self.w_xy + self.randn(n, self.dim_inv) * sd
        z = y @ self.w_yz + self.randn(n, self.dim_spu)
        if test:
            z = self.shuffled(z)
        return torch.cat((x, z), -1) @ self.scramble, y.sum(1)


class _Example2(_Problem):
    def draw_envs(self, n_envs: int) -> list:
        extra = []
        for _ in range(3, n_envs):
            p = self.uniform(0.9, 1)
            extra.append((p, self.uniform(0.3, 0.7)))
        cow, grass = torch.ones(1, self.dim_inv), torch.ones(1, self.dim_spu)
        self.animal = torch.cat((cow, cow, -cow, -cow))
        self.background = torch.cat((grass, -grass, -grass, grass))
        return list(EXAMPLE2_ENVS[:n_envs]) + extra

    def sample(self, n: int, env: int, test: bool) -> tuple[Tensor, Tensor]:
        p, s = self.envs[env]
        weights = torch.tensor([p, 1 - p] * 2) * torch.tensor([s] * 2 + [1 - s] * 2)
        group = torch.multinomial(weights, n, True, generator=self.generator)
        invariant = (self.randn(n, self.dim_inv) / math.sqrt(10) + self.animal[group]) * 1e-2
        spurious = self.randn(n, self.dim_spu) / math.sqrt(10) + self.background[group]
        x = torch.cat((invariant, spurious), -1)
        if test:
            x[:, self.dim_inv :] = self.shuffled(x)[:, self.dim_inv :]
        return x @ self.scramble, x[:, : self.dim_inv].sum(1).gt(0).float()


class _Example3(_Problem):
    def draw_envs(self, n_envs: int) -> list:
        return [self.randn(1, self.dim_spu) for _ in range(n_envs)]

    def sample(self, n: int, env: int, test: bool) -> tuple[Tensor, Tensor]:
        half, margin = n // 2, 0.1
        invariant_0 = self.randn(half, self.dim_inv) * 0.1 + margin
        invariant_1 = self.randn(half, self.dim_inv) * 0.1 - margin
        spurious_0 = self.randn(half, self.dim_spu) * 0.1 + self.envs[env]
        spurious_1 = self.randn(half, self.dim_spu) * 0.1 - self.envs[env]
        x = torch.cat((torch.cat((invariant_0, spurious_0), -1), torch.cat((invariant_1, spurious_1), -1)))
        if test:
            x[:, self.dim_inv :] = self.shuffled(x)[:, self.dim_inv :]
        return x @ self.scramble, torch.cat((torch.zeros(half), torch.ones(half)))


KINDS = {"Example1": _Example1, "Example2": _Example2, "Example3": _Example3}


class LinearUnitTestsDataModule(MultiEnvDataModule):
    """One of the six linear unit-test problems (module docstring), full batch by default."""

    schema_name = "linear_unit_tests"

    def __init__(
        self,
        problem: str = "Example1",
        n_envs: int = 3,
        dim_inv: int = 5,
        dim_spu: int = 5,
        num_samples: int = 10000,
        oracle: bool = False,
        name: Optional[str] = None,  # None: the problem's name
        data_seed: int = 0,
        full_batch: bool = True,
        batch_size: Optional[int] = None,
    ) -> None:
        super().__init__(full_batch=full_batch, batch_size=batch_size, data_seed=data_seed)
        if problem not in PROBLEMS:
            raise ConfigError(f"data.problem={problem!r} is not known: use one of {list(PROBLEMS)}.")
        least = 1 if problem.startswith("Example3") else 2
        for key, value, low in (("n_envs", n_envs, least), ("dim_inv", dim_inv, 1), ("dim_spu", dim_spu, 0),
                                ("num_samples", num_samples, 2)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"data.{key}={value!r} is not allowed for {problem}: use an integer >= {low}.")
        self.problem, self.n_envs, self.dim_inv, self.dim_spu = problem, n_envs, dim_inv, dim_spu
        self.num_samples, self.oracle = num_samples, bool(oracle)
        self.name = name or problem

    @property
    def num_classes(self) -> int:
        return REGRESSION if self.problem.startswith("Example1") else 2

    def make_problem(self) -> _Problem:
        """The problem's parameters, drawn first from the data seed's generator (as the reference)."""
        generator = torch.Generator().manual_seed(int(self.data_seed))
        kind = KINDS[self.problem.rstrip("s")]
        return kind(self.dim_inv, self.dim_spu, self.n_envs, self.problem.endswith("s"), generator)

    def build_environments(self) -> EnvironmentSplits:
        problem = self.make_problem()
        names = [f"E{k}" for k in range(self.n_envs)]
        splits = {}
        for split, test in (("train", self.oracle), ("val", self.oracle), ("test", True)):
            splits[split] = {name: problem.sample(self.num_samples, k, test) for k, name in enumerate(names)}
        return EnvironmentSplits(**splits)
