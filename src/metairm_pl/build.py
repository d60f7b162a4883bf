"""Build the objects of a run from its config: data module, network + algorithm, callbacks, loggers.

Every builder runs inside :func:`building`, so an error a library raises while setting up
(Hydra's instantiation, a constructor of torch, Lightning or W&B) reaches the user as one
paragraph naming the config section and the values typed for it, like our own checks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytorch_lightning as pl
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from metairm_pl.callbacks.run_callback import RunCallback
from metairm_pl.config_checks import accepted_keys, check_known_keys, typed_overrides
from metairm_pl.errors import ConfigError, user_error_in


@contextmanager
def building(section: str, cfg: DictConfig) -> Iterator[None]:
    """Turn an error raised while building ``section`` into a :class:`ConfigError` that names
    the section, what was typed for it and the library's own message (our user errors pass)."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - reported as the user's, with the cause chained
        if user_error_in(error) is not None:
            raise  # our own check, inside Hydra's wrapper: reported as it is
        while error.__cause__ is not None:  # Hydra's InstantiationException: the library's own error
            error = error.__cause__
        node = cfg.get(section)
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        typed = typed_overrides(section)
        values = f"; values typed for it: {' '.join(typed)}" if typed else ""
        what = f"{section} ({target})" if target else section
        cause = " ".join(f"{type(error).__name__}: {error}".split())
        raise ConfigError(f"building {what} failed{values}: {cause}") from error


def build_datamodule(cfg: DictConfig):
    check_known_keys("data", cfg.data)
    with building("data", cfg):
        datamodule = instantiate(cfg.data, _convert_="all")
        datamodule.setup("fit")
    return datamodule


def build_algorithm(cfg: DictConfig, datamodule) -> pl.LightningModule:
    data_kwargs = datamodule.model_kwargs()
    model_keys = accepted_keys(get_class(cfg.model["_target_"]))
    missing = [key for key in data_kwargs if model_keys and key not in model_keys]
    if missing:
        raise ConfigError(
            f"data={cfg.data.name} passes {missing} to the model, which model._target_="
            f"{cfg.model['_target_']} does not take: use a model that does (for psst2: model=bow_mlp)."
        )
    with building("model", cfg):
        network = instantiate(
            cfg.model, input_shape=datamodule.input_shape, num_outputs=datamodule.num_outputs, **data_kwargs
        )
    resolved = OmegaConf.create(OmegaConf.to_container(cfg.algorithm, resolve=True))  # may read ${seed}, ${data...}
    algorithm_cfg = OmegaConf.masked_copy(resolved, [k for k in resolved if k != "name"])
    check_known_keys("algorithm", algorithm_cfg, ignore=("network", "num_classes", "num_outputs"))
    with building("algorithm", cfg):
        algorithm = instantiate(
            algorithm_cfg, network=network, num_classes=datamodule.num_classes, num_outputs=datamodule.num_outputs
        )
        algorithm.configure_optimizers()  # the optimizer's own checks, before training (discarded)
    algorithm.setup_environments(datamodule.train_env_names)
    return algorithm


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    with building("callbacks", cfg):
        callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    if cfg.trainer.get("enable_progress_bar", True):
        from metairm_pl.console import StepProgressBar

        callbacks.append(StepProgressBar())
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    with building("logger", cfg):
        return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]


def build_trainer(cfg: DictConfig, **kwargs) -> pl.Trainer:
    with building("trainer", cfg):
        return instantiate(cfg.trainer, **kwargs)


def check_callbacks_have_data(callbacks: list, datamodule) -> None:
    """Every :class:`RunCallback` checks, before training, that the data has what it needs."""
    for callback in callbacks:
        if isinstance(callback, RunCallback):
            callback.check_data(datamodule)
