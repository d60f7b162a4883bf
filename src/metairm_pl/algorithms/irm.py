"""IRMv1 (Arjovsky et al. 2019): mean risk + weight x mean over envs of the dummy-scale penalty."""

from __future__ import annotations

import torch

from metairm_pl.algorithms.base import EnvBatch, MultiEnvAlgorithm, Objective, irm_penalty


class IRMv1(MultiEnvAlgorithm):
    """The IRM Colored MNIST objective; weight, anneal and rescale come from ``penalty``.

    ``dummy_bias``: penalise the gradient w.r.t. an additive dummy too (the linear unit-tests'
    IRMv1; off: the IRM code's penalty)."""

    name, label, table_order = "irm", "IRMv1", 20
    min_train_envs = 2

    def __init__(self, *args, dummy_bias: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dummy_bias = bool(dummy_bias)

    def objective(self, batch: EnvBatch) -> Objective:
        risks, penalties = [], []
        for risk, logits, y in self.env_risks(batch).values():
            risks.append(risk)
            penalties.append(irm_penalty(logits, y, self.risk_fn, self.dummy_bias))
        return Objective(risk=torch.stack(risks).mean(), penalty=torch.stack(penalties).mean())
