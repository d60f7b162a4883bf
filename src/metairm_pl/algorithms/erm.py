"""Empirical risk minimization over the pooled training environments."""

from __future__ import annotations

import torch

from metairm_pl.algorithms.base import EnvBatch, MultiEnvAlgorithm, Objective


class ERM(MultiEnvAlgorithm):
    """Mean of the per-environment risks (equal-sized envs: the pooled risk); no penalty."""

    name, label, table_order = "erm", "ERM", 10
    min_train_envs = 1
    # The oracle is ERM on colour-summed inputs (conf/algorithm/grayscale.yaml sets model.grayscale).
    presets = {"grayscale": {"label": "ERM (grayscale)", "table_order": 1000}}

    def objective(self, batch: EnvBatch) -> Objective:
        risks = torch.stack([risk for risk, _, _ in self.env_risks(batch).values()])
        return Objective(risk=risks.mean())
