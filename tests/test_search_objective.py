"""Validation-only search objectives and the Meta-IRM Optuna preset (``hparams_search``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from metairm_pl.errors import ConfigError
from metairm_pl.run_identity import names_run
from metairm_pl.search_objective import OBJECTIVES, search_objective

from .conftest import CONF_DIR

REPO = Path(__file__).resolve().parents[1]


def final(val_accs, stopped, test_acc=0.99):
    metrics = {f"val/e{i}/acc": acc for i, acc in enumerate(val_accs)}
    metrics.update({f"val/e{i}/loss": 0.5 for i in range(len(val_accs))})
    metrics["test/t/acc"] = test_acc
    metrics["train/e0/acc"] = 0.123
    return {"metrics": metrics, "stopped_early": stopped}


def test_val_acc_is_the_mean_training_env_validation_accuracy():
    assert search_objective(final([0.6, 0.7], stopped=False), "val_acc") == pytest.approx(0.65)


def test_std_stopped_val_acc_subtracts_two_when_the_threshold_was_never_reached():
    assert search_objective(final([0.6, 0.7], stopped=True), "std_stopped_val_acc") == pytest.approx(0.65)
    assert search_objective(final([0.6, 0.7], stopped=False), "std_stopped_val_acc") == pytest.approx(-1.35)


def test_every_stopped_run_outranks_every_unstopped_run():
    worst_stopped = search_objective(final([0.0, 0.0], stopped=True), "std_stopped_val_acc")
    best_unstopped = search_objective(final([1.0, 1.0], stopped=False), "std_stopped_val_acc")
    assert worst_stopped > best_unstopped


def test_invariant_val_acc_subtracts_two_unless_the_validation_losses_agree():
    agreeing = final([0.6, 0.7], stopped=False)  # losses 0.5 and 0.5: std 0
    assert search_objective(agreeing, "invariant_val_acc") == pytest.approx(0.65)
    apart = final([0.6, 0.7], stopped=False)
    apart["metrics"]["val/e1/loss"] = 0.5 + 2 * 0.0011  # population std of two values: half the gap
    assert search_objective(apart, "invariant_val_acc") == pytest.approx(-1.35)
    apart["metrics"]["val/e1/loss"] = 0.5 + 2 * 0.0009
    assert search_objective(apart, "invariant_val_acc") == pytest.approx(0.65)


def test_objectives_never_read_test_or_train_metrics():
    for name in OBJECTIVES:
        a = search_objective(final([0.6, 0.7], stopped=True, test_acc=0.1), name)
        b = search_objective(final([0.6, 0.7], stopped=True, test_acc=0.9), name)
        assert a == b


def test_unknown_objective_names_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"objective='best_test'.*std_stopped_val_acc.*val_acc"):
        search_objective(final([0.5, 0.5], stopped=True), "best_test")


def test_objective_without_validation_metrics_is_a_clear_error():
    with pytest.raises(ConfigError, match="val_fraction"):
        search_objective({"metrics": {"test/t/acc": 0.5}, "stopped_early": True}, "val_acc")


def test_meta_irm_preset_composes_a_validation_only_optuna_search():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=meta_irm_cmnist"], return_hydra_config=True)
    assert cfg.algorithm.name == "meta_irm"
    assert cfg.objective == "std_stopped_val_acc"
    assert cfg.data.val_pairing == "shared"
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_.lower() and sweeper.direction == "maximize"
    assert set(sweeper.params) == {
        "algorithm.penalty.weight",
        "algorithm.inner_lr",
        "algorithm.optimizer.lr",
        "algorithm.dropgrad",
        "callbacks.std_early_stopping.min_steps",
    }
    assert not names_run("hparams_search")  # the sweep directory (its tag) names the trials


def test_optuna_search_returns_objectives_and_a_relaunch_resumes_the_stored_study(tmp_path):
    """Two real trials through train.py: the best value Optuna reports is the best objective
    of the runs; relaunching the same search trains nothing new (the study in storage already
    holds its two trials); raising n_trials to 3 runs exactly one more trial."""
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        "hparams_search=meta_irm_cmnist",
        "data=synthetic",
        "algorithm.penalty.anneal_steps=2",
        "hydra/launcher=basic",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "model.hidden_dim=8",
        "trainer.max_steps=12",
        "trainer.val_check_interval=4",
        "logger=none",
        "callbacks.std_early_stopping.std_threshold=0.5",
    ]  # run in tmp_path as a user would: outputs go to ./outputs
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "outputs" / "sweeps" / "hparams_meta_irm_cmnist"
    finals = sorted(sweep_dir.rglob("final.json"))
    assert 1 <= len(finals) <= 2  # two trials; TPE may suggest the same point twice
    objectives = [search_objective(json.loads(f.read_text()), "std_stopped_val_acc") for f in finals]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(objectives))
    stamps = {f: f.stat().st_mtime_ns for f in finals}

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(sweep_dir.rglob("final.json")) == finals
    assert {f: f.stat().st_mtime_ns for f in finals} == stamps
    assert "holds 2 trial(s): running 0 more of n_trials=2" in again.stdout + again.stderr
    assert yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text()) == best

    more = [o if o != "hydra.sweeper.n_trials=2" else "hydra.sweeper.n_trials=3" for o in command]
    third = subprocess.run(more, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "running 1 more of n_trials=3" in third.stdout + third.stderr
    import optuna

    study = optuna.load_study(study_name="meta_irm_cmnist", storage=f"sqlite:///{sweep_dir}/optuna_synthetic.sqlite3")
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)


def test_long_override_lists_give_a_short_stable_directory_name():
    from metairm_pl.run_identity import MAX_DIRNAME_CHARS, settings_name

    assert settings_name([]) == "default"
    assert settings_name(["b=2", "a=1"]) == "a=1,b=2"
    long = [f"algorithm.some_long_key_{i}=0.{i}" for i in range(20)]
    name = settings_name(long)
    assert len(name.encode()) <= MAX_DIRNAME_CHARS and name.startswith(",".join(sorted(long))[:100])
    assert settings_name(long) == name  # deterministic: a relaunch finds it
    assert settings_name(long[:-1] + ["algorithm.some_long_key_19=0.18"]) != name  # and distinct per override list


def test_stage_two_preset_is_a_grid_over_min_steps_at_the_meta_irm_preset_values():
    """hparams_search=meta_irm_cmnist_stop varies only min_steps; everything else is the
    current meta_irm preset, whose min_steps is one of the grid points."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        stage2 = compose("config", overrides=["hparams_search=meta_irm_cmnist_stop"], return_hydra_config=True)
        preset = compose("config", overrides=["algorithm=meta_irm"])
    sweeper = stage2.hydra.sweeper
    assert sweeper.sampler._target_ == "optuna.samplers.GridSampler"
    assert stage2.objective == "std_stopped_val_acc" and sweeper.direction == "maximize"
    grid = str(sweeper.params["callbacks.std_early_stopping.min_steps"])
    choices = [int(v) for v in grid[grid.index("(") + 1 : grid.index(")")].split(",")]
    assert sweeper.n_trials == len(choices)
    assert set(sweeper.params) == {"callbacks.std_early_stopping.min_steps"}
    assert preset.callbacks.std_early_stopping.min_steps in choices
    for key in (
        "algorithm.penalty.weight",
        "algorithm.inner_lr",
        "algorithm.optimizer.lr",
        "algorithm.dropgrad",
        "model.hidden_dim",
        "trainer.max_steps",
        "trainer.val_check_interval",
        "algorithm.penalty.anneal_steps",
        "callbacks.std_early_stopping.std_threshold",
    ):
        assert OmegaConf.select(stage2, key) == OmegaConf.select(preset, key), key


ABLATION_PRESETS = {
    "meta_irm_first_order_cmnist": ("meta_irm_first_order", "first_order", True),
    "meta_irm_same_env_cmnist": ("meta_irm_same_env", "meta_envs", "same"),
    "meta_irm_no_std_cmnist": ("meta_irm_no_std", "penalty.weight", 0.0),
}


def composed_search(preset: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[f"hparams_search={preset}"], return_hydra_config=True)


@pytest.mark.parametrize("preset", sorted(ABLATION_PRESETS))
def test_each_ablation_searches_under_the_full_methods_rule_budget_and_space(preset):
    """Table 5's fair comparison: each variant's own search has the full method's objective,
    budget, trials and space, keeps its ablated switch, and has its own sweep dir and study.
    The no-std variant holds λ at 0 (a fixed value, not a choice) instead of searching it."""
    algorithm, switch, value = ABLATION_PRESETS[preset]
    full, variant = composed_search("meta_irm_cmnist"), composed_search(preset)
    assert variant.algorithm.name == algorithm and OmegaConf.select(variant.algorithm, switch) == value
    assert variant.trainer.precision == full.trainer.precision == "32-true"
    for key in ("objective", "model.hidden_dim", "trainer.max_steps", "trainer.val_check_interval",
                "callbacks.std_early_stopping.std_threshold", "algorithm.penalty.anneal_steps",
                "hydra.sweeper.n_trials", "hydra.sweeper.sampler", "hydra.sweeper.direction"):  # fmt: skip
        assert OmegaConf.select(variant, key) == OmegaConf.select(full, key), key
    full_space, space = dict(full.hydra.sweeper.params), dict(variant.hydra.sweeper.params)
    if algorithm == "meta_irm_no_std":
        assert space.pop("algorithm.penalty.weight") == "0.0"  # sweeper params are override strings
        full_space.pop("algorithm.penalty.weight")
    assert space == full_space
    assert variant.tag == f"hparams_{preset}" and variant.hydra.sweeper.study_name == preset
    assert variant.hydra.sweeper.study_name != full.hydra.sweeper.study_name
