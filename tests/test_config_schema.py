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
from metairm_pl.algorithms.registry import algorithm_classes
from metairm_pl.config_schema import ALGORITHM_COMMON, SCHEMAS, schema_of


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
    cmnist = OmegaConf.structured(config_schema.DATA_SCHEMAS["cmnist"])
    assert OmegaConf.to_container(cmnist)["data_dir"] == "${paths.data_dir}"  # not resolved here
    assert OmegaConf.is_missing(cmnist, "train_envs")
    assert "mnist_loader" not in cmnist and cmnist.num_classes == 2
    psst2 = OmegaConf.structured(config_schema.DATA_SCHEMAS["psst2"])
    assert OmegaConf.is_missing(psst2, "glove_file") and psst2.construction == "reference"


class WithEta(MultiEnvAlgorithm):
    """A method with one argument of its own: the rest reach the base class through **kwargs."""

    def __init__(self, *args, eta: float = 0.01, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eta = eta


def test_a_subclass_states_only_its_own_arguments():
    """schema_of follows **kwargs up the hierarchy: the base's arguments first, then its own."""
    base = [f.name for f in fields(schema_of(MultiEnvAlgorithm, **ALGORITHM_COMMON))]
    schema = schema_of(WithEta, **ALGORITHM_COMMON)
    assert [f.name for f in fields(schema)] == base + ["eta"]
    assert field_defaults(schema)["eta"] == 0.01 and field_defaults(schema)["l2_weight"] == 0.0


def test_every_data_module_that_names_a_schema_gets_it():
    from metairm_pl.data.cmnist_patch import ColoredMNISTPatchDataModule, PatchEnvConfig
    from metairm_pl.data.synthetic import SyntheticDataModule

    classes = config_schema.datamodule_classes()
    assert {"cmnist", "cmnist_patch", "psst2", "synthetic"} <= set(classes)
    assert {("data", f"schema_{name}") for name in classes} <= set(SCHEMAS)
    patch = config_schema.DATA_SCHEMAS["cmnist_patch"]
    assert classes["cmnist_patch"] is ColoredMNISTPatchDataModule
    assert field_defaults(patch)["name"] == "cmnist_patch" and "mnist_loader" not in field_defaults(patch)
    assert next(f for f in fields(patch) if f.name == "train_envs").type == List[PatchEnvConfig]

    class Tiny(SyntheticDataModule):  # a new data set adding one argument
        schema_name = "tiny"

        def __init__(self, *args, scale: float = 2.0, **kwargs) -> None:
            super().__init__(*args, **kwargs)

    names = [f.name for f in fields(config_schema.data_schema(Tiny))]
    assert names[-1] == "scale" and {"train_envs", "n_features", "data_seed"} <= set(names)
