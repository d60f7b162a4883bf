"""Meta-IRM's early stopping: stop once the training envs' validation losses agree."""

from __future__ import annotations

import logging
import math
from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from metairm_pl.errors import ConfigError

log = logging.getLogger(__name__)


def population_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


class StdThresholdEarlyStopping(pl.Callback):
    """After each evaluation, compute the population std across training envs of their
    validation losses (``val/<env>/loss``); stop at the first evaluation where it is below
    ``std_threshold`` once at least ``min_steps`` steps are done.  The model kept is the one
    of that evaluation (training stops right after it; ``max_steps`` still bounds the run).

    This callback owns whether and where the run stopped (:attr:`stop_step`).  The std,
    whether the run stopped, and the stop step go into every record through
    :meth:`record_fields` (``early_stop/val_loss_std``, ``early_stop/stopped``,
    ``early_stop/stop_step``), which the results writer asks every callback for.
    """

    def __init__(self, std_threshold: float, min_steps: int = 0, split: str = "val") -> None:
        if not std_threshold > 0:
            raise ConfigError(f"std_threshold={std_threshold} is not allowed: use a value > 0.")
        if min_steps < 0:
            raise ConfigError(f"min_steps={min_steps} is not allowed: use an integer >= 0.")
        self.std_threshold = float(std_threshold)
        self.min_steps = int(min_steps)
        self.split = split
        self.stop_step: Optional[int] = None
        self.std_history: list[tuple[int, float]] = []

    @property
    def stopped(self) -> bool:
        return self.stop_step is not None

    def record_fields(self) -> dict[str, object]:
        """What this callback adds to the record of the latest evaluation."""
        if not self.std_history:
            return {}
        return {
            "early_stop/val_loss_std": self.std_history[-1][1],
            "early_stop/stopped": self.stopped,
            "early_stop/stop_step": self.stop_step,
        }

    def losses(self, eval_metrics: dict[str, float]) -> list[float]:
        prefix = f"{self.split}/"
        losses = [v for k, v in eval_metrics.items() if k.startswith(prefix) and k.endswith("/loss")]
        if len(losses) < 2:
            raise ConfigError(
                f"std-threshold early stopping needs validation losses of >= 2 training envs "
                f"(keys '{prefix}<env>/loss'), found {len(losses)}: set data.val_fraction > 0."
            )
        return losses

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step = int(trainer.global_step)
        std = population_std(self.losses(pl_module.eval_metrics))
        self.std_history.append((step, std))
        if self.stop_step is None and step >= self.min_steps and std < self.std_threshold and self._fitting(trainer):
            self.stop_step = step
            trainer.should_stop = True
            log.info(
                "stopped at step %d: std of the training envs' validation losses %.4g < %g",
                step,
                std,
                self.std_threshold,
            )

    @staticmethod
    def _fitting(trainer: pl.Trainer) -> bool:
        """True inside ``Trainer.fit`` (not in a stand-alone ``Trainer.validate``)."""
        return trainer.state.fn == TrainerFn.FITTING

    def state_dict(self) -> dict:
        return {"stop_step": self.stop_step, "std_history": self.std_history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.stop_step = state_dict["stop_step"]
        self.std_history = [tuple(item) for item in state_dict["std_history"]]
