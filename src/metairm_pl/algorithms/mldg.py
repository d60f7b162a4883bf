"""MLDG (Li et al. 2018, "Learning to Generalize: Meta-Learning for Domain Generalization"):
the meta-learning relative of Meta-IRM, as DomainBed's ``MLDG`` computes it.

Per step the training envs are put in a random order π (the module's own generator, so a
resumed run draws the same orders) and paired cyclically, π(k) → π(k+1) (DomainBed's
``random_pairs_of_minibatches``, with which its MLDG results were made: every env is once
meta-train, once meta-test). For each pair (i, j), truncated to the shorter env, the
parameters take one inner step on env i's risk, θ'_i, and the risk trained on is
``Σ_pairs [R_i(θ) + β · R_j(θ'_i)] / n_envs``:

* ``second_order=false`` (DomainBed): the inner step is a fresh Adam's first step,
  ``θ'_i = θ − lr · g / (|g| + 1e-8)`` with ``g = ∇R_i(θ)`` (``lr``: ``inner_lr``, by default
  the outer optimizer's, as DomainBed), and θ'_i is treated as θ plus a constant: the
  gradient is ``Σ [∇R_i(θ) + β ∇R_j(θ'_i)] / n_envs``, DomainBed's accumulated gradient;
* ``second_order=true`` (the paper's MLDG): a plain-SGD inner step ``θ'_i = θ − α ∇R_i(θ)``
  (α = ``inner_lr``) through Meta-IRM's inner loop, differentiated through, so the gradient
  holds ``−αβ H_i ∇R_j(θ'_i)`` as well.

The inner step uses the risk alone (DomainBed's inner Adam has weight decay 0 on Colored
MNIST); the base class adds L2 to the outer loss.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.func import functional_call

from metairm_pl.algorithms.base import MultiEnvAlgorithm, Objective
from metairm_pl.algorithms.inner_loop import adapt
from metairm_pl.errors import ConfigError

ADAM_EPS = 1e-8  # torch.optim.Adam's default eps: DomainBed's inner optimizer


def cyclic_pairs(order: list[int]) -> list[tuple[int, int]]:
    """``(order[k], order[k+1 mod n])`` for every k: each env once meta-train, once meta-test."""
    return [(order[k], order[(k + 1) % len(order)]) for k in range(len(order))]


def adam_first_step(params: dict[str, Tensor], grads: dict[str, Tensor], lr: float) -> dict[str, Tensor]:
    """Parameters after one step of a freshly made Adam: ``θ − lr · g / (|g| + eps)``."""
    return {name: params[name] - lr * grads[name] / (grads[name].abs() + ADAM_EPS) for name in grads}


class MLDG(MultiEnvAlgorithm):
    """Meta-train/meta-test pairs of envs; first order as DomainBed, or second order."""

    name, label, table_order = "mldg", "MLDG", 95
    min_train_envs = 2
    presets = {"mldg_second_order": {"label": "MLDG (second order)", "table_order": 96}}

    def __init__(
        self, *args, beta: float = 1.0, inner_lr: Optional[float] = None, second_order: bool = False, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ConfigError(f"algorithm.beta={beta!r} is not allowed: use a finite number >= 0.")
        if inner_lr is None:
            inner_lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        if inner_lr is None or not (math.isfinite(inner_lr) and inner_lr >= 0):
            raise ConfigError(f"algorithm.inner_lr={inner_lr!r} is not allowed: use a finite number >= 0.")
        self.beta = float(beta)
        self.inner_lr = float(inner_lr)
        self.second_order = bool(second_order)
        # Draws the env order; seeded from the (seeded) global RNG, checkpointed (random_generators).
        self.generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))

    def random_generators(self) -> dict[str, torch.Generator]:
        return {"generator": self.generator}

    def objective(self, batch) -> Objective:
        envs = list(batch.values())
        order = torch.randperm(len(envs), generator=self.generator).tolist()
        params = dict(self.network.named_parameters())
        total = torch.zeros((), device=self.device)
        for i, j in cyclic_pairs(order):
            size = min(len(envs[i][1]), len(envs[j][1]))
            (x_i, y_i), (x_j, y_j) = ((x[:size], y[:size]) for x, y in (envs[i], envs[j]))
            risk_i = self.risk_fn(self.network(x_i), y_i)
            adapted = self._inner_step(params, risk_i, x_i, y_i)
            total = total + risk_i + self.beta * self.risk_fn(functional_call(self.network, adapted, (x_j,)), y_j)
        return Objective(risk=total / len(envs))

    def _inner_step(self, params: dict[str, Tensor], risk_i: Tensor, x_i: Tensor, y_i: Tensor) -> dict[str, Tensor]:
        if self.second_order:
            return adapt(self.network, params, x_i, y_i, self.risk_fn, self.inner_lr)
        names = list(params)
        grads = torch.autograd.grad(risk_i, [params[n] for n in names], retain_graph=True)
        steps = adam_first_step({n: params[n].detach() for n in names}, dict(zip(names, grads)), self.inner_lr)
        # θ' = θ − (a constant): the meta-test gradient w.r.t. θ is ∇R_j at θ' (first order).
        return {n: params[n] - (params[n].detach() - steps[n]) for n in names}
