"""Base LightningDataModule for multi-environment data.

A multi-environment batch maps an environment name to ``(x, y)``.  Subclasses only build
the tensors (:meth:`MultiEnvDataModule.build_environments`); this class serves them:

* training, full-batch (default, the IRM protocol): every step yields the whole of every
  training environment; on an accelerator the tensors are copied to the device once and
  reused (:meth:`transfer_batch_to_device`);
* training, minibatch: one shuffled ``DataLoader`` per environment combined with
  Lightning's ``CombinedLoader(mode="max_size_cycle")``; the shuffling is resumable
  exactly (:class:`EnvBatchSampler`), so a run resumed from a checkpoint sees the same
  minibatches as an uninterrupted one;
* evaluation: one batch ``{"train": envs, "val": envs, "test": envs}`` holding the full
  training environments, their held-out validation sets and every test environment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Sampler, TensorDataset

from metairm_pl.data.environments import EnvConfig
from metairm_pl.errors import ConfigError

EnvBatch = dict[str, tuple[Tensor, Tensor]]


@dataclass
class EnvironmentSplits:
    """All tensors of a data set: training envs, their validation sets, test envs."""

    train: EnvBatch
    val: EnvBatch = field(default_factory=dict)
    test: EnvBatch = field(default_factory=dict)

    def as_eval_batch(self) -> dict[str, EnvBatch]:
        return {"train": self.train, "val": self.val, "test": self.test}


class FullBatch(dict):
    """A whole multi-env batch served as one object; moved to a device once and cached."""


def _as_is(item):
    """``collate_fn`` that hands the dataset's item over unchanged (no copy, no conversion)."""
    return item


class _RepeatForever(IterableDataset):
    """Yields the same object at every step (full-batch training)."""

    def __init__(self, item) -> None:
        self.item = item

    def __iter__(self) -> Iterator:
        while True:
            yield self.item


class _Once(IterableDataset):
    def __init__(self, item) -> None:
        self.item = item

    def __iter__(self) -> Iterator:
        yield self.item


class EnvBatchSampler(Sampler[list[int]]):
    """Shuffled minibatches of one training environment, as a stream that resumes exactly.

    Batch ``t`` of the stream (``t`` = :attr:`served`, counted over the whole run) is a
    function of ``t`` and the seed alone: the stream is cut into epochs of
    ``epoch_batches`` batches (the length of the combined loader, i.e. of its longest
    env), every epoch into passes of ``ceil(num_examples / batch_size)`` batches (the last
    one cut short where the epoch ends), and pass ``g`` (counted over the whole run) takes
    consecutive slices of the ``g``-th ``torch.randperm`` drawn from this sampler's own
    generator.  That is what ``CombinedLoader(mode="max_size_cycle")`` does with shuffled
    DataLoaders: every env draws a new permutation when an epoch starts, and a shorter env
    draws another one whenever it runs out.  An iterator yields the rest of the current
    pass and stops, so the combined loader cycles it at the same batches as it would a
    plain DataLoader; it yields nothing once the epoch is over, until :meth:`start_epoch`
    opens the next one.

    :meth:`state_dict` holds the number of batches served, the current pass's index and the
    state the generator had before drawing its permutation; :meth:`load_state_dict` draws that
    permutation again, so the next iterator continues with batch ``served``, mid-pass and
    mid-epoch.  Exact as long as every batch an iterator yields is trained on before a
    state is saved (no worker processes, no read-ahead: Lightning reads ahead only from
    loaders without a length, and these have one) and Lightning's epochs are whole epochs
    of the combined loader (no ``limit_train_batches``).
    """

    def __init__(self, num_examples: int, batch_size: int, epoch_batches: int, seed: int) -> None:
        if num_examples <= 0 or batch_size <= 0:
            raise ValueError(f"need num_examples > 0 and batch_size > 0, got {num_examples} and {batch_size}")
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.pass_batches = math.ceil(self.num_examples / self.batch_size)
        if epoch_batches < self.pass_batches:
            raise ValueError(f"epoch_batches={epoch_batches} is shorter than one pass ({self.pass_batches} batches)")
        self.epoch_batches = int(epoch_batches)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.served = 0  # batches yielded so far, over all epochs
        self.epoch = 0  # the open epoch: iterators stop where it ends
        self.resuming = False  # a state was loaded and no epoch has been opened since
        self.passes_per_epoch = math.ceil(self.epoch_batches / self.pass_batches)
        self._pass = -1  # index (over the whole run) of the pass _permutation belongs to
        self._permutation: Optional[Tensor] = None
        self._state_before_pass = self.generator.get_state()

    def __len__(self) -> int:
        """Batches per pass over the environment (what one plain ``DataLoader`` epoch has)."""
        return self.pass_batches

    def locate(self, t: int) -> tuple[int, int, int]:
        """``(epoch, pass in that epoch, batch in that pass)`` of stream batch ``t``."""
        epoch, in_epoch = divmod(t, self.epoch_batches)
        pass_index, in_pass = divmod(in_epoch, self.pass_batches)
        return epoch, pass_index, in_pass

    def _draw(self) -> None:
        """The permutation of the next pass (every pass draws one, even a skipped one)."""
        self._state_before_pass = self.generator.get_state()
        self._permutation = torch.randperm(self.num_examples, generator=self.generator)
        self._pass += 1

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            epoch, pass_index, in_pass = self.locate(self.served)
            if epoch != self.epoch:
                return  # the epoch is over (its end may cut the last pass short)
            while self._pass < epoch * self.passes_per_epoch + pass_index:
                self._draw()
            start = in_pass * self.batch_size
            batch = self._permutation[start : start + self.batch_size].tolist()
            self.served += 1
            yield batch
            if in_pass + 1 == self.pass_batches:
                return  # end of the pass: the combined loader starts another one if the epoch goes on

    def next_epoch(self) -> int:
        """The epoch a new ``iter()`` of the combined loader starts: this one if nothing of it
        was served yet, else the next."""
        return math.ceil(self.served / self.epoch_batches)

    def start_epoch(self, epoch: int) -> None:
        """Open ``epoch`` (at its first batch; the rest of an unfinished epoch is skipped)."""
        if epoch * self.epoch_batches < self.served:
            raise ValueError(f"epoch {epoch} starts before batch {self.served}, which was served already")
        self.served = epoch * self.epoch_batches
        self.epoch = epoch
        self.resuming = False

    def state_dict(self) -> dict[str, Any]:
        """Plain data (ints and a uint8 tensor): loads with ``torch.load(weights_only=True)``."""
        return {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "epoch_batches": self.epoch_batches,
            "served": self.served,
            "pass": self._pass,
            "generator": self._state_before_pass.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        keys = ("num_examples", "batch_size", "epoch_batches")
        layout = {key: int(state[key]) for key in keys}
        expected = {key: getattr(self, key) for key in keys}
        if layout != expected:
            raise ValueError(f"the saved minibatch order is for {layout}, this data has {expected}")
        generator_state = state["generator"].cpu()
        self.generator.set_state(generator_state)
        self._state_before_pass = generator_state.clone()
        saved_pass = int(state["pass"])
        self._pass, self._permutation = -1, None
        if saved_pass >= 0:
            self._pass = saved_pass - 1
            self._draw()  # the saved pass's permutation, again
        self.served = int(state["served"])
        # Continue the epoch of the next batch: the saved one, or the next if it had ended.
        self.epoch = self.served // self.epoch_batches
        self.resuming = True


class _EnvLoader(DataLoader):
    """A training env's loader whose position Lightning checkpoints.

    Lightning's fit loop saves ``state_dict()`` of every training loader that has
    ``state_dict``/``load_state_dict`` (``_Stateful``) in the checkpoint's loop state and,
    on resume, calls ``load_state_dict`` before it creates the first iterator.
    """

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)


class _EnvCombinedLoader(CombinedLoader):
    """``max_size_cycle`` over the env loaders.  Every ``iter()`` starts a new epoch of all
    envs together, as with plain DataLoaders, except the first one after the states
    were loaded (on resume), which continues the saved epoch where it was."""

    def __iter__(self):
        samplers = [getattr(loader, "batch_sampler", None) for loader in self.flattened]
        samplers = [sampler for sampler in samplers if isinstance(sampler, EnvBatchSampler)]
        if any(sampler.resuming for sampler in samplers):
            for sampler in samplers:
                sampler.resuming = False
        elif samplers:
            epoch = max(sampler.next_epoch() for sampler in samplers)
            for sampler in samplers:
                sampler.start_epoch(epoch)
        return super().__iter__()


class MultiEnvDataModule(pl.LightningDataModule):
    """Serves multi-environment batches; subclasses implement :meth:`build_environments` and
    :attr:`num_classes`.

    A subclass in a module of ``metairm_pl.data`` that sets :attr:`schema_name` gets the
    structured-config schema ``schema_<schema_name>`` (``conf/data/<name>.yaml`` starts from
    it), read from its constructor (``**kwargs`` followed up to this class) with its
    :attr:`env_config` as the element of ``train_envs``/``test_envs``, its
    :attr:`config_defaults` and without its :attr:`runtime_arguments`.
    """

    name: str = "multienv"
    schema_name: Optional[str] = None
    env_config: type = EnvConfig  # config schema of one env in train_envs/test_envs
    config_defaults: Mapping[str, Any] = {}  # config-level defaults (interpolations, files the YAML names)
    runtime_arguments: tuple[str, ...] = ()  # constructor arguments code passes in, never configured
    binary_logits: int = 1  # logits of a binary task: 1 (logistic) or 2 (softmax, as some references)

    def __init__(self, full_batch: bool = True, batch_size: Optional[int] = None, data_seed: int = 0) -> None:
        super().__init__()
        if not full_batch and (batch_size is None or batch_size <= 0):
            raise ConfigError(
                f"data.batch_size={batch_size!r} is not allowed in minibatch mode "
                "(data.full_batch=false): use a positive integer."
            )
        self.full_batch = full_batch
        self.batch_size = batch_size
        self.data_seed = data_seed
        self.splits: Optional[EnvironmentSplits] = None
        self._device_copies: dict = {}
        self._full_batches: dict[str, FullBatch] = {}
        self._train_samplers: Optional[dict[str, EnvBatchSampler]] = None

    # -- to implement -------------------------------------------------------------------
    def build_environments(self) -> EnvironmentSplits:
        raise NotImplementedError

    # -- shape information for building the network -------------------------------------
    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def num_outputs(self) -> int:
        """Logits the network outputs: :attr:`binary_logits` for 2 classes, else one per class."""
        return self.binary_logits if self.num_classes == 2 else self.num_classes

    def model_kwargs(self) -> dict[str, Any]:
        """Extra network constructor arguments the data provides (e.g. word embeddings)."""
        return {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        x, _ = next(iter(self._require_splits().train.values()))
        return tuple(x.shape[1:])

    @property
    def train_env_names(self) -> list[str]:
        return list(self._require_splits().train)

    @property
    def test_env_names(self) -> list[str]:
        return list(self._require_splits().test)

    # -- Lightning hooks ---------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits is None:
            self.splits = self.build_environments()

    def train_dataloader(self):
        splits = self._require_splits()
        if self.full_batch:
            return DataLoader(
                _RepeatForever(self._full_batch("train", splits.train)), batch_size=None, collate_fn=_as_is
            )
        samplers = self._minibatch_samplers()
        loaders = {
            # The loader's own generator only feeds the per-iterator base seed torch draws
            # (unused without workers): creating iterators never touches the global RNG.
            name: _EnvLoader(TensorDataset(x, y), batch_sampler=samplers[name], generator=torch.Generator())
            for name, (x, y) in splits.train.items()
        }
        return _EnvCombinedLoader(loaders, mode="max_size_cycle")

    def _minibatch_samplers(self) -> dict[str, EnvBatchSampler]:
        """One sampler per training env, made once: a reloaded train loader continues the stream."""
        if self._train_samplers is None:
            sizes = {name: len(y) for name, (_, y) in self._require_splits().train.items()}
            epoch_batches = max(math.ceil(size / self.batch_size) for size in sizes.values())
            self._train_samplers = {
                name: EnvBatchSampler(size, self.batch_size, epoch_batches, seed=self.data_seed * 1000 + index)
                for index, (name, size) in enumerate(sizes.items())
            }
        return self._train_samplers

    def val_dataloader(self):
        eval_batch = self._full_batch("eval", self._require_splits().as_eval_batch())
        return DataLoader(_Once(eval_batch), batch_size=None, collate_fn=_as_is)

    def test_dataloader(self):
        return self.val_dataloader()

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Copy a :class:`FullBatch` to ``device`` once and reuse the copy at every step."""
        if not isinstance(batch, FullBatch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        key = (id(batch), str(device))
        cached = self._device_copies.get(key)
        if cached is None or cached[0] is not batch:
            cached = (batch, super().transfer_batch_to_device(batch, device, dataloader_idx))
            self._device_copies[key] = cached
        return cached[1]

    def _full_batch(self, kind: str, content: dict) -> FullBatch:
        """The one FullBatch of each kind, so every loader reuses the same device copy."""
        if kind not in self._full_batches:
            self._full_batches[kind] = FullBatch(content)
        return self._full_batches[kind]

    def _require_splits(self) -> EnvironmentSplits:
        if self.splits is None:
            self.setup()
        return self.splits
