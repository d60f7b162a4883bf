"""Plots from the fixture sweeps: the figures carry labels, legends and error bars, and the
saved PNGs read back as images."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest
from matplotlib.container import ErrorbarContainer

from metairm_pl.reporting.plots import (
    DPI,
    FIGSIZE,
    accuracy_vs_gap_figure,
    accuracy_vs_test_env_figure,
    label_noise_gap,
    make_plots,
    most_ood_env,
    parse_p,
    penalty_vs_step_figure,
)
from metairm_pl.reporting.records import load_runs
from metairm_pl.reporting.selection import TRAIN_VAL
from metairm_pl.reporting.tables import build_tables

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def runs():
    return load_runs([FIXTURES / "runs"])


@pytest.fixture(scope="module")
def gap_runs():
    return load_runs([FIXTURES / "gap_sweep"])


def legend_texts(axes):
    legend = axes.get_legend()
    assert legend is not None
    return [text.get_text() for text in legend.get_texts()]


def test_parsing_helpers(gap_runs):
    assert parse_p("p0.3") == 0.3 and parse_p("c0.1_p0.2") is None
    assert most_ood_env(["p0.1", "p0.9", "p0.2"]) == "p0.9" and most_ood_env(["x", "y"]) == "y"
    gaps = {(r.algorithm, label_noise_gap(r)) for r in gap_runs}
    assert gaps == {(a, g) for a in ("irm", "meta_irm") for g in (0.0, 0.02, 0.04)}  # config and tag


@pytest.mark.parametrize(
    "tag,gap", [("gap=0.03", 0.03), ("data.label_noise_gap=0.01,seed=1", 0.01), ("overlap=0.3", None), ("", None)]
)
def test_gap_from_the_tag(tmp_path, tag, gap):
    (tmp_path / "results.jsonl").write_text(f'{{"step": 1, "tag": "{tag}"}}\n')
    (run,) = load_runs([tmp_path])
    assert label_noise_gap(run) == gap


def test_gap_prefers_config_yaml_over_tag(tmp_path):
    (tmp_path / "config.yaml").write_text("data:\n  label_noise_gap: 0.03\n")
    (tmp_path / "results.jsonl").write_text('{"step": 1, "tag": "gap=0.01"}\n')
    (run,) = load_runs([tmp_path])
    assert label_noise_gap(run) == 0.03


def test_accuracy_vs_test_env_has_error_bars_per_algorithm_shifted_apart(runs):
    (table,) = build_tables(runs, TRAIN_VAL)
    figure = accuracy_vs_test_env_figure(table)
    (axes,) = figure.axes
    assert axes.get_xlabel() == "test environment $p_e$ (colour flip probability)"
    assert axes.get_ylabel() == "test accuracy (%)"
    assert "training-env validation" in axes.get_title()
    assert legend_texts(axes) == ["erm (n=3)", "irm (n=2)"]
    containers = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
    assert len(containers) == 2
    erm_x, erm_y = containers[0].lines[0].get_data()
    irm_x, _ = containers[1].lines[0].get_data()
    assert list(erm_y) == pytest.approx([88.6667, 80.0, 17.0], abs=1e-3)
    assert all(a < b for a, b in zip(erm_x, irm_x))  # shifted so the bars do not overlap
    assert [round((a + b) / 2, 6) for a, b in zip(erm_x, irm_x)] == [0.1, 0.2, 0.9]
    assert containers[0].has_yerr


def test_accuracy_vs_gap_has_a_line_and_band_per_algorithm(gap_runs):
    figure = accuracy_vs_gap_figure(gap_runs, TRAIN_VAL, "cmnist")
    (axes,) = figure.axes
    assert axes.get_xlabel() == "label-noise gap between training envs"
    assert axes.get_ylabel() == "test accuracy on p0.9 (%)"
    assert legend_texts(axes) == ["irm (n=2)", "meta_irm (n=2)"]
    irm_line = axes.get_lines()[0]
    assert list(irm_line.get_xdata()) == [0.0, 0.02, 0.04]
    assert list(irm_line.get_ydata()) == pytest.approx([66.5, 61.0, 53.5])
    assert len(axes.collections) == 2  # the ± std bands
    assert accuracy_vs_gap_figure(gap_runs, TRAIN_VAL, "other-data") is None


def test_no_gap_figure_with_a_single_gap(runs):
    assert accuracy_vs_gap_figure(runs, TRAIN_VAL, "cmnist") is None  # every fixture run has gap 0.0


def test_penalty_vs_step_uses_finished_runs_only(runs):
    figure = penalty_vs_step_figure(runs, "cmnist")
    (axes,) = figure.axes
    assert axes.get_xlabel() == "step" and "penalty" in axes.get_ylabel()
    assert legend_texts(axes) == ["erm (n=3)", "irm (n=2)"]  # irm's failed and unfinished runs left out
    irm = axes.get_lines()[1]
    assert list(irm.get_xdata()) == [100, 200, 300]
    assert list(irm.get_ydata()) == pytest.approx([0.005, 0.00225, 0.00125])
    assert axes.get_yscale() == "log"


def test_make_plots_saves_readable_pngs(runs, gap_runs, tmp_path):
    paths = make_plots(runs + gap_runs, TRAIN_VAL, tmp_path)
    assert sorted(p.name for p in paths) == [
        "acc_vs_label_noise_gap-cmnist.png", "acc_vs_test_env-cmnist.png", "penalty_vs_step-cmnist.png",
    ]  # fmt: skip
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.shape == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI), 4)
        assert image[..., :3].std() > 0.05  # not blank
