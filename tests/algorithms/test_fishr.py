"""Fishr equals its IRM-protocol reference (alexrame/fishr coloredmnist/train_coloredmnist.py):
the reference's BackPACK arithmetic, transcribed below as an independent check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metairm_pl.algorithms.fishr import Fishr, gradient_variance, logit_gradients
from metairm_pl.algorithms.schedule import PenaltySchedule

from .conftest import at_step, gradients, training_loss

IRM_PROTOCOL = dict(weight=91257.18613115903, anneal_steps=190, warmup_weight=1.0, rescale=True)
L2 = 0.00110794568


# -- the reference, transcribed (BackPACK's BatchGrad of the mean BCE is g_i / N; the script x N) --
def reference_penalty(features_by_env, labels_by_env, weight, bias):
    variances = []
    for h, y in zip(features_by_env, labels_by_env):
        n = y.size(0)
        z = h @ weight.t() + bias
        r = (torch.sigmoid(z) - y) / n
        grads = {"weight": (r.unsqueeze(2) * h.unsqueeze(1)).reshape(n, -1) * n, "bias": r.reshape(n, -1) * n}
        v = {}
        for name, g in grads.items():
            g = g - g.mean(dim=0, keepdim=True)
            v[name] = g.pow(2).mean(dim=0)
        variances.append(v)
    keys = sorted(variances[0])
    flat = [torch.cat([v[k].view(-1) for k in keys]) for v in variances]
    v_mean = torch.stack(flat, dim=0).mean(dim=0)
    penalty = 0.0
    for f in flat:
        penalty = penalty + (f - v_mean).pow(2).sum()
    return penalty


def reference_loss(network, batch, step):
    features = [network.features(x) for x, _ in batch.values()]
    labels = [y.to(features[0].dtype).unsqueeze(1) for _, y in batch.values()]
    logits = [network.classifier(h) for h in features]
    nll = torch.stack([F.binary_cross_entropy_with_logits(z, y) for z, y in zip(logits, labels)]).mean()
    loss = nll + L2 * sum(p.norm().pow(2) for p in network.parameters())
    weight = IRM_PROTOCOL["weight"] if step >= IRM_PROTOCOL["anneal_steps"] else 1.0
    loss = loss + weight * reference_penalty(features, labels, network.classifier.weight, network.classifier.bias)
    return loss / weight if weight > 1.0 else loss


def make_fishr(network, num_classes: int = 2):
    schedule = PenaltySchedule(**IRM_PROTOCOL)
    fishr = at_step(Fishr)(network, optimizer=None, num_classes=num_classes, l2_weight=L2, penalty=schedule)
    fishr.setup_environments(["e0", "e1"])
    return fishr


@pytest.mark.parametrize("step", [0, 190])  # penalty weight 1, then 91257 with the loss divided by it
def test_loss_and_gradients_equal_the_reference_in_float64(make_mlp, make_batch, step):
    network = make_mlp(dtype=torch.float64)
    batch = make_batch(dtype=torch.float64)
    fishr = make_fishr(network)
    fishr.global_step = step
    ours, reference = training_loss(fishr, batch), reference_loss(network, batch, step)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=0)
    for a, b in zip(gradients(ours, network), gradients(reference, network)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("step", [0, 190])
def test_in_float32_only_the_rounding_differs(make_mlp, make_batch, step):
    """In float32 the reference divides each per-sample gradient by N, multiplies it back and
    centres the materialised gradients; ours takes both moments in float64. The penalty is a
    difference of nearly equal variances, so rounding shows: ours is within 3.4e-7 of the float64
    truth here, the reference within 1.7e-6; the two agree within 1e-5 (loss and gradients)."""
    network = make_mlp()
    batch = make_batch(size=400)
    fishr = make_fishr(network)
    fishr.global_step = step
    ours, reference = training_loss(fishr, batch), reference_loss(network, batch, step)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=0)
    for a, b in zip(gradients(ours, network), gradients(reference, network)):
        scale = b.abs().max()
        assert (a - b).abs().max() <= 1e-5 * scale


def test_the_variance_is_that_of_the_explicit_per_sample_gradients_for_one_logit_and_for_k(make_mlp, make_batch):
    """Each example's logit gradient is the analytic one (binary, one logit: σ(z) − y; k classes:
    p − e_y), and the variance from two matrix products equals the centred, /N variance of the
    explicit per-sample gradients g_i h_iᵀ and g_i (float64)."""
    for num_outputs, num_classes in ((1, 2), (3, 3)):
        network = make_mlp(num_outputs=num_outputs, dtype=torch.float64)
        x, y = make_batch(num_classes=num_classes, dtype=torch.float64)["e0"]
        h = network.features(x)
        z = network.classifier(h)
        grads = logit_gradients(z, y, make_fishr(network, num_classes).risk_fn)
        if num_outputs == 1:
            residual = torch.sigmoid(z) - y[:, None].double()
        else:
            residual = torch.softmax(z, dim=1) - F.one_hot(y, num_classes).double()
        torch.testing.assert_close(grads, residual)
        explicit = torch.cat([residual, (residual[:, :, None] * h[:, None, :]).flatten(1)], dim=1)
        centred = explicit - explicit.mean(dim=0)
        torch.testing.assert_close(gradient_variance(grads, h), centred.pow(2).mean(dim=0), rtol=1e-10, atol=1e-14)


def test_two_envs_give_half_the_squared_distance_of_their_variances(make_mlp, make_batch):
    network = make_mlp(dtype=torch.float64)
    batch = make_batch(dtype=torch.float64)
    fishr = make_fishr(network)
    variances = []
    for x, y in batch.values():
        h = network.features(x)
        variances.append(gradient_variance(logit_gradients(network.classifier(h), y, fishr.risk_fn), h))
    objective = fishr.objective(batch)
    torch.testing.assert_close(objective.penalty, 0.5 * (variances[0] - variances[1]).pow(2).sum())
    assert objective.penalty.requires_grad
