"""experiment=unit_tests_search draws the linear unit-tests reference's configurations: the
selected configurations its published results name (transcribed below from its
``data/results_processed.tar.gz``, nenvs=3, dinv=5, dspu=5) are among our 20 draws."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from metairm_pl.errors import ConfigError
from metairm_pl.resolvers import register_resolvers
from metairm_pl.unit_tests_search import hyperparameter, reference_configuration

CONF = Path(__file__).resolve().parents[1] / "conf"

# (problem, method) -> the configuration the reference's selection kept, as it published it
PUBLISHED_SELECTIONS = {
    ("Example1", "ERM"): {"lr": 0.0006954242203320001, "wd": 0.008024709838851},
    ("Example1", "IRMv1"): {"lr": 0.000161257679824, "wd": 1.5987622895525383e-05, "irm_lambda": 0.6666926930021001},
    ("Example2", "IRMv1"): {"lr": 0.003920143237423001, "wd": 1.715951192969981e-06, "irm_lambda": 0.8871121011464641},
    ("Example3", "IRMv1"): {"lr": 0.0006954242203320001, "wd": 0.008024709838851, "irm_lambda": 0.9547252494020511},
    ("Example3s", "IRMv1"): {"lr": 0.0010955889746800001, "wd": 0.006817034591924001, "irm_lambda": 0.991705347111106},
    ("Example3s", "Oracle"): {"lr": 0.002197915309455, "wd": 0.0026681738499350002},
}  # fmt: skip


@pytest.mark.parametrize("key", sorted(PUBLISHED_SELECTIONS))
def test_the_references_published_selections_are_among_the_draws(key):
    published = PUBLISHED_SELECTIONS[key]
    draws = [reference_configuration(k) for k in range(20)]
    matches = [d for d in draws if all(d[name] == pytest.approx(value, rel=1e-12) for name, value in published.items())]
    assert len(matches) == 1, key


def test_model_seed_0_is_the_default_configuration_exactly():
    assert reference_configuration(0) == {"lr": 1e-3, "wd": 0.0, "irm_lambda": 0.9}
    assert hyperparameter("lr", 1000) == 1e-3 and hyperparameter("weight_decay", 1000) == 0.0
    assert hyperparameter("irm_weight", 1000, 3) == 27.0  # experiment=unit_tests' value, to the bit
    assert hyperparameter("irm_weight_decay", 1000) == 0.0


def test_irmv1s_lambda_and_decay_in_our_terms():
    # the reference: (1 - l) * mean risk + l * sum of penalties, Adam decay wd; ours: mean risk +
    # w * mean of penalties with decay d; equal objectives up to the factor (1 - l) * n
    lam, wd = 0.6666926930021001, 1.5987622895525383e-05  # model seed 15 (Example1's IRMv1 above)
    assert reference_configuration(15)["irm_lambda"] == pytest.approx(lam, rel=1e-12)
    assert hyperparameter("irm_weight", 1015, 3) == pytest.approx(3 * lam / (1 - lam), rel=1e-12)
    assert hyperparameter("irm_weight_decay", 1015) == pytest.approx(wd / (1 - lam), rel=1e-12)


def test_bad_names_and_seeds_are_refused():
    with pytest.raises(ConfigError, match="seed=999.*seed >= 1000"):
        hyperparameter("lr", 999)
    with pytest.raises(ConfigError, match="'momentum'.*allowed: lr, weight_decay"):
        hyperparameter("momentum", 1001)
    with pytest.raises(ConfigError, match="irm_weight needs the number of envs"):
        hyperparameter("irm_weight", 1001)


def compose_search(*overrides):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["experiment=unit_tests_search", *overrides])


def test_the_search_composes_the_draw_of_its_seed_for_every_method_and_lambda_for_irmv1():
    irm = compose_search("algorithm=irm", "seed=1015")
    config = reference_configuration(15)
    assert irm.algorithm.optimizer.lr == config["lr"]
    assert irm.algorithm.optimizer.weight_decay == pytest.approx(config["wd"] / (1 - config["irm_lambda"]))
    assert (
        irm.algorithm.penalty.weight
        == irm.algorithm.penalty.warmup_weight
        == pytest.approx(3 * config["irm_lambda"] / (1 - config["irm_lambda"]))
    )
    vrex = compose_search("algorithm=vrex", "seed=1015")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        vrex_default = compose("config", overrides=["experiment=unit_tests", "algorithm=vrex"])
    assert (vrex.algorithm.optimizer.lr, vrex.algorithm.optimizer.weight_decay) == (config["lr"], config["wd"])
    assert vrex.algorithm.penalty == vrex_default.algorithm.penalty  # its own penalty settings, not drawn
    params = yaml.safe_load((CONF / "experiment" / "unit_tests_search.yaml").read_text())["hydra"]["sweeper"]["params"]
    assert params == {"seed": "range(1000,1020)"}
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        swept = compose("config", overrides=["experiment=unit_tests_search"], return_hydra_config=True)
    assert set(swept.hydra.sweeper.params) == {"data.problem", "algorithm", "data_seed", "seed"}  # 13,200 runs


def test_a_drawn_configuration_trains(make_config):
    from metairm_pl.run import train

    cfg = make_config(["experiment=unit_tests_search", "algorithm=irm", "seed=1015", "data.num_samples=40",
                       "trainer.max_steps=3", "trainer.val_check_interval=3"])  # fmt: skip
    assert train(cfg)["status"] == "done"
