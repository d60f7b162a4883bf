"""The Lightning training step equals a hand-written loop of the official IRMv1 math, and
the methods behave as expected on a planted spurious feature."""

from __future__ import annotations

import functools

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from metairm_pl.algorithms.erm import ERM
from metairm_pl.algorithms.irm import IRMv1
from metairm_pl.data.synthetic import SyntheticDataModule
from metairm_pl.models.mlp import MLP

TRAIN = [{"name": "p0.1", "p_color": 0.1, "size": 400}, {"name": "p0.2", "p_color": 0.2, "size": 400}]
TEST = [{"name": "p0.9", "p_color": 0.9, "size": 2000}]


def fit(module, datamodule, steps: int) -> None:
    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        inference_mode=False,
        accelerator="cpu",
        deterministic=True,
    )
    trainer.fit(module, datamodule=datamodule)


def official_irm_loop(network, envs, steps, lr, l2, weight, anneal):
    """The IRM Colored MNIST update, written out by hand."""
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    for step in range(steps):
        nlls, penalties = [], []
        for x, y in envs:
            logits = network(x).squeeze(-1)
            nlls.append(F.binary_cross_entropy_with_logits(logits, y.float()))
            scale = torch.tensor(1.0, requires_grad=True)
            nll_scaled = F.binary_cross_entropy_with_logits(logits * scale, y.float())
            (grad,) = torch.autograd.grad(nll_scaled, [scale], create_graph=True)
            penalties.append(grad.pow(2))
        weight_norm = sum(p.pow(2).sum() for p in network.parameters())
        w = weight if step >= anneal else 1.0
        loss = torch.stack(nlls).mean() + l2 * weight_norm + w * torch.stack(penalties).mean()
        if w > 1.0:
            loss = loss / w
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_irm_training_steps_match_the_official_update():
    datamodule = SyntheticDataModule(TRAIN, TEST, data_seed=0)
    datamodule.setup()
    torch.manual_seed(0)
    network = MLP((8,), 1, hidden_dim=16)
    reference = MLP((8,), 1, hidden_dim=16)
    reference.load_state_dict(network.state_dict())
    settings = {"lr": 1e-2, "l2": 1e-3, "weight": 100.0, "anneal": 3}
    module = IRMv1(
        network,
        functools.partial(torch.optim.Adam, lr=settings["lr"]),
        l2_weight=settings["l2"],
        penalty={"weight": settings["weight"], "anneal_steps": settings["anneal"]},
    )
    fit(module, datamodule, steps=6)  # 3 steps at weight 1, 3 annealed and rescaled
    official_irm_loop(reference, list(datamodule.splits.train.values()), steps=6, **settings)
    for ours, theirs in zip(network.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not torch.equal(network.layers[0].weight, MLP((8,), 1, hidden_dim=16).layers[0].weight)


def test_erm_takes_the_spurious_feature_and_irm_relies_on_it_less():
    """Linear model on the planted data: ERM follows the spurious feature (reversed in p0.9),
    IRMv1 clearly less (it does not fully recover the invariant solution here: ~0.34 vs
    the ~0.67 the invariant feature alone would give)."""
    accuracies = {}
    for name, make in {
        "erm": lambda net: ERM(net, functools.partial(torch.optim.Adam, lr=1e-2)),
        "irm": lambda net: IRMv1(
            net, functools.partial(torch.optim.Adam, lr=1e-2), penalty={"weight": 1e4, "anneal_steps": 100}
        ),
    }.items():
        datamodule = SyntheticDataModule(TRAIN, TEST, data_seed=1)
        datamodule.setup()
        torch.manual_seed(1)
        module = make(MLP((8,), 1, hidden_dim=1, n_hidden_layers=0))
        fit(module, datamodule, steps=400)
        x, y = datamodule.splits.test["p0.9"]
        accuracies[name] = module.evaluate_env(x, y)["acc"]
    assert accuracies["erm"] < 0.25, accuracies
    assert accuracies["irm"] > accuracies["erm"] + 0.1, accuracies
