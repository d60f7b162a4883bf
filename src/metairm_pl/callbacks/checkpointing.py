"""Periodic checkpoints in the run directory, written atomically, so a killed run resumes exactly.

:class:`PeriodicCheckpoint` saves ``<run_dir>/checkpoints/last.ckpt`` every
``every_n_steps`` optimizer steps with ``Trainer.save_checkpoint``: the network, the
optimizer state (manual optimization included), the loop progress (global step) with,
in minibatch mode, the position of every env's shuffled minibatch stream (Lightning
saves the ``state_dict`` of stateful training loaders with the loop state; see
:class:`metairm_pl.data.multienv.EnvBatchSampler`), the state of every stateful callback
(e.g. ``StdThresholdEarlyStopping``) and, through ``MultiEnvAlgorithm.on_save_checkpoint``,
every random state (torch, CUDA, numpy, python, the module's own generators).  The file is written under a temporary name, fsynced and
renamed over the previous one: a kill at any moment leaves the old or the new checkpoint,
never a partial one.

When a checkpoint step is also an evaluation step, the checkpoint is written right after
that evaluation, once its record is in ``results.jsonl``; on resume Lightning then knows
the evaluation ran and does not repeat it, so the resumed run evaluates at the same steps
as an uninterrupted one.  Other steps are checkpointed at the end of their training batch.
Nothing is written when the run is about to end (its last step, or a stop requested by
early stopping): a run killed in that window replays from the previous checkpoint and
reaches the same end.

Exactness: a resumed run is bit-identical to an uninterrupted one on the same machine and
software, in full-batch mode (the IRM protocol) and in minibatch mode, where every env's
loader continues its permutation at the saved batch, mid-epoch or mid-pass of a shorter
env that ``max_size_cycle`` cycles included (tests/test_resume.py).  A minibatch
checkpoint written before the loaders were resumable has no loader states: such a run
resumes with the envs' minibatch streams restarted from the beginning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from metairm_pl.errors import ConfigError
from metairm_pl.run_dir import checkpoint_temporary_path, last_checkpoint_path

log = logging.getLogger(__name__)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step a checkpoint was saved at (reads the whole file, on the CPU)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return int(checkpoint["global_step"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def validation_runs_after_this_batch(trainer: pl.Trainer) -> bool:
    """Lightning's own decision whether an evaluation follows the current training batch.

    Called from ``on_train_batch_end``, where the epoch loop's counters are those it
    decides with in ``on_advance_end``.  Private Lightning API (2.6); the resume test
    (tests/test_resume.py) fails if its meaning changes.
    """
    fit_loop = trainer.fit_loop
    return bool(fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher))


def check_checkpoint_every(every_n_steps: object) -> int:
    """``checkpoint_every``: an integer >= 0 (0 disables checkpoints); returned as is."""
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0:
        raise ConfigError(
            f"checkpoint_every={every_n_steps!r} is not allowed: use an integer >= 0 (0 disables checkpoints)."
        )
    return every_n_steps


class PeriodicCheckpoint(pl.Callback):
    """Save the run directory's ``checkpoints/last.ckpt`` every ``every_n_steps`` steps (0: never), atomically.

    Attach it after the results writer and the other callbacks, so a checkpoint taken
    after an evaluation includes that evaluation's record and callback states.
    """

    def __init__(self, run_dir: str | os.PathLike, every_n_steps: int) -> None:
        check_checkpoint_every(every_n_steps)
        self.run_dir = Path(run_dir)
        self.every_n_steps = every_n_steps
        self.last_saved_step: Optional[int] = None
        self._save_after_validation_at: Optional[int] = None

    @property
    def path(self) -> Path:
        return last_checkpoint_path(self.run_dir)

    def _due(self, step: int) -> bool:
        return self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if not self._due(step) or step == self.last_saved_step:
            return
        if validation_runs_after_this_batch(trainer):
            self._save_after_validation_at = step
        else:
            self.save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self._save_after_validation_at == int(trainer.global_step):
            self._save_after_validation_at = None
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        """Write the checkpoint of the current step, unless the run is about to end."""
        step = int(trainer.global_step)
        if trainer.should_stop or 0 < trainer.max_steps <= step:
            return
        temporary = checkpoint_temporary_path(self.run_dir, os.getpid())
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            trainer.save_checkpoint(temporary, weights_only=False)
            if trainer.is_global_zero:
                _fsync(temporary)
                os.replace(temporary, self.path)
                _fsync(self.path.parent)
        finally:
            if trainer.is_global_zero:
                temporary.unlink(missing_ok=True)
        self.last_saved_step = step
        log.debug("checkpoint at step %d: %s", step, self.path)
