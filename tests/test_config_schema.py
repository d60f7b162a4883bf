"""The data and algorithm schemas are read from the constructors they configure."""

from __future__ import annotations

import inspect
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import fields
from typing import List, Optional, Sequence

import pytest
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from metairm_pl import config_schema
from metairm_pl.algorithms.base import MultiEnvAlgorithm
from metairm_pl.algorithms.meta_irm import MetaIRM
from metairm_pl.config_schema import ALGORITHM_COMMON, SCHEMAS, algorithm_classes, schema_of


def field_defaults(schema) -> dict:
    return {f.name: (f.default if f.default is not NO_DEFAULT else f.default_factory) for f in fields(schema)}


class Toy:
    def __init__(self, network, width: int, rate: float = 0.5, tags: Optional[Sequence[str]] = None, mode: str = "a"):
        pass


def test_schema_of_reads_names_types_and_defaults_from_the_signature():
    schema = schema_of(Toy, "toy.Toy", runtime=frozenset({"network"}), config_defaults={"mode": "b"})
    assert [f.name for f in fields(schema)] == ["_target_", "width", "rate", "tags", "mode"]
    assert {f.name: f.type for f in fields(schema)} == {
        "_target_": str, "width": int, "rate": float, "tags": Optional[List[str]], "mode": str,
    }  # fmt: skip
    assert field_defaults(schema) == {"_target_": "toy.Toy", "width": MISSING, "rate": 0.5, "tags": None, "mode": "b"}
    node = OmegaConf.structured(schema)
    with pytest.raises(ValidationError):
        node.rate = "fast"
    with pytest.raises(ConfigAttributeError):
        node.widht = 3


@pytest.mark.parametrize("cls", [MultiEnvAlgorithm, MetaIRM])
def test_algorithm_schemas_have_every_constructor_argument_with_its_default(cls):
    schema = schema_of(cls, **ALGORITHM_COMMON)
    names = {f.name for f in fields(schema)}
    parameters = dict(list(inspect.signature(cls.__init__).parameters.items())[1:])
    configurable = set(parameters) - ALGORITHM_COMMON["runtime"]
    assert names == configurable | {"_target_", "name"}
    defaults = field_defaults(schema)
    for name in configurable - {"optimizer", "penalty"}:
        assert defaults[name] == parameters[name].default, name


def test_every_method_in_the_algorithms_package_gets_a_registered_schema():
    classes = algorithm_classes()
    assert {"erm", "irm", "vrex", "mmrex", "meta_irm"} <= set(classes)
    assert {("algorithm", f"schema_{name}") for name in classes} <= set(SCHEMAS)
    inner_lr = next(f for f in fields(SCHEMAS[("algorithm", "schema_meta_irm")]) if f.name == "inner_lr")
    assert inner_lr.default == inspect.signature(MetaIRM.__init__).parameters["inner_lr"].default


def test_data_schemas_keep_the_config_level_defaults():
    cmnist = OmegaConf.structured(config_schema.ColoredMNISTConfig)
    assert OmegaConf.to_container(cmnist)["data_dir"] == "${paths.data_dir}"  # not resolved here
    assert OmegaConf.is_missing(cmnist, "train_envs")
    assert "mnist_loader" not in cmnist and cmnist.num_classes == 2
    psst2 = OmegaConf.structured(config_schema.PunctuatedSST2Config)
    assert OmegaConf.is_missing(psst2, "glove_file") and psst2.construction == "reference"
