"""GroupDRO equals DomainBed's GroupDRO update (transcribed below as an independent reference),
and its q is a buffer that a resumed run continues exactly."""

from __future__ import annotations

import pytest
import torch

from metairm_pl.algorithms.group_dro import GroupDRO
from metairm_pl.errors import ConfigError
from metairm_pl.files import read_jsonl

from .conftest import gradients, resumed_beside_uninterrupted, training_loss


def domainbed_groupdro(losses, q, eta):
    """DomainBed ``GroupDRO.update``: q starts at ones, each env's weight is multiplied by
    exp(eta * its detached loss), q is renormalised, and the loss is <losses, q>."""
    if q is None:
        q = torch.ones(len(losses), dtype=losses.dtype)
    q = q.detach().clone()
    for m in range(len(losses)):
        q[m] *= (eta * losses[m].detach()).exp()
    q /= q.sum()
    return torch.dot(losses, q), q


@pytest.mark.parametrize("n_envs", [2, 3])
def test_three_steps_equal_domainbed(make_mlp, make_batch, n_envs):
    network = make_mlp()
    method = GroupDRO(network, optimizer=lambda p: torch.optim.SGD(p, lr=0.5), eta=0.7, l2_weight=0.0)
    method.setup_environments([f"e{k}" for k in range(n_envs)])
    q = None
    for step in range(3):
        batch = make_batch(n_envs=n_envs, seed=step)
        losses = torch.stack([method.risk_fn(network(x), y) for x, y in batch.values()])
        reference, q = domainbed_groupdro(losses, q, eta=0.7)
        expected_grads = gradients(reference, network)
        ours = training_loss(method, batch)
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)
        torch.testing.assert_close(method.q, q, rtol=1e-6, atol=0)
        for a, b in zip(gradients(ours, network), expected_grads):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
        with torch.no_grad():  # take the same SGD step the next comparison starts from
            for p, g in zip(network.parameters(), expected_grads):
                p -= 0.5 * g
    assert not torch.allclose(method.q, torch.full((n_envs,), 1.0 / n_envs))


def test_eta_must_be_a_finite_step_size(make_mlp):
    with pytest.raises(ConfigError, match=r"algorithm.eta=-1 is not allowed"):
        GroupDRO(make_mlp(), optimizer=None, eta=-1)


def test_a_resumed_run_continues_q_exactly(make_config):
    """Killed after its checkpoint at step 10: the relaunch restores q from the checkpoint, and
    its records and final weights equal those of a run never interrupted."""
    short = ["data=synthetic", "algorithm=group_dro", "algorithm.eta=0.5", "model.hidden_dim=8",
             "trainer.val_check_interval=5", "trainer.max_steps=20"]  # fmt: skip
    directory, reference = resumed_beside_uninterrupted(make_config, short, checkpoint_every=10)
    assert read_jsonl(directory / "results.jsonl") == read_jsonl(reference / "results.jsonl")
    final_q = [
        torch.load(d / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]["q"]
        for d in (directory, reference)
    ]
    assert torch.equal(final_q[0], final_q[1])
    checkpoint = torch.load(directory / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 10 and not torch.equal(checkpoint["state_dict"]["q"], final_q[0])
