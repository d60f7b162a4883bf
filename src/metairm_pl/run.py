"""One training run from a composed config: build data, network, algorithm, trainer; fit;
evaluate; write ``config.yaml``, ``results.jsonl``, ``final.json`` and the ``done`` marker.

``train(cfg)`` is the callable API (tests and notebooks use it); ``train.py`` wraps it in a
Hydra app and turns :class:`~metairm_pl.errors.UserError` into one readable paragraph.
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from metairm_pl.callbacks.results import RESULTS_FILE, ResultsWriter
from metairm_pl.errors import ConfigError, UserError
from metairm_pl.io import atomic_write_json, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)

DONE_MARKER = "done"
FAILED_MARKER = "failed"
FINAL_FILE = "final.json"
CONFIG_FILE = "config.yaml"
CONFIG_ONLY_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def check_known_keys(section: str, node: DictConfig, ignore: tuple[str, ...] = ()) -> None:
    """Raise a ConfigError listing keys of ``node`` that its ``_target_`` does not accept."""
    target = get_class(node["_target_"])
    parameters = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    allowed = [name for name in parameters if name != "self"]
    unknown = [key for key in node if key not in allowed and key not in CONFIG_ONLY_KEYS + ignore]
    if unknown:
        raise ConfigError(
            f"{section}: unknown key(s) {unknown} for {target.__name__}; allowed keys: {sorted(allowed + list(ignore))}."
        )


def build_datamodule(cfg: DictConfig):
    check_known_keys("data", cfg.data)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    return datamodule


def build_algorithm(cfg: DictConfig, datamodule) -> pl.LightningModule:
    num_outputs = 1 if datamodule.num_classes == 2 else datamodule.num_classes
    data_kwargs = datamodule.model_kwargs() if hasattr(datamodule, "model_kwargs") else {}
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


def prepare_run_dir(run_dir: Path, overwrite: bool) -> Optional[dict]:
    """Return the final results of a finished run (unless ``overwrite``); set aside partial results."""
    if (run_dir / DONE_MARKER).exists() and (run_dir / FINAL_FILE).exists() and not overwrite:
        import json

        return json.loads((run_dir / FINAL_FILE).read_text())
    for name in (DONE_MARKER, FAILED_MARKER, FINAL_FILE):
        (run_dir / name).unlink(missing_ok=True)
    results = run_dir / RESULTS_FILE
    if results.exists():
        index = 0
        while (run_dir / f"results.interrupted-{index}.jsonl").exists():
            index += 1
        results.rename(run_dir / f"results.interrupted-{index}.jsonl")
    return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by ``cfg``; return the final results mapping."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    finished = prepare_run_dir(run_dir, overwrite=bool(cfg.get("overwrite", False)))
    if finished is not None:
        log.info("run already finished in %s (pass overwrite=true to redo it)", run_dir)
        return finished
    atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("deterministic", True):
        torch.use_deterministic_algorithms(True, warn_only=True)
    datamodule = build_datamodule(cfg)
    algorithm = build_algorithm(cfg, datamodule)
    writer = ResultsWriter(str(run_dir), run_info(cfg))
    loggers = build_loggers(cfg)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=build_callbacks(cfg) + [writer], logger=loggers or False, default_root_dir=str(run_dir)
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)
    status = "failed"
    try:
        trainer.fit(algorithm, datamodule=datamodule)
        if writer.last_step != trainer.global_step:
            trainer.validate(algorithm, datamodule=datamodule, verbose=False)
        records = read_jsonl(run_dir / RESULTS_FILE)
        final = {
            **run_info(cfg),
            "status": "done",
            "step": records[-1]["step"],
            "n_records": len(records),
            "summary": summarize(records[-1], datamodule.train_env_names, datamodule.test_env_names),
            "metrics": {k: v for k, v in records[-1].items() if "/" in k},
            "stopped_early": bool(getattr(algorithm, "extra_metrics", {}).get("early_stop/stopped", False)),
        }
        atomic_write_json(run_dir / FINAL_FILE, final)
        atomic_write_text(run_dir / DONE_MARKER, "")
        status = "success"
        return final
    except BaseException as error:
        atomic_write_text(run_dir / FAILED_MARKER, f"{type(error).__name__}: {error}\n")
        raise
    finally:
        for logger in trainer.loggers:
            logger.finalize(status)
        if "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=0 if status == "success" else 1)


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
