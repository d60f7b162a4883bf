"""Minibatch mode: the per-env shuffled streams (EnvBatchSampler) reproduce what
``CombinedLoader(mode="max_size_cycle")`` does with shuffled DataLoaders, and their state
round trip (through ``torch.save``/``torch.load(weights_only=True)``) continues the stream
at the very batch it was saved at: mid-pass, at a shorter env's pass end, at an epoch end.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from lightning_fabric.utilities.types import _Stateful
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, Sampler, TensorDataset

from metairm_pl.data.multienv import EnvBatchSampler
from metairm_pl.data.synthetic import SyntheticDataModule

BATCH = 32
# The short env has 3 batches per pass (the last one of 26 examples), the long one 5:
# an epoch is 5 batches and the short env's second pass is cut after 2 batches.
SIZES = {"short": 90, "long": 160}
PASS, EPOCH = 3, 5


def datamodule(sizes=SIZES, data_seed: int = 4) -> SyntheticDataModule:
    dm = SyntheticDataModule(
        train_envs=[{"name": name, "p_color": 0.1, "size": size} for name, size in sizes.items()],
        test_envs=[{"name": "test", "p_color": 0.9, "size": 10}],
        val_fraction=0.0,
        data_seed=data_seed,
        full_batch=False,
        batch_size=BATCH,
    )
    dm.setup()
    return dm


def lightning_style(loader, epochs: int, first_epoch_batches: int | None = None) -> list[dict]:
    """Batches as Lightning's fit loop reads them: ``iter()`` once per epoch, then exactly
    as many batches as the epoch has left (it knows the length; it never reads past it)."""
    batches = []
    for epoch in range(epochs):
        iterator = iter(loader)
        wanted = first_epoch_batches if epoch == 0 and first_epoch_batches is not None else len(loader)
        batches += [next(iterator)[0] for _ in range(wanted)]
    return batches


def assert_same_batches(actual: list[dict], expected: list[dict]) -> None:
    assert len(actual) == len(expected)
    for step, (a, e) in enumerate(zip(actual, expected)):
        assert a.keys() == e.keys()
        for env in a:
            assert torch.equal(a[env][0], e[env][0]) and torch.equal(a[env][1], e[env][1]), (step, env)


class FreshPermutation(Sampler[int]):
    """What ``DataLoader(shuffle=True)`` does: a new permutation from ``generator`` per pass."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size, self.generator = size, generator

    def __iter__(self):
        yield from torch.randperm(self.size, generator=self.generator).tolist()

    def __len__(self) -> int:
        return self.size


def test_stream_is_what_max_size_cycle_makes_of_shuffled_dataloaders():
    dm = datamodule()
    plain = {
        name: DataLoader(
            TensorDataset(x, y),
            batch_size=BATCH,
            sampler=FreshPermutation(len(y), torch.Generator().manual_seed(dm.data_seed * 1000 + index)),
        )
        for index, (name, (x, y)) in enumerate(dm.splits.train.items())
    }
    loader = dm.train_dataloader()
    assert len(iter(loader)) == EPOCH
    ours = lightning_style(loader, epochs=4)
    reference = lightning_style(CombinedLoader(plain, mode="max_size_cycle"), epochs=4)
    assert_same_batches(ours, reference)
    # the short env's first pass holds each of its examples once; then it is cycled
    x_short = dm.splits.train["short"][0]
    first_pass = torch.cat([batch["short"][0] for batch in ours[:PASS]])
    assert [len(batch["short"][1]) for batch in ours[:EPOCH]] == [32, 32, 26, 32, 32]
    assert torch.equal(first_pass[first_pass[:, 0].argsort()], x_short[x_short[:, 0].argsort()])


def test_for_loops_and_abandoned_iterators_start_whole_new_epochs():
    expected = lightning_style(datamodule().train_dataloader(), epochs=4)
    loader = datamodule().train_dataloader()
    # a for loop runs the iterator dry: no env reads into the next epoch
    epochs = [[batch for batch, _, _ in loader] for _ in range(2)]
    assert [len(epoch) for epoch in epochs] == [EPOCH, EPOCH]
    assert_same_batches(epochs[0] + epochs[1], expected[: 2 * EPOCH])
    # an iterator given up after 2 batches of epoch 2: the next iter() begins epoch 3
    iterator = iter(loader)
    abandoned = [next(iterator)[0], next(iterator)[0]]
    assert_same_batches(abandoned, expected[2 * EPOCH : 2 * EPOCH + 2])
    restarted = [batch for batch, _, _ in loader]
    assert_same_batches(restarted, expected[3 * EPOCH :])


def saved(loader) -> list[dict]:
    """The env loaders' states as a checkpoint stores and reloads them."""
    assert all(isinstance(env_loader, _Stateful) for env_loader in loader.flattened)  # what Lightning checks
    buffer = io.BytesIO()
    torch.save([env_loader.state_dict() for env_loader in loader.flattened], buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    "cut",
    [
        0,  # before the first batch
        4,  # mid-epoch, mid-pass of the short env (its 2nd, cut-short pass)
        3,  # the short env has just ended a pass
        5,  # epoch end: both envs start new permutations next
        8,  # epoch 2, the short env at a pass end again
        12,  # epoch 3, mid-pass of the short env's first pass
    ],
)
def test_state_round_trip_continues_every_env_at_the_saved_batch(cut):
    total = 4 * EPOCH
    uninterrupted = lightning_style(datamodule().train_dataloader(), epochs=4)

    first = datamodule().train_dataloader()
    done, in_epoch = divmod(cut, EPOCH)
    before = lightning_style(first, epochs=done)
    if in_epoch:
        before += lightning_style(first, epochs=1, first_epoch_batches=in_epoch)
    states = saved(first)
    assert [state["served"] for state in states] == [cut, cut]

    resumed = datamodule().train_dataloader()  # a new process: fresh samplers
    for env_loader, state in zip(resumed.flattened, states):
        env_loader.load_state_dict(state)
    # Lightning resumes mid-epoch with the rest of that epoch; at an epoch end with a whole one
    rest = EPOCH - in_epoch
    after = lightning_style(resumed, epochs=1, first_epoch_batches=rest)
    after += lightning_style(resumed, epochs=math.ceil((total - cut - rest) / EPOCH))
    assert_same_batches(before + after, uninterrupted)


def test_sampler_state_round_trip_mid_pass():
    sampler = EnvBatchSampler(num_examples=10, batch_size=4, epoch_batches=5, seed=7)
    assert len(sampler) == 3
    iterator = iter(sampler)
    first_pass = [next(iterator) for _ in range(3)]
    assert sorted(i for batch in first_pass for i in batch) == list(range(10))
    assert [len(batch) for batch in first_pass] == [4, 4, 2]
    with pytest.raises(StopIteration):  # a pass ends; the combined loader starts the next
        next(iterator)
    iterator = iter(sampler)
    next(iterator)  # batch 3: the first of the second pass (cut after 2 batches by the epoch)
    state = sampler.state_dict()
    expected = [next(iterator)] + list(iter(sampler))  # batch 4 ends epoch 0: nothing more
    assert len(expected) == 1

    copy = EnvBatchSampler(num_examples=10, batch_size=4, epoch_batches=5, seed=12345)  # seed: state wins
    copy.load_state_dict(state)
    again = copy.state_dict()  # saved again before any batch: the same state
    assert {k: v for k, v in again.items() if k != "generator"} == {k: v for k, v in state.items() if k != "generator"}
    assert torch.equal(again["generator"], state["generator"]) and state["served"] == 4 and state["pass"] == 1
    assert list(iter(copy)) == expected
    sampler.start_epoch(1), copy.start_epoch(1)
    assert list(iter(copy)) == list(iter(sampler))  # and the next epoch's permutations too


def test_state_of_other_data_is_refused():
    state = EnvBatchSampler(num_examples=10, batch_size=4, epoch_batches=5, seed=0).state_dict()
    with pytest.raises(ValueError, match="saved minibatch order"):
        EnvBatchSampler(num_examples=11, batch_size=4, epoch_batches=5, seed=0).load_state_dict(state)


def test_creating_iterators_draws_nothing_from_the_global_rng():
    loader = datamodule().train_dataloader()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for _ in range(3):
        for _ in loader:
            pass
    assert torch.equal(torch.get_rng_state(), before)
