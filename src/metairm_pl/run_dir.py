"""The run directory: every file name and marker in it, its config fingerprint and its lock.

One owner for the layout (which keys make two launches one run: :mod:`metairm_pl.run_identity`); the training run (:mod:`metairm_pl.run`), the callbacks, the
reports and the analyses import these names.  No torch, no Lightning: reports stay quick.

::

    <run dir>/
      config.yaml            the resolved config (a relaunch must match it but for volatile keys)
      results.jsonl          one JSON record per evaluation (the source of truth)
      results.interrupted-<i>.jsonl   partial records set aside by ``resume=false``
      provenance.jsonl       one line per process that trained the run: hardware, threads, versions
      final.json             the last record's metrics, a summary and the provenance, written atomically
      done | failed          end marker, written last; ``failed`` holds the one-line reason
                             (then the traceback when the error was not the user's)
      checkpoints/last.ckpt  periodic checkpoint (resume); checkpoints/final.ckpt: final weights
      csv/metrics.csv        the per-step log of the CSV logger
      .lock                  held (flock) by the process running it

An archived copy (``python -m metairm_pl.reporting.archive``, committed under ``results/``)
keeps config.yaml, final.json, the end marker and gzip copies ``results.jsonl.gz`` and
``csv/metrics.csv.gz``; readers accept either form (:func:`results_path`, :func:`csv_log_path`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from metairm_pl.errors import ConfigError
from metairm_pl.files import append_jsonl, atomic_write_json, atomic_write_text, exclusive_lock, read_jsonl
from metairm_pl.run_identity import fingerprint, identity_view

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.jsonl"
FINAL_FILE = "final.json"
PROVENANCE_FILE = "provenance.jsonl"
DONE_MARKER = "done"
FAILED_MARKER = "failed"
LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
FINAL_CHECKPOINT = "final.ckpt"
CHECKPOINT_TEMP_SUFFIX = ".tmp"
CSV_LOG = "csv/metrics.csv"
ARCHIVED_SUFFIX = ".gz"

# --------------------------------------------------------------------------- paths


def results_path(run_dir: str | os.PathLike) -> Path:
    """``results.jsonl``, or its archived ``results.jsonl.gz`` when only that exists."""
    return _plain_or_archived(Path(run_dir) / RESULTS_FILE)


def csv_log_path(run_dir: str | os.PathLike) -> Path:
    """``csv/metrics.csv``, or its archived ``.gz`` copy when only that exists."""
    return _plain_or_archived(Path(run_dir) / CSV_LOG)


def _plain_or_archived(path: Path) -> Path:
    archived = path.with_name(path.name + ARCHIVED_SUFFIX)
    return archived if not path.exists() and archived.exists() else path


def last_checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Where a run directory keeps its periodic checkpoint (resume point)."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def final_checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Weights of the model the final evaluation used (written when training ends)."""
    return Path(run_dir) / CHECKPOINT_DIR / FINAL_CHECKPOINT


def checkpoint_temporary_path(run_dir: str | os.PathLike, pid: int) -> Path:
    """Where process ``pid`` writes a checkpoint before renaming it over ``last.ckpt``."""
    return Path(run_dir) / CHECKPOINT_DIR / f".{LAST_CHECKPOINT}.{pid}{CHECKPOINT_TEMP_SUFFIX}"


def remove_stale_temporaries(run_dir: str | os.PathLike) -> None:
    """Delete the temporary files a checkpoint save killed midway left behind."""
    for stale in (Path(run_dir) / CHECKPOINT_DIR).glob(f".{LAST_CHECKPOINT}.*{CHECKPOINT_TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def remove_checkpoints(run_dir: str | os.PathLike) -> None:
    """Delete the run's checkpoints (periodic and final) and any temporary file left behind."""
    last_checkpoint_path(run_dir).unlink(missing_ok=True)
    final_checkpoint_path(run_dir).unlink(missing_ok=True)
    remove_stale_temporaries(run_dir)


# --------------------------------------------------------------------------- state


def is_finished(run_dir: str | os.PathLike) -> bool:
    """A ``done`` marker and ``final.json``: launched again, the run is not repeated."""
    run_dir = Path(run_dir)
    return (run_dir / DONE_MARKER).exists() and (run_dir / FINAL_FILE).exists()


def finished_results(run_dir: str | os.PathLike, overwrite: bool) -> Optional[dict]:
    """The final results of a finished run, unless ``overwrite``."""
    if overwrite or not is_finished(run_dir):
        return None
    return json.loads((Path(run_dir) / FINAL_FILE).read_text())


def clear_end_markers(run_dir: str | os.PathLike) -> None:
    """Before a run (re)starts: no ``done``, ``failed`` or ``final.json`` from an earlier attempt."""
    for name in (DONE_MARKER, FAILED_MARKER, FINAL_FILE):
        (Path(run_dir) / name).unlink(missing_ok=True)


def set_aside_results(run_dir: str | os.PathLike) -> Optional[Path]:
    """Rename partial records to ``results.interrupted-<i>.jsonl`` (fresh start); return the new name."""
    run_dir = Path(run_dir)
    results = run_dir / RESULTS_FILE
    if not results.exists():
        return None
    index = 0
    while (run_dir / f"results.interrupted-{index}.jsonl").exists():
        index += 1
    target = run_dir / f"results.interrupted-{index}.jsonl"
    results.rename(target)
    return target


def append_provenance(run_dir: str | os.PathLike, segment: dict[str, Any]) -> None:
    """Record where the process that (re)starts training now runs (:mod:`metairm_pl.provenance`)."""
    append_jsonl(Path(run_dir) / PROVENANCE_FILE, segment)


def read_provenance(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every training process's provenance line, in order (none for a run from before them)."""
    path = Path(run_dir) / PROVENANCE_FILE
    return read_jsonl(path) if path.exists() else []


def remove_provenance(run_dir: str | os.PathLike) -> None:
    """A fresh start keeps no provenance of the attempt it replaces."""
    (Path(run_dir) / PROVENANCE_FILE).unlink(missing_ok=True)


def mark_done(run_dir: str | os.PathLike, final: dict[str, Any]) -> None:
    """Write ``final.json`` then the ``done`` marker, each atomically."""
    atomic_write_json(Path(run_dir) / FINAL_FILE, final)
    atomic_write_text(Path(run_dir) / DONE_MARKER, "")


def mark_failed(run_dir: str | os.PathLike, text: str) -> None:
    """Write the ``failed`` marker: its first line is the reason."""
    atomic_write_text(Path(run_dir) / FAILED_MARKER, text if text.endswith("\n") else text + "\n")


# --------------------------------------------------------------------------- identity


def check_same_run(run_dir: str | os.PathLike, config: Mapping[str, Any], overwrite: bool) -> None:
    """Refuse to reuse or resume a run directory whose ``config.yaml`` holds another run: a
    config that differs from ``config`` (resolved) in more than the volatile keys. A key the
    saved config lacks is a setting added to the code since the run was launched (e.g. a new
    constructor argument at its default): it does not make another run."""
    saved_path = Path(run_dir) / CONFIG_FILE
    if overwrite or not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    if fingerprint(saved) == fingerprint(config):
        return
    differing = [key for key in differing_keys(identity_view(saved), identity_view(config)) if has_key(saved, key)]
    if not differing:
        return
    shown = ", ".join(differing[:5]) + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
    raise ConfigError(
        f"{run_dir} holds a run with a different configuration ({shown} differ from its config.yaml): "
        "pass overwrite=true to replace it, or give this run its own directory (e.g. tag=NAME)."
    )


def has_key(config: Mapping[str, Any], dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings, sorted."""
    keys = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, Mapping) and isinstance(right, Mapping):
            keys += differing_keys(left, right, f"{prefix}{key}.")
        elif left != right or (key in a) != (key in b):
            keys.append(f"{prefix}{key}")
    return keys


def write_config(run_dir: str | os.PathLike, cfg: DictConfig) -> None:
    """``config.yaml`` (resolved), atomically."""
    atomic_write_text(Path(run_dir) / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))


def locked(run_dir: str | os.PathLike, on_wait: Optional[Callable[[], None]] = None):
    """Context manager holding the run directory's lock (``.lock``, flock) while inside."""
    return exclusive_lock(Path(run_dir) / LOCK_FILE, on_wait=on_wait)
