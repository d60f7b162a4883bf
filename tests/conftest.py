"""Shared test helpers: compose the real config tree with a temporary output dir."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import metairm_pl.config_schema  # noqa: F401  (registers schemas)
from metairm_pl.resolvers import register_resolvers

# One intra-op thread: the tiny test models gain nothing from more, and on a loaded 2-core
# machine oversubscription makes the suite several times slower.
torch.set_num_threads(1)
# As train.py: the objects the imports made live for the whole session; keep them out of the
# collector's full passes (bench/README.md, "Start-up of a short run").
gc.freeze()

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
QUIET = ["trainer.enable_progress_bar=false", "logger=none"]


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The composed training config, as train.py would see it, writing into ``output_dir``.

    It sets ``paths.*``, which users do not type: the defaults they meet are tested by
    ``tests/test_readme_commands.py``, which runs the README's commands without them."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(output_dir / "no-data-here")
        cfg.paths.output_root = str(output_dir)
        del cfg.hydra
    return cfg


@pytest.fixture
def make_config(tmp_path):
    def make(overrides: list[str], name: str = "run") -> DictConfig:
        return compose_config(QUIET + overrides, tmp_path / name)

    return make


def random_digits():
    """300 train / 100 test random "digit" images: enough for tiny Colored MNIST runs
    (use ``data.train_pool_size=200`` and envs of at most 100)."""
    from metairm_pl.data.mnist_source import MnistArrays

    generator = torch.Generator().manual_seed(0)
    return MnistArrays(
        train_images=torch.randint(1, 256, (300, 28, 28), generator=generator, dtype=torch.uint8),
        train_labels=torch.randint(0, 10, (300,), generator=generator),
        test_images=torch.randint(1, 256, (100, 28, 28), generator=generator, dtype=torch.uint8),
        test_labels=torch.randint(0, 10, (100,), generator=generator),
    )


@pytest.fixture
def fake_mnist(monkeypatch):
    """Serve :func:`random_digits` wherever Colored MNIST would load the real MNIST."""
    arrays = random_digits()
    monkeypatch.setattr("metairm_pl.data.cmnist._load_mnist", lambda data_dir, allow_download: arrays)
    return arrays
