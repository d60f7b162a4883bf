"""The Meta-IRM LightningModule: objective wiring, prediction with θ, validation."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from metairm_pl.algorithms.base import accuracy, risk_function
from metairm_pl.algorithms.inner_loop import meta_objective
from metairm_pl.algorithms.meta_irm import MetaIRM
from metairm_pl.errors import ConfigError

ADAM = functools.partial(torch.optim.Adam, lr=1e-3)


def make_module(seed: int = 0, **kwargs) -> MetaIRM:
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1))
    return MetaIRM(network, ADAM, num_classes=2, **kwargs)


def env_batch(n_envs: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return {
        f"e{i}": (torch.randn(10, 4, generator=generator), torch.randint(0, 2, (10,), generator=generator))
        for i in range(n_envs)
    }


def test_objective_is_sum_of_meta_losses_and_their_std():
    module = make_module(penalty={"weight": 2.0}, inner_lr=0.3, inner_steps=2)
    batch = env_batch()
    objective = module.objective(batch)
    reference = meta_objective(
        module.network,
        dict(module.network.named_parameters()),
        list(batch.values()),
        risk_function(2),
        inner_lr=0.3,
        inner_steps=2,
    )
    assert torch.equal(objective.risk, reference.meta_loss_sum)
    assert torch.equal(objective.penalty, reference.meta_loss_std)
    assert len(reference.pairs) == 6 and all(i != j for i, j in reference.pairs)


def test_prediction_uses_theta_not_an_adapted_copy():
    module = make_module(inner_lr=0.5)
    batch = env_batch()
    module.objective(batch)  # an inner loop ran; θ must be untouched and used for prediction
    x, y = batch["e0"]
    expected = module.network(x).detach()
    assert torch.equal(module.predict_logits(x), expected)
    assert module.evaluate_env(x, y)["acc"] == accuracy(expected, y, 2).item()


def test_dropgrad_draws_are_reproducible_from_the_seed():
    batch = env_batch()
    first = make_module(seed=3, dropgrad=0.3).objective(batch).risk
    again = make_module(seed=3, dropgrad=0.3).objective(batch).risk
    other = make_module(seed=4, dropgrad=0.3)
    other.network.load_state_dict(make_module(seed=3).network.state_dict())  # same θ, other noise
    assert torch.equal(first, again)
    assert not torch.equal(first, other.objective(batch).risk)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"inner_steps": 0}, "inner_steps=0"),
        ({"inner_lr": -0.1}, "inner_lr=-0.1"),
        ({"dropgrad": 1.0}, "dropgrad=1.0"),
        ({"meta_envs": "bogus"}, "meta_envs='bogus'"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, needle):
    with pytest.raises(ConfigError) as info:
        make_module(**kwargs)
    assert needle in str(info.value)


def test_environment_count_is_checked_against_the_meta_env_settings():
    with pytest.raises(ConfigError, match="at least 2 training environments"):
        make_module().check_environments(1)
    with pytest.raises(ConfigError, match="n_meta_envs=3"):
        make_module(n_meta_envs=3).check_environments(3)
    make_module(n_meta_envs=2).check_environments(3)
