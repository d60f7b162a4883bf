"""Helpers of the reference-parity tests: a method at a chosen step, its whole training loss,
random multi-env batches and the gradients of a loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metairm_pl.models.mlp import MLP

INPUT_SHAPE = (2, 3, 3)  # colour channels first, as Colored MNIST's


def at_step(cls):
    """A subclass of method ``cls`` whose ``global_step`` can be set (Lightning's reads the trainer)."""
    return type(f"{cls.__name__}AtStep", (cls,), {"global_step": 0})


def training_loss(method, batch) -> torch.Tensor:
    """What ``training_step`` back-propagates: risk, L2 and the scheduled penalty, rescaled."""
    objective = method.objective(batch)
    penalty = objective.penalty if objective.penalty is not None else torch.zeros((), dtype=objective.risk.dtype)
    return method.schedule.combine(objective.risk, penalty, method.l2_term(), method.global_step)


def gradients(loss: torch.Tensor, module: torch.nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(module.parameters())))


@pytest.fixture
def make_batch():
    def make(n_envs: int = 2, size: int = 40, seed: int = 0, dtype=torch.float32, num_classes: int = 2) -> dict:
        generator = torch.Generator().manual_seed(seed)
        return {
            f"e{k}": (
                torch.rand(size + 3 * k, *INPUT_SHAPE, generator=generator).to(dtype),
                torch.randint(0, num_classes, (size + 3 * k,), generator=generator),
            )
            for k in range(n_envs)
        }

    return make


@pytest.fixture
def make_mlp():
    def make(num_outputs: int = 1, hidden_dim: int = 6, seed: int = 0, dtype=torch.float32) -> MLP:
        torch.manual_seed(seed)
        return MLP(INPUT_SHAPE, num_outputs, hidden_dim=hidden_dim).to(dtype)

    return make


def resumed_beside_uninterrupted(make_config, overrides: list[str], checkpoint_every: int) -> tuple[Path, Path]:
    """Train ``overrides`` twice: once without checkpoints, once with one every
    ``checkpoint_every`` steps, then undo that run's end (markers, final checkpoint) as if it
    were killed after its last periodic checkpoint and relaunch it. Returns the run directories
    (resumed, uninterrupted)."""
    from metairm_pl.run import train

    reference = make_config(overrides + ["checkpoint_every=0"], name="reference")
    train(reference)
    first = make_config(overrides + [f"checkpoint_every={checkpoint_every}"], name="resumed")
    train(first)
    directory = Path(first.paths.output_dir)
    for end in ("done", "final.json"):
        (directory / end).unlink()
    (directory / "checkpoints" / "final.ckpt").unlink()
    train(make_config(overrides + [f"checkpoint_every={checkpoint_every}"], name="resumed"))
    return directory, Path(reference.paths.output_dir)
