"""The config's own resolvers: the launch directory, and paths that resolve in every Hydra mode."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from metairm_pl.resolvers import LAUNCH_DIR_ENV, launch_dir, register_resolvers, remember_launch_dir

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def without_launch_dir(monkeypatch) -> None:
    """Unset the variable for this test, and make monkeypatch unset it again afterwards even
    if the test sets it (setenv records the original state; a bare delenv of an absent
    variable records nothing, and the variable would leak into every later test)."""
    monkeypatch.setenv(LAUNCH_DIR_ENV, "set by the test")
    monkeypatch.delenv(LAUNCH_DIR_ENV)


def test_launch_dir_is_the_recorded_one_else_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    without_launch_dir(monkeypatch)
    assert launch_dir() == str(tmp_path)
    assert remember_launch_dir() == str(tmp_path)
    elsewhere = tmp_path / "job"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a job started in another directory inherits the launcher's
    assert remember_launch_dir() == str(tmp_path) and launch_dir() == str(tmp_path)


def test_sweep_and_run_dirs_resolve_before_hydra_sets_its_runtime(tmp_path, monkeypatch):
    """A sweeper resolves ``hydra.sweep.dir`` before any job exists (no HydraConfig yet):
    the output root must not depend on ``${hydra:runtime.cwd}``."""
    monkeypatch.chdir(tmp_path)
    without_launch_dir(monkeypatch)
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["tag=t"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # as in the launching process of a multirun
    assert cfg.hydra.sweep.dir == str(tmp_path / "outputs" / "sweeps" / "t")
    assert cfg.paths.data_dir == str(tmp_path / "data")


def test_the_slurm_launcher_config_resolves_in_the_launching_process(tmp_path, monkeypatch):
    """SLURM cannot run here; what the launching process resolves before submitting can be
    checked: the sweep dir and submitit's folder, with no HydraConfig, from the launch dir."""
    monkeypatch.chdir(tmp_path)
    without_launch_dir(monkeypatch)
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "tag=s"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
    assert cfg.hydra.launcher.submitit_folder == str(tmp_path / "outputs" / "sweeps" / "s" / ".submitit" / "%j")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
