"""MM-REx (Krueger et al. 2020, "Out-of-Distribution Generalization via Risk Extrapolation").

The paper's objective for m training envs is
``R_MM = (1 − m·λ_min)·max_e R_e + λ_min·Σ_e R_e`` (λ_min < 0 extrapolates; λ_min ≤ 1/m is
needed for the weights to exist).  It equals ``mean_e R_e + β·(max_e R_e − mean_e R_e)``
with ``β = 1 − m·λ_min``, so MM-REx fits the shared framework as

* risk = mean of the env risks, penalty = max − mean (always ≥ 0),
* ``algorithm.penalty.weight`` = β, the extrapolation strength; at every step
  ``λ_min = (1 − β_step) / m`` where β_step is the schedule's weight at that step.

This is what the authors' Colored MNIST code does (capybaralet/REx_code_release,
``InvariantRiskMinimization/colored_mnist/main.py`` with ``--mse False``): it minimises
``R_1 + R_2 + l2·‖θ‖² + w·|R_1 − R_2|`` with ``w = 1`` before ``penalty_anneal_iters`` and
the whole loss divided by ``w`` when ``w > 1``.  Since ``|R_1 − R_2| = 2·(max − mean)``,
that is twice our loss with ``β = w`` and ``l2 = l2_regularizer_weight / 2``.  The warm-up
weight β = 1 gives λ_min = 0: the worst-case risk (their "risk interpolation" run).
β ≥ 0 (checked by :class:`PenaltySchedule`) is exactly λ_min ≤ 1/m.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from metairm_pl.algorithms.base import EnvBatch, MultiEnvAlgorithm, Objective
from metairm_pl.errors import ConfigError


def check_lambda_min(lambda_min: float, n_envs: int) -> None:
    """Raise ConfigError unless λ_min is finite and ``1 − n_envs·λ_min >= 0``."""
    valid = isinstance(lambda_min, Real) and not isinstance(lambda_min, bool)
    if not (valid and math.isfinite(lambda_min) and n_envs * lambda_min <= 1.0):
        raise ConfigError(
            f"lambda_min={lambda_min!r} is not allowed with {n_envs} training environments: "
            f"use a finite number <= 1/{n_envs} = {1 / n_envs:.6g} (so that 1 - m*lambda_min >= 0); "
            "negative values extrapolate."
        )


def mm_rex_risk(risks: Tensor, lambda_min: float) -> Tensor:
    """The paper's MM-REx risk ``(1 − m·λ_min)·max_e R_e + λ_min·Σ_e R_e`` of m env risks."""
    n_envs = risks.numel()
    check_lambda_min(lambda_min, n_envs)
    return (1.0 - n_envs * lambda_min) * risks.amax() + lambda_min * risks.sum()


def lambda_min_for(weight: float, n_envs: int) -> float:
    """λ_min that penalty weight β stands for with ``n_envs`` envs: ``(1 − β) / n_envs``."""
    return (1.0 - weight) / n_envs


def max_excess_risk(risks: Tensor) -> Tensor:
    """``max_e R_e − mean_e R_e``: the MM-REx penalty (the gradient of max is split over ties)."""
    return risks.amax() - risks.mean()


class MMREx(MultiEnvAlgorithm):
    """Mean risk + β × (max risk − mean risk), i.e. MM-REx with λ_min = (1 − β) / m."""

    name, label, table_order = "mmrex", "MM-REx", 40
    min_train_envs = 2

    def objective(self, batch: EnvBatch) -> Objective:
        self.check_environments(len(batch))
        risks = torch.stack([risk for risk, _, _ in self.env_risks(batch).values()])
        lambda_min = lambda_min_for(self.schedule.weight_at(self.global_step), len(risks))
        logs = {"max_risk": risks.amax(), "lambda_min": risks.new_tensor(lambda_min)}
        return Objective(risk=risks.mean(), penalty=max_excess_risk(risks), logs=logs)
