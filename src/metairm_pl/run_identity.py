"""Run identity: which config keys make two launches the same run.

One owner for the run directory's name, the relaunch check and the report's parse-back:

* :data:`VOLATILE_KEYS` may differ between two launches of one run (where and how it is
  shown, how often it is checkpointed): they are left out of the name and of the
  identity check, so relaunching with another ``checkpoint_every`` or logger resumes.
* :data:`NAMED_IN_PATH` have a path component of their own (``<data.name>/<algorithm.name>/
  .../seed=<seed>``; ``trainer.precision`` is named from its *resolved* value, see
  :func:`settings_name`): they are identity, but not repeated in the overrides' part.
* :data:`NAMED_BY_SWEEP` are config groups whose runs live under their sweep directory
  (``sweeps/<tag>/``): identity through the values they set, not through their name.
* Every other override the user types names the run (``model.hidden_dim=128,tag=x``).

Hydra reaches this module through one resolver, ``${run_identity:WHAT}``
(``conf/hydra/default.yaml``). No torch, no Lightning: reports import it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

VOLATILE_KEYS = (
    "overwrite",
    "resume",
    "checkpoint_every",
    "objective",
    "paths",
    "data.data_dir",  # where the (checksum-verified) files are read from
    "logger",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",  # how often the logger is shown a step (records are unaffected)
)
NAMED_IN_PATH = ("data", "algorithm", "seed", "trainer.precision")
NAMED_BY_SWEEP = ("experiment", "hparams_search")

DEFAULT_SETTINGS = "default"  # the settings part of a run launched without naming overrides
SEED_PREFIX = "seed="
FULL_PRECISION = "32-true"  # the precision a name does not mention
MAX_DIRNAME_CHARS = 200  # file systems allow 255 bytes per path component
RUNS_DIR, SWEEPS_DIR, DEFAULT_SWEEP = "runs", "sweeps", "sweep"


def _within(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def is_volatile(key: str) -> bool:
    """Whether ``key`` (dotted, or a config group) may differ between launches of one run."""
    return _within(key, VOLATILE_KEYS)


def names_run(key: str) -> bool:
    """Whether an override of ``key`` appears in the settings part of the run's name."""
    return not (is_volatile(key) or key in NAMED_IN_PATH or key in NAMED_BY_SWEEP)


# --------------------------------------------------------------------------- the name


def settings_name(overrides: Iterable[str], precision: str = FULL_PRECISION) -> str:
    """The settings part of a run directory's name from the typed overrides (``key=value``
    strings as Hydra records them): the naming ones, plus ``trainer.precision=<precision>``
    unless it is ``32-true``, sorted and joined by commas; ``default`` when there are none;
    shortened with a hash of the whole when too long (deterministic, so a relaunch finds it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    items = [o.input_line for o in parsed if names_run(o.key_or_group)]
    if precision != FULL_PRECISION:
        items.append(f"trainer.precision={precision}")
    return shortened(",".join(sorted(items))) or DEFAULT_SETTINGS


def shortened(name: str) -> str:
    """``name`` if it fits in :data:`MAX_DIRNAME_CHARS` bytes, else its start and a hash of all of it."""
    encoded = name.encode()
    if len(encoded) <= MAX_DIRNAME_CHARS:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:12]
    return f"{encoded[: MAX_DIRNAME_CHARS - 14].decode(errors='ignore')}..{digest}"


def run_subdir(root: Mapping[str, Any]) -> str:
    """``<data.name>/<algorithm.name>/<settings>/seed=<seed>`` of the composed config ``root``."""
    task = list(root["hydra"]["overrides"]["task"])  # resolved: ${...} in a typed value names its value
    settings = settings_name(task, str(root["trainer"]["precision"]))
    return f"{root['data']['name']}/{root['algorithm']['name']}/{settings}/{SEED_PREFIX}{root['seed']}"


def sweep_dir(root: Mapping[str, Any]) -> str:
    """``<output_root>/sweeps/<tag or 'sweep'>``."""
    return f"{root['paths']['output_root']}/{SWEEPS_DIR}/{root['tag'] or DEFAULT_SWEEP}"


def run_dir(root: Mapping[str, Any]) -> str:
    """A single run's directory: ``<output_root>/runs/<subdir>``; a run of an experiment
    (``experiment=NAME``) or of a search preset (``hparams_search=NAME``, whose settings the name
    leaves out) goes where the same job of its sweep goes."""
    choices = root["hydra"]["runtime"]["choices"]
    if choices.get("experiment") or choices.get("hparams_search"):
        return f"{root['hydra']['sweep']['dir']}/{root['hydra']['sweep']['subdir']}"
    return f"{root['paths']['output_root']}/{RUNS_DIR}/{run_subdir(root)}"


PATHS = {"run_dir": run_dir, "sweep_dir": sweep_dir, "sweep_subdir": run_subdir}


def resolve_path(what: str, *, _root_) -> str:
    """The ``${run_identity:WHAT}`` resolver: ``run_dir``, ``sweep_dir`` or ``sweep_subdir``."""
    if what not in PATHS:
        raise ValueError(f"run_identity: unknown path {what!r}; known: {sorted(PATHS)}")
    return PATHS[what](_root_)


def settings_of(run_directory: str | os.PathLike) -> str:
    """The settings part of a run directory's name (the folder above ``seed=N``); empty for
    ``default`` or a directory laid out otherwise."""
    path = Path(run_directory)
    if not path.name.startswith(SEED_PREFIX):
        return ""
    return "" if path.parent.name == DEFAULT_SETTINGS else path.parent.name


# --------------------------------------------------------------------------- the relaunch check


def identity_view(config: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved config as plain data without the volatile keys (and without ``hydra``)."""
    view = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
    view.pop("hydra", None)
    for dotted in VOLATILE_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = view
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return view


def fingerprint(config: Mapping[str, Any]) -> str:
    """Hash of :func:`identity_view`: equal for every launch of one run."""
    return hashlib.sha256(json.dumps(identity_view(config), sort_keys=True).encode()).hexdigest()
