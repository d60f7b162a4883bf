"""IRMX equals PAIR's IRMX objective (LFhase/PAIR: the Colored MNIST loop's ERM, IRMv1 and
V-REx terms, combined with one shared weight as its scalarised IRMX), on the IRM code's
schedule; the reference is transcribed below as an independent check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metairm_pl.algorithms.irmx import IRMX
from metairm_pl.algorithms.schedule import PenaltySchedule

from .conftest import at_step, gradients, training_loss

SCHEDULE = dict(weight=91257.18613115903, anneal_steps=190, warmup_weight=1.0, rescale=True)
L2 = 0.00110794568


def pair_irmx_loss(logits_per_env, labels_per_env, step, params):
    """PAIR's terms: mean of env BCEs, mean over envs of the squared dummy-scale gradient,
    torch.var (unbiased) of the env risks; loss = erm + l2 + w (irm + vrex), / w when w > 1."""
    risks, penalties = [], []
    for logits, y in zip(logits_per_env, labels_per_env):
        scale = torch.ones((), dtype=logits.dtype, requires_grad=True)
        risk = F.binary_cross_entropy_with_logits(logits, y)
        (g,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(logits * scale, y), [scale], create_graph=True)
        risks.append(risk)
        penalties.append((g**2).sum())
    risks = torch.stack(risks)
    erm, irm, vrex = risks.mean(), torch.stack(penalties).mean(), risks.var()
    weight = SCHEDULE["weight"] if step >= SCHEDULE["anneal_steps"] else SCHEDULE["warmup_weight"]
    loss = erm + L2 * sum(p.pow(2).sum() for p in params) + weight * (irm + vrex)
    return loss / weight if weight > 1.0 else loss


@pytest.mark.parametrize("step", [0, 190])
@pytest.mark.parametrize("n_envs", [2, 3])
def test_loss_and_gradients_equal_pair(make_mlp, make_batch, step, n_envs):
    network = make_mlp()
    batch = make_batch(n_envs=n_envs)
    method = at_step(IRMX)(network, optimizer=None, l2_weight=L2, penalty=PenaltySchedule(**SCHEDULE))
    method.global_step = step
    logits = [network(x) for x, _ in batch.values()]
    labels = [y.float().unsqueeze(1) for _, y in batch.values()]
    reference = pair_irmx_loss(logits, labels, step, list(network.parameters()))
    ours = training_loss(method, batch)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)
    for a, b in zip(gradients(ours, network), gradients(reference, network)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_with_two_envs_the_variance_is_half_the_squared_gap(make_mlp, make_batch):
    network, batch = make_mlp(), make_batch()
    method = IRMX(network, optimizer=None)
    objective = method.objective(batch)
    r0, r1 = (method.risk_fn(network(x), y) for x, y in batch.values())
    torch.testing.assert_close(objective.logs["risk_variance"], (r0 - r1) ** 2 / 2)
    torch.testing.assert_close(objective.penalty, objective.logs["irm_penalty"] + (r0 - r1) ** 2 / 2)
