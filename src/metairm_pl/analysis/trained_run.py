"""A trained run rebuilt from its run directory: config, data, network and checkpointed weights.

Nothing is composed: ``config.yaml`` of the run dir (saved resolved by
:func:`metairm_pl.run.train`) is read with OmegaConf, the DataModule and the algorithm are
built with :func:`metairm_pl.build.build_datamodule` / :func:`metairm_pl.build.build_algorithm`
(so the data are exactly the run's: same ``data_seed``, same envs), and the network weights
are loaded with ``torch.load(weights_only=True)``::

    run = rebuild_run("outputs/runs/cmnist/meta_irm/default/seed=0")
    x, _ = run.env_data("test", "p0.9")

**Which weights.** A finished run writes ``checkpoints/final.ckpt``, the weights of its
final evaluation (the last step, or the early stop), and that file is used when the run has
``final.json``.  Otherwise (an unfinished run, or one killed between its last evaluation and
writing ``final.ckpt``) the periodic ``checkpoints/last.ckpt`` is used, which may precede
the final step by up to ``checkpoint_every`` steps; a :class:`CheckpointStepWarning` then
says so, and both steps are kept on :class:`LoadedRun` (the figure CSVs carry both).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from metairm_pl.errors import ConfigError
from metairm_pl.run_dir import CONFIG_FILE, FINAL_FILE, final_checkpoint_path, last_checkpoint_path, results_path

NETWORK_PREFIX = "network."


class CheckpointStepWarning(UserWarning):
    """The checkpoint analysed was saved before the run's final step."""


@dataclass
class LoadedRun:
    """A trained run rebuilt from its directory (see module docstring).

    ``final_step`` is the step of the run's last evaluation (``final.json``; for an
    unfinished run the last record of ``results.jsonl``; None without records);
    ``finished`` says whether it came from ``final.json``.
    """

    run_dir: Path
    config: DictConfig
    datamodule: object
    algorithm: nn.Module
    checkpoint: Path
    checkpoint_step: int
    final_step: Optional[int]
    finished: bool

    @property
    def network(self) -> nn.Module:
        return self.algorithm.network

    @property
    def algorithm_name(self) -> str:
        return str(self.config.algorithm.name)

    @property
    def data_name(self) -> str:
        return str(self.config.data.name)

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    @property
    def tag(self) -> str:
        return str(self.config.get("tag") or "")

    @property
    def checkpoint_is_final(self) -> bool:
        """Whether the weights are those of the run's final step (unknown final step: False)."""
        return self.final_step is not None and self.final_step == self.checkpoint_step

    def parameters(self) -> dict[str, Tensor]:
        """θ as a parameter dict (the network's own parameters; for ``functional_call``)."""
        return dict(self.network.named_parameters())

    def env_data(self, split: str, env: str) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of env ``env`` in ``split`` ∈ {train, val, test} of the rebuilt data."""
        envs = getattr(self.datamodule.splits, split, None) if split in ("train", "val", "test") else None
        if envs is None:
            raise ConfigError(f"split {split!r} is not one of train, val, test.")
        if env not in envs:
            raise ConfigError(
                f"{self.run_dir}: the data ({self.data_name}) has no {split} env {env!r}; "
                f"its {split} envs are {list(envs) or 'none'}."
            )
        return envs[env]


def checkpoint_path(run_dir: str | Path) -> Path:
    """``checkpoints/final.ckpt`` of a finished run (one with ``final.json``), else
    ``checkpoints/last.ckpt`` (which may not exist). A ``final.ckpt`` next to no
    ``final.json`` is ignored: it could be left over from an earlier attempt of the run."""
    run_dir = Path(run_dir)
    final = final_checkpoint_path(run_dir)
    if final.is_file() and (run_dir / FINAL_FILE).is_file():
        return final
    return last_checkpoint_path(run_dir)


def final_step_of(run_dir: str | Path) -> tuple[Optional[int], bool]:
    """``(step, finished)``: ``final.json``'s step, else the last record's (unfinished), else None."""
    run_dir = Path(run_dir)
    final = run_dir / FINAL_FILE
    if final.is_file():
        return int(json.loads(final.read_text())["step"]), True
    results = results_path(run_dir)
    if results.is_file():
        from metairm_pl.files import read_jsonl

        records = read_jsonl(results)
        if records:
            return int(records[-1]["step"]), False
    return None, False


def read_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The run's resolved ``config.yaml``, with ``key=value`` dotlist ``overrides`` merged in."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}.")
    config = OmegaConf.load(path)
    if overrides:
        config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
    return config


def rebuild_run(
    run_dir: str | Path,
    checkpoint: Optional[str | Path] = None,
    data_dir: Optional[str] = None,
    overrides: Sequence[str] = (),
) -> LoadedRun:
    """Rebuild the run in ``run_dir`` (data, network, algorithm) with its checkpointed weights.

    Args:
        checkpoint: a checkpoint file; default :func:`checkpoint_path` (``final.ckpt`` of a
            finished run if present, else the last periodic ``last.ckpt``).
        data_dir: replaces ``data.data_dir`` of the config (where MNIST / SST-2 lie on this
            machine), if the data config has that key.
        overrides: further ``key=value`` changes to the config (OmegaConf dotlist).

    Warns with :class:`CheckpointStepWarning` when the checkpoint's step differs from the
    run's final step. The caller's random state is left untouched (building the network
    and Meta-IRM's generator draw from the global RNG; that happens in a forked RNG).
    """
    from metairm_pl.build import build_algorithm, build_datamodule
    from metairm_pl.errors import user_error_in

    run_dir = Path(run_dir)
    config = read_run_config(run_dir, overrides)
    if data_dir is not None and "data_dir" in config.data:
        config.data.data_dir = str(data_dir)
    path = Path(checkpoint) if checkpoint is not None else checkpoint_path(run_dir)
    if not path.is_file():
        every = config.get("checkpoint_every")
        raise ConfigError(
            f"{run_dir} has no checkpoint {path.relative_to(run_dir) if path.is_relative_to(run_dir) else path} "
            f"(checkpoint_every={every}): the network weights are needed. Train with checkpoint_every > 0 and "
            "max_steps past a multiple of it (no checkpoint is written at the final step)."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint_step = int(state["global_step"])
    network_state = {
        key[len(NETWORK_PREFIX) :]: value
        for key, value in state["state_dict"].items()
        if key.startswith(NETWORK_PREFIX)
    }

    try:
        with torch.random.fork_rng(devices=[]):
            datamodule = build_datamodule(config)
            algorithm = build_algorithm(config, datamodule)
    except Exception as error:
        cause = user_error_in(error)
        if cause is None:
            raise
        raise ConfigError(f"{run_dir}: cannot rebuild the run from {CONFIG_FILE}: {cause}") from error
    try:
        algorithm.network.load_state_dict(network_state, strict=True)
    except RuntimeError as error:
        raise ConfigError(
            f"{path}: the checkpoint's network weights do not fit the network built from "
            f"{run_dir / CONFIG_FILE} ({error})."
        ) from error
    algorithm.eval()

    final_step, finished = final_step_of(run_dir)
    run = LoadedRun(run_dir, config, datamodule, algorithm, path, checkpoint_step, final_step, finished)
    if not run.checkpoint_is_final:
        final = (
            "unknown (no records)"
            if final_step is None
            else f"{final_step}" + ("" if finished else " (unfinished run)")
        )
        warnings.warn(
            f"{run_dir}: analysing the checkpoint of step {checkpoint_step}, but the run's final step is "
            f"{final}: periodic checkpoints are not written at the final step.",
            CheckpointStepWarning,
            stacklevel=2,
        )
    return run
