"""The linear unit-tests' report selects and aggregates as the reference's collect_results.py."""

from __future__ import annotations

import json

import pytest

from metairm_pl.reporting.embedded import refresh
from metairm_pl.reporting.records import load_runs
from metairm_pl.reporting.unit_tests import main, render, select


def write(root, problem, algorithm, settings, seed, val, test):
    run = root / problem / algorithm / settings / f"seed={seed}"
    run.mkdir(parents=True)
    record = {"step": 10, "algorithm": algorithm, "data": problem, "seed": seed, "tag": ""}
    for env, (v, t) in enumerate(zip(val, test)):
        record.update(
            {f"val/E{env}/loss": 0.0, f"val/E{env}/error": v, f"test/E{env}/loss": 0.0, f"test/E{env}/error": t}
        )
    (run / "results.jsonl").write_text(json.dumps(record) + "\n")
    (run / "done").write_text("")


def test_the_configuration_with_the_least_validation_error_is_kept_and_averaged(tmp_path):
    # two configurations of IRMv1 on Example1, two data seeds each (the seed=N folder is the run)
    write(tmp_path, "Example1", "irm", "lr=0.1", 0, val=[1.0, 2.0], test=[10.0, 20.0])
    write(tmp_path, "Example1", "irm", "lr=0.1", 1, val=[1.0, 2.0], test=[12.0, 24.0])
    write(tmp_path, "Example1", "irm", "lr=0.01", 0, val=[0.5, 1.0], test=[30.0, 40.0])  # lower validation error
    write(tmp_path, "Example1", "irm", "lr=0.01", 1, val=[0.5, 1.0], test=[34.0, 40.0])
    kept = select(load_runs([tmp_path]))[("Example1", "irm")]
    assert kept.settings == "lr=0.01" and kept.n == 2 and kept.validation_score == pytest.approx(1.5)
    assert kept.per_env == {"E0": (32.0, 2.0), "E1": (40.0, 0.0)}  # mean, population std over seeds
    assert kept.average == (36.0, 1.0)
    assert "| IRMv1 | 36.00 ± 1.00 (n=2) |" in render({("Example1", "irm"): kept})


def test_classification_error_is_one_minus_the_accuracy(tmp_path, capsys):
    run = tmp_path / "Example2" / "erm" / "default" / "seed=0"
    run.mkdir(parents=True)
    record = {"step": 5, "algorithm": "erm", "data": "Example2", "seed": 0, "tag": "", "val/E0/loss": 0.1,
              "val/E0/acc": 0.75, "test/E0/loss": 0.1, "test/E0/acc": 0.6}  # fmt: skip
    (run / "results.jsonl").write_text(json.dumps(record) + "\n")
    (run / "done").write_text("")
    assert main([str(tmp_path)]) == 0
    assert "| ERM | 0.40 ± 0.00 (n=1) |" in capsys.readouterr().out


def test_runs_on_shuffled_data_are_the_oracle_row(tmp_path):
    write(tmp_path, "Example3", "erm", "default", 0, val=[0.4], test=[0.45])
    write(tmp_path, "Example3", "erm", "data.oracle=true", 0, val=[0.01], test=[0.02])
    (tmp_path / "Example3" / "erm" / "data.oracle=true" / "seed=0" / "config.yaml").write_text(
        "data:\n  oracle: true\n"
    )
    text = render(select(load_runs([tmp_path])))
    assert "| ERM | 0.45 ± 0.00 (n=1) |" in text and text.rstrip().endswith(
        "| Oracle (shuffled data) | 0.02 ± 0.00 (n=1) |"
    )


def test_data_seeds_are_averaged_not_configurations():
    from metairm_pl.reporting.unit_tests import configuration

    assert configuration("algorithm.optimizer.lr=0.01,data_seed=3") == "algorithm.optimizer.lr=0.01"
    assert configuration("data.oracle=true,data_seed=0") == "" == configuration("")
    assert configuration("data.train_envs=[{a:1,b:2}],data_seed=1") == "data.train_envs=[{a:1,b:2}]"


def test_a_markdown_block_with_unit_tests_is_this_table(tmp_path):
    write(tmp_path / "runs", "Example1", "irm", "default", 0, val=[1.0], test=[10.0])
    write(tmp_path / "runs", "Example1", "irm", "default", 1, val=[1.0], test=[14.0])
    page, changed = refresh("<!-- report: runs --unit-tests -->\n<!-- /report -->\n", tmp_path)
    assert changed == ["runs --unit-tests"]
    assert "| IRMv1 | 12.00 ± 2.00 (n=2) |" in page and refresh(page, tmp_path)[1] == []
