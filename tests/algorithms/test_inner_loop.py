"""Math tests for the Meta-IRM inner loop (float64, tiny models, < 1 s each)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metairm_pl.algorithms.inner_loop import (
    MetaObjective,
    adapt,
    gaussian_dropgrad,
    meta_objective,
    meta_pairs,
    population_std,
)

LAMBDA = 0.7
INNER_LR = 0.5
risk_fn = F.binary_cross_entropy_with_logits


# --------------------------------------------------------------------------- fixtures


def make_mlp(activation: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), activation, nn.Linear(4, 1), nn.Flatten(0)).double()


def make_envs(n_envs: int = 3, n_points: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    envs = []
    for e in range(n_envs):
        x = torch.randn(n_points, 3, generator=gen, dtype=torch.float64) + 0.5 * e
        y = (torch.rand(n_points, generator=gen, dtype=torch.float64) < 0.3 + 0.2 * e).double()
        envs.append((x, y))
    return envs


def leaf_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}


def outer_loss(model, params, envs, first_order=False, inner_steps=2) -> torch.Tensor:
    obj = meta_objective(model, params, envs, risk_fn, INNER_LR, inner_steps, first_order=first_order)
    return obj.meta_loss_sum + LAMBDA * obj.meta_loss_std


def autograd_gradient(model, envs, first_order=False) -> dict[str, torch.Tensor]:
    params = leaf_params(model)
    grads = torch.autograd.grad(outer_loss(model, params, envs, first_order), list(params.values()))
    return dict(zip(params, grads))


def central_fd_gradient(model, envs, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    fd = {}
    for name, value in base.items():
        grad = torch.zeros_like(value)
        for k in range(value.numel()):
            losses = []
            for sign in (1.0, -1.0):
                shifted = {n: v.clone() for n, v in base.items()}
                shifted[name].view(-1)[k] += sign * eps
                params = {n: v.requires_grad_(True) for n, v in shifted.items()}
                losses.append(outer_loss(model, params, envs).item())
            grad.view(-1)[k] = (losses[0] - losses[1]) / (2 * eps)
        fd[name] = grad
    return fd


def max_relative_error(a: dict, b: dict) -> float:
    """max_k |a_k − b_k| / max(|a_k|, |b_k|) over elements with magnitude > 1e-8."""
    worst = 0.0
    for name in a:
        scale = torch.maximum(a[name].abs(), b[name].abs())
        mask = scale > 1e-8
        worst = max(worst, ((a[name] - b[name]).abs()[mask] / scale[mask]).max().item())
    return worst


# --------------------------------------------------------------------------- (a) second order vs FD


def test_second_order_gradient_matches_central_finite_differences_tanh():
    model, envs = make_mlp(nn.Tanh()), make_envs()
    rel_err = max_relative_error(autograd_gradient(model, envs), central_fd_gradient(model, envs))
    assert rel_err < 1e-5, rel_err


def _min_abs_relu_input(model, envs) -> float:
    """Smallest |pre-activation| seen by the ReLU over all inner and meta forwards."""
    seen = []
    hook = model[1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().abs().min().item()))
    try:
        outer_loss(model, leaf_params(model), envs)
    finally:
        hook.remove()
    return min(seen)


def test_second_order_gradient_matches_central_finite_differences_relu():
    # ReLU is piecewise linear, so FD is exact up to rounding as long as no pre-activation
    # (at θ or any θ'_i) lies within the perturbation's reach of the kink; assert that margin.
    model, envs = make_mlp(nn.ReLU()), make_envs()
    assert _min_abs_relu_input(model, envs) > 1e-3
    rel_err = max_relative_error(autograd_gradient(model, envs), central_fd_gradient(model, envs))
    assert rel_err < 1e-5, rel_err


# --------------------------------------------------------------------------- (b) first order


def first_order_reference(model, envs, inner_steps=2) -> dict[str, torch.Tensor]:
    """FOMAML by hand: SGD-adapt a copy, then Σ_k (1 + λ ∂σ/∂L_k) ∇_{θ'_i} L_k."""
    pair_losses, pair_grads = [], []
    for i, (x_i, y_i) in enumerate(envs):
        adapted = copy.deepcopy(model)
        opt = torch.optim.SGD(adapted.parameters(), lr=INNER_LR)
        for _ in range(inner_steps):
            opt.zero_grad()
            risk_fn(adapted(x_i), y_i).backward()
            opt.step()
        for j, (x_j, y_j) in enumerate(envs):
            if j == i:
                continue
            loss = risk_fn(adapted(x_j), y_j)
            pair_losses.append(loss.item())
            pair_grads.append(torch.autograd.grad(loss, list(adapted.parameters())))
    n = len(pair_losses)
    mean = sum(pair_losses) / n
    sigma = math.sqrt(sum((v - mean) ** 2 for v in pair_losses) / n)
    weights = [1 + LAMBDA * (v - mean) / (n * sigma) for v in pair_losses]
    names = [name for name, _ in model.named_parameters()]
    return {name: sum(w * g[k] for w, g in zip(weights, pair_grads)) for k, name in enumerate(names)}


def test_first_order_gradient_matches_detached_reference_and_differs_from_second_order():
    model, envs = make_mlp(nn.Tanh()), make_envs()
    first = autograd_gradient(model, envs, first_order=True)
    reference = first_order_reference(model, envs)
    assert max_relative_error(first, reference) < 1e-10
    second = autograd_gradient(model, envs, first_order=False)
    diff = max((first[n] - second[n]).abs().max().item() for n in first)
    scale = max(second[n].abs().max().item() for n in second)
    assert diff > 0.05 * scale, (diff, scale)


# --------------------------------------------------------------------------- (b2) bf16 autocast vs float64

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def bf16_meta_gradient(model: nn.Module, envs, autocast: bool) -> torch.Tensor:
    """∇θ of the outer loss with the project's risk (float32 losses from bf16 logits), flattened."""
    from metairm_pl.algorithms.base import risk_function

    params = leaf_params(model)
    with torch.autocast(**BF16, enabled=autocast):
        obj = meta_objective(model, params, envs, risk_function(2), INNER_LR, 2)
        loss = obj.meta_loss_sum + LAMBDA * obj.meta_loss_std
    grads = torch.autograd.grad(loss, list(params.values()))
    return torch.cat([g.flatten().double() for g in grads])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("activation", [nn.Tanh(), nn.ReLU()], ids=["tanh", "relu"])
def test_bf16_autocast_meta_gradient_is_close_to_the_float64_one(activation, seed):
    """The second-order meta-gradient above under ``trainer.precision=bf16-mixed`` (autocast)
    vs float64.  Measured when written: cosine 0.9995-0.999998, relative error 0.002-0.032
    (the largest: ReLU, seed 1); float32 without autocast: relative error ~1e-7."""
    model, envs = make_mlp(activation, seed), make_envs(seed=seed + 1)
    exact = bf16_meta_gradient(model, envs, autocast=False)
    model32, envs32 = copy.deepcopy(model).float(), [(x.float(), y.float()) for x, y in envs]
    mixed = bf16_meta_gradient(model32, envs32, autocast=True)
    plain32 = bf16_meta_gradient(model32, envs32, autocast=False)
    relative_error = ((mixed - exact).norm() / exact.norm()).item()
    assert F.cosine_similarity(mixed, exact, dim=0).item() > 0.999
    assert relative_error < 0.05
    assert ((plain32 - exact).norm() / exact.norm()).item() < 1e-5
    assert relative_error > 1e-4, "autocast had no effect: the bf16 path was not taken"


def test_bf16_autocast_irm_penalty_gradient_is_close_to_the_float64_one():
    from metairm_pl.algorithms.base import irm_penalty, risk_function

    model, ((x, y), *_) = make_mlp(nn.Tanh()), make_envs()

    def penalty_gradient(network, x, y, autocast):
        with torch.autocast(**BF16, enabled=autocast):
            penalty = irm_penalty(network(x).unsqueeze(-1), y, risk_function(2))
        return torch.cat([g.flatten().double() for g in torch.autograd.grad(penalty, list(network.parameters()))])

    exact = penalty_gradient(model, x, y, autocast=False)
    mixed = penalty_gradient(copy.deepcopy(model).float(), x.float(), y.float(), autocast=True)
    assert F.cosine_similarity(mixed, exact, dim=0).item() > 0.999
    assert 1e-4 < ((mixed - exact).norm() / exact.norm()).item() < 0.05


# --------------------------------------------------------------------------- (c) population std


def test_population_std_value_and_gradient_by_hand():
    values = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64, requires_grad=True)
    std = population_std(values)
    # mean 7/3; deviations -4/3, -1/3, 5/3; squares sum 42/9; /3 -> 14/9.
    assert std.item() == pytest.approx(math.sqrt(14 / 9), rel=1e-14)
    (grad,) = torch.autograd.grad(std, values)
    # dσ/dv_k = (v_k − mean) / (N σ) = (v_k − 7/3) / sqrt(14)
    expected = torch.tensor([-4 / 3, -1 / 3, 5 / 3], dtype=torch.float64) / math.sqrt(14)
    torch.testing.assert_close(grad, expected, rtol=1e-13, atol=0)


def test_population_std_matches_torch_biased_std():
    values = torch.randn(7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert population_std(values).item() == pytest.approx(values.std(unbiased=False).item(), rel=1e-14)


@pytest.mark.parametrize("values", [[2.0, 2.0, 2.0], [5.0]])
def test_population_std_is_zero_with_finite_gradient_for_equal_values(values):
    tensor = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    std = population_std(tensor)
    assert std.item() == 0.0
    (grad,) = torch.autograd.grad(std, tensor)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad, torch.zeros_like(grad))


# --------------------------------------------------------------------------- (d) pairs


def test_others_pairs_cover_all_j_not_equal_i():
    pairs = meta_pairs(4, "others", None, None)
    assert all(i != j for i, j in pairs)
    for i in range(4):
        assert sorted(j for ii, j in pairs if ii == i) == [j for j in range(4) if j != i]
    assert len(pairs) == 12


@pytest.mark.parametrize("n_meta_envs", [1, 2, 3])
def test_sampled_others_pairs_have_exactly_n_distinct_j_not_equal_i(n_meta_envs):
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        pairs = meta_pairs(5, "others", n_meta_envs, gen)
        for i in range(5):
            js = [j for ii, j in pairs if ii == i]
            assert len(js) == n_meta_envs == len(set(js))
            assert i not in js


def test_sampled_pairs_are_reproducible_and_vary_across_draws():
    draws = [meta_pairs(5, "others", 2, torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert draws[0] == draws[1]
    gen = torch.Generator().manual_seed(0)
    assert len({tuple(meta_pairs(5, "others", 2, gen)) for _ in range(10)}) > 1


def test_same_pairs_are_the_diagonal():
    assert meta_pairs(3, "same", None, None) == [(0, 0), (1, 1), (2, 2)]
    assert meta_pairs(1, "same", None, None) == [(0, 0)]


@pytest.mark.parametrize("meta_envs", ["others", "same"])
def test_meta_losses_equal_independent_adapt_then_risk(meta_envs):
    model, envs = make_mlp(nn.Tanh()), make_envs()
    params = dict(model.named_parameters())
    obj = meta_objective(model, params, envs, risk_fn, INNER_LR, 2, meta_envs=meta_envs)
    assert isinstance(obj, MetaObjective)
    assert obj.pairs == meta_pairs(3, meta_envs, None, None)
    expected = []
    for i, j in obj.pairs:
        adapted = adapt(model, params, *envs[i], risk_fn, INNER_LR, 2)
        expected.append(risk_fn(functional_call(model, adapted, (envs[j][0],)), envs[j][1]))
    torch.testing.assert_close(obj.meta_losses, torch.stack(expected), rtol=0, atol=0)
    assert obj.meta_loss_sum.item() == pytest.approx(sum(e.item() for e in expected), rel=1e-14)
    assert obj.meta_loss_std.item() == pytest.approx(torch.stack(expected).std(unbiased=False).item(), rel=1e-12)


def test_adapt_one_step_is_theta_minus_lr_grad():
    model, envs = make_mlp(nn.Tanh()), make_envs()
    x, y = envs[0]
    adapted = adapt(model, dict(model.named_parameters()), x, y, risk_fn, 0.3, 1)
    grads = torch.autograd.grad(risk_fn(model(x), y), list(model.parameters()))
    for (name, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(adapted[name], p - 0.3 * g, rtol=1e-14, atol=1e-15)


def test_outer_backward_reaches_module_parameters():
    model, envs = make_mlp(nn.Tanh()), make_envs()
    outer_loss(model, dict(model.named_parameters()), envs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------- (e) DropGrad


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_gaussian_dropgrad_noise_mean_and_variance(rate):
    n = 200_000
    noise = gaussian_dropgrad(torch.ones(n, dtype=torch.float64), rate, torch.Generator().manual_seed(0))
    variance = rate / (1 - rate)
    # SE(mean) = sqrt(var / n); SE(sample variance) of a Gaussian = var * sqrt(2 / (n - 1)).
    assert abs(noise.mean().item() - 1.0) < 5 * math.sqrt(variance / n)
    assert abs(noise.var().item() - variance) < 5 * variance * math.sqrt(2 / (n - 1))


def test_gaussian_dropgrad_scales_the_gradient_elementwise():
    grad = torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64)
    noisy = gaussian_dropgrad(grad, 0.5, torch.Generator().manual_seed(4))
    noise = gaussian_dropgrad(torch.ones(3, dtype=torch.float64), 0.5, torch.Generator().manual_seed(4))
    torch.testing.assert_close(noisy, grad * noise, rtol=1e-15, atol=0)


def test_gaussian_dropgrad_rate_zero_is_identity_and_draws_nothing():
    grad = torch.randn(10)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert gaussian_dropgrad(grad, 0.0, gen) is grad
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_gaussian_dropgrad_rejects_rate_outside_unit_interval(rate):
    with pytest.raises(ValueError, match="dropgrad_rate"):
        gaussian_dropgrad(torch.ones(2), rate, None)


def test_adapt_with_dropgrad_is_seeded_and_rate_zero_matches_plain():
    model, envs = make_mlp(nn.Tanh()), make_envs()
    params, (x, y) = dict(model.named_parameters()), envs[0]

    def run(rate, seed):
        return adapt(
            model, params, x, y, risk_fn, INNER_LR, 2, dropgrad_rate=rate, generator=torch.Generator().manual_seed(seed)
        )

    plain = adapt(model, params, x, y, risk_fn, INNER_LR, 2)
    assert all(torch.equal(run(0.0, 1)[n], plain[n]) for n in plain)
    assert all(torch.equal(run(0.3, 1)[n], run(0.3, 1)[n]) for n in plain)
    assert any(not torch.equal(run(0.3, 1)[n], run(0.3, 2)[n]) for n in plain)


# --------------------------------------------------------------------------- (f) no side effects


@pytest.mark.parametrize("first_order", [False, True])
def test_inner_loop_leaves_module_parameters_and_grads_untouched(first_order):
    model, envs = make_mlp(nn.Tanh()), make_envs()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    adapted = adapt(model, params, *envs[0], risk_fn, INNER_LR, 2, first_order=first_order)
    obj = meta_objective(
        model,
        params,
        envs,
        risk_fn,
        INNER_LR,
        2,
        first_order=first_order,
        dropgrad_rate=0.2,
        generator=torch.Generator().manual_seed(0),
    )
    assert params == dict(model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name])
        assert p.grad is None
        assert adapted[name] is not p
    assert obj.meta_losses.shape == (6,)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("inner_steps", [0, -1, 1.5])
def test_invalid_inner_steps_raises(inner_steps):
    model, envs = make_mlp(nn.Tanh()), make_envs()
    with pytest.raises(ValueError, match=f"inner_steps={inner_steps!r}"):
        meta_objective(model, dict(model.named_parameters()), envs, risk_fn, 0.1, inner_steps)


@pytest.mark.parametrize("inner_lr", [-0.1, float("nan")])
def test_invalid_inner_lr_raises(inner_lr):
    model, (x, y) = make_mlp(nn.Tanh()), make_envs()[0]
    with pytest.raises(ValueError, match="inner_lr="):
        adapt(model, dict(model.named_parameters()), x, y, risk_fn, inner_lr)


def test_unknown_meta_envs_raises_naming_allowed_values():
    with pytest.raises(ValueError, match=r"meta_envs='all'.*'others', 'same'"):
        meta_pairs(3, "all", None, None)


def test_others_with_single_env_raises():
    with pytest.raises(ValueError, match="at least 2"):
        meta_pairs(1, "others", None, None)


@pytest.mark.parametrize("n_meta_envs", [0, 3, -1])
def test_out_of_range_n_meta_envs_raises(n_meta_envs):
    with pytest.raises(ValueError, match=rf"n_meta_envs={n_meta_envs}.*\[1, 2\]"):
        meta_pairs(3, "others", n_meta_envs, None)


# --------------------------------------------------------------------------- efficiency


@pytest.mark.parametrize("meta_envs, n_meta_envs", [("others", None), ("others", 1), ("same", None)])
def test_forward_passes_are_one_per_inner_step_and_one_per_pair(meta_envs, n_meta_envs):
    model, envs = make_mlp(nn.Tanh()), make_envs()
    calls = []
    model.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape))
    obj = meta_objective(
        model,
        dict(model.named_parameters()),
        envs,
        risk_fn,
        INNER_LR,
        2,
        meta_envs=meta_envs,
        n_meta_envs=n_meta_envs,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(calls) == 2 * len(envs) + len(obj.pairs)
