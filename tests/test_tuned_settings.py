"""conf/algorithm holds a method's arguments; conf/tuned/<algorithm>/<data>.yaml holds what was
tuned for the pair (model width, step budget, callbacks); a dataset brings its model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from metairm_pl.console import describe_tuned_settings

CONF = Path(__file__).resolve().parents[1] / "conf"
ALGORITHMS = sorted(p.stem for p in (CONF / "algorithm").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
TUNED = sorted(p.relative_to(CONF / "tuned").with_suffix("").as_posix() for p in (CONF / "tuned").rglob("*.yaml"))
MODEL_DEFAULTS = {name: yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text()) for name in ("mlp", "bow_mlp")}
TRAINER_DEFAULTS = yaml.safe_load((CONF / "trainer" / "default.yaml").read_text())


@pytest.mark.parametrize("pair", TUNED)
def test_every_tuned_file_names_an_existing_algorithm_and_data(pair):
    algorithm, data = pair.split("/")
    assert algorithm in ALGORITHMS and data in DATA
    assert (CONF / "tuned" / f"{pair}.yaml").read_text().startswith("# @package _global_\n# ")


def test_the_headline_pair_gets_its_tuned_values(make_config):
    cfg = make_config(["algorithm=meta_irm", "data=cmnist_patch"])
    assert cfg.model.hidden_dim == 128 and cfg.trainer.max_steps == 401 and cfg.trainer.val_check_interval == 10
    assert cfg.callbacks.std_early_stopping.std_threshold == 0.001
    assert cfg.callbacks.std_early_stopping.min_steps == 250
    assert cfg.algorithm.penalty.weight == 100.0  # the method's own argument, from conf/algorithm


def test_a_pair_without_tuned_values_gets_the_groups_defaults(make_config):
    assert "vrex/cmnist10" not in TUNED
    cfg = make_config(["algorithm=vrex", "data=cmnist10"])
    assert cfg.model.hidden_dim == MODEL_DEFAULTS["mlp"]["hidden_dim"] != 256  # 256 is vrex/cmnist's
    assert cfg.trainer.max_steps == TRAINER_DEFAULTS["max_steps"]
    assert cfg.algorithm.penalty.weight == 10000.0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_algorithm_files_set_only_the_method(make_config, algorithm):
    """With a dataset that has no tuned files, everything outside ``algorithm`` is the groups'
    defaults, except what defines the method: Meta-IRM's stop rule, the oracle's grayscale input."""
    base = make_config(["data=synthetic", "algorithm=erm"], name="base")
    cfg = make_config(["data=synthetic", f"algorithm={algorithm}"], name=algorithm)
    assert cfg.model == {**base.model, "grayscale": algorithm == "grayscale"}
    assert cfg.trainer == base.trainer
    if algorithm.startswith("meta_irm"):
        assert set(cfg.callbacks) == {"std_early_stopping"}
        assert cfg.callbacks.std_early_stopping.std_threshold == 0.01  # conf/callbacks' default
    else:
        assert cfg.callbacks == base.callbacks


def test_the_ablation_switch_survives_the_full_methods_tuned_file(make_config):
    cfg = make_config(["algorithm=meta_irm_no_std", "data=cmnist"])
    assert cfg.algorithm.penalty.weight == 0.0 and cfg.model.hidden_dim == 128


def test_a_dataset_brings_its_model_and_the_command_line_still_wins(make_config):
    assert make_config(["data=psst2"]).model._target_ == "metairm_pl.models.bow.BagOfWordsMLP"
    assert make_config(["data=psst2", "model=mlp"], name="b").model._target_ == "metairm_pl.models.mlp.MLP"
    assert make_config(["data=cmnist"], name="c").model._target_ == "metairm_pl.models.mlp.MLP"


def test_psst2_pairs_carry_choe_et_al_settings(make_config):
    irm = make_config(["algorithm=irm", "data=psst2"])
    assert (irm.algorithm.optimizer.lr, irm.algorithm.l2_weight, irm.algorithm.penalty.weight) == (
        0.001,
        0.0001,
        7500.0,
    )
    assert irm.algorithm.penalty.anneal_steps == 100 and irm.model.n_hidden_layers == 2 and irm.model.hidden_dim is None
    erm = make_config(["algorithm=erm", "data=psst2_grayscale"], name="g")
    assert (erm.algorithm.optimizer.lr, erm.algorithm.l2_weight) == (0.01, 0.0005)


def test_the_run_says_which_settings_it_used():
    choices = {"algorithm": "vrex", "data": "cmnist10", "tuned": "vrex/cmnist10", "model": "mlp",
               "trainer": "default", "callbacks": "default"}  # fmt: skip
    assert describe_tuned_settings(choices, tuned_exists=False) == (
        "settings: no conf/tuned/vrex/cmnist10.yaml: the method's arguments with the defaults of "
        "model=mlp, trainer=default, callbacks=default"
    )
    assert describe_tuned_settings({**choices, "tuned": "vrex/cmnist"}, True) == "settings: conf/tuned/vrex/cmnist.yaml"
