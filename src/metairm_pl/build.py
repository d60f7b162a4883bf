"""Build the objects of a run from its config: data module, network + algorithm, callbacks, loggers."""

from __future__ import annotations

import pytorch_lightning as pl
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from metairm_pl.config_checks import accepted_keys, check_known_keys
from metairm_pl.errors import ConfigError


def build_datamodule(cfg: DictConfig):
    check_known_keys("data", cfg.data)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    return datamodule


def build_algorithm(cfg: DictConfig, datamodule) -> pl.LightningModule:
    # A binary task uses one logit unless the data asks for two (PunctuatedSST-2, as its reference).
    binary_logits = getattr(datamodule, "binary_logits", 1)
    num_outputs = binary_logits if datamodule.num_classes == 2 else datamodule.num_classes
    data_kwargs = datamodule.model_kwargs() if hasattr(datamodule, "model_kwargs") else {}
    model_keys = accepted_keys(get_class(cfg.model["_target_"]))
    missing = [key for key in data_kwargs if model_keys and key not in model_keys]
    if missing:
        raise ConfigError(
            f"data={cfg.data.name} passes {missing} to the model, which model._target_="
            f"{cfg.model['_target_']} does not take: use a model that does (for psst2: model=bow_mlp)."
        )
    network = instantiate(cfg.model, input_shape=datamodule.input_shape, num_outputs=num_outputs, **data_kwargs)
    algorithm_cfg = OmegaConf.masked_copy(cfg.algorithm, [k for k in cfg.algorithm if k != "name"])
    check_known_keys("algorithm", algorithm_cfg, ignore=("network", "num_classes", "num_outputs"))
    algorithm = instantiate(algorithm_cfg, network=network, num_classes=datamodule.num_classes, num_outputs=num_outputs)
    algorithm.check_environments(len(datamodule.train_env_names))
    return algorithm


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    if cfg.trainer.get("enable_progress_bar", True):
        from metairm_pl.console import StepProgressBar

        callbacks.append(StepProgressBar())
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]


def check_callbacks_have_data(callbacks: list, datamodule) -> None:
    """Std-threshold early stopping needs validation sets of >= 2 training envs: check before training."""
    from metairm_pl.callbacks.std_early_stopping import StdThresholdEarlyStopping

    n_val_envs = len(datamodule.splits.val) if datamodule.splits is not None else 0
    if any(isinstance(c, StdThresholdEarlyStopping) for c in callbacks) and n_val_envs < 2:
        raise ConfigError(
            f"std-threshold early stopping needs validation sets of >= 2 training envs, the data has "
            f"{n_val_envs}: set data.val_fraction > 0 (or callbacks=default to train without it)."
        )
