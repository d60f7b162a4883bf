"""IB-IRM (Ahuja et al. 2021, "Invariance principle meets information bottleneck"), as
DomainBed's ``IB_IRM`` with the IRM protocol's penalty and schedule.

Training loss ``mean_e R_e + w_ib(t) · mean_e V_e + w(t) · mean_e P_e``: ``V_e`` the
information-bottleneck term, the variance over the env's batch of each feature of the
classifier's input (unbiased, ``Tensor.var``'s default), averaged over features; ``P_e`` the
IRMv1 penalty. ``w_ib`` is ``ib_weight`` from step ``ib_anneal_steps`` on and 0 before (as
DomainBed); ``w`` is the shared :class:`~metairm_pl.algorithms.schedule.PenaltySchedule`,
whose rescale divides the whole loss (IB term included) by ``w`` once ``w > 1``, as the
authors' IRM-protocol code (``ahujak/IB-IRM``, ``AC-CMNIST``) does.

Where we differ from DomainBed, stated and pinned by ``tests/algorithms/test_ib_irm.py``:
its IRMv1 penalty is the split-batch product of the even and odd rows' dummy-scale gradients;
ours is the IRM code's full-batch squared gradient. DomainBed resets Adam at the anneal steps
and never divides the loss; the IRM protocol does neither reset (the schedule's ``rescale``
switches the division).
"""

from __future__ import annotations

import math

import torch

from metairm_pl.algorithms.base import MultiEnvAlgorithm, Objective, full_precision, irm_penalty
from metairm_pl.errors import ConfigError


class IBIRM(MultiEnvAlgorithm):
    """IRMv1 plus the per-env variance of the classifier's input, each with its own weight."""

    name, label, table_order = "ib_irm", "IB-IRM", 60
    min_train_envs = 2

    def __init__(self, *args, ib_weight: float = 100.0, ib_anneal_steps: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not (isinstance(ib_weight, (int, float)) and math.isfinite(ib_weight) and ib_weight >= 0):
            raise ConfigError(f"algorithm.ib_weight={ib_weight!r} is not allowed: use a finite number >= 0.")
        if isinstance(ib_anneal_steps, bool) or not isinstance(ib_anneal_steps, int) or ib_anneal_steps < 0:
            raise ConfigError(f"algorithm.ib_anneal_steps={ib_anneal_steps!r} is not allowed: use an integer >= 0.")
        self.ib_weight = float(ib_weight)
        self.ib_anneal_steps = ib_anneal_steps

    def ib_weight_at(self, step: int) -> float:
        return self.ib_weight if step >= self.ib_anneal_steps else 0.0

    def objective(self, batch) -> Objective:
        risks, penalties, variances = [], [], []
        for risk, logits, y, features in self.env_features(batch).values():
            risks.append(risk)
            penalties.append(irm_penalty(logits, y, self.risk_fn))
            variances.append(full_precision(features).var(dim=0).mean())
        ib = torch.stack(variances).mean()
        risk = torch.stack(risks).mean() + self.ib_weight_at(self.global_step) * ib
        return Objective(risk=risk, penalty=torch.stack(penalties).mean(), logs={"ib_penalty": ib})
