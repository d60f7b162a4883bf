"""Validation-only objectives a hyperparameter search maximizes (``python train.py -m hparams_search=...``).

``train.py`` returns ``search_objective(final, cfg.objective)`` to the Hydra sweeper.  Every
objective reads the *training* environments' validation metrics of the kept model only;
test environments never enter a search.

* ``val_acc``: mean validation accuracy over the training envs.
* ``std_stopped_val_acc``: the same, minus 2 when the run did not stop by the std-threshold
  rule (``early_stop/stopped``).  Accuracies lie in [0, 1], so every run whose training envs'
  validation losses came within the threshold of each other (invariant by Meta-IRM's own
  criterion) ranks above every run that never did; within each group the higher accuracy wins.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

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


OBJECTIVES: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "val_acc": mean_train_val_acc,
    "std_stopped_val_acc": std_stopped_val_acc,
}


def search_objective(final: Mapping[str, Any], name: str) -> float:
    """The value of objective ``name`` for a finished run's ``final.json`` mapping."""
    if name not in OBJECTIVES:
        raise ConfigError(f"objective={name!r} is not known: allowed objectives are {sorted(OBJECTIVES)}.")
    return float(OBJECTIVES[name](final))
