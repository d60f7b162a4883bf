"""EQRM's quantile equals the reference's (cianeastwood/qrm and DomainBed share
``lib/misc.py``'s ``Nonparametric``: Gaussian KDE, Gauss-optimal bandwidth, 32 bisection steps),
in value and gradient; the reference is transcribed below as an independent check."""

from __future__ import annotations

import math

import pytest
import torch

from metairm_pl.algorithms.eqrm import EQRM, kde_quantile
from metairm_pl.errors import ConfigError
from metairm_pl.run import train

from .conftest import at_step


def reference_icdf(env_risks, alpha):
    """``Nonparametric(use_kde=True, bw_select='Gauss-optimal').estimate_parameters(risks).icdf(alpha)``
    with torch.distributions.Normal inlined: loc + scale * erfinv(2v - 1) * sqrt(2) and
    0.5 * (1 + erf((x - loc) * scale.reciprocal() / sqrt(2)))."""
    q = torch.tensor(alpha, dtype=torch.float64)
    data, _ = torch.sort(env_risks)
    n = data.shape[0]
    bw0 = 1.06 * torch.std(data, unbiased=True) * (n**-0.2)
    bw = torch.ones(1) * bw0
    if alpha < 0:
        return torch.mean(data + bw * math.sqrt(-2 * alpha))
    z = torch.erfinv(2 * q - 1) * math.sqrt(2)
    lo, hi = data[0] + bw[0] * z, data[-1] + bw[-1] * z
    sig = torch.ones(n) * bw0

    def cdf(x):
        return torch.mean(0.5 * (1 + torch.erf((x.repeat(n, 1).T - data) * sig.reciprocal() / math.sqrt(2))))

    bounds = [lo, hi]
    k = 0.5 * (lo + hi)
    for _ in range(32):
        bounds[int(cdf(k) > q)] = k
        following = 0.5 * (bounds[0] + bounds[1])
        if following == k:
            break
        k = following
    return k


@pytest.mark.parametrize("alpha", [0.5, 0.75, 0.9, 0.99, -100.0, -1000.0, -10000.0])
@pytest.mark.parametrize("n_envs", [2, 3, 5])
def test_value_and_gradient_equal_the_reference(alpha, n_envs):
    generator = torch.Generator().manual_seed(n_envs)
    base = 0.3 + 0.4 * torch.rand(n_envs, generator=generator)
    ours_in, ref_in = base.clone().requires_grad_(), base.clone().requires_grad_()
    ours, reference = kde_quantile(ours_in, alpha), reference_icdf(ref_in, alpha)
    torch.testing.assert_close(ours.double(), reference.double().reshape(()), rtol=1e-6, atol=0)
    ours.backward()
    reference.sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-6, atol=1e-7)
    assert ours.dtype == torch.float32


def test_the_gradient_is_the_bisections_not_the_implicit_one():
    """Risks (0.35, 0.5, 0.72) at level 0.75: the reference's gradient (from the notes of the
    reference study: (0.132, -0.036, 0.904)), not the implicit-function one (-0.073, 0.308, 0.764)."""
    risks = torch.tensor([0.35, 0.5, 0.72], requires_grad=True)
    kde_quantile(risks, 0.75).backward()
    torch.testing.assert_close(risks.grad, torch.tensor([0.132, -0.036, 0.904]), atol=1e-3, rtol=0)


def test_equal_risks_give_their_common_value():
    risks = torch.full((3,), 0.4, requires_grad=True)
    value = kde_quantile(risks, 0.75)
    value.backward()
    assert value.item() == pytest.approx(0.4) and torch.allclose(risks.grad, torch.full((3,), 1 / 3))


def test_burn_in_is_erm_then_the_quantile(make_mlp, make_batch):
    network, batch = make_mlp(), make_batch(n_envs=3)
    method = at_step(EQRM)(network, optimizer=None, alpha=0.9, burnin_steps=4)
    risks = torch.stack([method.risk_fn(network(x), y) for x, y in batch.values()])
    method.global_step = 3
    torch.testing.assert_close(method.objective(batch).risk, risks.mean())
    method.global_step = 4
    torch.testing.assert_close(method.objective(batch).risk, kde_quantile(risks, 0.9))


def test_adam_restarts_at_the_end_of_the_burn_in(make_config, monkeypatch):
    """At step burnin_steps the optimizer forgets its moments and takes lr_after_burnin."""
    seen = []
    original = EQRM.restart_optimizer

    def spy(self, lr=None):
        original(self, lr)
        optimizer = self.optimizers().optimizer
        seen.append((self.global_step, len(optimizer.state), optimizer.param_groups[0]["lr"]))

    monkeypatch.setattr(EQRM, "restart_optimizer", spy)
    cfg = make_config(["data=synthetic", "algorithm=eqrm", "algorithm.burnin_steps=3", "algorithm.lr_after_burnin=0.0005",
                       "model.hidden_dim=8", "trainer.max_steps=6", "trainer.val_check_interval=3"])  # fmt: skip
    final = train(cfg)
    assert final["status"] == "done" and seen == [(3, 0, 0.0005)]


@pytest.mark.parametrize("kwargs", [{"alpha": 1.0}, {"burnin_steps": -1}, {"lr_after_burnin": 0.0}])
def test_bad_settings_are_named(make_mlp, kwargs):
    ((key, value),) = kwargs.items()
    with pytest.raises(ConfigError, match=f"algorithm.{key}={value!r}"):
        EQRM(make_mlp(), optimizer=None, **kwargs)
