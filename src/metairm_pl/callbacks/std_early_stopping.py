"""Meta-IRM's early stopping: stop once the training envs' validation losses agree.

``metric="loss"`` is the paper's rule.  ``metric="acc"`` is a labelled refinement (not the
paper's): stop once the training envs' validation *accuracies* agree.  On paired validation
sets (``data.val_pairing=shared``) two envs differ only in the colour of the digits whose
colour draw falls between their flip rates, so the accuracy gap is the model's signed
colour use on those digits, while equal losses can hide a colour use that shows in
accuracy (docs/results.md, "A stop on accuracies").
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from metairm_pl.callbacks.run_callback import RunCallback
from metairm_pl.errors import ConfigError

log = logging.getLogger(__name__)

METRICS = {"loss": "losses", "acc": "accuracies"}  # the per-env validation metric -> its plural in messages


def population_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


class StdThresholdEarlyStopping(RunCallback):
    """After each evaluation, compute the population std across training envs of their
    validation losses (``val/<env>/loss``; with ``metric="acc"`` their accuracies,
    ``val/<env>/acc``); stop at the first evaluation where it is below
    ``std_threshold`` once at least ``min_steps`` steps are done.  The model kept is the one
    of that evaluation (training stops right after it; ``max_steps`` still bounds the run).

    This callback owns whether and where the run stopped (:attr:`stop_step`).  The std,
    whether the run stopped, and the stop step go into every record through
    :meth:`record_fields` (``early_stop/val_loss_std`` or ``early_stop/val_acc_std``,
    ``early_stop/stopped``, ``early_stop/stop_step``), which the results writer asks every
    callback for.
    """

    def __init__(self, std_threshold: float, min_steps: int = 0, split: str = "val", metric: str = "loss") -> None:
        if metric not in METRICS:
            raise ConfigError(
                f"callbacks.std_early_stopping.metric={metric!r} is not allowed: use one of {list(METRICS)} "
                "(the std of the training envs' validation losses, the paper's rule, or of their accuracies)."
            )
        if not std_threshold > 0:
            raise ConfigError(f"std_threshold={std_threshold} is not allowed: use a value > 0.")
        if min_steps < 0:
            raise ConfigError(f"min_steps={min_steps} is not allowed: use an integer >= 0.")
        self.std_threshold = float(std_threshold)
        self.min_steps = int(min_steps)
        self.split = split
        self.metric = metric
        self.stop_step: Optional[int] = None
        self.std_history: list[tuple[int, float]] = []

    @property
    def stopped(self) -> bool:
        return self.stop_step is not None

    def finished_by_design(self) -> bool:
        return self.stopped

    def check_data(self, datamodule) -> None:
        """The std needs validation sets of >= 2 training envs."""
        n_val_envs = len(datamodule.splits.val) if datamodule.splits is not None else 0
        if n_val_envs < 2:
            raise ConfigError(
                f"std-threshold early stopping needs validation sets of >= 2 training envs, the data has "
                f"{n_val_envs}: set data.val_fraction > 0 (or callbacks=default to train without it)."
            )

    def record_fields(self) -> dict[str, object]:
        """What this callback adds to the record of the latest evaluation."""
        if not self.std_history:
            return {}
        return {
            f"early_stop/{self.split}_{self.metric}_std": self.std_history[-1][1],
            "early_stop/stopped": self.stopped,
            "early_stop/stop_step": self.stop_step,
        }

    def values(self, eval_metrics: dict[str, float]) -> list[float]:
        """The training envs' validation values of :attr:`metric` in one evaluation."""
        prefix, suffix = f"{self.split}/", f"/{self.metric}"
        values = [v for k, v in eval_metrics.items() if k.startswith(prefix) and k.endswith(suffix)]
        if len(values) < 2:
            raise ConfigError(
                f"std-threshold early stopping needs validation {METRICS[self.metric]} of >= 2 training "
                f"envs (keys '{prefix}<env>{suffix}'), found {len(values)}: set data.val_fraction > 0."
            )
        return values

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step = int(trainer.global_step)
        std = population_std(self.values(pl_module.eval_metrics))
        self.std_history.append((step, std))
        if self.stop_step is None and step >= self.min_steps and std < self.std_threshold and self._fitting(trainer):
            self.stop_step = step
            trainer.should_stop = True
            log.info(
                "stopped at step %d: std of the training envs' validation %s %.4g < %g",
                step,
                METRICS[self.metric],
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
