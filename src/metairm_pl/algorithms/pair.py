"""PAIR-o (Chen et al. 2023, "Pareto Invariant Risk Minimization"): IRMX's three objectives
weighted at every step by the EPO solver (Mahapatra & Rajan 2020), as PAIR's Colored MNIST
loop computes them (LFhase/PAIR ``ColoredMNIST/pair_alg.py`` with ``pair.py``'s ``EPO``).

Before ``switch_step`` the run is ERM: the mean env risk plus L2, with the configured
optimizer (PAIR's: Adam, lr 1e-3). From ``switch_step`` on, with no L2:

* the objectives ``l = (mean_e R_e, mean_e P_e, Var_e R_e)``: the mean risk, the mean IRMv1
  penalty (full batch) and the unbiased variance of the env risks, IRMX's terms;
* ``C = G Gᵀ``, ``G`` the objectives' gradients w.r.t. the classifier layer (weight and bias),
  as the reference collects them (its PAIR optimizer holds the top layer only);
* the weights ``α`` on the simplex from one linear program, :func:`epo_weights`: with the
  preference ``r`` (normalised), ``l̂ = r⊙l / Σ r⊙l``, the non-uniformity
  ``μ = Σ l̂ log(m l̂)`` and ``a = r ⊙ (log(m l̂) − μ)``:

  - ``μ > epsilon`` (balance): maximise ``αᵀCa`` subject to ``(Cα)_j ≥ (Ca)_j`` for each
    ``j`` with ``(Ca)_j ≤ 0`` and ``(Cα)_j ≥ 0`` for the ``j`` of largest ``r_j l_j``;
  - otherwise (descent): maximise ``1ᵀCα`` subject to ``αᵀCa ≥ min(max_j (Ca)_j, 0)`` and
    ``Cα ≥ 0``;
  - no solution (an infeasible program, non-finite inputs): ``α = r``, the reference's fallback;

* the step: SGD with momentum (``switch_lr``, ``switch_momentum``, fresh at the switch, the
  reference's inner optimizer) on ``αᵀl`` over all parameters.

The program is solved by HiGHS (``scipy.optimize.linprog``), an open solver; the reference
calls Gurobi through cvxpy. Both return an optimal vertex; where the optimum is not unique
they may return different ones. Both optimizers are the module's, so checkpoints hold the
momentum and a resumed run continues exactly.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import linprog
from torch import Tensor

from metairm_pl.algorithms.base import MultiEnvAlgorithm, Objective, irm_penalty
from metairm_pl.errors import ConfigError

OBJECTIVES = ("risk", "irm_penalty", "risk_variance")
REFERENCE_PREFERENCE = (1e-12, 1e-2, 1 - 1e-12 - 1e-2)  # PAIR's Colored MNIST preference


def epo_weights(losses: np.ndarray, gram: np.ndarray, preference: np.ndarray, epsilon: float) -> tuple[np.ndarray, str]:
    """EPO's objective weights ``α`` (module docstring) and the move: ``"balance"``,
    ``"descent"`` or ``"preference"`` (no solution: ``α`` is the normalised preference)."""
    preference = np.asarray(preference, dtype=np.float64) / np.sum(preference)
    losses, gram = np.asarray(losses, dtype=np.float64), np.asarray(gram, dtype=np.float64)
    m = len(losses)
    weighted = preference * losses
    if not (np.isfinite(weighted).all() and np.isfinite(gram).all()) or (weighted < 0).any() or weighted.sum() <= 0:
        return preference, "preference"
    shares = weighted / weighted.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        kept = shares[shares > np.finfo(np.float64).eps]
        non_uniformity = float(np.sum(kept * np.log(kept * m)))
        adjustment = preference * (np.log(shares * m) - non_uniformity)
        gram_adjustment = gram @ adjustment
    if not np.isfinite(gram_adjustment).all():
        return preference, "preference"
    if non_uniformity > epsilon:
        move, cost = "balance", -gram_adjustment
        bounds = {j: gram_adjustment[j] for j in range(m) if gram_adjustment[j] <= 0}
        for j in np.flatnonzero(weighted == weighted.max()):
            bounds[int(j)] = 0.0
        a_ub = np.array([-gram[j] for j in bounds]).reshape(-1, m)
        b_ub = np.array([-bound for bound in bounds.values()])
    else:
        move, cost = "descent", -gram.sum(axis=1)
        a_ub = np.vstack([-gram_adjustment[None, :], -gram])
        b_ub = np.concatenate([[-min(gram_adjustment.max(), 0.0)], np.zeros(m)])
    result = linprog(
        cost,
        A_ub=a_ub if len(a_ub) else None,
        b_ub=b_ub if len(b_ub) else None,
        A_eq=np.ones((1, m)),
        b_eq=np.ones(1),
        bounds=[(0, None)] * m,
        method="highs",
    )
    if result.status != 0:
        return preference, "preference"
    return result.x, move


class PAIR(MultiEnvAlgorithm):
    """ERM until ``switch_step``, then (risk, IRMv1, V-REx) weighted by EPO, SGD with momentum."""

    name, label, table_order = "pair", "PAIR-o", 91
    min_train_envs = 2

    def __init__(
        self,
        *args,
        switch_step: int = 150,
        switch_lr: float = 0.1,
        switch_momentum: float = 0.9,
        preference: Sequence[float] = REFERENCE_PREFERENCE,
        epsilon: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(getattr(self.network, "classifier", None), torch.nn.Linear):
            raise ConfigError(
                f"{self.name} weighs its objectives by their gradients w.r.t. the classifier layer: the network "
                f"({type(self.network).__name__}) must have a classifier nn.Linear (model=mlp, bow_mlp and linear do)."
            )
        if isinstance(switch_step, bool) or not isinstance(switch_step, int) or switch_step < 0:
            raise ConfigError(f"algorithm.switch_step={switch_step!r} is not allowed: use an integer >= 0.")
        if not (math.isfinite(switch_lr) and switch_lr > 0):
            raise ConfigError(f"algorithm.switch_lr={switch_lr!r} is not allowed: use a learning rate > 0.")
        if not (math.isfinite(switch_momentum) and 0 <= switch_momentum < 1):
            raise ConfigError(f"algorithm.switch_momentum={switch_momentum!r} is not allowed: use a value in [0, 1).")
        values = list(preference)
        if len(values) != len(OBJECTIVES) or not all(math.isfinite(v) and v > 0 for v in values):
            raise ConfigError(
                f"algorithm.preference={values!r} is not allowed: use {len(OBJECTIVES)} positive numbers, "
                f"one per objective {OBJECTIVES}."
            )
        if not (math.isfinite(epsilon) and epsilon >= 0):
            raise ConfigError(f"algorithm.epsilon={epsilon!r} is not allowed: use a number >= 0.")
        self.switch_step = switch_step
        self.switch_lr = float(switch_lr)
        self.switch_momentum = float(switch_momentum)
        self.preference = np.asarray(values, dtype=np.float64)
        self.epsilon = float(epsilon)

    def configure_optimizers(self):
        """The configured optimizer for the ERM phase, SGD with momentum from the switch on."""
        before = self.optimizer_factory(self.parameters())
        after = torch.optim.SGD(self.parameters(), lr=self.switch_lr, momentum=self.switch_momentum)
        return [before, after]

    def objective(self, batch) -> Objective:
        risks, penalties = [], []
        for risk, logits, y in self.env_risks(batch).values():
            risks.append(risk)
            if self.global_step >= self.switch_step:
                penalties.append(irm_penalty(logits, y, self.risk_fn))
        risks = torch.stack(risks)
        if self.global_step < self.switch_step:
            return Objective(risk=risks.mean())
        objectives = torch.stack([risks.mean(), torch.stack(penalties).mean(), risks.var(correction=1)])
        weights, move = self.objective_weights(objectives)
        logs = dict(zip(OBJECTIVES, objectives.detach()))  # step/risk: the mean risk; step/loss: α·l
        logs.update({f"alpha_{name}": weight for name, weight in zip(OBJECTIVES, weights)})
        logs["epo_descent"] = torch.tensor(float(move == "descent"))
        return Objective(risk=(weights.to(objectives.dtype) * objectives).sum(), logs=logs)

    def objective_weights(self, objectives: Tensor) -> tuple[Tensor, str]:
        """EPO's weights for ``objectives`` from their gradients w.r.t. the classifier layer."""
        layer = list(self.network.classifier.parameters())
        rows = [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, layer, retain_graph=True)])
            for value in objectives
        ]
        gradients = torch.stack(rows).detach()
        gram = (gradients @ gradients.T).double().cpu().numpy()
        losses = objectives.detach().double().cpu().numpy()
        weights, move = epo_weights(losses, gram, self.preference, self.epsilon)
        return torch.as_tensor(weights, dtype=torch.float32, device=objectives.device), move

    def step_optimizer(self):
        return self.optimizers()[int(self.global_step >= self.switch_step)]

    def l2_term(self) -> Tensor:
        """L2 in the ERM phase only (the reference's objectives after the switch have none)."""
        if self.global_step >= self.switch_step:
            return torch.zeros((), device=self.device)
        return super().l2_term()
