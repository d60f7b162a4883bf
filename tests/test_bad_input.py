"""Bad input gives one clear error naming the bad value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from metairm_pl.errors import EXIT_USAGE, ConfigError, DataUnavailableError, exits_on_user_error, user_error_in
from metairm_pl.run import train

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["data=synthetic", "trainer.max_steps=2", "trainer.val_check_interval=2"]


def failure_of(make_config, overrides):
    """The user error raised when training with ``overrides`` (unwrapping Hydra's wrapper)."""
    cfg = make_config(overrides)
    with pytest.raises(Exception) as info:
        train(cfg)
    error = user_error_in(info.value)
    assert error is not None, f"not a user error: {info.value!r}"
    assert not (Path(cfg.paths.output_dir) / "done").exists()
    return str(error)


def test_unknown_key_fails_at_composition(make_config):
    with pytest.raises(ConfigCompositionException) as info:
        make_config(["algorithm.lrr=0.1"])
    assert "lrr" in str(info.value.__cause__ or info.value)


def test_added_unknown_key_names_key_and_allowed_keys(make_config):
    message = failure_of(make_config, SHORT + ["+algorithm.lrr=0.1"])
    assert "lrr" in message and "allowed keys" in message and "l2_weight" in message


def test_wrong_type_fails_at_composition(make_config):
    with pytest.raises(ConfigCompositionException) as info:
        make_config(["algorithm.l2_weight=abc"])
    cause = info.value.__cause__
    assert isinstance(cause, (ValidationError, ConfigKeyError)) and "l2_weight" in str(cause)


def test_probability_outside_unit_interval(make_config):
    message = failure_of(make_config, SHORT + ["data.train_envs=[{name:a,p_color:1.5},{name:b,p_color:0.1}]"])
    assert "p_color=1.5" in message and "[0, 1]" in message


def test_empty_env_list(make_config):
    message = failure_of(make_config, SHORT + ["data.test_envs=[]"])
    assert "test_envs is empty" in message


def test_env_size_beyond_data(make_config):
    message = failure_of(
        make_config,
        ["data=cmnist", "data.train_envs=[{name:a,p_color:0.1,size:30000},{name:b,p_color:0.2,size:25000}]"],
    )
    assert "size=30000" in message and "25000" in message


def test_fewer_envs_than_the_algorithm_needs(make_config):
    message = failure_of(make_config, SHORT + ["algorithm=irm", "data.train_envs=[{name:a,p_color:0.1}]"])
    assert "at least 2 training environments" in message and "provides 1" in message


def test_missing_mnist_without_a_way_to_fetch_it(make_config):
    message = failure_of(make_config, ["data=cmnist", "data.allow_download=false"])
    assert "train-images-idx3-ubyte" in message


def test_cli_reports_one_paragraph_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            *SHORT,
            "data.val_fraction=2",
            "logger=none",
            "trainer.enable_progress_bar=false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "val_fraction=2" in result.stderr and "[0, 1]" in result.stderr


@pytest.mark.parametrize(
    "group,valid",
    [("algorithm", ["irm", "meta_irm"]), ("data", ["cmnist", "psst2"]), ("experiment", ["table1", "fig3"])],
)
def test_cli_unknown_option_lists_valid_ones(tmp_path, group, valid):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"{group}=nope"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "nope" in result.stderr and all(option in result.stderr for option in valid)


def test_negative_learning_rate(make_config):
    message = failure_of(make_config, SHORT + ["algorithm.optimizer.lr=-0.001"])
    assert "lr=-0.001" in message and ">= 0" in message


def test_divergence_stops_the_run_names_step_and_term_and_keeps_records(make_config, monkeypatch):
    from metairm_pl.algorithms.base import Objective
    from metairm_pl.algorithms.erm import ERM
    from metairm_pl.errors import DivergenceError
    from metairm_pl.files import read_jsonl
    from metairm_pl.reporting.records import load_run

    healthy = ERM.objective

    def diverging(self, batch):
        objective = healthy(self, batch)
        if self.global_step >= 3:
            return Objective(risk=objective.risk * float("nan"))
        return objective

    monkeypatch.setattr(ERM, "objective", diverging)
    cfg = make_config(["data=synthetic", "algorithm=erm", "trainer.max_steps=10", "trainer.val_check_interval=2"])
    with pytest.raises(DivergenceError, match=r"\['risk'\] not finite at step 3"):
        train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert [r["step"] for r in read_jsonl(run_dir / "results.jsonl")] == [2]
    assert (run_dir / "failed").exists() and not (run_dir / "done").exists()
    assert load_run(run_dir).status == "failed"


@pytest.mark.parametrize(
    "override",
    [
        "algorithm.penalty.weight=nan",
        "algorithm.optimizer.lr=inf",
        "algorithm.l2_weight=-inf",
        "model.hidden_dim=16 data.train_envs.0.p_color=nan",
        "algorithm=meta_irm algorithm.inner_lr=nan",
        "algorithm=meta_irm callbacks.std_early_stopping.std_threshold=inf",
    ],  # fmt: skip
)
def test_a_non_finite_number_anywhere_is_named(make_config, override):
    message = failure_of(make_config, SHORT + override.split())
    assert f"{override.split()[-1]}: not a finite number" in message


def test_an_unknown_stop_metric_is_named_with_the_allowed_ones(make_config):
    message = failure_of(make_config, SHORT + ["algorithm=meta_irm", "callbacks.std_early_stopping.metric=f1"])
    assert "metric='f1' is not allowed" in message and "['loss', 'acc']" in message


@pytest.mark.parametrize("override", ["trainer.max_steps=0", "trainer.max_steps=-1", "trainer.val_check_interval=0",
                                      "trainer.log_every_n_steps=0", "trainer.max_steps=2.5"])  # fmt: skip
def test_a_step_budget_must_be_a_positive_integer(make_config, override):
    message = failure_of(make_config, ["data=synthetic", override])
    assert override.replace("2.5", "2.5") in message and "integer >= 1" in message


def test_cli_reports_divergence_as_one_paragraph(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "data=synthetic", "algorithm=irm", "algorithm.penalty.anneal_steps=0",
         "algorithm.penalty.rescale=false", "algorithm.optimizer.lr=1e30", "trainer.max_steps=20", "logger=none",
         "trainer.enable_progress_bar=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "irm diverged" in result.stderr and "not finite at step" in result.stderr
    (failed,) = tmp_path.glob("outputs/runs/*/*/*/seed=0/failed")
    assert failed.read_text().startswith("irm diverged")


def test_run_dir_of_another_config_is_not_reused(make_config):
    first = make_config(SHORT + ["algorithm=erm"], name="shared")
    train(first)
    changed = make_config(SHORT + ["algorithm=erm", "algorithm.l2_weight=0.5"], name="shared")
    with pytest.raises(ConfigError, match="different configuration"):
        train(changed)
    changed.overwrite = True
    assert train(changed)["status"] == "done"


def test_split_validation_may_not_take_the_whole_env(make_config):
    message = failure_of(
        make_config, ["data=cmnist", "data.val_source=split", "data.val_pairing=independent", "data.val_fraction=1.0"]
    )
    assert "val_fraction=1.0" in message and "empty" in message


def test_early_stopping_without_validation_data_fails_before_training(make_config):
    message = failure_of(make_config, SHORT + ["algorithm=meta_irm", "data.val_fraction=0"])
    assert "val_fraction > 0" in message


PSST2_DIR = ROOT.parent / "shared" / "data" / "psst2"


@pytest.mark.skipif(not PSST2_DIR.exists(), reason="needs the offline SST-2/GloVe copy in ../shared/data/psst2")
def test_psst2_with_the_image_mlp_names_the_model_to_use(make_config):
    message = failure_of(make_config, ["data=psst2", f"data.data_dir={PSST2_DIR}", "model=mlp"])
    assert "model=bow_mlp" in message


def test_split_validation_with_shared_pairing_names_the_fix(make_config):
    message = failure_of(make_config, ["data=cmnist", "data.val_source=split"])
    assert "val_pairing=shared needs val_source=heldout" in message and "data.val_pairing=independent" in message


def test_a_command_prints_a_user_error_as_one_line_and_exits_2(capsys):
    @exits_on_user_error
    def command(fail: bool) -> int:
        if fail:
            raise DataUnavailableError("no MNIST under /nowhere; pass --data-dir")
        return 0

    assert command(False) == 0
    assert command(True) == EXIT_USAGE == 2
    assert capsys.readouterr().err == "error: no MNIST under /nowhere; pass --data-dir\n"


def test_a_command_lets_a_programming_error_through():
    @exits_on_user_error
    def command() -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        command()
