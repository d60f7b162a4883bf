"""MLDG equals DomainBed's first-order MLDG update (its pre-2022 cyclic pairing, with which its
results were made) and the paper's second-order objective; both references are transcribed
below as independent checks (DomainBed's inner step runs a real torch.optim.Adam)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from metairm_pl.algorithms.mldg import MLDG
from metairm_pl.errors import ConfigError

from .conftest import gradients, training_loss


def random_pairs_of_minibatches(minibatches, perm):
    pairs = []
    for i in range(len(minibatches)):
        j = i + 1 if i < len(minibatches) - 1 else 0
        (xi, yi), (xj, yj) = minibatches[perm[i]], minibatches[perm[j]]
        n = min(len(xi), len(xj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


def domainbed_mldg_grads(model, pairs, num_mb, beta, lr, risk_fn):
    """The gradient DomainBed's MLDG accumulates in p.grad before its outer step, and its objective."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    grads = [torch.zeros_like(p) for p in params]
    objective = 0.0
    for (xi, yi), (xj, yj) in pairs:
        inner = [p.clone().requires_grad_(True) for p in params]
        inner_opt = torch.optim.Adam(inner, lr=lr, weight_decay=0.0)
        inner_obj = risk_fn(functional_call(model, dict(zip(names, inner)), (xi,)), yi)
        inner_opt.zero_grad()
        inner_obj.backward()
        inner_opt.step()
        for g, p in zip(grads, inner):
            g.add_(p.grad / num_mb)
        objective += inner_obj.item()
        loss_j = risk_fn(functional_call(model, dict(zip(names, inner)), (xj,)), yj)
        objective += (beta * loss_j).item()
        for g, g_j in zip(grads, torch.autograd.grad(loss_j, inner)):
            g.add_(beta * g_j / num_mb)
    return grads, objective / num_mb


def paper_mldg_loss(model, pairs, num_mb, beta, alpha, risk_fn):
    """F(θ) + β G(θ − α∇F(θ)) per pair, differentiated through the SGD step; / num_mb."""
    names = [n for n, _ in model.named_parameters()]
    live = [p for _, p in model.named_parameters()]
    total = 0.0
    for (xi, yi), (xj, yj) in pairs:
        li = risk_fn(functional_call(model, dict(zip(names, live)), (xi,)), yi)
        gi = torch.autograd.grad(li, live, create_graph=True)
        adapted = {n: p - alpha * g for n, p, g in zip(names, live, gi)}
        total = total + li + beta * risk_fn(functional_call(model, adapted, (xj,)), yj)
    return total / num_mb


def drawn_order(method, n_envs):
    """The order the method's next objective() draws, from a copy of its generator."""
    copy = torch.Generator().set_state(method.generator.get_state())
    return torch.randperm(n_envs, generator=copy).tolist()


@pytest.mark.parametrize("n_envs", [2, 3])
def test_first_order_gradient_equals_domainbed(make_mlp, make_batch, n_envs):
    network, batch = make_mlp(), make_batch(n_envs=n_envs)  # envs of 40, 43, 46 examples: truncation
    method = MLDG(network, optimizer=None, beta=0.7, inner_lr=0.01)
    envs = list(batch.values())
    pairs = random_pairs_of_minibatches(envs, drawn_order(method, n_envs))
    expected, objective = domainbed_mldg_grads(network, pairs, n_envs, 0.7, 0.01, method.risk_fn)
    ours = training_loss(method, batch)
    assert ours.item() == pytest.approx(objective, rel=1e-6)
    # torch's Adam step and the closed form lr·g/(|g|+eps) round differently, so θ' (and ∇R_j
    # there) differ by float32 rounding: within 1e-6 of the gradient's largest entry.
    scale = max(b.abs().max() for b in expected)
    for a, b in zip(gradients(ours, network), expected):
        assert (a - b).abs().max() <= 1e-6 * scale


@pytest.mark.parametrize("n_envs", [2, 3])
def test_second_order_equals_the_papers_objective(make_mlp, make_batch, n_envs):
    network, batch = make_mlp(dtype=torch.float64), make_batch(n_envs=n_envs, dtype=torch.float64)
    method = MLDG(network, optimizer=None, beta=0.5, inner_lr=0.2, second_order=True)
    pairs = random_pairs_of_minibatches(list(batch.values()), drawn_order(method, n_envs))
    reference = paper_mldg_loss(network, pairs, n_envs, 0.5, 0.2, method.risk_fn)
    ours = training_loss(method, batch)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)
    for a, b in zip(gradients(ours, network), gradients(reference, network)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_the_inner_lr_defaults_to_the_outer_one_as_domainbed(make_mlp):
    from functools import partial

    method = MLDG(make_mlp(), optimizer=partial(torch.optim.Adam, lr=0.003))
    assert method.inner_lr == 0.003
    with pytest.raises(ConfigError, match="algorithm.beta=-1"):
        MLDG(make_mlp(), optimizer=None, beta=-1, inner_lr=0.1)
