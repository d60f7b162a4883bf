"""The registry of methods: every fact about a method comes from its own module.

A method is a :class:`~metairm_pl.algorithms.base.MultiEnvAlgorithm` subclass in a module of
``metairm_pl.algorithms``. Its facts are class attributes written beside its code:

* ``name``: its config name (``conf/algorithm/<name>.yaml``), the ``algorithm`` of its records;
* ``label``: how tables' readers and figures call it (default: ``name``);
* ``table_order``: where its rows go in tables and figures (ties: by name);
* ``pwcca_layer``: the representation Fig. 10 compares (``output`` or ``last_hidden``);
* ``presets``: other config names that run this class, each with its own ``label`` and
  ``table_order`` (e.g. ERM's ``grayscale`` oracle, Meta-IRM's ablations).

Reports and figures must not pay for torch and Lightning, so :func:`methods` reads these
attributes from the modules' source (literal values only) instead of importing them;
``tests/algorithms/test_registry.py`` checks that they equal the imported classes'. The
bf16 parity evidence of a method is not a fact of its code but of its runs: it is read from
the committed parity table (:func:`bf16_parity`), which ``bench/precision_parity.py``
regenerates from the records in ``results/``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import math
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

ALGORITHMS_DIR = Path(__file__).resolve().parent
BASE_MODULE, BASE_CLASS = "base", "MultiEnvAlgorithm"
FACTS = ("name", "label", "table_order", "pwcca_layer", "presets")
PARITY_TABLE = ALGORITHMS_DIR.parent / "evidence" / "precision_parity.md"
PARITY_SEEDS = 10  # paired seeds 0-9, as the paper's tables
PARITY_POINTS = 1.0  # |mean paired bf16 - fp32 difference of the most OOD test env| at most this


@dataclass(frozen=True)
class Method:
    """One config name of a method and its facts."""

    name: str
    label: str
    table_order: float
    pwcca_layer: str
    class_name: str  # the class that runs it, in ``metairm_pl.algorithms.<module>``
    module: str
    preset_of: Optional[str] = None  # the class's own name, for a preset

    @property
    def target(self) -> str:
        return f"metairm_pl.algorithms.{self.module}.{self.class_name}"


# --------------------------------------------------------------------------- reading the source


@dataclass
class _ClassSource:
    module: str
    bases: tuple[str, ...]
    facts: dict[str, Any]


def _literal_facts(node: ast.ClassDef, module: str) -> dict[str, Any]:
    facts = {}
    for statement in node.body:
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value = [statement.target], statement.value
        else:
            continue
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        names += [e.id for t in targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)]
        wanted = [n for n in names if n in FACTS]
        if not wanted:
            continue
        try:
            literal = ast.literal_eval(value)
        except ValueError as error:
            raise ValueError(f"algorithms/{module}.py, class {node.name}: {wanted} must be literal values") from error
        values = literal if len(names) > 1 and isinstance(literal, tuple) else (literal,)
        facts.update({n: v for n, v in zip(names, values) if n in FACTS})
    return facts


def _classes_in_source() -> dict[str, _ClassSource]:
    classes: dict[str, _ClassSource] = {}
    for info in pkgutil.iter_modules([str(ALGORITHMS_DIR)]):
        tree = ast.parse((ALGORITHMS_DIR / f"{info.name}.py").read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                bases = tuple(b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases)
                classes[node.name] = _ClassSource(info.name, bases, _literal_facts(node, info.name))
    return classes


def _inherited_facts(name: str, classes: Mapping[str, _ClassSource]) -> Optional[dict[str, Any]]:
    """Facts of class ``name`` with those of its bases (depth first); None if not a method."""
    source = classes.get(name)
    if source is None:
        return None
    if name == BASE_CLASS:
        return dict(source.facts)
    for base in source.bases:
        inherited = _inherited_facts(base, classes)
        if inherited is not None:
            return {**inherited, **source.facts}
    return None


@functools.cache
def methods() -> Mapping[str, Method]:
    """Every config name of every method, from the source of ``metairm_pl.algorithms``."""
    classes = _classes_in_source()
    found: dict[str, Method] = {}
    for class_name, source in classes.items():
        facts = _inherited_facts(class_name, classes)
        if class_name == BASE_CLASS or facts is None or "name" not in source.facts:
            continue
        own = Method(
            name=facts["name"],
            label=facts.get("label") or facts["name"],
            table_order=facts["table_order"],
            pwcca_layer=facts["pwcca_layer"],
            class_name=class_name,
            module=source.module,
        )
        entries = [own] + [
            Method(
                name=preset,
                label=preset_facts.get("label", preset),
                table_order=preset_facts.get("table_order", own.table_order),
                pwcca_layer=preset_facts.get("pwcca_layer", own.pwcca_layer),
                class_name=class_name,
                module=source.module,
                preset_of=own.name,
            )
            for preset, preset_facts in facts.get("presets", {}).items()
        ]
        for entry in entries:
            if entry.name in found:
                raise ValueError(
                    f"method name {entry.name!r} is claimed by {found[entry.name].target} and {entry.target}"
                )
            found[entry.name] = entry
    return dict(sorted(found.items()))


def method(name: str) -> Optional[Method]:
    """The method a config name stands for, if any."""
    return methods().get(name)


def label(name: str) -> str:
    """Display label of config name ``name`` (the name itself for an unknown one)."""
    found = method(name)
    return found.label if found else name


def table_sort_key(name: str) -> tuple[float, str]:
    """Rows of tables and figures: by ``table_order``, then name; unknown names last."""
    found = method(name)
    return (found.table_order if found else math.inf, name)


def algorithm_classes() -> dict[str, type]:
    """Every method class by its own ``name`` (imports the modules: torch and Lightning)."""
    found = {}
    for entry in methods().values():
        if entry.preset_of is None:
            module = importlib.import_module(f"metairm_pl.algorithms.{entry.module}")
            found[entry.name] = getattr(module, entry.class_name)
    return found


# --------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class Parity:
    """A method's committed bf16 parity row: paired bf16 - fp32 difference of p0.9 accuracy."""

    data: str
    n: int
    mean: str  # as printed in the table, e.g. "+0.25"
    standard_error: str

    @property
    def holds(self) -> bool:
        return self.n >= PARITY_SEEDS and abs(float(self.mean)) <= PARITY_POINTS

    def describe(self) -> str:
        return f"{self.mean} ± {self.standard_error} points, {self.n} paired seeds"


_PARITY_ROW = re.compile(
    r"^\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*([+-]?[\d.]+)\s*\|\s*([\d.]+)\s*\|\s*(\w+)\s*\|$"
)


@functools.cache
def parity_rows() -> dict[str, Parity]:
    """The first table of the parity file: method name -> its row (none if the file is absent)."""
    table = PARITY_TABLE
    if not table.is_file():
        return {}
    rows: dict[str, Parity] = {}
    for line in table.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if rows:
                break  # the first table ends at the first blank line after it
            continue
        match = _PARITY_ROW.match(line.strip())
        if match:
            data, name, n, mean, stderr, _ = match.groups()
            rows[name] = Parity(data, int(n), mean, stderr)
    return rows


def bf16_parity(name: str, data: str) -> Optional[Parity]:
    """``name``'s parity row if it holds for ``data``: the row's data set is ``data`` or a
    variant of it by name (``cmnist`` covers ``cmnist5``, ``cmnist_patch``: the same MLP on
    the same digit images), and its 10 paired seeds differ by at most 1 point on average."""
    row = parity_rows().get(name)
    if row is None or not row.holds or not str(data).startswith(row.data):
        return None
    return row
