"""Table aggregation and formatting on hand-made runs (no files)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from metairm_pl.algorithms.registry import table_sort_key
from metairm_pl.reporting.records import Run, RunStatus
from metairm_pl.reporting.selection import LAST, TRAIN_VAL, oracle
from metairm_pl.reporting.tables import (
    DASH,
    Cell,
    build_tables,
    extra_column,
    format_cell,
    render_csv,
    render_markdown,
    seed_ranges,
)


def make_run(algorithm, seed, tests, status=RunStatus.DONE, tag="", data="cmnist", train=(0.8, 0.7), path=None):
    """One run with a single record: test accuracies ``tests`` {env: acc}, training envs a, b."""
    record = {"step": 1, "algorithm": algorithm, "data": data, "seed": seed, "tag": tag}
    record.update({"train/a/acc": train[0], "train/b/acc": train[1], "val/a/acc": 0.5, "val/b/acc": 0.5})
    record.update({f"test/{env}/acc": acc for env, acc in tests.items()})
    path = Path(path or f"/runs/{algorithm}/{tag}/{seed}")
    return Run(path, status, (record,), algorithm, data, seed, tag)


def rows_by_label(table):
    return {row.label(table.show_tags, table.show_settings): row for row in table.rows}


def test_mean_and_sample_std_in_percent():
    runs = [make_run("irm", s, {"p0.9": acc}) for s, acc in enumerate((0.60, 0.65, 0.71))]
    (table,) = build_tables(runs, TRAIN_VAL)
    cell = table.rows[0].cells["p0.9"]
    assert cell.mean == pytest.approx(statistics.mean([60, 65, 71]))
    assert cell.std == pytest.approx(statistics.stdev([60, 65, 71]))  # ddof = 1
    assert table.rows[0].cells["train"].mean == pytest.approx(75.0)
    assert format_cell(cell, 3) == "65.3 ± 5.5"


def test_single_run_shows_a_dash_for_std_and_missing_cells_show_a_dash():
    runs = [make_run("erm", 0, {"p0.9": 0.2}), make_run("irm", 0, {"p0.9": 0.7, "p0.1": 0.71})]
    (table,) = build_tables(runs, TRAIN_VAL)
    assert table.columns == ("p0.1", "p0.9", "train")
    text = render_markdown([table], TRAIN_VAL)
    assert f"| erm | {DASH} | 20.0 ± {DASH} | 75.0 ± {DASH} | 1 |  |" in text
    assert format_cell(Cell(()), 0) == DASH


def test_a_cell_with_fewer_runs_than_its_row_shows_its_n():
    runs = [make_run("irm", 0, {"p0.9": 0.7, "p0.1": 0.71}), make_run("irm", 1, {"p0.9": 0.6})]
    (table,) = build_tables(runs, TRAIN_VAL)
    row = table.rows[0]
    assert row.n == 2 and format_cell(row.cells["p0.1"], row.n) == f"71.0 ± {DASH} (n=1)"


def test_failed_and_unfinished_runs_are_counted_never_averaged():
    runs = [
        make_run("irm", 0, {"p0.9": 0.6}),
        make_run("irm", 1, {"p0.9": 0.99}, status=RunStatus.FAILED),
        make_run("irm", 2, {"p0.9": 0.99}, status=RunStatus.UNFINISHED),
        make_run("erm", 0, {"p0.9": 0.99}, status=RunStatus.FAILED),
    ]
    (table,) = build_tables(runs, TRAIN_VAL)
    rows = rows_by_label(table)
    assert rows["irm"].cells["p0.9"].values == (60.0,) and (rows["irm"].n_failed, rows["irm"].n_unfinished) == (1, 1)
    assert rows["erm"].n == 0 and rows["erm"].cells["p0.9"].n == 0
    text = render_markdown([table], TRAIN_VAL)
    assert f"| erm | {DASH} | {DASH} | 0 | 1 failed |" in text
    assert "| irm | 60.0 ± — | 75.0 ± — | 1 | 1 failed, 1 unfinished |" in text
    assert "99" not in text


def test_runs_without_a_selectable_record_are_counted():
    runs = [make_run("irm", 0, {"p0.9": 0.6}), make_run("irm", 1, {"p0.1": 0.6})]
    (table,) = build_tables(runs, oracle("p0.9"))
    assert table.rows[0].n == 1 and table.rows[0].n_unselected == 1
    text = render_markdown([table], oracle("p0.9"))
    assert "1 without a selectable record (no test/p0.9/acc)" in text
    assert text.startswith("Selection: oracle (test env): p0.9 — ")


def test_algorithm_order_and_tags_only_when_they_differ():
    names = ["zeta", "grayscale", "meta_irm_no_std", "meta_irm", "mmrex", "vrex", "irm", "erm", "alpha"]
    assert sorted(names, key=table_sort_key) == [
        "erm", "irm", "vrex", "mmrex", "meta_irm", "meta_irm_no_std", "grayscale", "alpha", "zeta",
    ]  # fmt: skip
    same_tag = build_tables([make_run("irm", 0, {"p0.9": 0.6}, tag="t1")], TRAIN_VAL)[0]
    assert list(rows_by_label(same_tag)) == ["irm"]
    swept = [make_run("irm", 0, {"p0.9": 0.6}, tag=t) for t in ("size=12500", "size=6250", "")]
    assert list(rows_by_label(build_tables(swept, TRAIN_VAL)[0])) == ["irm", "irm [size=6250]", "irm [size=12500]"]


def test_one_table_per_data_set_and_duplicate_seeds_are_flagged():
    runs = [make_run("irm", 0, {"p0.9": 0.6}, data="cmnist5"), make_run("irm", 0, {"p0.9": 0.6}),
            make_run("irm", 0, {"p0.9": 0.7})]  # fmt: skip
    tables = build_tables(runs, LAST)
    assert [t.data for t in tables] == ["cmnist", "cmnist5"]
    text = render_markdown(tables, LAST)
    assert "### cmnist\n" in text and "### cmnist5\n" in text and "seed 0 ×2" in text


def test_csv_has_one_line_per_cell_and_empty_std_for_one_run():
    runs = [make_run("erm", 0, {"p0.9": 0.2})]
    text = render_csv(build_tables(runs, TRAIN_VAL))
    assert text.splitlines() == [
        "data,algorithm,tag,settings,selection,split,env,mean,std,n,n_failed,n_unfinished,n_unselected",
        "cmnist,erm,,,training-env validation,test,p0.9,20.0000,,1,0,0,0",
        "cmnist,erm,,,training-env validation,train,mean,75.0000,,1,0,0,0",
    ]


def run_in_dir(algorithm, seed, acc, settings_dir):
    """A run whose directory is ``.../<algorithm>/<settings_dir>/seed=<seed>`` (the sweep layout)."""
    return make_run(algorithm, seed, {"p0.9": acc}, path=f"/sweeps/t/cmnist/{algorithm}/{settings_dir}/seed={seed}")


def test_runs_with_different_override_directories_get_their_own_rows():
    runs = [run_in_dir("erm", s, a, "default") for s, a in ((0, 0.36), (1, 0.38))]
    runs += [run_in_dir("erm", s, a, "trainer.max_steps=5001") for s, a in ((0, 0.41), (1, 0.43))]
    table = build_tables(runs, LAST)[0]
    rows = rows_by_label(table)
    assert list(rows) == ["erm", "erm [trainer.max_steps=5001]"]
    assert rows["erm"].cells["p0.9"].mean == pytest.approx(37.0)
    assert rows["erm [trainer.max_steps=5001]"].cells["p0.9"].mean == pytest.approx(42.0)
    assert all(not row.duplicate_seeds for row in table.rows)
    text = render_markdown([table], LAST)
    assert "| erm [trainer.max_steps=5001] | 42.0 ± 1.4 |" in text and "×2" not in text
    csv_lines = render_csv([table]).splitlines()
    assert "cmnist,erm,,trainer.max_steps=5001,last evaluation,test,p0.9,42.0000,1.4142,2,0,0,0" in csv_lines
    assert "cmnist,erm,,,last evaluation,test,p0.9,37.0000,1.4142,2,0,0,0" in csv_lines


def test_settings_stay_out_of_labels_when_every_row_has_the_same():
    runs = [run_in_dir("erm", 0, 0.4, "lr=0.1"), run_in_dir("irm", 0, 0.6, "lr=0.1")]
    table = build_tables(runs, LAST)[0]
    assert not table.show_settings
    assert [row.label(table.show_tags, table.show_settings) for row in table.rows] == ["erm", "irm"]
    assert [row.settings for row in table.rows] == ["lr=0.1", "lr=0.1"]


def two_record_run(algorithm, seed, early_ood, late_ood):
    """A run whose first record has the better training-env validation and its last the final
    test accuracies: the two selections disagree, by hand-chosen numbers."""
    base = {"algorithm": algorithm, "data": "cmnist", "seed": seed, "tag": "", "train/a/acc": 0.8, "train/b/acc": 0.7}
    early = base | {"step": 10, "val/a/acc": 0.9, "val/b/acc": 0.9, "test/p0.1/acc": 0.5, "test/p0.9/acc": early_ood}
    late = base | {"step": 20, "val/a/acc": 0.6, "val/b/acc": 0.6, "test/p0.1/acc": 0.5, "test/p0.9/acc": late_ood}
    return Run(Path(f"/runs/{algorithm}/{seed}"), RunStatus.DONE, (early, late), algorithm, "cmnist", seed, "")


def test_a_second_selection_adds_the_most_ood_env_column_from_the_same_runs():
    runs = [two_record_run("irm", 0, 0.30, 0.70), two_record_run("irm", 1, 0.40, 0.60)]
    (table,) = build_tables(runs, LAST)
    extra = extra_column(table, runs, TRAIN_VAL)
    assert extra.env == "p0.9" and extra.header == "p0.9 (training-env validation)"
    text = render_markdown([table], LAST, [extra])
    assert "| algorithm | p0.1 | p0.9 | train | p0.9 (training-env validation) | n | notes |" in text
    # last: p0.9 = 70, 60 -> 65.0 ± 7.1; training-env validation picks step 10: 30, 40 -> 35.0 ± 7.1
    assert "| irm | 50.0 ± 0.0 | 65.0 ± 7.1 | 75.0 ± 0.0 | 35.0 ± 7.1 | 2 |  |" in text
    assert render_markdown([table], LAST) == render_markdown([table], LAST, [None])  # no column unless asked


def test_rows_short_of_the_expected_seeds_name_the_missing_ones():
    full = [make_run("irm", s, {"p0.9": 0.6}) for s in range(4)]
    short = [make_run("erm", s, {"p0.9": 0.2}) for s in (0, 2, 3)]
    failed = [make_run("erm", 1, {"p0.9": 0.99}, status=RunStatus.FAILED)]
    (table,) = build_tables(full + short + failed, LAST, expected_seeds=4)
    rows = rows_by_label(table)
    assert rows["erm"].seeds == (0, 2, 3) and rows["irm"].seeds == (0, 1, 2, 3)
    text = render_markdown([table], LAST)
    assert "| erm | 20.0 ± 0.0 | 75.0 ± 0.0 | 3 | seed 1 missing, 1 failed |" in text
    assert "| irm | 60.0 ± 0.0 | 75.0 ± 0.0 | 4 |  |" in text
    (more,) = build_tables(full, LAST, expected_seeds=10)
    assert "| irm | 60.0 ± 0.0 | 75.0 ± 0.0 | 4 | seeds 4–9 missing |" in render_markdown([more], LAST)
    (unchecked,) = build_tables(short, LAST)  # without expected_seeds nothing is claimed
    assert "missing" not in render_markdown([unchecked], LAST)
    with pytest.raises(ValueError, match="expected_seeds must be a positive number of seeds, got 0"):
        build_tables(full, LAST, expected_seeds=0)


def test_seed_ranges_join_consecutive_seeds():
    assert seed_ranges([7, 0, 2, 3, 4, 4]) == "0, 2–4, 7"
    assert seed_ranges([5]) == "5" and seed_ranges([]) == ""
