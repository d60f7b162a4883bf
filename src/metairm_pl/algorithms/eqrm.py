"""EQRM (Eastwood et al. 2022, "Probable Domain Generalization via Quantile Risk
Minimization"), as DomainBed's ``EQRM`` and ``cianeastwood/qrm``'s quantile compute it.

After ``burnin_steps`` steps of ERM (the mean of the env risks), the risk trained on is the
α-quantile of the distribution of env risks, estimated by a Gaussian kernel density over the
envs' risks (bandwidth ``1.06 · std · n^(-1/5)``, the unbiased std of the n risks):

* ``alpha`` in [0, 1): the quantile found by 32 bisection steps on the KDE's CDF between
  ``min + bw·Φ⁻¹(α)`` and ``max + bw·Φ⁻¹(α)``, in float64. Its gradient is that of the
  bisection's arithmetic, as the reference's (it reaches the smallest and largest risk and
  the bandwidth), not the implicit-function gradient of the exact quantile;
* ``alpha`` < 0 stands for ``log(1 − level)`` (levels near 1): ``mean_e R_e + bw·√(−2α)``.

At step ``burnin_steps`` (when > 0) Adam restarts with fresh moments at ``lr_after_burnin``
(DomainBed's ``eqrm_lr``; null keeps the learning rate). Where we differ, stated and tested:
all-equal risks (bandwidth 0) give their common value (the reference raises), and qrm's
frozen gradient-norm ratio after the burn-in is not applied (DomainBed does not apply it).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from metairm_pl.algorithms.base import MultiEnvAlgorithm, Objective
from metairm_pl.errors import ConfigError

BISECTION_STEPS = 32


def kde_bandwidth(risks: Tensor) -> Tensor:
    """Gaussian-optimal bandwidth ``1.06 · std · n^(-1/5)`` (unbiased std) of ``risks``."""
    return 1.06 * risks.std(correction=1) * risks.numel() ** -0.2


def kde_quantile(risks: Tensor, alpha: float, steps: int = BISECTION_STEPS) -> Tensor:
    """The ``alpha``-quantile of a Gaussian KDE over ``risks`` (module docstring), differentiable."""
    data, _ = torch.sort(risks)
    bandwidth = kde_bandwidth(data)
    if alpha < 0:
        return (data + bandwidth * math.sqrt(-2.0 * alpha)).mean()
    if bandwidth.item() == 0.0:  # a point mass: every quantile is the common value
        return data.mean()
    level = torch.tensor(alpha, dtype=torch.float64, device=data.device)
    normal_quantile = torch.erfinv(2 * level - 1) * math.sqrt(2)
    bracket = [data[0] + bandwidth * normal_quantile, data[-1] + bandwidth * normal_quantile]

    def cdf(x: Tensor) -> Tensor:
        return (0.5 * (1 + torch.erf((x - data) / bandwidth / math.sqrt(2)))).mean()

    middle = 0.5 * (bracket[0] + bracket[1])
    for _ in range(steps):
        bracket[int(cdf(middle) > level)] = middle
        following = 0.5 * (bracket[0] + bracket[1])
        if following == middle:
            break
        middle = following
    return middle.to(risks.dtype)


class EQRM(MultiEnvAlgorithm):
    """ERM for ``burnin_steps`` steps, then the KDE ``alpha``-quantile of the env risks."""

    name, label, table_order = "eqrm", "EQRM", 80
    min_train_envs = 2

    def __init__(
        self, *args, alpha: float = 0.75, burnin_steps: int = 0, lr_after_burnin: Optional[float] = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha < 1):
            raise ConfigError(
                f"algorithm.alpha={alpha!r} is not allowed: use a quantile level in [0, 1), or a negative "
                "log(1 - level) for levels near 1."
            )
        if isinstance(burnin_steps, bool) or not isinstance(burnin_steps, int) or burnin_steps < 0:
            raise ConfigError(f"algorithm.burnin_steps={burnin_steps!r} is not allowed: use an integer >= 0.")
        if lr_after_burnin is not None and not (math.isfinite(lr_after_burnin) and lr_after_burnin > 0):
            raise ConfigError(f"algorithm.lr_after_burnin={lr_after_burnin!r} is not allowed: use null or a lr > 0.")
        self.alpha = float(alpha)
        self.burnin_steps = burnin_steps
        self.lr_after_burnin = lr_after_burnin

    def training_step(self, batch, batch_idx: int) -> Tensor:
        if self.burnin_steps and self.global_step == self.burnin_steps:
            self.restart_optimizer(self.lr_after_burnin)
        return super().training_step(batch, batch_idx)

    def objective(self, batch) -> Objective:
        risks = torch.stack([risk for risk, _, _ in self.env_risks(batch).values()])
        if self.global_step < self.burnin_steps:
            return Objective(risk=risks.mean())
        return Objective(risk=kde_quantile(risks, self.alpha), logs={"mean_risk": risks.mean()})
