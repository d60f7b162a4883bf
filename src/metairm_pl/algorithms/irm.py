"""IRMv1 (Arjovsky et al. 2019): mean risk + weight x mean over envs of the dummy-scale penalty."""

from __future__ import annotations

import torch

from metairm_pl.algorithms.base import EnvBatch, MultiEnvAlgorithm, Objective, irm_penalty


class IRMv1(MultiEnvAlgorithm):
    """The IRM Colored MNIST objective; weight, anneal and rescale come from ``penalty``."""

    name, label, table_order = "irm", "IRMv1", 20
    min_train_envs = 2

    def objective(self, batch: EnvBatch) -> Objective:
        risks, penalties = [], []
        for risk, logits, y in self.env_risks(batch).values():
            risks.append(risk)
            penalties.append(irm_penalty(logits, y, self.risk_fn))
        return Objective(risk=torch.stack(risks).mean(), penalty=torch.stack(penalties).mean())
