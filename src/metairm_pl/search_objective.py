"""Validation-only objectives a hyperparameter search maximizes (``python train.py -m hparams_search=...``).

A preset sets ``objective``; ``train.py`` then returns ``search_objective(final, cfg.objective)``
to the Hydra sweeper (``objective: null``, the default, returns nothing). The name and the
validation sets it reads are checked before training (:func:`check_objective_name`,
:func:`check_objective_data`). Every objective reads the *training* environments'
validation metrics of the kept model only; test environments never enter a search.

* ``val_acc``: mean validation accuracy over the training envs.
* ``std_stopped_val_acc``: the same, minus 2 when no callback ended the run by its rule
  (``stopped_early`` in ``final.json``; for Meta-IRM the std-threshold stop).  Accuracies lie
  in [0, 1], so every run that stopped by design (for Meta-IRM: invariant by its own
  criterion) ranks above every run that did not; within each group the higher accuracy wins.
* ``invariant_val_acc``: the same rule for methods without a stop, read at the final
  evaluation: the mean validation accuracy minus 2 unless the population std of the training
  envs' validation losses is below :data:`INVARIANCE_STD` (0.001, the std threshold of
  Meta-IRM's search). On paired validation sets that std measures the use of the spurious
  feature, so every run that ends invariant by the paper's criterion ranks first.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

from metairm_pl.errors import ConfigError


def mean_train_val_acc(final: Mapping[str, Any]) -> float:
    """Mean over the training envs of ``val/<env>/acc`` in the final record."""
    accuracies = [value for key, value in final["metrics"].items() if key.startswith("val/") and key.endswith("/acc")]
    if not accuracies:
        raise ConfigError(
            "the search objective needs validation accuracies of the training envs, the run has none: "
            "set data.val_fraction > 0."
        )
    return sum(accuracies) / len(accuracies)


def std_stopped_val_acc(final: Mapping[str, Any]) -> float:
    return mean_train_val_acc(final) - (0.0 if final.get("stopped_early") else 2.0)


INVARIANCE_STD = 0.001


def val_loss_std(final: Mapping[str, Any]) -> float:
    """Population std over the training envs of ``val/<env>/loss`` in the final record."""
    losses = [value for key, value in final["metrics"].items() if key.startswith("val/") and key.endswith("/loss")]
    if len(losses) < 2:
        raise ConfigError("invariant_val_acc needs validation losses of >= 2 training envs: set data.val_fraction > 0.")
    mean = sum(losses) / len(losses)
    return math.sqrt(sum((value - mean) ** 2 for value in losses) / len(losses))


def invariant_val_acc(final: Mapping[str, Any]) -> float:
    return mean_train_val_acc(final) - (0.0 if val_loss_std(final) < INVARIANCE_STD else 2.0)


OBJECTIVES: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "val_acc": mean_train_val_acc,
    "std_stopped_val_acc": std_stopped_val_acc,
    "invariant_val_acc": invariant_val_acc,
}


def check_objective_name(name: Optional[str]) -> None:
    """Before anything is built: ``name`` is null or a known objective."""
    if name is not None and name not in OBJECTIVES:
        raise ConfigError(f"objective={name!r} is not known: use null or one of {sorted(OBJECTIVES)}.")


def check_objective_data(name: Optional[str], datamodule: Any) -> None:
    """Before training: every objective reads the training envs' validation sets."""
    splits = getattr(datamodule, "splits", None)
    if name is not None and (splits is None or not splits.val):
        raise ConfigError(
            f"objective={name} reads the training envs' validation accuracies and the data has no validation "
            "sets: set data.val_fraction > 0 (or objective=null)."
        )


def search_objective(final: Mapping[str, Any], name: Optional[str]) -> Optional[float]:
    """The value of objective ``name`` for a finished run's ``final.json`` mapping (None for null)."""
    check_objective_name(name)
    if name is None:
        return None
    return float(OBJECTIVES[name](final))
