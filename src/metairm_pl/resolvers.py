"""OmegaConf resolvers used by the configs."""

import os

from omegaconf import OmegaConf

from metairm_pl.run_identity import resolve_path

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


def register_resolvers() -> None:
    """Register the resolvers below (idempotent).

    * ``${or_default:VALUE,DEFAULT}``: VALUE unless it is empty, then DEFAULT.
    * ``${run_identity:WHAT}``: the run, sweep and sweep-job directories,
      :func:`metairm_pl.run_identity.resolve_path`.
    * ``${launch_dir:}``: :func:`launch_dir`, valid in every Hydra mode (run, multirun, any
      launcher or sweeper), unlike ``${hydra:runtime.cwd}``.
    * ``${default_precision:ALGORITHM,DATA,ACCELERATOR}``:
      :func:`metairm_pl.precision.default_precision`.
    * ``${unit_tests_hparam:NAME,SEED[,N_ENVS]}``: the linear unit-tests reference's configuration
      of a model seed, :func:`metairm_pl.unit_tests_search.hyperparameter`.
    """
    if not OmegaConf.has_resolver("or_default"):
        OmegaConf.register_new_resolver("or_default", lambda value, default: value if value else default)
    if not OmegaConf.has_resolver("run_identity"):
        OmegaConf.register_new_resolver("run_identity", resolve_path)
    if not OmegaConf.has_resolver("launch_dir"):
        OmegaConf.register_new_resolver("launch_dir", launch_dir)
    if not OmegaConf.has_resolver("default_precision"):
        OmegaConf.register_new_resolver("default_precision", _default_precision)
    if not OmegaConf.has_resolver("unit_tests_hparam"):
        OmegaConf.register_new_resolver("unit_tests_hparam", _unit_tests_hparam)


def _unit_tests_hparam(name: str, seed: int, n_envs: int = 0) -> float:
    from metairm_pl.unit_tests_search import hyperparameter

    return hyperparameter(name, seed, n_envs)


def _default_precision(algorithm: str, data: str, accelerator: str) -> str:
    from metairm_pl.precision import default_precision  # imports torch: only when resolved

    return default_precision(algorithm, data, accelerator)
