"""Selection methods are pure functions over one run's records (hand-made here)."""

from __future__ import annotations

import math

import pytest

from metairm_pl.reporting.selection import (
    DEFAULT_SELECTION,
    LAST,
    ORACLE_LABEL,
    TRAIN_VAL,
    get_selection,
    mean_val_acc,
    select_last,
    select_oracle,
    select_train_val,
    stop_step,
)


def rec(step, val=(0.5, 0.5), test=0.5, **extra):
    """A record with training envs a, b (val accuracies ``val``) and test env p0.9."""
    record = {"step": step, "val/a/acc": val[0], "val/b/acc": val[1], "test/p0.9/acc": test, "test/p0.1/acc": 0.8}
    record.update(extra)
    return record


def steps(record):
    return None if record is None else record["step"]


def test_train_val_maximises_the_mean_over_training_envs():
    records = [rec(10, (0.9, 0.5)), rec(20, (0.8, 0.8)), rec(30, (0.5, 0.95))]  # means .70 .80 .725
    assert steps(select_train_val(records)) == 20
    assert mean_val_acc(records[1]) == pytest.approx(0.8)


def test_train_val_tie_goes_to_the_earliest_step_whatever_the_line_order():
    records = [rec(30, (0.7, 0.9)), rec(10, (0.6, 0.6)), rec(20, (0.9, 0.7))]  # 30 and 20 tie at 0.8
    assert steps(select_train_val(records)) == 20
    same_step = [rec(20, (0.9, 0.7), test=0.1), rec(20, (0.7, 0.9), test=0.2)]
    assert select_train_val(same_step)["test/p0.9/acc"] == 0.1  # then the earlier line


def test_train_val_ignores_test_accuracy_and_non_finite_scores():
    records = [rec(10, (0.6, 0.6), test=0.99), rec(20, (math.nan, 0.99)), rec(30, (0.7, 0.7), test=0.1)]
    assert steps(select_train_val(records)) == 30


def test_train_val_without_validation_keys_selects_nothing():
    assert select_train_val([{"step": 10, "test/p0.9/acc": 0.7}]) is None
    assert select_train_val([]) is None


def test_last_is_the_final_record():
    records = [rec(10), rec(20), rec(30)]
    assert steps(select_last(records)) == 30
    assert select_last([]) is None


def test_last_of_an_early_stopped_run_is_the_stop_step():
    records = [
        rec(10, **{"early_stop/stopped": False, "early_stop/stop_step": None}),
        rec(20, test=0.7, **{"early_stop/stopped": True, "early_stop/stop_step": 20}),
        rec(30, test=0.1, **{"early_stop/stopped": True, "early_stop/stop_step": 20}),  # e.g. a later validate
    ]
    assert stop_step(records) == 20
    assert select_last(records)["test/p0.9/acc"] == 0.7
    assert steps(select_last(records[:2])) == 20  # the usual case: the run ends at its stop step


def test_last_of_a_run_that_never_stopped_early():
    records = [rec(s, **{"early_stop/stopped": False, "early_stop/stop_step": None}) for s in (10, 20)]
    assert stop_step(records) is None
    assert steps(select_last(records)) == 20


def test_oracle_maximises_the_named_test_env_with_ties_to_the_earliest_step():
    records = [rec(10, test=0.6), rec(20, test=0.7), rec(30, test=0.7), rec(40, test=0.65)]
    assert steps(select_oracle(records, "p0.9")) == 20
    assert steps(select_oracle(records, "p0.1")) == 10  # all tie
    assert select_oracle(records, "p0.5") is None


def test_methods_are_labelled_and_the_default_is_training_env_validation():
    assert DEFAULT_SELECTION == "train_val"
    assert get_selection() is TRAIN_VAL
    assert get_selection("last") is LAST
    oracle = get_selection("oracle", "p0.9")
    assert oracle.label == f"{ORACLE_LABEL}: p0.9" and ORACLE_LABEL == "oracle (test env)"
    assert "test data" in oracle.description
    records = [rec(10, (0.9, 0.9), test=0.2), rec(20, (0.5, 0.5), test=0.8)]
    assert steps(TRAIN_VAL(records)) == 10 and steps(oracle(records)) == 20 and steps(LAST(records)) == 20


def test_get_selection_rejects_unknown_names_and_an_oracle_without_env():
    with pytest.raises(ValueError, match="oracle"):
        get_selection("oracle")
    with pytest.raises(ValueError, match="unknown selection"):
        get_selection("best")
