"""One training run from a composed config: build data, network, algorithm, trainer; fit;
evaluate; write ``config.yaml``, ``results.jsonl``, ``final.json`` and the ``done`` marker.

A run saves ``checkpoints/last.ckpt`` every ``checkpoint_every`` steps.  Launched again on
a directory with a checkpoint and no ``done`` marker, it resumes from the checkpoint
(``resume=false``: starts afresh): ``results.jsonl`` is cut back to the checkpoint's step
and training continues, so every record and the final results are bit-identical to an
uninterrupted run, in full-batch and minibatch mode (see
:mod:`metairm_pl.callbacks.checkpointing`).

``train(cfg)`` is the callable API (tests and notebooks use it); ``train.py`` wraps it in a
Hydra app and turns :class:`~metairm_pl.errors.UserError` into one readable paragraph.
"""

from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from metairm_pl import run_dir as layout
from metairm_pl.build import (
    build_algorithm,
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_trainer,
    check_callbacks_have_data,
)
from metairm_pl.callbacks.checkpointing import PeriodicCheckpoint, checkpoint_step
from metairm_pl.callbacks.results import ResultsWriter
from metairm_pl.callbacks.run_callback import RunCallback
from metairm_pl.config_checks import check_config
from metairm_pl.console import quiet_third_party
from metairm_pl.errors import UserError, describe_failure, user_error_in
from metairm_pl.files import read_jsonl
from metairm_pl.precision import describe_precision
from metairm_pl.provenance import provenance
from metairm_pl.search_objective import check_objective_data
from metairm_pl.slurm import apply_allocation, trainer_plugins

log = logging.getLogger(__name__)


def run_info(cfg: DictConfig) -> dict[str, Any]:
    return {
        "algorithm": cfg.algorithm.name,
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "data_seed": int(cfg.data.get("data_seed", cfg.seed)),
        "tag": str(cfg.get("tag") or ""),
    }


def summarize(record: dict[str, Any], train_envs: list[str], test_envs: list[str]) -> dict[str, Any]:
    """Mean training-env accuracy and every test-env accuracy of the final record (for a
    regression task, which has no accuracy, its error: the mean squared error)."""
    metric = "acc" if all(f"train/{e}/acc" in record for e in train_envs) else "error"
    summary = {f"train_{metric}": sum(record[f"train/{e}/{metric}"] for e in train_envs) / len(train_envs)}
    summary.update({f"test/{e}/{metric}": record[f"test/{e}/{metric}"] for e in test_envs})
    return summary


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint an unfinished run continues from, and the step it was saved at."""

    checkpoint: Path
    step: int


def find_resume_point(run_dir: Path) -> Optional[ResumePoint]:
    """The run directory's checkpoint, if there is a readable one."""
    path = layout.last_checkpoint_path(run_dir)
    if not path.exists():
        return None
    try:
        return ResumePoint(path, checkpoint_step(path))
    except Exception as error:  # noqa: BLE001 - an unreadable checkpoint means a fresh start
        log.warning("cannot read checkpoint %s (%s: %s); starting afresh", path, type(error).__name__, error)
        return None


def prepare_run_dir(run_dir: Path, resume: bool) -> Optional[ResumePoint]:
    """Make an unfinished run directory ready: clear the end markers, then either return
    the checkpoint to resume from (``resume`` and one exists; results are kept) or set
    partial results aside as ``results.interrupted-<i>.jsonl`` and delete the checkpoint."""
    layout.clear_end_markers(run_dir)
    layout.remove_stale_temporaries(run_dir)
    resume_point = find_resume_point(run_dir) if resume else None
    if resume_point is not None:
        return resume_point
    layout.remove_checkpoints(run_dir)
    layout.set_aside_results(run_dir)
    layout.remove_provenance(run_dir)
    return None


def train(cfg: DictConfig, announce: bool = False) -> dict[str, Any]:
    """Run one training job described by ``cfg``; return the final results mapping.

    Every config value is checked before anything is built (:func:`check_config`), and the
    objects' own checks run before training. ``announce``: log which precision the run uses
    and why (a single run's console; a sweep's job line says it instead).

    The run directory is locked for the whole job: a second process launched on it (two
    identical trials of a search, or a relaunched sweep while an orphaned job of the killed
    one still trains) waits for the first to finish and then finds its results, instead of
    writing the same files at the same time.
    """
    quiet_third_party()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    def announce_wait() -> None:
        log.warning("%s is in use by another process: waiting for it to finish", run_dir)

    with layout.locked(run_dir, on_wait=announce_wait):
        return _train_in(run_dir, cfg, announce)


def _train_in(run_dir: Path, cfg: DictConfig, announce: bool) -> dict[str, Any]:
    overwrite = bool(cfg.get("overwrite", False))
    layout.check_same_run(run_dir, OmegaConf.to_container(cfg, resolve=True), overwrite)
    finished = layout.finished_results(run_dir, overwrite)
    if finished is not None:
        log.info("run already finished in %s (pass overwrite=true to redo it)", run_dir)
        return finished
    resume_point = prepare_run_dir(run_dir, resume=bool(cfg.get("resume", True)) and not overwrite)
    layout.write_config(run_dir, cfg)

    trainer: Optional[pl.Trainer] = None
    status = "failed"
    try:
        check_config(cfg)
        precision, accelerator = str(cfg.trainer.precision), str(cfg.trainer.get("accelerator", "cpu"))
        if announce:
            log.info(describe_precision(precision, cfg.algorithm.name, cfg.data.name, accelerator))
        apply_allocation()  # inside a SLURM job: as many threads as the allocation's CPUs
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        if cfg.get("deterministic", True):
            torch.use_deterministic_algorithms(True, warn_only=True)
        datamodule = build_datamodule(cfg)
        check_objective_data(cfg.get("objective"), datamodule)
        algorithm = build_algorithm(cfg, datamodule)
        writer = ResultsWriter(str(run_dir), run_info(cfg))
        # Last, so a checkpoint after an evaluation holds its record and the callbacks' states.
        every = cfg.get("checkpoint_every", 0)
        checkpointer = PeriodicCheckpoint(run_dir, 0 if every is None else every)
        loggers = build_loggers(cfg)
        callbacks = build_callbacks(cfg)
        check_callbacks_have_data(callbacks, datamodule)
        trainer = build_trainer(
            cfg,
            callbacks=callbacks + [writer, checkpointer],
            logger=loggers or False,
            default_root_dir=str(run_dir),
            plugins=trainer_plugins(),
        )
        from_step = resume_point.step if resume_point is not None else 0
        layout.append_provenance(run_dir, provenance(precision, accelerator, from_step))
        if resume_point is not None:
            kept = writer.keep_until(resume_point.step)
            log.info(
                "resumed from step %d (checkpoint %s); kept %d record(s) up to that step",
                resume_point.step,
                resume_point.checkpoint,
                kept,
            )
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for logger in trainer.loggers:
            logger.log_hyperparams(resolved)
        trainer.fit(
            algorithm,
            datamodule=datamodule,
            ckpt_path=str(resume_point.checkpoint) if resume_point is not None else None,
        )
        check_training_finished(trainer)
        trainer.save_checkpoint(layout.final_checkpoint_path(run_dir), weights_only=True)
        if writer.last_step != trainer.global_step:
            trainer.validate(algorithm, datamodule=datamodule, verbose=False)
        records = read_jsonl(layout.results_path(run_dir))
        final = {
            **run_info(cfg),
            "status": "done",
            "step": records[-1]["step"],
            "n_records": len(records),
            "summary": summarize(records[-1], datamodule.train_env_names, datamodule.test_env_names),
            "metrics": {k: v for k, v in records[-1].items() if "/" in k},
            "stopped_early": stopped_early(trainer),
            "provenance": layout.read_provenance(run_dir),
        }
        layout.mark_done(run_dir, final)
        status = "success"
        return final
    except (KeyboardInterrupt, SystemExit):
        raise  # interrupted (a kill, a preemption's requeue): unfinished, not failed, and resumable
    except BaseException as error:
        layout.mark_failed(run_dir, failure_text(error))
        raise
    finally:
        for logger in trainer.loggers if trainer is not None else ():
            logger.finalize(status)
        if "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=0 if status == "success" else 1)


def failure_text(error: BaseException) -> str:
    """The ``failed`` marker's text: the one-line reason, then the traceback unless the
    error was the user's (a traceback would only point into our code)."""
    text = describe_failure(error) + "\n"
    user_error = user_error_in(error)
    cause = user_error.__cause__ if user_error is not None else None
    if user_error is None:
        text += "".join(traceback.format_exception(error))
    elif cause is not None and not isinstance(cause, UserError):  # a library's error while building
        text += "".join(traceback.format_exception(cause))
    return text


def stopped_early(trainer: pl.Trainer) -> bool:
    """Whether a callback ended training before ``max_steps`` by its rule (:class:`RunCallback`)."""
    return any(c.finished_by_design() for c in trainer.callbacks if isinstance(c, RunCallback))


def check_training_finished(trainer: pl.Trainer) -> None:
    """Raise unless ``fit`` ran to ``max_steps`` or stopped early by design (never mark an
    interrupted run ``done``)."""
    if trainer.interrupted or not (stopped_early(trainer) or trainer.global_step >= trainer.max_steps):
        raise RuntimeError(
            f"training ended at step {trainer.global_step} of {trainer.max_steps} without an early stop "
            "(interrupted?): the run is not marked done; relaunch the same command to resume it."
        )
