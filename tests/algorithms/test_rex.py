"""V-REx and MM-REx: objectives against hand-computed risks, the paper's MM-REx expression,
equivalence with the authors' 2-env Colored MNIST loss, gradients and bad input."""

import math

import pytest
import torch
from torch import nn

from metairm_pl.algorithms.mmrex import MMREx, lambda_min_for, mm_rex_risk
from metairm_pl.algorithms.schedule import PenaltySchedule
from metairm_pl.algorithms.vrex import VREx, risk_variance
from metairm_pl.errors import ConfigError

# env -> (logits, labels); the network multiplies the input by a scalar weight 1.0, so the
# inputs are the logits.
ENVS = {
    "a": ([0.5, -1.0], [1, 0]),
    "b": ([2.0, 0.3], [0, 1]),
    "c": ([-0.7, 1.2], [1, 1]),
}


def bce(logit: float, label: int) -> float:
    """-log sigmoid(logit) for label 1, -log(1 - sigmoid(logit)) for label 0."""
    return math.log(1 + math.exp(-logit)) if label == 1 else math.log(1 + math.exp(logit))


def hand_risk(env: str) -> float:
    logits, labels = ENVS[env]
    return sum(bce(z, y) for z, y in zip(logits, labels)) / len(logits)


def batch_of(envs: str) -> dict:
    return {env: (torch.tensor(ENVS[env][0], dtype=torch.float64)[:, None], torch.tensor(ENVS[env][1])) for env in envs}


def make(cls, weight: float = 1.0, anneal_steps: int = 0):
    network = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        network.weight.fill_(1.0)
    schedule = PenaltySchedule(weight=weight, anneal_steps=anneal_steps)
    return cls(network=network, optimizer=lambda params: torch.optim.SGD(params, lr=0.1), penalty=schedule)


# -- V-REx -----------------------------------------------------------------------------


def test_vrex_two_envs_equals_hand_computed_mean_and_unbiased_variance():
    r_a, r_b = hand_risk("a"), hand_risk("b")
    objective = make(VREx).objective(batch_of("ab"))
    assert objective.risk.item() == pytest.approx((r_a + r_b) / 2, rel=1e-12)
    assert objective.penalty.item() == pytest.approx((r_a - r_b) ** 2 / 2, rel=1e-12)


def test_vrex_three_envs_equals_hand_computed_mean_and_unbiased_variance():
    risks = [hand_risk(env) for env in "abc"]
    mean = sum(risks) / 3
    objective = make(VREx).objective(batch_of("abc"))
    assert objective.risk.item() == pytest.approx(mean, rel=1e-12)
    assert objective.penalty.item() == pytest.approx(sum((r - mean) ** 2 for r in risks) / 2, rel=1e-12)


@pytest.mark.parametrize("step,authors_weight", [(0, 1.0), (100, 10000.0)])
def test_vrex_loss_is_half_the_authors_two_env_loss(step, authors_weight):
    # REx_code_release colored_mnist/main.py: (R1 + R2 + w (R1 - R2)^2) / max(w, 1),
    # w = 1 before penalty_anneal_iters (100), 10000 from then on.
    r_a, r_b = hand_risk("a"), hand_risk("b")
    algorithm = make(VREx, weight=10000.0, anneal_steps=100)
    objective = algorithm.objective(batch_of("ab"))
    loss = algorithm.schedule.combine(objective.risk, objective.penalty, torch.zeros(()), step)
    authors = (r_a + r_b + authors_weight * (r_a - r_b) ** 2) / max(authors_weight, 1.0)
    assert 2 * loss.item() == pytest.approx(authors, rel=1e-12)


def test_risk_variance_needs_two_risks():
    with pytest.raises(ConfigError, match="at least 2 training environments, got 1"):
        risk_variance(torch.tensor([0.3]))


# -- MM-REx ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lambda_min,expected",
    [(-1.0, 3 * 0.5 - 0.7), (0.0, 0.5), (0.5, 0.35)],  # extrapolation, worst case, mean (1/m)
)
def test_mm_rex_risk_two_envs(lambda_min, expected):
    risks = torch.tensor([0.2, 0.5], dtype=torch.float64)
    assert mm_rex_risk(risks, lambda_min).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    "lambda_min,expected",
    [(-0.5, 2.5 * 0.5 - 0.5 * 1.0), (0.0, 0.5), (1 / 3, 1 / 3)],
)
def test_mm_rex_risk_three_envs(lambda_min, expected):
    risks = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    assert mm_rex_risk(risks, lambda_min).item() == pytest.approx(expected)


@pytest.mark.parametrize("envs", ["ab", "abc"])
@pytest.mark.parametrize("weight", [0.0, 1.0, 3.0, 10000.0])
def test_mmrex_objective_is_the_paper_expression_with_lambda_min_from_weight(envs, weight):
    risks = [hand_risk(env) for env in envs]
    m = len(risks)
    lambda_min = (1 - weight) / m
    paper = (1 - m * lambda_min) * max(risks) + lambda_min * sum(risks)
    objective = make(MMREx, weight=weight).objective(batch_of(envs))
    assert objective.risk.item() == pytest.approx(sum(risks) / m, rel=1e-12)
    assert objective.penalty.item() == pytest.approx(max(risks) - sum(risks) / m, rel=1e-12)
    assert (objective.risk + weight * objective.penalty).item() == pytest.approx(paper, rel=1e-12)
    assert objective.logs["lambda_min"].item() == pytest.approx(lambda_min)
    assert objective.logs["max_risk"].item() == pytest.approx(max(risks), rel=1e-12)


@pytest.mark.parametrize("step,authors_weight", [(0, 1.0), (100, 10000.0)])
def test_mmrex_loss_is_half_the_authors_two_env_loss(step, authors_weight):
    # REx_code_release colored_mnist/main.py --mse False: (R1 + R2 + w |R1 - R2|) / max(w, 1).
    r_a, r_b = hand_risk("a"), hand_risk("b")
    algorithm = make(MMREx, weight=10000.0, anneal_steps=100)
    objective = algorithm.objective(batch_of("ab"))
    loss = algorithm.schedule.combine(objective.risk, objective.penalty, torch.zeros(()), step)
    authors = (r_a + r_b + authors_weight * abs(r_a - r_b)) / max(authors_weight, 1.0)
    assert 2 * loss.item() == pytest.approx(authors, rel=1e-12)


def test_lambda_min_for_weight():
    assert lambda_min_for(1.0, 2) == 0.0
    assert lambda_min_for(10000.0, 2) == -4999.5
    assert lambda_min_for(0.0, 3) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "lambda_min,n_envs", [(0.6, 2), (0.34, 3), (float("nan"), 2), (float("inf"), 2), ("-1", 2), (True, 2)]
)
def test_invalid_lambda_min_raises_naming_it(lambda_min, n_envs):
    risks = torch.linspace(0.1, 0.5, n_envs)
    with pytest.raises(ConfigError, match=rf"lambda_min=.* <= 1/{n_envs}"):
        mm_rex_risk(risks, lambda_min)


def test_mmrex_weight_cannot_express_lambda_min_above_one_over_m():
    # beta = 1 - m * lambda_min < 0 would be lambda_min > 1/m; the schedule rejects it.
    with pytest.raises(ConfigError, match="weight=-1.0"):
        make(MMREx, weight=-1.0)


# -- both ------------------------------------------------------------------------------


def total_loss(algorithm, batch, step: int = 0) -> torch.Tensor:
    objective = algorithm.objective(batch)
    return algorithm.schedule.combine(objective.risk, objective.penalty, algorithm.l2_term(), step)


@pytest.mark.parametrize("cls", [VREx, MMREx])
@pytest.mark.parametrize("envs", ["ab", "abc"])
def test_gradient_flows_and_matches_finite_difference(cls, envs):
    algorithm = make(cls, weight=3.0)
    batch = batch_of(envs)
    total_loss(algorithm, batch).backward()
    grad = algorithm.network.weight.grad.item()
    eps = 1e-6
    values = []
    for shift in (eps, -eps):
        with torch.no_grad():
            algorithm.network.weight.fill_(1.0 + shift)
            values.append(total_loss(algorithm, batch).item())
    assert grad != 0.0
    assert grad == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-6)


@pytest.mark.parametrize("cls", [VREx, MMREx])
def test_one_training_env_is_rejected(cls):
    algorithm = make(cls)
    message = f"{cls.name} needs at least 2 training environments, the data provides 1"
    with pytest.raises(ConfigError, match=message):
        algorithm.check_environments(1)
    with pytest.raises(ConfigError, match="needs at least 2"):
        algorithm.objective(batch_of("a"))
