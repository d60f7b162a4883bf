"""GroupDRO (Sagawa et al. 2020), as DomainBed's ``GroupDRO``: the env risks weighted by ``q``.

Per step, ``q`` takes one exponentiated-gradient step towards the worst env with this step's
(detached) risks, ``q_e ← q_e · exp(eta · R_e)``, is renormalised, and the risk trained on is
``Σ_e q_e R_e`` with the updated ``q`` (no division by the number of envs: a convex
combination, the mean risk when ``q`` is uniform). ``q`` starts uniform and is a buffer, so
checkpoints hold it and a resumed run continues it exactly. Adds no penalty (the schedule's
weight stays 0); L2 and the optimizer step are the base class's.
"""

from __future__ import annotations

import math

import torch

from metairm_pl.algorithms.base import MultiEnvAlgorithm, Objective
from metairm_pl.errors import ConfigError


class GroupDRO(MultiEnvAlgorithm):
    """Exponentiated-gradient env weights ``q`` with step size ``eta`` (DomainBed default 0.01)."""

    name, label, table_order = "group_dro", "GroupDRO", 50
    min_train_envs = 2

    def __init__(self, *args, eta: float = 0.01, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
            raise ConfigError(f"algorithm.eta={eta!r} is not allowed: use a finite step size >= 0.")
        self.eta = float(eta)

    def setup_environments(self, train_env_names) -> None:
        super().setup_environments(train_env_names)
        n_envs = len(train_env_names)
        self.register_buffer("q", torch.full((n_envs,), 1.0 / n_envs))

    def objective(self, batch) -> Objective:
        risks = torch.stack([risk for risk, _, _ in self.env_risks(batch).values()])
        self.q.mul_(torch.exp(self.eta * risks.detach()))  # exponentiated-gradient step on q
        self.q.div_(self.q.sum())
        return Objective(risk=torch.dot(self.q, risks))
