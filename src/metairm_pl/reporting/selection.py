"""Model selection: which evaluation of a run is reported.  Pure functions over one run's
records (dicts in file order, as in ``results.jsonl``); each returns one of those records,
or None when the run has no record it can choose from.

* ``train_val`` (default) — training-environment validation: the record with the highest
  mean over the training envs of ``val/<env>/acc``.  Uses no test data.
* ``last`` — the final evaluation; with std-threshold early stopping, the stop step.
* ``oracle`` — the record with the highest accuracy on one test env.  It looks at test
  data, so it is an upper bound rather than a selection method; it is labelled
  "oracle (test env)" wherever it appears.

Ties go to the earliest step (then the earlier line).  Records whose score is missing or
not finite are never chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from metairm_pl.reporting.records import finite_value, metric_envs

Record = Mapping[str, Any]
DEFAULT_SELECTION = "train_val"
SELECTION_NAMES = ("train_val", "last", "oracle")
ORACLE_LABEL = "oracle (test env)"


def _best(records: Sequence[Record], score: Callable[[Record], Optional[float]]) -> Optional[Record]:
    """The record with the highest finite score; ties → earliest step, then earliest line."""
    best, best_key = None, None
    for index, record in enumerate(records):
        value = score(record)
        if value is None or not math.isfinite(value):
            continue
        step = record.get("step")
        step = step if isinstance(step, (int, float)) and not isinstance(step, bool) else math.inf
        key = (-value, step, index)
        if best_key is None or key < best_key:
            best, best_key = record, key
    return best


def mean_val_acc(record: Record) -> Optional[float]:
    """Mean over the training envs (those with ``val/<env>/acc``) of their validation
    accuracy; None when a record has none, or one of them is not finite."""
    values = [finite_value(record, f"val/{env}/acc") for env in metric_envs(record, "val")]
    if not values or any(v is None for v in values):
        return None
    return math.fsum(values) / len(values)  # fsum: the same value whatever the env order


def select_train_val(records: Sequence[Record]) -> Optional[Record]:
    """Training-environment validation: maximise the mean ``val/<env>/acc`` over training envs."""
    return _best(records, mean_val_acc)


def stop_step(records: Sequence[Record]) -> Optional[int]:
    """The step at which std-threshold early stopping stopped the run, if it did."""
    for record in records:
        step = record.get("early_stop/stop_step")
        if record.get("early_stop/stopped") and isinstance(step, (int, float)) and not isinstance(step, bool):
            return int(step)
    return None


def select_last(records: Sequence[Record]) -> Optional[Record]:
    """The final evaluation.  If early stopping stopped the run, the last record at or before
    the stop step (the model kept is the one of that evaluation)."""
    if not records:
        return None
    stopped_at = stop_step(records)
    if stopped_at is None:
        return records[-1]
    before = [r for r in records if isinstance(r.get("step"), (int, float)) and r["step"] <= stopped_at]
    return before[-1] if before else records[-1]


def select_oracle(records: Sequence[Record], test_env: str) -> Optional[Record]:
    """Oracle (test env): maximise ``test/<test_env>/acc``.  Uses test data."""
    return _best(records, lambda record: finite_value(record, f"test/{test_env}/acc"))


@dataclass(frozen=True)
class SelectionMethod:
    """A selection function with the words that describe it in tables and plots."""

    name: str
    label: str  # short: table headers, CSV, plot titles
    description: str  # one sentence for the report header
    missing: str  # why a run may have no selectable record
    select: Callable[[Sequence[Record]], Optional[Record]]
    oracle_env: Optional[str] = None

    def __call__(self, records: Sequence[Record]) -> Optional[Record]:
        return self.select(records)


TRAIN_VAL = SelectionMethod(
    name="train_val",
    label="training-env validation",
    description=(
        "per run, the evaluation with the highest mean validation accuracy over the training envs "
        "(ties: earliest step); no test data used"
    ),
    missing="no val/<env>/acc",
    select=select_train_val,
)

LAST = SelectionMethod(
    name="last",
    label="last evaluation",
    description="per run, the final evaluation (with std-threshold early stopping: the stop step)",
    missing="no records",
    select=select_last,
)


def oracle(test_env: str) -> SelectionMethod:
    def select(records: Sequence[Record]) -> Optional[Record]:
        return select_oracle(records, test_env)

    return SelectionMethod(
        name="oracle",
        label=f"{ORACLE_LABEL}: {test_env}",
        description=(
            f"per run, the evaluation with the highest test accuracy on {test_env} (ties: earliest step); "
            "chosen on test data, so an upper bound, not a model-selection method"
        ),
        missing=f"no test/{test_env}/acc",
        select=select,
        oracle_env=test_env,
    )


def get_selection(name: str = DEFAULT_SELECTION, oracle_env: Optional[str] = None) -> SelectionMethod:
    """The selection method called ``name``; ``oracle`` needs ``oracle_env``."""
    if name == "train_val":
        return TRAIN_VAL
    if name == "last":
        return LAST
    if name == "oracle":
        if not oracle_env:
            raise ValueError("the oracle (test env) selection needs a test env, e.g. oracle_env='p0.9'")
        return oracle(oracle_env)
    raise ValueError(f"unknown selection {name!r}; choose one of {', '.join(SELECTION_NAMES)}")
