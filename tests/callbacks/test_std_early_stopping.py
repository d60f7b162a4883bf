"""StdThresholdEarlyStopping stops exactly at the first evaluation under the threshold."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from pytorch_lightning.trainer.states import TrainerFn

from metairm_pl.callbacks.std_early_stopping import StdThresholdEarlyStopping, population_std
from metairm_pl.errors import ConfigError
from metairm_pl.files import read_jsonl
from metairm_pl.run import train


def fake_trainer(step: int):
    return SimpleNamespace(
        sanity_checking=False, global_step=step, should_stop=False, state=SimpleNamespace(fn=TrainerFn.FITTING)
    )


def scripted_module(losses: dict[str, float]):
    metrics = {f"val/{env}/loss": value for env, value in losses.items()}
    metrics.update({f"test/{env}/loss": 100.0 for env in losses})  # must be ignored
    return SimpleNamespace(eval_metrics=metrics)


def test_population_std_by_hand():
    assert population_std([1.0, 3.0]) == pytest.approx(1.0)
    assert population_std([1.0, 2.0, 4.0]) == pytest.approx(math.sqrt(14 / 9))


def test_stops_at_first_evaluation_under_threshold():
    callback = StdThresholdEarlyStopping(std_threshold=0.05, min_steps=0)
    # stds: 0.25, 0.1, 0.04 (first under 0.05), 0.01
    script = [(10, (0.5, 1.0)), (20, (0.6, 0.8)), (30, (0.66, 0.74)), (40, (0.69, 0.71))]
    stops = []
    for step, (a, b) in script:
        trainer = fake_trainer(step)
        callback.on_validation_end(trainer, scripted_module({"e0": a, "e1": b}))
        stops.append(trainer.should_stop)
    assert stops == [False, False, True, False]  # stop set once, at step 30
    assert callback.stop_step == 30
    assert [round(std, 6) for _, std in callback.std_history] == [0.25, 0.1, 0.04, 0.01]


def test_the_stop_says_so_in_one_line_and_its_record_fields(caplog):
    callback = StdThresholdEarlyStopping(std_threshold=0.001, min_steps=0)
    assert callback.record_fields() == {}  # nothing before the first evaluation
    with caplog.at_level("INFO", logger="metairm_pl.callbacks.std_early_stopping"):
        callback.on_validation_end(fake_trainer(260), scripted_module({"e0": 0.6, "e1": 0.61}))
        callback.on_validation_end(fake_trainer(270), scripted_module({"e0": 0.6, "e1": 0.6016}))
    (record,) = caplog.records  # one line, at the stop only
    assert record.getMessage() == "stopped at step 270: std of the training envs' validation losses 0.0008 < 0.001"
    assert callback.stopped and callback.record_fields() == {
        "early_stop/val_loss_std": pytest.approx(0.0008), "early_stop/stopped": True, "early_stop/stop_step": 270,
    }  # fmt: skip


def test_accuracy_metric_stops_when_the_accuracies_agree_whatever_the_losses(caplog):
    """metric=acc reads val/<env>/acc only: equal losses with unequal accuracies do not stop."""
    callback = StdThresholdEarlyStopping(std_threshold=0.001, min_steps=0, metric="acc")
    script = [
        (10, {"e0": (0.60, 0.700), "e1": (0.60, 0.690)}),  # losses equal, accuracy std 0.005
        (20, {"e0": (0.60, 0.700), "e1": (0.70, 0.6984)}),  # losses apart, accuracy std 0.0008
    ]
    stops = []
    with caplog.at_level("INFO", logger="metairm_pl.callbacks.std_early_stopping"):
        for step, per_env in script:
            metrics = {f"val/{env}/loss": loss for env, (loss, _) in per_env.items()}
            metrics.update({f"val/{env}/acc": acc for env, (_, acc) in per_env.items()})
            metrics["test/t/acc"] = 0.1  # a test env is never read
            trainer = fake_trainer(step)
            callback.on_validation_end(trainer, SimpleNamespace(eval_metrics=metrics))
            stops.append(trainer.should_stop)
    assert stops == [False, True] and callback.stop_step == 20
    assert [round(std, 6) for _, std in callback.std_history] == [0.005, 0.0008]
    assert callback.record_fields() == {
        "early_stop/val_acc_std": pytest.approx(0.0008), "early_stop/stopped": True, "early_stop/stop_step": 20,
    }  # fmt: skip
    assert caplog.records[0].getMessage() == (
        "stopped at step 20: std of the training envs' validation accuracies 0.0008 < 0.001"
    )


def test_unknown_metric_is_rejected_naming_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"metric='f1' is not allowed: use one of \['loss', 'acc'\]"):
        StdThresholdEarlyStopping(std_threshold=0.1, metric="f1")


def test_min_steps_delays_the_stop():
    callback = StdThresholdEarlyStopping(std_threshold=0.05, min_steps=25)
    for step in (10, 20, 30):
        trainer = fake_trainer(step)
        callback.on_validation_end(trainer, scripted_module({"e0": 0.7, "e1": 0.71}))
        assert trainer.should_stop == (step == 30)
    assert callback.stop_step == 30


@pytest.mark.parametrize(
    "kwargs", [{"std_threshold": 0.0}, {"std_threshold": -1.0}, {"std_threshold": 0.1, "min_steps": -1}]
)
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ConfigError):
        StdThresholdEarlyStopping(**kwargs)


def test_needs_two_validation_envs():
    callback = StdThresholdEarlyStopping(std_threshold=0.1)
    with pytest.raises(ConfigError, match="val_fraction"):
        callback.on_validation_end(fake_trainer(1), scripted_module({"e0": 0.5}))


def test_real_run_stops_at_the_stop_step_and_keeps_that_model(make_config):
    # A threshold no run can miss: the first evaluation after min_steps stops training.
    cfg = make_config(
        [
            "data=synthetic",
            "algorithm=meta_irm",
            "trainer.max_steps=50",
            "trainer.val_check_interval=2",
            "callbacks.std_early_stopping.std_threshold=1000",
            "callbacks.std_early_stopping.min_steps=4",
        ]
    )
    final = train(cfg)
    records = read_jsonl(f"{cfg.paths.output_dir}/results.jsonl")
    assert [r["step"] for r in records] == [2, 4]  # no training step after the stop
    assert records[-1]["early_stop/stopped"] is True and records[-1]["early_stop/stop_step"] == 4
    assert records[0]["early_stop/stopped"] is False
    assert final["step"] == 4 and final["stopped_early"] is True


def test_accuracy_metric_from_the_config_reaches_the_records(make_config):
    cfg = make_config(
        [
            "data=synthetic",
            "algorithm=meta_irm",
            "trainer.max_steps=50",
            "trainer.val_check_interval=2",
            "callbacks.std_early_stopping.metric=acc",
            "callbacks.std_early_stopping.std_threshold=1000",
            "callbacks.std_early_stopping.min_steps=4",
        ]
    )
    train(cfg)
    records = read_jsonl(f"{cfg.paths.output_dir}/results.jsonl")
    accs = [v for k, v in records[-1].items() if k.startswith("val/") and k.endswith("/acc")]
    assert "early_stop/val_loss_std" not in records[-1]
    assert records[-1]["early_stop/val_acc_std"] == pytest.approx(population_std(accs))
    assert records[-1]["early_stop/stop_step"] == 4
