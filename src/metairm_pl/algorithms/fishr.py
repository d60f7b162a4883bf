"""Fishr (Rame, Dancette, Cord 2022, "Fishr: Invariant Gradient Variances for Out-of-Distribution
Generalization"), as its IRM-protocol code computes it (``alexrame/fishr``,
``coloredmnist/train_coloredmnist.py``).

Per training env e, the per-sample gradients of the risk w.r.t. the classifier layer (the
last ``nn.Linear``, weight and bias) enter through their variance over the env's examples,
coordinate by coordinate, centred and divided by N, ``v_e``. Each example's gradient w.r.t.
its own logits, ``g_i``, comes from ``torch.func`` (``vmap`` of ``grad``: any risk, logistic,
softmax or squared); the layer's chain rule makes the weight's per-sample gradient ``g_i h_iᵀ``
(``h_i`` its input), so ``v_e`` is ``mean_i g_i² h_i²ᵀ − (mean_i g_i h_iᵀ)²`` for the weight and
``mean_i g_i² − (mean_i g_i)²`` for the bias: two matrix products over the env, never the N
per-sample gradients themselves, differentiable w.r.t. the features and the classifier. The
penalty is ``Σ_e ‖v_e − v̄‖²`` with ``v̄`` the plain mean over envs (a sum over coordinates and
envs: ``½‖v_1 − v_2‖²`` for two envs), and the training loss is ``mean_e R_e + w · penalty`` on the
shared :class:`~metairm_pl.algorithms.schedule.PenaltySchedule` (the IRM code's anneal and
rescale, as the reference script). No moving average (DomainBed's ``ema``): the reference
script has none.

The reference materialises BackPACK's per-sample gradients of the *mean* loss (each divided by
N, then multiplied by N) and centres them before squaring; ours are equal in exact arithmetic.
In float32 the rounding differs: ``tests/algorithms/test_fishr.py`` compares both in float64
(1e-10) and pins the float32 difference.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vmap

from metairm_pl.algorithms.base import MultiEnvAlgorithm, Objective, full_precision


def logit_gradients(logits: Tensor, y: Tensor, risk_fn) -> Tensor:
    """``[N, k]``: each example's gradient of its own risk w.r.t. its logits (``torch.func``)."""

    def example_risk(logit: Tensor, label: Tensor) -> Tensor:
        return risk_fn(logit.unsqueeze(0), label.unsqueeze(0))

    return vmap(grad(example_risk))(logits, y)


def gradient_variance(logit_grads: Tensor, features: Tensor) -> Tensor:
    """Centred variance over examples (divisor N) of every coordinate of a linear layer's
    per-sample gradients (``g_i h_iᵀ`` and ``g_i``), flattened as the bias then the weight.

    ``E[x²] − E[x]²`` loses digits when the mean is large next to the spread, so both moments are
    accumulated in float64 (two matrix-vector products per logit: cheap) and the result cast back."""
    dtype, n = features.dtype, len(features)
    g, h = logit_grads.double(), features.double()
    weight = (g.square().t() @ h.square()) / n - ((g.t() @ h) / n).square()
    bias = g.square().mean(dim=0) - g.mean(dim=0).square()
    return torch.cat([bias.flatten(), weight.flatten()]).to(dtype)


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
        for risk, logits, y, features in self.env_features(batch).values():
            risks.append(risk)
            with torch.autocast(device_type=features.device.type, enabled=False):  # the penalty in float32
                grads = logit_gradients(full_precision(logits), y, self.risk_fn)
                variances.append(gradient_variance(grads, full_precision(features)))
        return Objective(risk=torch.stack(risks).mean(), penalty=fishr_penalty(variances))
