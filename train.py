"""Hydra entry point: ``python train.py algorithm=irm data=cmnist [key=value ...]``.

Composes ``conf/``, runs :func:`metairm_pl.run.train`, and reports bad input as one
paragraph (exit code 2) instead of a traceback.  In a multirun (``-m``) a failed job is one
line and the other jobs still run (:mod:`metairm_pl.sweep`).
"""

import gc
import logging
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

import metairm_pl.config_schema  # noqa: F401  (registers the structured-config schemas)
from metairm_pl.console import describe_tuned_settings, quiet_third_party, tuned_config_exists
from metairm_pl.errors import describe_failure, user_error_in
from metairm_pl.resolvers import register_resolvers, remember_launch_dir
from metairm_pl.run import train
from metairm_pl.search_objective import search_objective
from metairm_pl.sweep import fail_job, in_multirun, job_label

register_resolvers()
quiet_third_party()
remember_launch_dir()  # before Hydra: every job of a sweep resolves paths against it
# The imports above made several hundred thousand objects that live until exit; exclude them
# from the garbage collector's full passes, which otherwise traverse them again at every gen-2
# collection and at interpreter exit (1.5-2 s of a short run's CPU time: bench/README.md).
gc.freeze()


def quiet_under_sweeps(cfg: DictConfig) -> None:
    """No progress bar for the jobs of a multirun, unless the command line asks for one."""
    hydra_cfg = HydraConfig.get()
    overridden = any(o.startswith("trainer.enable_progress_bar=") for o in hydra_cfg.overrides.task)
    if hydra_cfg.mode == RunMode.MULTIRUN and not overridden:
        with open_dict(cfg):
            cfg.trainer.enable_progress_bar = False


def summary_lines(final: dict[str, Any]) -> list[str]:
    """Human-readable lines for the end of a run."""
    lines = [f"{final['algorithm']} on {final['data']} (seed {final['seed']}), step {final['step']}:"]
    lines += [f"  {key}: {value:.4f}" for key, value in final["summary"].items()]
    return lines


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Train one run; return its validation-only search objective (``objective``) to a sweeper."""
    quiet_under_sweeps(cfg)
    log = logging.getLogger("train")
    choices = dict(HydraConfig.get().runtime.choices)
    tuned = choices.get("tuned") if tuned_config_exists(choices.get("tuned")) else None
    if not in_multirun():
        log.info(describe_tuned_settings(choices, tuned is not None))
    try:
        final = train(cfg, announce=not in_multirun())
        objective = search_objective(final, cfg.objective)
    except Exception as error:  # noqa: BLE001 - user errors become one readable paragraph
        if in_multirun():
            fail_job(describe_failure(error))  # one line; the sweep goes on
            return None
        user_error = user_error_in(error)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
    if in_multirun():  # one line per finished job
        summary = " ".join(line.strip() for line in summary_lines(final))
        precision = cfg.trainer.precision
        log.info("job %s done: %s [tuned: %s] [precision: %s]", job_label(), summary, tuned or "none", precision)
    else:
        for line in summary_lines(final):
            log.info(line)
    return objective


if __name__ == "__main__":
    main()
