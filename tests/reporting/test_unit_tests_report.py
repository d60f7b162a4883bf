"""The linear unit-tests' report selects and aggregates as the reference's collect_results.py."""

from __future__ import annotations

import json

import pytest

from metairm_pl.reporting.embedded import refresh
from metairm_pl.reporting.records import load_runs
from metairm_pl.reporting.unit_tests import main, render, select


def write(root, problem, algorithm, settings, data_seed, val, test, seed=1000):
    """A finished run as a sweep lays it out: ``<problem>/<algorithm>/<settings>,data_seed=N/seed=S``."""
    name = ",".join(sorted(([] if settings == "default" else settings.split(",")) + [f"data_seed={data_seed}"]))
    run = root / problem / algorithm / name / f"seed={seed}"
    run.mkdir(parents=True)
    record = {"step": 10, "algorithm": algorithm, "data": problem, "seed": seed, "tag": ""}
    for env, (v, t) in enumerate(zip(val, test)):
        record.update(
            {f"val/E{env}/loss": 0.0, f"val/E{env}/error": v, f"test/E{env}/loss": 0.0, f"test/E{env}/error": t}
        )
    (run / "results.jsonl").write_text(json.dumps(record) + "\n")
    (run / "done").write_text("")
    return run


def test_the_configuration_with_the_least_validation_error_is_kept_and_averaged(tmp_path):
    # two configurations of IRMv1 on Example1, two data seeds each
    write(tmp_path, "Example1", "irm", "lr=0.1", 0, val=[1.0, 2.0], test=[10.0, 20.0])
    write(tmp_path, "Example1", "irm", "lr=0.1", 1, val=[1.0, 2.0], test=[12.0, 24.0])
    write(tmp_path, "Example1", "irm", "lr=0.01", 0, val=[0.5, 1.0], test=[30.0, 40.0])  # lower validation error
    write(tmp_path, "Example1", "irm", "lr=0.01", 1, val=[0.5, 1.0], test=[34.0, 40.0])
    kept = select(load_runs([tmp_path]))[("Example1", "irm")]
    assert kept.settings == "lr=0.01,seed=1000" and kept.n == 2 and kept.validation_score == pytest.approx(1.5)
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
    oracle = write(tmp_path, "Example3", "erm", "data.oracle=true", 0, val=[0.01], test=[0.02])
    (oracle / "config.yaml").write_text("data:\n  oracle: true\n")
    text = render(select(load_runs([tmp_path])))
    assert "| ERM | 0.45 ± 0.00 (n=1) |" in text and text.rstrip().endswith(
        "| Oracle (shuffled data) | 0.02 ± 0.00 (n=1) |"
    )


def test_data_seeds_are_averaged_not_configurations():
    from metairm_pl.reporting.unit_tests import configuration

    assert configuration("algorithm.optimizer.lr=0.01,data_seed=3") == "algorithm.optimizer.lr=0.01"
    assert configuration("data.oracle=true,data_seed=0") == "" == configuration("")
    assert configuration("data.train_envs=[{a:1,b:2}],data_seed=1") == "data.train_envs=[{a:1,b:2}]"
    assert configuration("data_seed=3", seed=1004) == "seed=1004"  # the reference's model seed 4


def test_each_model_seed_is_a_configuration_as_the_references_model_seeds(tmp_path):
    # experiment=unit_tests_search: seed = the reference's model seed + 1000, one configuration each
    for data_seed, (good, bad) in enumerate([(0.10, 0.30), (0.12, 0.34)]):
        write(tmp_path, "Example2", "erm", "default", data_seed, val=[good], test=[0.2], seed=1001)
        write(tmp_path, "Example2", "erm", "default", data_seed, val=[bad], test=[0.05], seed=1002)
    kept = select(load_runs([tmp_path]))[("Example2", "erm")]
    assert kept.settings == "seed=1001" and kept.n == 2 and kept.average == pytest.approx((0.2, 0.0))


def test_a_markdown_block_with_unit_tests_is_this_table(tmp_path):
    write(tmp_path / "runs", "Example1", "irm", "default", 0, val=[1.0], test=[10.0])
    write(tmp_path / "runs", "Example1", "irm", "default", 1, val=[1.0], test=[14.0])
    page, changed = refresh("<!-- report: runs --unit-tests -->\n<!-- /report -->\n", tmp_path)
    assert changed == ["runs --unit-tests"]
    assert "| IRMv1 | 12.00 ± 2.00 (n=2) |" in page and refresh(page, tmp_path)[1] == []


def test_published_figures_are_the_reference_papers_rows_beside_ours(tmp_path, capsys):
    write(tmp_path, "Example1", "erm", "default", 0, val=[1.0], test=[13.0])
    assert main([str(tmp_path), "--published"]) == 0
    out = capsys.readouterr().out
    # the reference's results_processed (nenvs=3, dinv=5, dspu=5): ERM 13.362887 ± 1.486692 on Example1
    assert "| ERM | 13.00 ± 0.00 (n=1) |" in out
    assert "| ERM, published (n=50) | 13.36 ± 1.49 |" in out
    assert "| AND-mask, published (n=50) | 10.59 ± 0.17 |" in out
    assert "| Oracle, published (n=50) | 10.42 ± 0.16 |" in out
    assert main([str(tmp_path)]) == 0 and "published" not in capsys.readouterr().out


def test_published_figures_are_refused_beside_another_setting(tmp_path, capsys):
    run = write(tmp_path, "Example2", "erm", "default", 0, val=[0.1], test=[0.4])
    (run / "config.yaml").write_text("data:\n  n_envs: 4\n")
    assert main([str(tmp_path), "--published"]) != 0
    err = capsys.readouterr().err
    assert "data.n_envs=3" in err and "data.n_envs=4" in err


def test_published_figures_cover_the_six_problems_and_five_methods():
    from metairm_pl.reporting.unit_tests import published_figures

    figures = published_figures()
    assert figures["setting"] == {"n_envs": 3, "dim_inv": 5, "dim_spu": 5}
    table = figures["test_error_mean_std"]
    assert sorted(table) == ["Example1", "Example1s", "Example2", "Example2s", "Example3", "Example3s"]
    assert all(list(row) == ["ERM", "IRMv1", "IGA", "ANDMask", "Oracle"] for row in table.values())
    assert table["Example2"]["Oracle"] == [0.0, 0.0] and table["Example3"]["ANDMask"][0] < table["Example3"]["ERM"][0]


def test_a_markdown_block_with_published_adds_the_reference_papers_rows(tmp_path):
    write(tmp_path / "runs", "Example3", "irm", "default", 0, val=[0.3], test=[0.25])
    page, _ = refresh("<!-- report: runs --unit-tests --published -->\n<!-- /report -->\n", tmp_path)
    assert "| IRMv1 | 0.25 ± 0.00 (n=1) |" in page and "| IRMv1, published (n=50) | 0.48 ± 0.07 |" in page
