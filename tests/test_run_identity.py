"""Run identity has one owner (metairm_pl.run_identity): the directory name, the relaunch check
and the report's parse-back agree, over every option of every config group."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from metairm_pl import run_identity
from metairm_pl.errors import ConfigError
from metairm_pl.files import read_jsonl
from metairm_pl.reporting.records import load_run
from metairm_pl.resolvers import register_resolvers
from metairm_pl.run import train

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("data", "model", "algorithm", "trainer", "callbacks", "logger", "experiment", "hparams_search")
# Top-level and nested settings a user types, with a value other than the default.
SCALARS = (
    "seed=3", "data_seed=4", "tag=x", "deterministic=false", "overwrite=true", "resume=false",
    "checkpoint_every=7", "objective=val_acc", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=50",
    "paths.data_dir=/elsewhere", "paths.output_root=/elsewhere", "model.hidden_dim=64",
    "trainer.max_steps=7", "trainer.precision=32-true", "trainer.precision=bf16-mixed",
)  # fmt: skip


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def identity(*overrides: str) -> tuple[str, str]:
    """(run directory below the output root, fingerprint) of ``python train.py OVERRIDES`` as
    composed by Hydra."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    directory = str(Path(cfg.hydra.run.dir).relative_to(cfg.paths.output_root))
    container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    return directory, run_identity.fingerprint(container)


ALL_OVERRIDES = [f"{group}={option}" for group in GROUPS for option in options(group)] + list(SCALARS)


def test_every_option_either_names_the_run_or_leaves_its_identity_alone():
    """Over every option of every group and the usual scalar settings: two launches that share
    a directory have the same identity (a relaunch is never refused for a setting the name
    leaves out), and a volatile setting changes neither the directory nor the identity."""
    base_dir, base_print = identity()
    for override in ALL_OVERRIDES:
        directory, fingerprint = identity(override)
        key = override.split("=", 1)[0]
        if directory == base_dir:
            assert fingerprint == base_print, f"{override}: same directory, different identity"
        if run_identity.is_volatile(key):
            assert (directory, fingerprint) == (base_dir, base_print), f"{override} is volatile"


@pytest.mark.parametrize(
    "override",
    [
        "checkpoint_every=7", "logger=wandb", "paths.data_dir=/elsewhere", "data.data_dir=/x", "resume=false",
        "trainer.log_every_n_steps=50",
    ],
)  # fmt: skip
def test_volatile_settings_are_left_out_of_name_and_identity(override):
    assert identity(override) == identity()


def test_the_name_lists_the_naming_overrides_sorted_with_the_resolved_precision():
    directory, _ = identity(
        "trainer.max_steps=7", "model.hidden_dim=64", "checkpoint_every=3", "seed=2", "trainer.precision=32-true"
    )
    assert Path(directory).parts[-4:] == ("cmnist", "irm", "model.hidden_dim=64,trainer.max_steps=7", "seed=2")
    assert run_identity.settings_of(directory) == "model.hidden_dim=64,trainer.max_steps=7"
    bf16, _ = identity("trainer.precision=bf16-mixed", "tag=x")
    assert Path(bf16).parent.name == "tag=x,trainer.precision=bf16-mixed"


def test_a_run_of_an_experiment_goes_where_its_sweep_job_goes():
    single, _ = identity("experiment=table1", "algorithm=vrex", "seed=4")
    assert Path(single).parts[:4] == ("sweeps", "table1", "cmnist", "vrex")
    assert Path(single).name == "seed=4"


def test_the_report_reads_the_settings_back_from_the_directory(tmp_path):
    run = tmp_path / "runs" / "synthetic" / "erm" / "model.hidden_dim=8,tag=x" / "seed=0"
    run.mkdir(parents=True)
    (run / "results.jsonl").write_text('{"step": 1, "algorithm": "erm", "data": "synthetic", "seed": 0}\n')
    assert load_run(run).settings == "model.hidden_dim=8,tag=x" == run_identity.settings_of(run)
    assert run_identity.settings_of(run.parent.parent / "default" / "seed=0") == ""


SHORT = ["data=synthetic", "model.hidden_dim=8", "trainer.val_check_interval=10", "algorithm=erm"]


def test_relaunching_with_another_checkpoint_interval_resumes(make_config):
    """checkpoint_every is not identity: the relaunch resumes from the checkpoint it finds,
    and its records equal those of a run never interrupted."""
    reference = train(make_config(SHORT + ["trainer.max_steps=30", "checkpoint_every=0"], name="reference"))
    first = make_config(SHORT + ["trainer.max_steps=30", "checkpoint_every=10"], name="resumed")
    train(first)
    directory = Path(first.paths.output_dir)
    for end in ("done", "final.json"):  # as if killed after the last record
        (directory / end).unlink()
    with open(directory / "results.jsonl", "a") as handle:
        handle.write('{"step": 30, "trunc')  # and mid-write
    resumed = train(make_config(SHORT + ["trainer.max_steps=30", "checkpoint_every=4"], name="resumed"))
    assert [s["from_step"] for s in resumed.pop("provenance")] == [0, 20]
    reference.pop("provenance")
    assert resumed == reference
    assert read_jsonl(directory / "results.jsonl") == read_jsonl(directory.parent / "reference" / "results.jsonl")


def test_another_configuration_in_the_directory_is_refused_naming_what_differs(make_config):
    train(make_config(SHORT + ["trainer.max_steps=2"], name="shared"))
    with pytest.raises(ConfigError, match=r"different configuration \(algorithm.l2_weight differ"):
        train(make_config(SHORT + ["trainer.max_steps=2", "algorithm.l2_weight=0.5"], name="shared"))


def test_a_setting_added_to_the_code_since_the_launch_is_not_another_run(make_config, tmp_path):
    """A run directory whose config.yaml lacks a key (an argument added later, at its default)
    is still the same run: finished, it is found; its other keys still count."""
    import yaml

    cfg = make_config(SHORT + ["trainer.max_steps=2"], name="old")
    train(cfg)
    saved = Path(cfg.paths.output_dir) / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    del config["algorithm"]["eval_chunk_size"]  # as if written before that argument existed
    saved.write_text(yaml.safe_dump(config))
    assert train(make_config(SHORT + ["trainer.max_steps=2"], name="old"))["status"] == "done"
    with pytest.raises(ConfigError, match="algorithm.l2_weight"):
        train(make_config(SHORT + ["trainer.max_steps=2", "algorithm.l2_weight=0.3"], name="old"))
