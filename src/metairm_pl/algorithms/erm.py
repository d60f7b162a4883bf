"""Empirical risk minimization over the pooled training environments."""

from __future__ import annotations

import torch

from metairm_pl.algorithms.base import EnvBatch, MultiEnvAlgorithm, Objective


class ERM(MultiEnvAlgorithm):
    """Mean of the per-environment risks (equal-sized envs: the pooled risk); no penalty."""

    name = "erm"
    min_train_envs = 1

    def objective(self, batch: EnvBatch) -> Objective:
        risks = torch.stack([risk for risk, _, _ in self.env_risks(batch).values()])
        return Objective(risk=risks.mean())
