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

import inspect
import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from metairm_pl import run_dir as layout
from metairm_pl.callbacks.checkpointing import PeriodicCheckpoint, checkpoint_step
from metairm_pl.callbacks.results import ResultsWriter
from metairm_pl.errors import ConfigError, UserError
from metairm_pl.io import read_jsonl
from metairm_pl.precision import check_precision

log = logging.getLogger(__name__)

CONFIG_ONLY_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def accepted_keys(target: type) -> list[str]:
    """Constructor parameter names of ``target``, following ``**kwargs`` up the class hierarchy."""
    names: list[str] = []
    for cls in target.__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = inspect.signature(cls.__init__).parameters.values()
        names += [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return []  # ends in **kwargs all the way up: anything goes


def check_known_keys(section: str, node: DictConfig, ignore: tuple[str, ...] = ()) -> None:
    """Raise a ConfigError listing keys of ``node`` that its ``_target_`` does not accept."""
    target = get_class(node["_target_"])
    allowed = accepted_keys(target) if inspect.isclass(target) else []
    if not allowed:
        return
    unknown = [key for key in node if key not in allowed and key not in CONFIG_ONLY_KEYS + ignore]
    if unknown:
        raise ConfigError(
            f"{section}: unknown key(s) {unknown} for {target.__name__}; allowed keys: {sorted(set(allowed) | set(ignore))}."
        )


def build_datamodule(cfg: DictConfig):
    check_known_keys("data", cfg.data)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    return datamodule


def build_algorithm(cfg: DictConfig, datamodule) -> pl.LightningModule:
    num_outputs = 1 if datamodule.num_classes == 2 else datamodule.num_classes
    data_kwargs = datamodule.model_kwargs() if hasattr(datamodule, "model_kwargs") else {}
    model_keys = accepted_keys(get_class(cfg.model["_target_"]))
    missing = [key for key in data_kwargs if model_keys and key not in model_keys]
    if missing:
        raise ConfigError(
            f"data={cfg.data.name} passes {missing} to the model, which model._target_="
            f"{cfg.model['_target_']} does not take: use a model that does (for psst2: model=bow_mlp)."
        )
    network = instantiate(cfg.model, input_shape=datamodule.input_shape, num_outputs=num_outputs, **data_kwargs)
    algorithm_cfg = OmegaConf.masked_copy(cfg.algorithm, [k for k in cfg.algorithm if k != "name"])
    check_known_keys("algorithm", algorithm_cfg, ignore=("network", "num_classes"))
    algorithm = instantiate(algorithm_cfg, network=network, num_classes=datamodule.num_classes)
    algorithm.check_environments(len(datamodule.train_env_names))
    return algorithm


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    if cfg.trainer.get("enable_progress_bar", True):
        from pytorch_lightning.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]


def run_info(cfg: DictConfig) -> dict[str, Any]:
    return {
        "algorithm": cfg.algorithm.name,
        "data": cfg.data.name,
        "seed": int(cfg.seed),
        "data_seed": int(cfg.data.get("data_seed", cfg.seed)),
        "tag": str(cfg.get("tag") or ""),
    }


def summarize(record: dict[str, Any], train_envs: list[str], test_envs: list[str]) -> dict[str, Any]:
    """Mean training-env accuracy and every test-env accuracy of the final record."""
    summary = {"train_acc": sum(record[f"train/{e}/acc"] for e in train_envs) / len(train_envs)}
    summary.update({f"test/{e}/acc": record[f"test/{e}/acc"] for e in test_envs})
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
    return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by ``cfg``; return the final results mapping.

    The run directory is locked for the whole job: a second process launched on it (two
    identical trials of a search, or a relaunched sweep while an orphaned job of the killed
    one still trains) waits for the first to finish and then finds its results, instead of
    writing the same files at the same time.
    """
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    def announce_wait() -> None:
        log.warning("%s is in use by another process: waiting for it to finish", run_dir)

    with layout.locked(run_dir, on_wait=announce_wait):
        return _train_in(run_dir, cfg)


def _train_in(run_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    overwrite = bool(cfg.get("overwrite", False))
    fingerprint = layout.config_fingerprint(cfg)
    layout.check_same_run(run_dir, fingerprint, overwrite)
    finished = layout.finished_results(run_dir, overwrite)
    if finished is not None:
        log.info("run already finished in %s (pass overwrite=true to redo it)", run_dir)
        return finished
    resume_point = prepare_run_dir(run_dir, resume=bool(cfg.get("resume", True)) and not overwrite)
    layout.write_identity(run_dir, cfg, fingerprint)

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("deterministic", True):
        torch.use_deterministic_algorithms(True, warn_only=True)
    trainer: Optional[pl.Trainer] = None
    status = "failed"
    try:
        check_precision(cfg.trainer.get("precision", "32-true"), cfg.trainer.get("accelerator", "cpu"))
        datamodule = build_datamodule(cfg)
        algorithm = build_algorithm(cfg, datamodule)
        writer = ResultsWriter(str(run_dir), run_info(cfg))
        # Last, so a checkpoint after an evaluation holds its record and the callbacks' states.
        every = cfg.get("checkpoint_every", 0)
        checkpointer = PeriodicCheckpoint(run_dir, 0 if every is None else every)
        loggers = build_loggers(cfg)
        callbacks = build_callbacks(cfg)
        check_callbacks_have_data(callbacks, datamodule)
        trainer = instantiate(
            cfg.trainer,
            callbacks=callbacks + [writer, checkpointer],
            logger=loggers or False,
            default_root_dir=str(run_dir),
        )
        if resume_point is not None:
            kept = writer.keep_until(resume_point.step)
            log.info(
                "resuming from step %d (%s); kept %d record(s) up to that step",
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
        }
        layout.mark_done(run_dir, final)
        status = "success"
        return final
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


def describe_failure(error: BaseException) -> str:
    """One line saying why a run failed: the user error's message (config, data, paths) when
    there is one, else the exception's type and message."""
    user_error = user_error_in(error)
    reason = str(user_error) if user_error is not None else f"{type(error).__name__}: {error}"
    return " ".join(reason.split())


def failure_text(error: BaseException) -> str:
    """The ``failed`` marker's text: the one-line reason, then the traceback unless the
    error was the user's (a traceback would only point into our code)."""
    text = describe_failure(error) + "\n"
    if user_error_in(error) is None:
        text += "".join(traceback.format_exception(error))
    return text


def stopped_early(trainer: pl.Trainer) -> bool:
    """Whether the std-threshold stop (the callback that owns that fact) ended the run."""
    from metairm_pl.callbacks.std_early_stopping import StdThresholdEarlyStopping

    return any(c.stopped for c in trainer.callbacks if isinstance(c, StdThresholdEarlyStopping))


def check_training_finished(trainer: pl.Trainer) -> None:
    """Raise unless ``fit`` ran to ``max_steps`` or stopped early by design (never mark an
    interrupted run ``done``)."""
    if trainer.interrupted or not (stopped_early(trainer) or trainer.global_step >= trainer.max_steps):
        raise RuntimeError(
            f"training ended at step {trainer.global_step} of {trainer.max_steps} without an early stop "
            "(interrupted?): the run is not marked done; relaunch the same command to resume it."
        )


def check_callbacks_have_data(callbacks: list, datamodule) -> None:
    """Std-threshold early stopping needs validation sets of >= 2 training envs: check before training."""
    from metairm_pl.callbacks.std_early_stopping import StdThresholdEarlyStopping

    n_val_envs = len(datamodule.splits.val) if datamodule.splits is not None else 0
    if any(isinstance(c, StdThresholdEarlyStopping) for c in callbacks) and n_val_envs < 2:
        raise ConfigError(
            f"std-threshold early stopping needs validation sets of >= 2 training envs, the data has "
            f"{n_val_envs}: set data.val_fraction > 0 (or callbacks=default to train without it)."
        )


def user_error_in(error: BaseException) -> Optional[Exception]:
    """The user error behind ``error`` (Hydra wraps constructor errors), if any: one of ours,
    or an OmegaConf config error such as a missing mandatory value."""
    from omegaconf.errors import OmegaConfBaseException

    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (UserError, OmegaConfBaseException)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def summary_lines(final: dict[str, Any]) -> list[str]:
    """Human-readable lines for the end of a run."""
    lines = [f"{final['algorithm']} on {final['data']} (seed {final['seed']}), step {final['step']}:"]
    lines += [f"  {key}: {value:.4f}" for key, value in final["summary"].items()]
    return lines
