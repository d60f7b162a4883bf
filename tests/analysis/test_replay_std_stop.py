"""Replaying the std-threshold stop on a longer run's records (analysis.replay_std_stop)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from metairm_pl.analysis.replay_std_stop import as_final, main, record_std, replay_stop
from metairm_pl.errors import ConfigError
from metairm_pl.files import read_jsonl
from metairm_pl.run import train
from metairm_pl.search_objective import search_objective


def scripted(stds):
    return [
        {"step": 10 * (i + 1), "early_stop/val_loss_std": std, "val/a/acc": 0.5 + i / 100} for i, std in enumerate(stds)
    ]


def test_keeps_the_first_evaluation_at_or_after_min_steps_under_the_threshold():
    records = scripted([0.0005, 0.01, 0.002, 0.0008, 0.0001])
    assert replay_stop(records, 0.001, 0)[0]["step"] == 10
    assert replay_stop(records, 0.001, 20) == (records[3], True)  # 0.01 and 0.002 are not below
    assert replay_stop(records, 0.001, 40) == (records[3], True)  # min_steps is inclusive
    assert replay_stop(records, 0.0025, 20) == (records[2], True)


def test_never_under_the_threshold_keeps_the_last_evaluation_within_max_steps():
    records = scripted([0.01, 0.02, 0.0001])
    assert replay_stop(records, 0.001, 0) == (records[2], True)
    assert replay_stop(records, 0.001, 0, max_steps=25) == (records[1], False)
    with pytest.raises(ConfigError, match="no evaluation records"):
        replay_stop(records, 0.001, 0, max_steps=5)


def test_std_falls_back_to_the_population_std_of_the_validation_losses():
    record = {"step": 1, "val/a/loss": 0.5, "val/b/loss": 0.8, "val/c/loss": 0.2, "test/t/loss": 9.0}
    # mean 0.5, deviations 0, +0.3, -0.3; the test env's loss is not a training env's
    assert record_std(record) == pytest.approx(math.sqrt((0.3**2 + 0.3**2) / 3))
    with pytest.raises(ConfigError, match="validation losses"):
        record_std({"step": 3, "val/a/loss": 0.5})


def test_accuracy_metric_replays_the_std_of_validation_accuracies():
    """--metric acc ignores the loss std the run recorded and uses val/*/acc (or its own key)."""
    records = [
        {"step": 10, "early_stop/val_loss_std": 0.0, "val/a/acc": 0.70, "val/b/acc": 0.68},
        {"step": 20, "early_stop/val_loss_std": 0.5, "val/a/acc": 0.70, "val/b/acc": 0.6988},
        {"step": 30, "early_stop/val_acc_std": 0.0002, "val/a/acc": 0.9, "val/b/acc": 0.1},
    ]
    assert record_std(records[0], "acc") == pytest.approx(0.01)
    assert record_std(records[2], "acc") == pytest.approx(0.0002)  # the callback's own value wins
    assert replay_stop(records, 0.001, 0, metric="acc") == (records[1], True)
    assert replay_stop(records, 0.001, 0) == (records[0], True)  # the loss std, as recorded
    assert replay_stop(records, 0.001, 25, metric="acc") == (records[2], True)


def test_objective_reads_validation_accuracy_and_the_stop_flag():
    record = {"step": 40, "val/a/acc": 0.6, "val/b/acc": 0.7, "test/t/acc": 0.99, "seed": 0}
    assert as_final(record, True)["metrics"] == {"val/a/acc": 0.6, "val/b/acc": 0.7, "test/t/acc": 0.99}
    assert search_objective(as_final(record, True), "std_stopped_val_acc") == pytest.approx(0.65)
    assert search_objective(as_final(record, False), "std_stopped_val_acc") == pytest.approx(0.65 - 2)


def test_a_real_stop_is_the_replayed_truncation_of_a_longer_run(make_config):
    """The premise of the replay: a run that stops is, record for record, the prefix of the
    same run trained on with the stop disabled."""
    base = [
        "data=synthetic",
        "algorithm=meta_irm",
        "model.hidden_dim=8",
        "trainer.max_steps=16",
        "trainer.val_check_interval=2",
        "algorithm.penalty.anneal_steps=2",
    ]
    long_cfg = make_config(
        base + ["callbacks.std_early_stopping.std_threshold=1e-12", "callbacks.std_early_stopping.min_steps=0"],
        name="long",
    )
    train(long_cfg)
    long_records = read_jsonl(Path(long_cfg.paths.output_dir) / "results.jsonl")
    assert [r["step"] for r in long_records][:3] == [2, 4, 6]
    later = sorted({record_std(r) for r in long_records if r["step"] >= 6})
    assert len(later) >= 2
    threshold = (later[0] + later[1]) / 2  # strictly between two observed stds: no ties
    kept, stopped = replay_stop(long_records, threshold, 6)
    assert stopped and kept["step"] < long_records[-1]["step"]

    short_cfg = make_config(
        base
        + [f"callbacks.std_early_stopping.std_threshold={threshold!r}", "callbacks.std_early_stopping.min_steps=6"],
        name="short",
    )
    final = train(short_cfg)
    short_records = read_jsonl(Path(short_cfg.paths.output_dir) / "results.jsonl")
    assert final["stopped_early"] and final["step"] == kept["step"]
    assert len(short_records) == long_records.index(kept) + 1

    def without_stop_fields(record):
        return {k: v for k, v in record.items() if not k.startswith("early_stop/") and k != "tag"}

    for short, long in zip(short_records, long_records):
        assert without_stop_fields(short) == without_stop_fields(long)


def test_cli_prints_one_row_per_setting_and_rejects_bad_input(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scripted([0.01, 0.0005, 0.0002])))
    assert main([str(run), "--min-steps", "0", "25", "--threshold", "0.001"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [row.split()[:3] for row in rows] == [["0.001", "0", "20"], ["0.001", "25", "30"]]
    assert main([str(tmp_path / "missing"), "--min-steps", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(run), "--min-steps", "0", "--threshold", "0"]) == 2
