"""Each Table 5 ablation's own preset (``algorithm=<variant>_own``) is what its validation-only
search chose, recomputed here from the search's records committed in ``results/search``:
stage 1's best trial (``hparams_search=<variant>_cmnist``) and stage 2's best ``min_steps``
(the std stop replayed on one seed-0 run at that winner, trained with the stop disabled)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from metairm_pl.analysis.replay_std_stop import as_final, replay_stop
from metairm_pl.reporting.records import RunStatus, load_runs
from metairm_pl.run_dir import FINAL_FILE
from metairm_pl.search_objective import search_objective

ROOT = Path(__file__).resolve().parents[1]
SEARCHES = ROOT / "results" / "search"
VARIANTS = ["meta_irm_first_order", "meta_irm_same_env", "meta_irm_no_std"]
STAGE1_KEYS = ["penalty.weight", "inner_lr", "optimizer.lr", "dropgrad"]  # algorithm.<key>
STAGE2_MIN_STEPS = [150, 200, 250, 300, 350]
OBJECTIVE = "std_stopped_val_acc"


def stage1_trials(variant: str) -> list[tuple[float, dict]]:
    """(objective, searched values) of every finished trial of the variant's stage-1 search."""
    runs = [r for r in load_runs([SEARCHES / f"hparams_{variant}_cmnist"]) if r.status is RunStatus.DONE]
    trials = []
    for run in runs:
        final = json.loads((run.path / FINAL_FILE).read_text())
        values = {key: run.config_value(f"algorithm.{key}") for key in STAGE1_KEYS}
        values["min_steps"] = run.config_value("callbacks.std_early_stopping.min_steps")
        trials.append((search_objective(final, OBJECTIVE), values))
    return trials


def stage2_scores(variant: str) -> dict[int, float]:
    """The objective of each ``min_steps`` on the replayed stage-2 run (as at most 401 steps)."""
    (run,) = load_runs([SEARCHES / f"stage2_{variant}"])
    threshold = 0.001  # the stop's threshold in every search preset
    return {
        m: search_objective(as_final(*replay_stop(run.records, threshold, m, max_steps=401)), OBJECTIVE)
        for m in STAGE2_MIN_STEPS
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_records_agree_with_the_sweepers_verdict(variant):
    """8 trials, of which TPE proposed some twice (one run dir serves both); the best trial
    recomputed from the records is the one Optuna wrote to optimization_results.yaml."""
    trials = stage1_trials(variant)
    assert 5 <= len(trials) <= 8 and all(-2.0 <= score <= 1.0 for score, _ in trials)
    verdict = yaml.safe_load((SEARCHES / f"hparams_{variant}_cmnist" / "optimization_results.yaml").read_text())
    best = max(score for score, _ in trials)
    assert verdict["best_value"] == pytest.approx(best, abs=1e-6)
    params = verdict["best_params"]
    chosen = {key: params.get(f"algorithm.{key}", 0.0) for key in STAGE1_KEYS}  # no-std: λ is fixed at 0, not searched
    chosen["min_steps"] = params["callbacks.std_early_stopping.min_steps"]
    assert as_floats(chosen) in [as_floats(values) for score, values in trials if score == best]


@pytest.mark.parametrize("variant", VARIANTS)
def test_own_preset_holds_the_stage1_winner_and_keeps_the_ablation(variant, make_config):
    trials = stage1_trials(variant)
    best = max(score for score, _ in trials)
    winners = [values for score, values in trials if score == best]
    cfg = make_config([f"algorithm={variant}_own", "data=cmnist"], name=variant)
    ablation = make_config([f"algorithm={variant}", "data=cmnist"], name=f"{variant}_full")
    chosen = {key: OmegaConf.select(cfg.algorithm, key) for key in STAGE1_KEYS}
    assert any(as_floats(chosen) == as_floats({k: w[k] for k in STAGE1_KEYS}) for w in winners)
    for switch in ("first_order", "meta_envs"):  # the ablated part is the variant's, not the full method's
        assert cfg.algorithm[switch] == ablation.algorithm[switch]
    if variant == "meta_irm_no_std":
        assert cfg.algorithm.penalty.weight == 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_own_preset_stops_at_the_stage2_winner(variant, make_config):
    scores = stage2_scores(variant)
    best = max(scores.values())
    cfg = make_config([f"algorithm={variant}_own", "data=cmnist"], name=variant)
    stop = cfg.callbacks.std_early_stopping
    assert scores[stop.min_steps] == best
    stage1_value = stage1_min_steps(variant)
    if scores[stage1_value] == best:  # a tie with the stage-1 value keeps it
        assert stop.min_steps == stage1_value
    assert stop.std_threshold == 0.001 and cfg.model.hidden_dim == 128 and cfg.trainer.max_steps == 401


@pytest.mark.parametrize("variant", VARIANTS)
def test_stage2_run_is_the_stage1_winner_with_the_stop_disabled(variant, make_config):
    (run,) = load_runs([SEARCHES / f"stage2_{variant}"])
    cfg = make_config([f"algorithm={variant}_own", "data=cmnist"], name=variant)
    for key in STAGE1_KEYS:
        assert float(run.config_value(f"algorithm.{key}")) == float(OmegaConf.select(cfg.algorithm, key)), key
    assert run.config_value("callbacks.std_early_stopping.std_threshold") < 1e-6
    assert run.config_value("trainer.precision") == "32-true" and run.seed == 0
    assert run.records[-1]["step"] >= 401


def stage1_min_steps(variant: str) -> int:
    verdict = yaml.safe_load((SEARCHES / f"hparams_{variant}_cmnist" / "optimization_results.yaml").read_text())
    return verdict["best_params"]["callbacks.std_early_stopping.min_steps"]


def as_floats(values: dict) -> dict:
    return {key: float(value) for key, value in values.items()}
