"""The post-hoc check of what the paired validation sets say about the test gap (analysis.colour_gap)."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from metairm_pl.analysis.colour_gap import fit_line, gap_points, main
from metairm_pl.errors import ConfigError


def test_fit_line_by_hand():
    # y = 2x + 1 exactly: r = 1; then one point off the line, by hand:
    # x 0,1,2 y 1,3,4: means 1, 8/3; sxx 2, sxy (−1)(−5/3) + 0 + 1(4/3) = 3, slope 1.5
    assert fit_line([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0]).slope == pytest.approx(2.0)
    line = fit_line([0.0, 1.0, 2.0], [1.0, 3.0, 4.0])
    assert (line.n, line.slope, line.intercept) == (3, pytest.approx(1.5), pytest.approx(8 / 3 - 1.5))
    syy = (5 / 3) ** 2 + (1 / 3) ** 2 + (4 / 3) ** 2
    assert line.r == pytest.approx(3 / math.sqrt(2 * syy))
    assert fit_line([0.0, 1.0], [2.0, 2.0]).r == 0.0  # flat y: no correlation, not a division by zero
    with pytest.raises(ConfigError, match="every x value is the same"):
        fit_line([1.0, 1.0], [0.0, 1.0])
    with pytest.raises(ConfigError, match=">= 2 paired points"):
        fit_line([1.0], [0.0])


def record(step, val_more, val_less, test_low, test_high):
    """val_*: (loss, acc) of the training env flipped more / less; test_*: accuracies."""
    return {
        "step": step,
        "val/p0.2/loss": val_more[0], "val/p0.2/acc": val_more[1],
        "val/p0.1/loss": val_less[0], "val/p0.1/acc": val_less[1],
        "test/p0.1/acc": test_low, "test/p0.9/acc": test_high,
    }  # fmt: skip


def test_gap_points_signs_and_units():
    records = [
        record(100, (0.9, 0.5), (0.1, 0.9), 0.9, 0.1),  # before --from-step: left out
        record(150, (0.62, 0.70), (0.60, 0.71), 0.72, 0.68),  # uses colour: all three gaps positive
        record(160, (0.60, 0.71), (0.61, 0.70), 0.66, 0.71),  # reversed: all negative
    ]
    points = gap_points(records, ("p0.2", "p0.1"), ("p0.1", "p0.9"), from_step=150)
    assert points == [
        (pytest.approx(0.02), pytest.approx(1.0), pytest.approx(4.0)),
        (pytest.approx(-0.01), pytest.approx(-1.0), pytest.approx(-5.0)),
    ]
    with pytest.raises(ConfigError, match=r"step 150 has no \['val/p0.3/loss'"):
        gap_points(records, ("p0.3", "p0.1"), ("p0.1", "p0.9"), from_step=150)


def test_cli_fits_both_signals_over_every_run_found(tmp_path, capsys):
    # Two runs (one archived), built so that the test gap (points) is exactly 500 x the loss
    # gap minus 4 and 8 x the accuracy gap: the printed lines are known.
    rows = []
    for i, loss_gap in enumerate([0.01, 0.02, -0.01]):
        test_gap = 500 * loss_gap - 4
        acc_gap = test_gap / 8
        rows.append(record(150 + 10 * i, (0.6 + loss_gap, 0.7 - acc_gap / 100), (0.6, 0.7), 0.7 + test_gap / 100, 0.7))
    (tmp_path / "a" / "seed=0").mkdir(parents=True)
    (tmp_path / "a" / "seed=0" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    (tmp_path / "b").mkdir()
    with gzip.open(tmp_path / "b" / "results.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(rows[2]) + "\n")
    assert main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 runs, 3 evaluations at step >= 150; test gap in points"
    loss_line, acc_line = lines[2].split(), lines[3].split()
    assert loss_line[-3:] == ["500.000", "-4.00", "1.000"]
    assert [float(v) for v in acc_line[-3:]] == [pytest.approx(8.0), pytest.approx(0.0, abs=1e-9), pytest.approx(1.0)]


def test_cli_names_a_missing_path(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err
