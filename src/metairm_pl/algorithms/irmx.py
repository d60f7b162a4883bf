"""IRMX (Chen et al. 2023, "Pareto Invariant Risk Minimization"): IRMv1 and V-REx together.

Training loss ``mean_e R_e + w · (mean_e P_e + Var_e(R_e))``: ``P_e`` the IRMv1 penalty (the
squared gradient of the env risk w.r.t. a dummy scale on the logits, full batch, as the IRM
code and PAIR's Colored MNIST loop compute it) and ``Var`` the *unbiased* variance of the env
risks (``torch.var``'s default, as PAIR's code), one weight ``w`` shared by both penalties as
in PAIR's scalarised IRMX (``WILDS/src/main.py``, ``penalty_weight2 <= 0``). ``w`` follows the
shared :class:`~metairm_pl.algorithms.schedule.PenaltySchedule` (anneal and rescale of the IRM
code).
"""

from __future__ import annotations

import torch

from metairm_pl.algorithms.base import MultiEnvAlgorithm, Objective, irm_penalty


class IRMX(MultiEnvAlgorithm):
    """Mean risk + weight × (mean IRMv1 penalty + unbiased variance of the env risks)."""

    name, label, table_order = "irmx", "IRMX", 90
    min_train_envs = 2

    def objective(self, batch) -> Objective:
        risks, penalties = [], []
        for risk, logits, y in self.env_risks(batch).values():
            risks.append(risk)
            penalties.append(irm_penalty(logits, y, self.risk_fn))
        risks = torch.stack(risks)
        irm, variance = torch.stack(penalties).mean(), risks.var(correction=1)
        return Objective(
            risk=risks.mean(), penalty=irm + variance, logs={"irm_penalty": irm, "risk_variance": variance}
        )
