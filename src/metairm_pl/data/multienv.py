"""Base LightningDataModule for multi-environment data.

A multi-environment batch maps an environment name to ``(x, y)``.  Subclasses only build
the tensors (:meth:`MultiEnvDataModule.build_environments`); this class serves them:

* training, full-batch (default, the IRM protocol): every step yields the whole of every
  training environment; on an accelerator the tensors are copied to the device once and
  reused (:meth:`transfer_batch_to_device`);
* training, minibatch: one shuffled ``DataLoader`` per environment combined with
  Lightning's ``CombinedLoader(mode="max_size_cycle")``;
* evaluation: one batch ``{"train": envs, "val": envs, "test": envs}`` holding the full
  training environments, their held-out validation sets and every test environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

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


class MultiEnvDataModule(pl.LightningDataModule):
    """Serves multi-environment batches; subclasses implement :meth:`build_environments`."""

    name: str = "multienv"

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

    # -- to implement -------------------------------------------------------------------
    def build_environments(self) -> EnvironmentSplits:
        raise NotImplementedError

    # -- shape information for building the network -------------------------------------
    @property
    def num_classes(self) -> int:
        raise NotImplementedError

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
            return DataLoader(_RepeatForever(self._full_batch("train", splits.train)), batch_size=None, collate_fn=_as_is)
        loaders = {}
        for index, (name, (x, y)) in enumerate(splits.train.items()):
            generator = torch.Generator().manual_seed(self.data_seed * 1000 + index)
            loaders[name] = DataLoader(
                TensorDataset(x, y), batch_size=self.batch_size, shuffle=True, generator=generator
            )
        return CombinedLoader(loaders, mode="max_size_cycle")

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
