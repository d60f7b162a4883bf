"""Structured-config schemas for the ``data`` and ``algorithm`` groups, derived from the
constructors they configure.

Each schema's fields, types and defaults are read from the constructor's signature
(:func:`schema_of`), so the constructor is the one source of its arguments; only what a
config says differently is written here (interpolations such as ``${data_seed}``, files the
YAML must name, the element type of an environment list). Registered in Hydra's ConfigStore
on import; each YAML option of those groups starts from one of these schemas, so a misspelt
key or a value of the wrong type fails at composition time with the key's name.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import inspect
import pkgutil
import typing
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, List, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

import metairm_pl.algorithms
from metairm_pl.algorithms.base import MultiEnvAlgorithm
from metairm_pl.algorithms.schedule import PenaltySchedule
from metairm_pl.data.cmnist import ColoredMNISTDataModule
from metairm_pl.data.psst2 import PunctuatedSST2DataModule
from metairm_pl.data.synthetic import SyntheticDataModule

# Constructor arguments that build.py fills in at run time (the network, and what the data
# tells the algorithm); they are not configured. Tests pass ``mnist_loader`` to data modules.
ALGORITHM_RUNTIME_ARGUMENTS = frozenset({"network", "num_classes", "num_outputs"})
DATA_RUNTIME_ARGUMENTS = frozenset({"mnist_loader"})


@dataclass
class EnvConfig:
    name: str = MISSING
    p_color: float = MISSING
    p_label_noise: float = 0.25
    size: Optional[int] = None


@dataclass
class PatchEnvConfig(EnvConfig):
    p_patch: float = MISSING  # patch id = label flipped with this probability


# The penalty schedule's fields and defaults, taken from the class itself.
PenaltyConfig = make_dataclass(
    "PenaltyConfig", [(f.name, f.type, field(default=f.default)) for f in fields(PenaltySchedule)]
)


def config_type(hint: Any) -> Any:
    """The closest type OmegaConf can check for a constructor annotation (``Any`` otherwise)."""
    if hint in (int, float, bool, str):
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return Optional[config_type(rest[0])] if len(rest) == 1 else Any
    if origin in (list, collections.abc.Sequence) and args:
        return List[config_type(args[0])]
    return Any


def schema_of(
    cls: type,
    target: str = MISSING,
    *,
    runtime: frozenset[str] = frozenset(),
    config_defaults: dict[str, Any] | None = None,
    config_types: dict[str, Any] | None = None,
    extra: dict[str, tuple[Any, Any]] | None = None,
) -> type:
    """A dataclass schema with one field per configurable argument of ``cls.__init__``.

    ``runtime`` names the arguments filled in at run time (left out); ``config_defaults`` and
    ``config_types`` replace a field's default or type where the config differs from the
    constructor; ``extra`` adds fields the constructor does not take (name -> (type, default)).
    ``_target_`` comes first."""
    config_defaults, config_types, extra = config_defaults or {}, config_types or {}, extra or {}
    hints = typing.get_type_hints(cls.__init__)
    specs: list[tuple[str, Any, Any]] = [("_target_", str, field(default=target))]
    specs += [(name, typ, field(default=default)) for name, (typ, default) in extra.items()]
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if parameter.name in runtime or parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        typ = config_types.get(parameter.name, config_type(hints.get(parameter.name, Any)))
        default = config_defaults.get(
            parameter.name, MISSING if parameter.default is inspect.Parameter.empty else parameter.default
        )
        if dataclasses.is_dataclass(default) and isinstance(default, type):
            specs.append((parameter.name, typ, field(default_factory=default)))
        else:
            specs.append((parameter.name, typ, field(default=default)))
    return make_dataclass(f"{cls.__name__}Config", specs)


DATA_COMMON = {"data_seed": "${data_seed}", "train_envs": MISSING, "test_envs": MISSING}
ENV_LISTS = {"train_envs": List[EnvConfig], "test_envs": List[EnvConfig]}
ALGORITHM_COMMON = dict(
    runtime=ALGORITHM_RUNTIME_ARGUMENTS,
    config_defaults={"optimizer": MISSING, "penalty": PenaltyConfig},
    config_types={"penalty": PenaltyConfig},
    extra={"name": (str, MISSING)},  # the record's label (conf/algorithm/<name>.yaml), not a constructor argument
)

ColoredMNISTConfig = schema_of(
    ColoredMNISTDataModule,
    "metairm_pl.data.cmnist.ColoredMNISTDataModule",
    runtime=DATA_RUNTIME_ARGUMENTS,
    config_defaults={**DATA_COMMON, "data_dir": "${paths.data_dir}"},
    config_types=ENV_LISTS,
)
ColoredMNISTPatchConfig = schema_of(
    ColoredMNISTDataModule,  # the patch module takes the same arguments
    "metairm_pl.data.cmnist_patch.ColoredMNISTPatchDataModule",
    runtime=DATA_RUNTIME_ARGUMENTS,
    config_defaults={**DATA_COMMON, "data_dir": "${paths.data_dir}", "name": "cmnist_patch"},
    config_types={"train_envs": List[PatchEnvConfig], "test_envs": List[PatchEnvConfig]},
)
SyntheticConfig = schema_of(
    SyntheticDataModule,
    "metairm_pl.data.synthetic.SyntheticDataModule",
    config_defaults=DATA_COMMON,
    config_types=ENV_LISTS,
)
PunctuatedSST2Config = schema_of(
    PunctuatedSST2DataModule,
    "metairm_pl.data.psst2.PunctuatedSST2DataModule",
    config_defaults={**DATA_COMMON, "data_dir": MISSING, "glove_file": MISSING},  # conf/data/psst2.yaml names them
    config_types=ENV_LISTS,
)


def algorithm_classes() -> dict[str, type]:
    """Every :class:`MultiEnvAlgorithm` subclass in ``metairm_pl.algorithms``, by its ``name``."""
    found = {}
    for module_info in pkgutil.iter_modules(metairm_pl.algorithms.__path__):
        module = importlib.import_module(f"metairm_pl.algorithms.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, MultiEnvAlgorithm) and value.__module__ == module.__name__:
                if value is not MultiEnvAlgorithm:
                    found[value.name] = value
    return found


AlgorithmConfig = schema_of(MultiEnvAlgorithm, **ALGORITHM_COMMON)
# schema_<name> for every method (conf/algorithm/<name>.yaml starts from it): a new method's
# file in metairm_pl/algorithms/ gets its schema from its constructor, with no edit here.
ALGORITHM_SCHEMAS = {name: schema_of(cls, **ALGORITHM_COMMON) for name, cls in sorted(algorithm_classes().items())}
MetaIRMConfig = ALGORITHM_SCHEMAS["meta_irm"]

SCHEMAS = {
    ("data", "schema_cmnist"): ColoredMNISTConfig,
    ("data", "schema_cmnist_patch"): ColoredMNISTPatchConfig,
    ("data", "schema_synthetic"): SyntheticConfig,
    ("data", "schema_psst2"): PunctuatedSST2Config,
    ("algorithm", "schema_algorithm"): AlgorithmConfig,  # the base class's arguments
    **{("algorithm", f"schema_{name}"): schema for name, schema in ALGORITHM_SCHEMAS.items()},
}


def register_schemas() -> None:
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)


register_schemas()
