"""Structured-config schemas for the ``data`` and ``algorithm`` groups.

Registered in Hydra's ConfigStore on import (``register_schemas``); each YAML option of
those groups starts from one of these schemas, so a misspelt key or a value of the wrong
type fails at composition time with the key's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from metairm_pl.algorithms.schedule import PenaltySchedule


@dataclass
class EnvConfig:
    name: str = MISSING
    p_color: float = MISSING
    p_label_noise: float = 0.25
    size: Optional[int] = None


@dataclass
class ColoredMNISTConfig:
    _target_: str = "metairm_pl.data.cmnist.ColoredMNISTDataModule"
    name: str = "cmnist"
    data_dir: str = "${paths.data_dir}"
    train_envs: List[EnvConfig] = MISSING
    test_envs: List[EnvConfig] = MISSING
    num_classes: int = 2
    val_fraction: float = 0.1
    val_source: str = "heldout"
    val_pairing: str = "shared"
    test_pairing: str = "independent"
    data_seed: int = "${data_seed}"  # type: ignore[assignment]
    full_batch: bool = True
    batch_size: Optional[int] = None
    allow_download: bool = True
    train_pool_size: int = 50000
    train_env_size: Optional[int] = None
    label_noise_gap: float = 0.0


@dataclass
class PatchEnvConfig(EnvConfig):
    p_patch: float = MISSING  # patch id = label flipped with this probability


@dataclass
class ColoredMNISTPatchConfig(ColoredMNISTConfig):
    _target_: str = "metairm_pl.data.cmnist_patch.ColoredMNISTPatchDataModule"
    name: str = "cmnist_patch"
    train_envs: List[PatchEnvConfig] = MISSING
    test_envs: List[PatchEnvConfig] = MISSING


@dataclass
class SyntheticConfig:
    _target_: str = "metairm_pl.data.synthetic.SyntheticDataModule"
    name: str = "synthetic"
    train_envs: List[EnvConfig] = MISSING
    test_envs: List[EnvConfig] = MISSING
    n_features: int = 8
    val_fraction: float = 0.2
    data_seed: int = "${data_seed}"  # type: ignore[assignment]
    full_batch: bool = True
    batch_size: Optional[int] = None


@dataclass
class PunctuatedSST2Config:
    _target_: str = "metairm_pl.data.psst2.PunctuatedSST2DataModule"
    name: str = "psst2"
    data_dir: str = MISSING
    train_file: str = "train.tsv"
    dev_file: str = "dev.tsv"
    glove_file: str = MISSING
    embedding_dim: Optional[int] = None  # when set, must equal the GloVe file's dimension
    artifact: str = "punctuation"  # or "none" (grayscale oracle data)
    p_label_noise: float = 0.25  # eta; the env lists interpolate it
    trailing_punctuation: Optional[List[str]] = None  # None: the reference's rule
    train_envs: List[EnvConfig] = MISSING
    test_envs: List[EnvConfig] = MISSING
    val_fraction: float = 0.1
    data_seed: int = "${data_seed}"  # type: ignore[assignment]
    full_batch: bool = True
    batch_size: Optional[int] = None
    binary_logits: int = 2  # 2: softmax head (the reference's), 1: one logistic logit
    construction: str = "reference"  # or "even" (see metairm_pl.data.psst2)


# The penalty schedule's fields and defaults, taken from the class itself (one source).
PenaltyConfig = make_dataclass(
    "PenaltyConfig", [(f.name, f.type, field(default=f.default)) for f in fields(PenaltySchedule)]
)


@dataclass
class AlgorithmConfig:
    _target_: str = MISSING
    name: str = MISSING
    optimizer: Any = MISSING
    l2_weight: float = 0.0
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    eval_chunk_size: int = 65536


@dataclass
class MetaIRMConfig(AlgorithmConfig):
    inner_lr: float = 0.1
    inner_steps: int = 1
    meta_envs: str = "others"
    n_meta_envs: Optional[int] = None
    first_order: bool = False
    dropgrad: float = 0.0


SCHEMAS = {
    ("data", "schema_cmnist"): ColoredMNISTConfig,
    ("data", "schema_cmnist_patch"): ColoredMNISTPatchConfig,
    ("data", "schema_synthetic"): SyntheticConfig,
    ("data", "schema_psst2"): PunctuatedSST2Config,
    ("algorithm", "schema_algorithm"): AlgorithmConfig,
    ("algorithm", "schema_meta_irm"): MetaIRMConfig,
}


def register_schemas() -> None:
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)


register_schemas()
