"""Every config value is checked before anything is built or trained, and an error a library
raises while setting up reaches the user as one paragraph naming the value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from metairm_pl.errors import user_error_in
from metairm_pl.run import train

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["data=synthetic", "trainer.max_steps=2", "trainer.val_check_interval=2"]


def refused_before_training(make_config, overrides) -> str:
    """The user error of ``overrides``; the run neither trained nor evaluated."""
    cfg = make_config(SHORT + overrides)
    with pytest.raises(Exception) as info:
        train(cfg)
    error = user_error_in(info.value)
    assert error is not None, f"not a user error: {info.value!r}"
    run_dir = Path(cfg.paths.output_dir)
    assert (run_dir / "failed").exists() and not (run_dir / "done").exists()
    assert not (run_dir / "results.jsonl").exists()  # nothing was trained or evaluated
    return str(error)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("seed=-1", "seed=-1 is not allowed"),  # numpy's seeding would reject it deep inside
        ("seed=4294967296", "seed=4294967296 is not allowed"),
        ("data_seed=-5", "data_seed=-5 is not allowed"),
        ("data.data_seed=-5", "data.data_seed=-5 is not allowed"),
        ("checkpoint_every=-2", "checkpoint_every=-2 is not allowed"),
        ("trainer.precision=16-mixed", "trainer.precision='16-mixed' is not supported"),
    ],
)
def test_run_settings_are_checked_before_anything_is_built(make_config, override, named):
    assert named in refused_before_training(make_config, [override])


def test_an_unknown_objective_is_refused_before_training(make_config):
    message = refused_before_training(make_config, ["objective=test_acc"])
    assert "objective='test_acc' is not known" in message and "val_acc" in message


def test_an_objective_without_validation_sets_is_refused_before_training(make_config):
    message = refused_before_training(make_config, ["objective=val_acc", "data.val_fraction=0"])
    assert "validation" in message and "data.val_fraction > 0" in message


def test_no_objective_is_the_default_and_needs_no_validation_sets(make_config):
    final = train(make_config(SHORT + ["data.val_fraction=0"]))
    assert final["status"] == "done"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("+algorithm.optimizer.foo=3", "building algorithm (metairm_pl.algorithms.irm.IRMv1) failed"),
        ("+trainer.no_such_flag=1", "building trainer (pytorch_lightning.Trainer) failed"),
    ],
)
def test_a_library_error_while_building_is_one_paragraph(make_config, override, named):
    message = refused_before_training(make_config, [override])
    assert named in message and "\n" not in message
    assert override.split(".")[-1].split("=")[0] in message  # the library's own words name the key


def test_cli_reports_a_library_error_as_one_paragraph_and_keeps_its_traceback_in_the_marker(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), *SHORT, "+algorithm.optimizer.foo=3", "logger=none"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "values typed for it: +algorithm.optimizer.foo=3" in result.stderr
    assert "unexpected keyword argument 'foo'" in result.stderr
    (failed,) = tmp_path.glob("outputs/runs/*/*/*/seed=0/failed")
    first, rest = failed.read_text().split("\n", 1)
    assert first.startswith("building algorithm") and "Traceback" in rest  # the library's, for a bug report
