"""OmegaConf resolvers used by the configs."""

import hashlib
import os

from omegaconf import OmegaConf

MAX_DIRNAME_CHARS = 200  # file systems allow 255 bytes per path component
LAUNCH_DIR_ENV = "METAIRM_LAUNCH_DIR"


def remember_launch_dir() -> str:
    """Record the directory the user launched from in the environment, unless a parent
    process already did, and return it.

    ``train.py`` calls this before Hydra starts: every process of a sweep (joblib workers,
    submitit jobs, SLURM jobs, which inherit the environment) then resolves relative paths
    against the same directory.  ``${hydra:runtime.cwd}`` cannot serve here: Hydra sets it
    only inside a job, after a sweeper has already needed ``hydra.sweep.dir``.
    """
    return os.environ.setdefault(LAUNCH_DIR_ENV, os.getcwd())


def launch_dir() -> str:
    """The directory the user launched from (see :func:`remember_launch_dir`); the current
    directory when nothing recorded one (in-process use: tests, notebooks)."""
    return os.environ.get(LAUNCH_DIR_ENV) or os.getcwd()


def run_dirname(overrides: str, default: str, precision: str = "32-true") -> str:
    """A run directory name from Hydra's ``override_dirname``: ``default`` when empty, the
    overrides themselves when short enough, else their first characters plus a hash of all
    of them (deterministic, so a relaunch finds the same directory).

    ``trainer.precision`` is excluded from ``override_dirname`` and named from the resolved
    ``precision`` instead (in its sorted place, unless ``32-true``): a run that gets
    bf16-mixed by default has the directory of the same run typed with
    ``trainer.precision=bf16-mixed`` (the name it always had), and a default that differs
    between machines never mixes two precisions in one directory."""
    if precision != "32-true":
        items = _override_items(overrides) + [f"trainer.precision={precision}"]
        overrides = ",".join(sorted(items))  # sorted, as Hydra sorts override_dirname's items
    if not overrides:
        return default
    if len(overrides.encode()) <= MAX_DIRNAME_CHARS:
        return overrides
    digest = hashlib.sha256(overrides.encode()).hexdigest()[:12]
    return f"{overrides.encode()[: MAX_DIRNAME_CHARS - 14].decode(errors='ignore')}..{digest}"


def _override_items(overrides: str) -> list[str]:
    """The ``key=value`` items of an ``override_dirname``: split at the commas outside
    brackets and quotes (a list or dict value holds commas of its own)."""
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(overrides):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(overrides[start:i])
            start = i + 1
    return [*items, overrides[start:]] if overrides else []


def register_resolvers() -> None:
    """Register the resolvers below (idempotent).

    * ``${or_default:VALUE,DEFAULT}``: VALUE unless it is empty, then DEFAULT.
    * ``${run_dirname:OVERRIDES,DEFAULT}``: :func:`run_dirname`.
    * ``${launch_dir:}``: :func:`launch_dir`, valid in every Hydra mode (run, multirun, any
      launcher or sweeper), unlike ``${hydra:runtime.cwd}``.
    * ``${default_precision:ALGORITHM,DATA,ACCELERATOR}``:
      :func:`metairm_pl.precision.default_precision`.
    """
    if not OmegaConf.has_resolver("or_default"):
        OmegaConf.register_new_resolver("or_default", lambda value, default: value if value else default)
    if not OmegaConf.has_resolver("run_dirname"):
        OmegaConf.register_new_resolver("run_dirname", run_dirname)
    if not OmegaConf.has_resolver("launch_dir"):
        OmegaConf.register_new_resolver("launch_dir", launch_dir)
    if not OmegaConf.has_resolver("default_precision"):
        OmegaConf.register_new_resolver("default_precision", _default_precision)


def _default_precision(algorithm: str, data: str, accelerator: str) -> str:
    from metairm_pl.precision import default_precision  # imports torch: only when resolved

    return default_precision(algorithm, data, accelerator)
