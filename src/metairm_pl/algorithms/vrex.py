"""V-REx (Krueger et al. 2020, "Out-of-Distribution Generalization via Risk Extrapolation").

Training loss: ``mean_e R_e + w · Var_e(R_e)`` with the *unbiased* variance (divisor m − 1)
over the m training envs; ``w`` follows the shared :class:`PenaltySchedule`.

Which variance, and why: the authors' Colored MNIST code (capybaralet/REx_code_release,
``InvariantRiskMinimization/colored_mnist/main.py``, ``--mse True``, the default) minimises
``R_1 + R_2 + l2·‖θ‖² + w·(R_1 − R_2)²`` — the *sum* of the two risks plus the squared
difference, i.e. 4× the population variance.  Halving it gives
``mean + (l2/2)·‖θ‖² + w·(R_1 − R_2)²/2``, and ``(R_1 − R_2)²/2`` is exactly the unbiased
variance of two values.  So with this penalty the authors' ``--penalty_weight`` carries over
unchanged (their ``l2_regularizer_weight`` is halved), and the loss is half of theirs at
every step, anneal and rescale included.  A population-variance weight (as in DomainBed)
equals ``w · m / (m − 1)`` here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metairm_pl.algorithms.base import EnvBatch, MultiEnvAlgorithm, Objective
from metairm_pl.errors import ConfigError


def risk_variance(risks: Tensor) -> Tensor:
    """Unbiased variance of the per-env risks (``(R_1 − R_2)² / 2`` for two envs)."""
    if risks.numel() < 2:
        raise ConfigError(f"V-REx needs the risks of at least 2 training environments, got {risks.numel()}.")
    return risks.var(correction=1)


class VREx(MultiEnvAlgorithm):
    """Mean training risk + weight × unbiased variance of the training risks."""

    name, label, table_order = "vrex", "V-REx", 30
    min_train_envs = 2

    def objective(self, batch: EnvBatch) -> Objective:
        self.check_environments(len(batch))
        risks = torch.stack([risk for risk, _, _ in self.env_risks(batch).values()])
        return Objective(risk=risks.mean(), penalty=risk_variance(risks))
