"""IB-IRM equals its authors' IRM-protocol loss (ahujak/IB-IRM, AC-CMNIST val_main.py) and
DomainBed's IB_IRM up to one stated difference, the IRMv1 penalty's estimator; both references
are transcribed below as independent checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metairm_pl.algorithms.ib_irm import IBIRM
from metairm_pl.algorithms.schedule import PenaltySchedule
from metairm_pl.errors import ConfigError

from .conftest import at_step, gradients, training_loss


def squared_scale_gradient(logits, y):
    scale = torch.ones((), dtype=logits.dtype, requires_grad=True)
    (g,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(logits * scale, y), [scale], create_graph=True)
    return (g**2).sum()


def split_scale_gradient(logits, y):
    """DomainBed's _irm_penalty: even-row gradient times odd-row gradient of the dummy scale."""
    scale = torch.ones((), dtype=logits.dtype, requires_grad=True)
    (g1,) = torch.autograd.grad(
        F.binary_cross_entropy_with_logits(logits[::2] * scale, y[::2]), [scale], create_graph=True
    )
    (g2,) = torch.autograd.grad(
        F.binary_cross_entropy_with_logits(logits[1::2] * scale, y[1::2]), [scale], create_graph=True
    )
    return (g1 * g2).sum()


def authors_loss(features, logits, labels, params, step, l2, penalty_weight, anneal, ib_lambda):
    """ahujak/IB-IRM AC-CMNIST: (nll + l2 + ib_lambda var + w pen) / w once w > 1; w 0 before anneal."""
    nll = torch.stack([F.binary_cross_entropy_with_logits(z, y) for z, y in zip(logits, labels)]).mean()
    loss = nll + l2 * sum(p.norm().pow(2) for p in params)
    loss = loss + ib_lambda * torch.stack([h.var(dim=0).mean() for h in features]).mean()
    penalty = torch.stack([squared_scale_gradient(z, y) for z, y in zip(logits, labels)]).mean()
    weight = penalty_weight if step >= anneal else 0.0
    loss = loss + weight * penalty
    return loss / weight if weight > 1.0 else loss


def domainbed_loss(
    features, logits, labels, step, irm_lambda, irm_anneal, ib_lambda, ib_anneal, penalty=split_scale_gradient
):
    """DomainBed IB_IRM: nll + w_irm irm + w_ib ib (means over envs), w_irm 1 and w_ib 0 before
    their anneal steps, never divided."""
    w_irm = irm_lambda if step >= irm_anneal else 1.0
    w_ib = ib_lambda if step >= ib_anneal else 0.0
    nll = torch.stack([F.binary_cross_entropy_with_logits(z, y) for z, y in zip(logits, labels)]).mean()
    irm = torch.stack([penalty(z, y) for z, y in zip(logits, labels)]).mean()
    ib = torch.stack([h.var(dim=0).mean() for h in features]).mean()
    return nll + w_irm * irm + w_ib * ib


def pieces(network, batch):
    features = [network.features(x) for x, _ in batch.values()]
    return features, [network.classifier(h) for h in features], [y.float().unsqueeze(1) for _, y in batch.values()]


@pytest.mark.parametrize("step", [0, 100])  # before the anneal (weight 0), after it (10000, divided)
def test_equals_the_authors_irm_protocol_loss(make_mlp, make_batch, step):
    network, batch = make_mlp(), make_batch()
    schedule = PenaltySchedule(weight=10000.0, anneal_steps=100, warmup_weight=0.0, rescale=True)
    method = at_step(IBIRM)(network, optimizer=None, l2_weight=0.001, penalty=schedule, ib_weight=30.0)
    method.global_step = step
    reference = authors_loss(*pieces(network, batch), list(network.parameters()), step, 0.001, 10000.0, 100, 30.0)
    ours = training_loss(method, batch)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)
    for a, b in zip(gradients(ours, network), gradients(reference, network)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("step", [0, 5, 10])
def test_equals_domainbed_but_for_the_penalty_estimator(make_mlp, make_batch, step):
    """With DomainBed's schedule (IRM weight 1 before step 5, IB weight 0 before step 10, no
    division), ours is DomainBed's loss with its split-batch penalty replaced by the IRM code's
    full-batch squared gradient: loss_ours = loss_DomainBed + w_irm (mean full − mean split)."""
    network, batch = make_mlp(), make_batch()
    schedule = PenaltySchedule(weight=50.0, anneal_steps=5, warmup_weight=1.0, rescale=False)
    method = at_step(IBIRM)(network, optimizer=None, penalty=schedule, ib_weight=20.0, ib_anneal_steps=10)
    method.global_step = step
    parts = pieces(network, batch)
    reference = domainbed_loss(*parts, step, 50.0, 5, 20.0, 10)
    w_irm = 50.0 if step >= 5 else 1.0
    full = torch.stack([squared_scale_gradient(z, y) for z, y in zip(*parts[1:])]).mean()
    split = torch.stack([split_scale_gradient(z, y) for z, y in zip(*parts[1:])]).mean()
    ours = training_loss(method, batch)
    torch.testing.assert_close(ours, reference + w_irm * (full - split), rtol=1e-6, atol=0)
    same_estimator = domainbed_loss(*parts, step, 50.0, 5, 20.0, 10, penalty=squared_scale_gradient)
    for a, b in zip(gradients(ours, network), gradients(same_estimator, network)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert not torch.isclose(full, split)  # the two estimators do differ on these envs


def test_bad_ib_settings_are_named(make_mlp):
    with pytest.raises(ConfigError, match="ib_weight=-1"):
        IBIRM(make_mlp(), optimizer=None, ib_weight=-1)
    with pytest.raises(ConfigError, match="ib_anneal_steps=1.5"):
        IBIRM(make_mlp(), optimizer=None, ib_anneal_steps=1.5)
