"""PAIR-o equals PAIR's Colored MNIST loop (LFhase/PAIR ``ColoredMNIST/pair_alg.py`` and
``pair.py``'s ``EPO``): the reference's weights are transcribed below and its two linear
programs solved by enumerating their vertices (no LP solver), as an independent check of
:func:`epo_weights` (HiGHS); then the step's loss and gradients, the optimizer switch and an
exact resume across it."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metairm_pl.algorithms.pair import PAIR, REFERENCE_PREFERENCE, epo_weights
from metairm_pl.errors import ConfigError
from metairm_pl.files import read_jsonl
from metairm_pl.run import train

from .conftest import at_step, gradients, resumed_beside_uninterrupted

L2 = 0.001


def simplex_lp_vertices(objective, rows, bounds):
    """Every vertex of {α ≥ 0, Σα = 1, rows·α ≥ bounds} (3 variables) with its objective value."""
    m = len(objective)
    constraints = [(np.eye(m)[i], 0.0) for i in range(m)] + list(zip(rows, bounds))
    vertices = []
    for (a1, b1), (a2, b2) in itertools.combinations(constraints, 2):
        system = np.vstack([np.ones(m), a1, a2])
        if abs(np.linalg.det(system)) < 1e-12:
            continue
        alpha = np.linalg.solve(system, np.array([1.0, b1, b2]))
        if all(a @ alpha >= b - 1e-9 for a, b in constraints):
            vertices.append((float(objective @ alpha), alpha))
    return vertices


def reference_epo(losses, gram, preference, eps):
    """PAIR's EPO.get_alpha (C given): adjustments, the balance or dominance program, and the
    preference when the program has no solution. Returns (alpha, move, unique optimum?)."""
    r = np.asarray(preference) / np.sum(preference)
    m = len(losses)
    rl = r * losses
    l_hat = rl / rl.sum()
    kept = l_hat[l_hat > np.finfo(l_hat.dtype).eps]
    mu_rl = np.sum(kept * np.log(kept * m))
    a = r * (np.log(l_hat * m) - mu_rl)
    C = gram
    Ca = C @ a
    if mu_rl > eps:
        rhs = Ca.copy()
        rhs[Ca > 0] = -np.inf
        rhs[np.where(rl == np.max(rl))[0]] = 0
        keep = np.isfinite(rhs)
        vertices = simplex_lp_vertices(Ca, list(C[keep]), list(rhs[keep]))
        move = "balance"
    else:
        rows = [Ca] + list(C)
        bounds = [min(np.max(Ca), 0.0)] + [0.0] * m
        vertices = simplex_lp_vertices(C.sum(axis=0), rows, bounds)
        move = "dom"
    if not vertices:
        return r, "preference", True
    best = max(value for value, _ in vertices)
    optimal = [alpha for value, alpha in vertices if value >= best - 1e-9 * max(1.0, abs(best))]
    unique = all(np.allclose(alpha, optimal[0], atol=1e-7) for alpha in optimal)
    return optimal[0], move, unique


def random_problem(seed):
    rng = np.random.default_rng(seed)
    gradients = rng.normal(size=(3, 7)) * rng.uniform(0.01, 3.0, size=(3, 1))
    losses = rng.uniform(0.01, 1.0, size=3)
    preference = REFERENCE_PREFERENCE if seed % 2 else tuple(rng.uniform(0.05, 1.0, size=3))
    return losses, gradients @ gradients.T, preference


@pytest.mark.parametrize("eps", [0.1, 1e6, 0.0])  # PAIR's; always descent; always balance
def test_weights_equal_the_reference_programs(eps):
    moves, checked = set(), 0
    for seed in range(60):
        losses, gram, preference = random_problem(seed)
        expected, move, unique = reference_epo(losses, gram, preference, eps)
        ours, our_move = epo_weights(losses, gram, np.asarray(preference), eps)
        assert our_move == {"dom": "descent"}.get(move, move)
        moves.add(move)
        if unique:
            np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
            checked += 1
        assert ours.min() >= -1e-9 and abs(ours.sum() - 1) < 1e-9
    assert checked >= 50  # random programs have a unique optimum almost always
    # PAIR's epsilon meets both moves; some descent programs are infeasible (the preference)
    assert moves == {0.1: {"balance", "dom"}, 1e6: {"dom", "preference"}, 0.0: {"balance"}}[eps]


def test_no_solution_gives_the_preference():
    preference = np.array([1.0, 2.0, 1.0])
    gram = np.eye(3)
    for losses in ([0.5, np.nan, 0.1], [0.5, 0.0, 0.1], [0.5, -0.2, 0.1]):
        alpha, move = epo_weights(np.array(losses), gram, preference, 0.1)
        assert move == "preference"
        np.testing.assert_allclose(alpha, preference / preference.sum())


def reference_pair_loss(network, batch, eps=0.1):
    """pair_train after the switch: env BCEs of ``logits * scale``, IRM_penalty_pair (mean over
    envs), erm_losses.var(), erm mean; G from each loss's gradient w.r.t. the top layer;
    loss = alpha.float() · losses."""
    scale = torch.tensor(1.0, requires_grad=True)
    logits = [network(x) * scale for x, _ in batch.values()]
    labels = [y.float().reshape(-1, 1) for _, y in batch.values()]
    nlls = torch.stack([F.binary_cross_entropy_with_logits(lg, y) for lg, y in zip(logits, labels)])
    penalty = 0
    for lg, y in zip(logits, labels):
        (g,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(lg, y), [scale], create_graph=True)
        penalty += torch.sum(g**2)
    penalty /= len(logits)
    losses = torch.stack([nlls.mean(), penalty, nlls.var()])
    top = list(network.classifier.parameters())
    G = torch.stack(
        [torch.cat([g.flatten() for g in torch.autograd.grad(loss, top, retain_graph=True)]) for loss in losses]
    )
    alpha, _, unique = reference_epo(
        losses.detach().double().numpy(), (G @ G.T).double().numpy(), REFERENCE_PREFERENCE, eps
    )
    assert unique
    return torch.from_numpy(alpha).float().dot(losses)


@pytest.mark.parametrize("n_envs", [2, 3])
def test_loss_and_gradients_equal_pair_after_the_switch(make_mlp, make_batch, n_envs):
    network, batch = make_mlp(), make_batch(n_envs=n_envs)
    method = at_step(PAIR)(network, optimizer=None, l2_weight=L2, switch_step=150)
    method.global_step = 150
    ours = method.objective(batch).risk
    reference = reference_pair_loss(network, batch)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)
    for a, b in zip(gradients(ours, network), gradients(reference, network)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_before_the_switch_it_is_erm_with_l2(make_mlp, make_batch):
    network, batch = make_mlp(), make_batch(n_envs=2)
    method = at_step(PAIR)(network, optimizer=None, l2_weight=L2, switch_step=150)
    method.global_step = 149
    objective = method.objective(batch)
    nlls = [F.binary_cross_entropy_with_logits(network(x), y.float().unsqueeze(1)) for x, y in batch.values()]
    torch.testing.assert_close(objective.risk, torch.stack(nlls).mean(), rtol=1e-6, atol=0)
    assert objective.penalty is None and objective.logs == {}


def reference_pair_loop(network, batch, steps, switch, lr_before=1e-3, lr_after=0.1, l2=L2):
    """pair_train's loop: Adam on the mean BCE + l2·‖θ‖² (weight 1 before the anneal, so no
    rescale) until ``switch``, then a fresh SGD(momentum 0.9) on alpha · losses, no L2."""
    params = list(network.parameters())
    optimizer = torch.optim.Adam(params, lr=lr_before)
    for step in range(steps):
        if step == switch:
            optimizer = torch.optim.SGD(params, lr=lr_after, momentum=0.9)
        if step < switch:
            nlls = [F.binary_cross_entropy_with_logits(network(x), y.float().reshape(-1, 1)) for x, y in batch.values()]
            loss = torch.stack(nlls).mean() + l2 * sum(p.pow(2).sum() for p in params)
        else:
            loss = reference_pair_loss(network, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_training_steps_follow_the_reference_loop_across_the_switch():
    """Lightning's steps (Adam, then the switch to SGD with momentum on the EPO-weighted
    objectives) move the weights as the reference's loop does."""
    from metairm_pl.data.synthetic import SyntheticDataModule
    from metairm_pl.models.mlp import MLP

    from .test_training_step import TEST, TRAIN, fit

    datamodule = SyntheticDataModule(TRAIN, TEST, data_seed=0)
    datamodule.setup()
    torch.manual_seed(0)
    network, reference = MLP((8,), 1, hidden_dim=16), MLP((8,), 1, hidden_dim=16)
    reference.load_state_dict(network.state_dict())
    initial = network.classifier.weight.detach().clone()
    module = PAIR(network, functools.partial(torch.optim.Adam, lr=1e-3), l2_weight=L2, switch_step=3)
    fit(module, datamodule, steps=8)  # 3 Adam steps, 5 SGD steps on the weighted objectives
    reference_pair_loop(reference, datamodule.splits.train, steps=8, switch=3)
    for ours, theirs in zip(network.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(network.classifier.weight, initial, atol=1e-3)


SHORT = ["data=synthetic", "algorithm=pair", "algorithm.switch_step=5", "model.hidden_dim=8",
         "trainer.val_check_interval=5", "trainer.max_steps=20"]  # fmt: skip


def test_adam_until_the_switch_then_sgd_with_momentum(make_config):
    config = make_config(SHORT + ["checkpoint_every=10"])
    train(config)
    checkpoint = torch.load(Path(config.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 10
    adam, sgd = checkpoint["optimizer_states"]
    assert {int(state["step"]) for state in adam["state"].values()} == {5}  # steps 0-4
    assert sgd["param_groups"][0]["lr"] == 0.1 and sgd["param_groups"][0]["momentum"] == 0.9
    assert all("momentum_buffer" in state for state in sgd["state"].values()) and sgd["state"]


def test_a_resumed_run_continues_exactly_after_the_switch(make_config):
    """Killed after its checkpoint at step 10 (SGD's momentum in it): the relaunch's records
    equal those of a run never interrupted."""
    directory, reference = resumed_beside_uninterrupted(make_config, SHORT, checkpoint_every=10)
    records = read_jsonl(directory / "results.jsonl")
    assert records == read_jsonl(reference / "results.jsonl") and len(records) == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preference": [1.0, 2.0]}, r"algorithm.preference=\[1.0, 2.0\] is not allowed"),
        ({"preference": [1.0, -1.0, 1.0]}, r"algorithm.preference=\[1.0, -1.0, 1.0\] is not allowed"),
        ({"switch_momentum": 1.0}, r"algorithm.switch_momentum=1.0 is not allowed"),
        ({"switch_step": -1}, r"algorithm.switch_step=-1 is not allowed"),
        ({"switch_lr": 0.0}, r"algorithm.switch_lr=0.0 is not allowed"),
        ({"epsilon": -0.1}, r"algorithm.epsilon=-0.1 is not allowed"),
    ],
)
def test_bad_settings_are_named(make_mlp, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PAIR(make_mlp(), optimizer=None, **kwargs)


def test_a_network_without_a_classifier_layer_is_named():
    with pytest.raises(
        ConfigError, match=r"pair weighs its objectives .* network \(Sequential\) must have a classifier"
    ):
        PAIR(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(18, 1)), optimizer=None)
