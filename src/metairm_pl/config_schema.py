"""Structured-config schemas for the ``data`` and ``algorithm`` groups, derived from the
constructors they configure.

Each schema's fields, types and defaults are read from the constructor's signature
(:func:`schema_of`, following ``**kwargs`` up the class hierarchy), so the constructor is
the one source of its arguments. Nothing here names a method or a data set:

* every method of :mod:`metairm_pl.algorithms.registry` gets ``schema_<name>``, and the base
  class's arguments are ``schema_algorithm``;
* every :class:`~metairm_pl.data.multienv.MultiEnvDataModule` subclass in ``metairm_pl.data``
  that sets ``schema_name`` gets ``schema_<schema_name>``, with what its class says the config
  differs in (``env_config``, ``config_defaults``, ``runtime_arguments``).

Registered in Hydra's ConfigStore on import; each YAML option of those groups starts from one
of these schemas, so a misspelt key or a value of the wrong type fails at composition time
with the key's name.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import inspect
import pkgutil
import typing
from dataclasses import field, fields, make_dataclass
from typing import Any, List, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

import metairm_pl.data
from metairm_pl.algorithms.base import MultiEnvAlgorithm
from metairm_pl.algorithms.registry import algorithm_classes
from metairm_pl.algorithms.schedule import PenaltySchedule
from metairm_pl.data.multienv import MultiEnvDataModule

# Constructor arguments that build.py fills in at run time (the network, and what the data
# tells the algorithm); they are not configured.
ALGORITHM_RUNTIME_ARGUMENTS = frozenset({"network", "num_classes", "num_outputs"})

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


def constructor_parameters(cls: type) -> list[tuple[inspect.Parameter, Any]]:
    """``cls``'s keyword parameters with their type hints, following ``**kwargs`` up the MRO.

    Each name appears once, with the most derived class's default and type, at the place the
    most basic class that declares it gives it (base arguments first, a subclass's own after)."""
    chain: list[type] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        chain.append(klass)
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(klass.__init__).parameters.values()):
            break
    declared: dict[str, tuple[inspect.Parameter, Any]] = {}
    order: list[str] = []
    for klass in reversed(chain):  # base first, so the order is the base's
        hints = typing.get_type_hints(klass.__init__)
        for parameter in list(inspect.signature(klass.__init__).parameters.values())[1:]:
            if parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                continue
            if parameter.name not in declared:
                order.append(parameter.name)
            declared[parameter.name] = (parameter, hints.get(parameter.name, Any))  # the subclass's wins
    return [declared[name] for name in order]


def schema_of(
    cls: type,
    target: str = MISSING,
    *,
    runtime: frozenset[str] = frozenset(),
    config_defaults: dict[str, Any] | None = None,
    config_types: dict[str, Any] | None = None,
    extra: dict[str, tuple[Any, Any]] | None = None,
) -> type:
    """A dataclass schema with one field per configurable argument of ``cls`` (its
    :func:`constructor_parameters`).

    ``runtime`` names the arguments filled in at run time (left out); ``config_defaults`` and
    ``config_types`` replace a field's default or type where the config differs from the
    constructor; ``extra`` adds fields the constructor does not take (name -> (type, default)).
    ``_target_`` comes first."""
    config_defaults, config_types, extra = config_defaults or {}, config_types or {}, extra or {}
    specs: list[tuple[str, Any, Any]] = [("_target_", str, field(default=target))]
    specs += [(name, typ, field(default=default)) for name, (typ, default) in extra.items()]
    for parameter, hint in constructor_parameters(cls):
        if parameter.name in runtime:
            continue
        typ = config_types.get(parameter.name, config_type(hint))
        default = config_defaults.get(
            parameter.name, MISSING if parameter.default is inspect.Parameter.empty else parameter.default
        )
        if dataclasses.is_dataclass(default) and isinstance(default, type):
            specs.append((parameter.name, typ, field(default_factory=default)))
        else:
            specs.append((parameter.name, typ, field(default=default)))
    return make_dataclass(f"{cls.__name__}Config", specs)


# --------------------------------------------------------------------------- algorithms

ALGORITHM_COMMON = dict(
    runtime=ALGORITHM_RUNTIME_ARGUMENTS,
    config_defaults={"optimizer": MISSING, "penalty": PenaltyConfig},
    config_types={"penalty": PenaltyConfig},
    extra={"name": (str, MISSING)},  # the record's label (conf/algorithm/<name>.yaml), not a constructor argument
)

AlgorithmConfig = schema_of(MultiEnvAlgorithm, **ALGORITHM_COMMON)
# schema_<name> for every method (conf/algorithm/<name>.yaml starts from it): a new method's
# file in metairm_pl/algorithms/ gets its schema from its constructor, with no edit here.
ALGORITHM_SCHEMAS = {
    name: schema_of(cls, f"{cls.__module__}.{cls.__qualname__}", **ALGORITHM_COMMON)
    for name, cls in sorted(algorithm_classes().items())
}


# --------------------------------------------------------------------------- data

# What every data schema says beyond its constructor: the data seed follows ``data_seed``
# (itself ``${seed}`` unless set), and the env lists must be given.
DATA_COMMON = {"data_seed": "${data_seed}", "train_envs": MISSING, "test_envs": MISSING}


def datamodule_classes() -> dict[str, type]:
    """Every DataModule class of ``metairm_pl.data`` that declares a ``schema_name``, by that name."""
    found: dict[str, type] = {}
    for module_info in pkgutil.iter_modules(metairm_pl.data.__path__):
        module = importlib.import_module(f"metairm_pl.data.{module_info.name}")
        for value in vars(module).values():
            declared = isinstance(value, type) and "schema_name" in vars(value) and value.schema_name
            if declared and issubclass(value, MultiEnvDataModule) and value.__module__ == module.__name__:
                if value.schema_name in found:
                    raise ValueError(f"data schema name {value.schema_name!r} is declared twice")
                found[value.schema_name] = value
    return dict(sorted(found.items()))


def data_schema(cls: type) -> type:
    """``cls``'s schema: its constructor, with the env lists typed by its ``env_config``."""
    env_list = List[cls.env_config]
    return schema_of(
        cls,
        f"{cls.__module__}.{cls.__qualname__}",
        runtime=frozenset(cls.runtime_arguments),
        config_defaults={**DATA_COMMON, **cls.config_defaults},
        config_types={"train_envs": env_list, "test_envs": env_list},
    )


DATA_SCHEMAS = {name: data_schema(cls) for name, cls in datamodule_classes().items()}

SCHEMAS = {
    ("algorithm", "schema_algorithm"): AlgorithmConfig,  # the base class's arguments
    **{("algorithm", f"schema_{name}"): schema for name, schema in ALGORITHM_SCHEMAS.items()},
    **{("data", f"schema_{name}"): schema for name, schema in DATA_SCHEMAS.items()},
}


def register_schemas() -> None:
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)


register_schemas()
