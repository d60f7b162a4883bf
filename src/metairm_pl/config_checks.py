"""Checks of a composed config before anything is built: the run's own settings (seeds,
switches, the search objective), finite numbers, a positive step budget, the precision, and
the keys each constructor accepts.  Values that need the built objects (probabilities,
sizes, environments) are checked by those objects' constructors, once, before training; an
error a library raises while building is reported by :func:`metairm_pl.build.building`.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig

from metairm_pl.errors import ConfigError

CONFIG_ONLY_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def accepted_keys(target: type) -> list[str]:
    """Constructor parameter names of ``target``, following ``**kwargs`` up the class hierarchy."""
    names: list[str] = []
    for cls in target.__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = inspect.signature(cls.__init__).parameters.values()
        names += [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return []  # ends in **kwargs all the way up: anything goes


def check_known_keys(section: str, node: DictConfig, ignore: tuple[str, ...] = ()) -> None:
    """Raise a ConfigError listing keys of ``node`` that its ``_target_`` does not accept."""
    target = get_class(node["_target_"])
    allowed = accepted_keys(target) if inspect.isclass(target) else []
    if not allowed:
        return
    unknown = [key for key in node if key not in allowed and key not in CONFIG_ONLY_KEYS + ignore]
    if unknown:
        raise ConfigError(
            f"{section}: unknown key(s) {unknown} for {target.__name__}; allowed keys: {sorted(set(allowed) | set(ignore))}."
        )


CHECKED_SECTIONS = ("data", "model", "algorithm", "trainer", "callbacks")


def check_finite_numbers(cfg: DictConfig, sections: tuple[str, ...] = CHECKED_SECTIONS) -> None:
    """Raise a ConfigError naming every NaN or infinite number in ``sections`` of ``cfg``."""
    bad = [f"{key}={value}" for key, value in _numbers(cfg, sections) if not math.isfinite(value)]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: not a finite number; every numeric setting must be finite.")


def _numbers(cfg: DictConfig, sections: tuple[str, ...]):
    def walk(node: Any, prefix: str):
        if isinstance(node, DictConfig):
            for key in node:
                yield from walk(node[key], f"{prefix}.{key}")
        elif isinstance(node, ListConfig):
            for index, item in enumerate(node):
                yield from walk(item, f"{prefix}.{index}")
        elif isinstance(node, float):
            yield prefix, node

    for section in sections:
        if cfg.get(section) is not None:
            yield from walk(cfg[section], section)


def check_step_budget(trainer_cfg: DictConfig) -> None:
    """``trainer.max_steps``, ``val_check_interval`` and ``log_every_n_steps``: integers >= 1
    (training is step-based; -1 would train until killed, 0 would mark an untrained run done)."""
    for key in ("max_steps", "val_check_interval", "log_every_n_steps"):
        value = trainer_cfg.get(key)
        if value is None and key != "max_steps":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"trainer.{key}={value!r} is not allowed: use an integer >= 1 (a number of steps).")


SEED_RANGE = (0, 2**32 - 1)  # what numpy's and Lightning's seeding accept


def check_run_settings(cfg: DictConfig) -> None:
    """The top-level settings of ``conf/config.yaml``: seeds, switches, the objective."""
    seeds = {"seed": cfg.get("seed"), "data_seed": cfg.get("data_seed")}
    if "data_seed" in cfg.get("data", {}):
        seeds["data.data_seed"] = cfg.data.data_seed
    low, high = SEED_RANGE
    for key, value in seeds.items():
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{key}={value!r} is not allowed: use an integer in [{low}, {high}].")
    for key in ("overwrite", "resume", "deterministic"):
        value = cfg.get(key)
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not allowed: use true or false.")
    from metairm_pl.callbacks.checkpointing import check_checkpoint_every
    from metairm_pl.search_objective import check_objective_name

    check_checkpoint_every(cfg.get("checkpoint_every"))
    check_objective_name(cfg.get("objective"))


def typed_overrides(section: str) -> list[str]:
    """The command-line overrides of ``section`` (``data.batch_size=0``, ``model=mlp``) in a
    Hydra app; none elsewhere (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    task = HydraConfig.get().overrides.task
    return [o for o in task if o.lstrip("+~").split("=", 1)[0].split(".")[0].split("@")[0] == section]


def check_config(cfg: DictConfig) -> None:
    """Every check above, in order: the first problem is reported."""
    from metairm_pl.precision import check_precision

    check_run_settings(cfg)
    check_finite_numbers(cfg)
    check_step_budget(cfg.trainer)
    check_precision(cfg.trainer.get("precision", "32-true"), cfg.trainer.get("accelerator", "cpu"))
