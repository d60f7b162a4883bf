"""Fishr (Rame, Dancette, Cord 2022, "Fishr: Invariant Gradient Variances for Out-of-Distribution
Generalization"), as its IRM-protocol code computes it (``alexrame/fishr``,
``coloredmnist/train_coloredmnist.py``).

Per training env e, the per-sample gradients of the risk w.r.t. the classifier layer (the
last ``nn.Linear``, weight and bias) are taken with ``torch.func`` (``vmap`` of ``grad`` over
the examples, differentiable w.r.t. the features and the classifier); their variance over the
env's examples, coordinate by coordinate, centred and divided by N, is ``v_e``. The penalty is
``Σ_e ‖v_e − v̄‖²`` with ``v̄`` the plain mean over envs (a sum over coordinates and envs:
``½‖v_1 − v_2‖²`` for two envs), and the training loss is ``mean_e R_e + w · penalty`` on the
shared :class:`~metairm_pl.algorithms.schedule.PenaltySchedule` (the IRM code's anneal and
rescale, as the reference script). No moving average (DomainBed's ``ema``): the reference
script has none.

The reference takes BackPACK's per-sample gradients of the *mean* loss (each one divided by
N) and multiplies them by N; ours are the per-sample gradients themselves. Equal in exact
arithmetic; in float32 the round trip through 1/N moves the penalty by about 1e-6 relative
(``tests/algorithms/test_fishr.py`` compares both in float64 and float32).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from metairm_pl.algorithms.base import MultiEnvAlgorithm, Objective, full_precision


def per_sample_gradients(classifier: torch.nn.Module, features: Tensor, y: Tensor, risk_fn) -> dict[str, Tensor]:
    """``{name: [N, *shape]}``: the gradient of each example's risk w.r.t. each parameter of
    ``classifier``, differentiable w.r.t. ``features`` and the parameters."""
    params = dict(classifier.named_parameters())

    def example_risk(parameters: dict[str, Tensor], feature: Tensor, label: Tensor) -> Tensor:
        return risk_fn(functional_call(classifier, parameters, (feature.unsqueeze(0),)), label.unsqueeze(0))

    return vmap(grad(example_risk), in_dims=(None, 0, 0))(params, features, y)


def gradient_variance(gradients: dict[str, Tensor]) -> Tensor:
    """Centred variance over examples (divisor N) of every coordinate, flattened in name order."""
    flat = torch.cat([gradients[name].flatten(start_dim=1) for name in sorted(gradients)], dim=1)
    return (flat - flat.mean(dim=0, keepdim=True)).pow(2).mean(dim=0)


def fishr_penalty(variances: list[Tensor]) -> Tensor:
    """``Σ_e ‖v_e − v̄‖²``, ``v̄`` the unweighted mean of the envs' gradient variances."""
    stacked = torch.stack(variances)
    return (stacked - stacked.mean(dim=0)).pow(2).sum()


class Fishr(MultiEnvAlgorithm):
    """Mean risk + weight × the spread across envs of the classifier's gradient variances."""

    name, label, table_order = "fishr", "Fishr", 70
    min_train_envs = 2

    def objective(self, batch) -> Objective:
        risks, variances = [], []
        classifier = self.network.classifier
        for risk, _, y, features in self.env_features(batch).values():
            risks.append(risk)
            with torch.autocast(device_type=features.device.type, enabled=False):  # the penalty in float32
                gradients = per_sample_gradients(classifier, full_precision(features), y, self.risk_fn)
            variances.append(gradient_variance(gradients))
        return Objective(risk=torch.stack(risks).mean(), penalty=fishr_penalty(variances))
