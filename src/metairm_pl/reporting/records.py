"""Find run directories and load their records, identity and status.

A run directory (see :mod:`metairm_pl.run_dir`; an archived copy under ``results/`` too) holds ``results.jsonl`` (one record per
evaluation), ``config.yaml`` (the resolved config), and, once it ends, a ``done`` or a
``failed`` marker (the latter holds the error message).  Neither marker: the run is still
running or was killed.

This module only reads files; it imports neither torch nor Lightning, so reports are quick.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from metairm_pl.files import read_jsonl
from metairm_pl.provenance import hardware_of
from metairm_pl.run_dir import CONFIG_FILE, DONE_MARKER, FAILED_MARKER, FINAL_FILE, results_path
from metairm_pl.run_identity import settings_of

SPLITS = ("train", "val", "test")
UNKNOWN = "unknown"


class RunStatus(str, enum.Enum):
    DONE = "done"
    FAILED = "failed"
    UNFINISHED = "unfinished"


@dataclass(frozen=True)
class Run:
    """One run directory: its records (in file order), identity and status.

    ``algorithm``, ``data``, ``seed`` and ``tag`` come from the first record, or from
    ``config.yaml`` for a run that wrote no record.  ``error`` is the ``failed`` marker's
    message; ``read_error`` says why ``results.jsonl`` could not be read (records are then
    empty).
    """

    path: Path
    status: RunStatus
    records: tuple[dict, ...]
    algorithm: str
    data: str
    seed: Optional[int]
    tag: str
    config: Optional[Mapping[str, Any]] = field(default=None, repr=False, compare=False)
    error: str = ""
    read_error: str = ""
    hardware: Optional[frozenset[str]] = None  # where it trained (final.json's provenance); None: unrecorded

    @property
    def group_key(self) -> tuple[str, str, str]:
        return (self.data, self.algorithm, self.tag)

    @property
    def settings(self) -> str:
        """The run's command-line overrides as its directory names them (the folder above
        ``seed=N``, e.g. ``trainer.max_steps=5001``); empty for ``default`` or another layout."""
        return settings_of(self.path)

    def config_value(self, dotted_key: str) -> Any:
        """The value at ``dotted_key`` (e.g. ``"data.label_noise_gap"``) of config.yaml, or None."""
        node: Any = self.config
        for part in dotted_key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node


def metric_envs(record: Mapping[str, Any], split: str, metric: str = "acc") -> list[str]:
    """Env names with a ``<split>/<env>/<metric>`` key in ``record``, in natural order."""
    prefix, suffix = f"{split}/", f"/{metric}"
    names = [k[len(prefix) : -len(suffix)] for k in record if k.startswith(prefix) and k.endswith(suffix)]
    return sorted((n for n in names if n and "/" not in n), key=natural_key)


def finite_value(record: Mapping[str, Any], key: str) -> Optional[float]:
    """``record[key]`` as a float, or None when missing, not a number, NaN or infinite."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


_NUMBER = re.compile(r"(\d+(?:\.\d+)?)")


def natural_key(name: str) -> tuple:
    """Sort key comparing the numbers inside a name as numbers: ``e2 < e10``, ``p0.05 < p0.1``."""
    parts = _NUMBER.split(name)
    return tuple(float(part) if index % 2 else part for index, part in enumerate(parts))


def is_run_dir(path: Path) -> bool:
    """A dir with ``results.jsonl``, or a failed run that ended before its first evaluation."""
    return results_path(path).is_file() or ((path / FAILED_MARKER).is_file() and (path / CONFIG_FILE).is_file())


def find_run_dirs(roots: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run dir at any depth under ``roots`` (a root may itself be one), sorted, no
    duplicates.  Hidden dirs (``.hydra``, ``.git``) are not searched; missing roots give none."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for current, dirnames, _ in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            path = Path(current)
            if is_run_dir(path):
                found.add(path.resolve())
    return sorted(found, key=lambda p: natural_key(str(p)))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _read_config(path: Path) -> Optional[dict]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def _read_json(path: Path) -> Optional[dict]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def run_status(path: Path) -> RunStatus:
    """``failed`` wins over ``done`` (a result is never reported from a run marked failed)."""
    if (path / FAILED_MARKER).exists():
        return RunStatus.FAILED
    if (path / DONE_MARKER).exists():
        return RunStatus.DONE
    return RunStatus.UNFINISHED


def load_run(path: str | os.PathLike) -> Run:
    """Load one run dir.  A truncated last line of ``results.jsonl`` (killed writer) is
    skipped; an unreadable file leaves the records empty and says why in ``read_error``."""
    path = Path(path)
    records: Sequence[dict] = ()
    read_error = ""
    results = results_path(path)
    if results.is_file():
        try:
            records = [r for r in read_jsonl(results) if isinstance(r, dict)]
        except (OSError, ValueError, EOFError) as error:  # JSON, Unicode and gzip errors are ValueErrors/EOFError
            read_error = f"{results}: {type(error).__name__}: {error}"
    config = _read_config(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else None
    status = run_status(path)
    first = records[0] if records else {}

    def identity(key: str, config_key: str) -> Any:
        if key in first and first[key] is not None:
            return first[key]
        node: Any = config
        for part in config_key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        return node

    seed = identity("seed", "seed")
    return Run(
        path=path,
        status=status,
        records=tuple(records),
        algorithm=str(identity("algorithm", "algorithm.name") or UNKNOWN),
        data=str(identity("data", "data.name") or UNKNOWN),
        seed=int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None,
        tag=str(identity("tag", "tag") or ""),
        config=config,
        error=_read_text(path / FAILED_MARKER) if status is RunStatus.FAILED else "",
        read_error=read_error,
        hardware=hardware_of(_read_json(path / FINAL_FILE)) if status is RunStatus.DONE else None,
    )


def load_runs(roots: Iterable[str | os.PathLike]) -> list[Run]:
    """Every run under ``roots`` (see :func:`find_run_dirs`), loaded."""
    return [load_run(path) for path in find_run_dirs(roots)]
