"""One registry of methods, filled from each method's own module; nothing else names a method."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from metairm_pl.algorithms import registry
from metairm_pl.algorithms.base import MultiEnvAlgorithm
from metairm_pl.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "metairm_pl"
CONF = ROOT / "conf"


def test_the_facts_read_from_source_are_the_classes_own():
    """The registry reads class attributes without importing (reports stay free of torch);
    they must equal what the imported classes say, inheritance included."""
    classes = registry.algorithm_classes()
    assert {"erm", "irm", "vrex", "mmrex", "meta_irm"} <= set(classes)
    for name, cls in classes.items():
        method = registry.method(name)
        assert issubclass(cls, MultiEnvAlgorithm) and method.target == f"{cls.__module__}.{cls.__qualname__}"
        assert (method.label, method.table_order, method.pwcca_layer) == (
            cls.label or cls.name,
            cls.table_order,
            cls.pwcca_layer,
        )
        for preset, facts in cls.presets.items():
            entry = registry.method(preset)
            assert entry.preset_of == name and entry.label == facts["label"]
            assert entry.table_order == facts.get("table_order", cls.table_order)


def test_every_algorithm_config_is_a_registered_method_of_its_target():
    """conf/algorithm/<name>.yaml runs the class the registry names for <name>, and every name
    the registry knows has its config (a preset without a YAML, or a YAML without facts, fails)."""
    register_resolvers()
    names = sorted(p.stem for p in (CONF / "algorithm").glob("*.yaml"))
    assert names == sorted(registry.methods())
    for name in names:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[f"algorithm={name}"])
        assert cfg.algorithm.name == name
        assert cfg.algorithm._target_ == registry.method(name).target


def test_table_order_and_labels():
    names = ["zeta", "grayscale", "meta_irm_no_std", "meta_irm", "mmrex", "vrex", "irm", "erm", "alpha"]
    assert sorted(names, key=registry.table_sort_key) == [
        "erm", "irm", "vrex", "mmrex", "meta_irm", "meta_irm_no_std", "grayscale", "alpha", "zeta",
    ]  # fmt: skip
    assert registry.label("irm") == "IRMv1" and registry.label("grayscale") == "ERM (grayscale)"
    assert registry.label("unknown_method") == "unknown_method"


def test_a_method_with_facts_in_a_new_file_is_found(tmp_path, monkeypatch):
    """A new module with a subclass (of a subclass) is discovered with its inherited facts."""
    package = tmp_path / "algorithms"
    package.mkdir()
    for source in ("base.py", "erm.py"):
        (package / source).write_text((SRC / "algorithms" / source).read_text())
    (package / "mine.py").write_text(
        "from metairm_pl.algorithms.erm import ERM\n\n\n"
        "class Mine(ERM):\n"
        '    name, label = "mine", "My method"\n'
        '    presets = {"mine_fast": {"label": "My method (fast)"}}\n'
    )
    monkeypatch.setattr(registry, "ALGORITHMS_DIR", package)
    registry.methods.cache_clear()
    try:
        mine, fast = registry.method("mine"), registry.method("mine_fast")
        assert (mine.label, mine.table_order, mine.module, mine.class_name) == ("My method", 10, "mine", "Mine")
        assert (fast.label, fast.table_order, fast.preset_of) == ("My method (fast)", 10, "mine")
    finally:
        registry.methods.cache_clear()


def test_no_module_outside_algorithms_names_a_method():
    """No string constant equal to a method's name anywhere in src/ but algorithms/ (labels,
    order, parity and special cases come from the registry)."""
    names = set(registry.methods())
    offenders = []
    for source in SRC.rglob("*.py"):
        if "algorithms" in source.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                offenders.append(f"{source.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert not offenders


def test_reports_read_the_registry_without_torch():
    code = (
        "import sys; from metairm_pl.algorithms import registry; registry.methods(); registry.bf16_parity('irm', 'cmnist');"
        "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("line", "holds"),
    [
        ("| cmnist | irm | 10 | +0.25 | 0.28 | yes |", True),
        ("| cmnist | irm | 9 | +0.25 | 0.28 | pending |", False),  # fewer than 10 pairs
        ("| cmnist | irm | 10 | -1.30 | 0.40 | no |", False),  # beyond 1 point
    ],
)
def test_parity_is_read_from_the_committed_table(tmp_path, monkeypatch, line, holds):
    table = tmp_path / "parity.md"
    header = "| data | algorithm | n | mean | se | parity |\n| --- | --- | ---: | ---: | ---: | --- |\n"
    table.write_text(header + line + "\n\n| later | table |\n")
    monkeypatch.setattr(registry, "PARITY_TABLE", table)
    registry.parity_rows.cache_clear()
    try:
        assert (registry.bf16_parity("irm", "cmnist5") is not None) == holds
        assert registry.bf16_parity("irm", "psst2") is None  # another data family
        assert registry.bf16_parity("vrex", "cmnist") is None  # no row
    finally:
        registry.parity_rows.cache_clear()
