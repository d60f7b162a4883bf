"""Representations of a trained run: rebuild it from its run directory, capture each layer's
activations (with θ or with an adapted parameter dict θ'), compare them with PWCCA.

Used by the appendix figures of the Meta-IRM paper (:mod:`metairm_pl.analysis.fig9`,
:mod:`metairm_pl.analysis.fig10`); usable from a notebook::

    run = rebuild_run("outputs/runs/cmnist/meta_irm/default/seed=0")
    x, _ = run.env_data("test", "p0.9")
    acts = capture_activations(run.network, x)          # {"hidden1": (390, 10000), ..., "output": (1, 10000)}
    representation_similarity(acts["hidden2"], other["hidden2"])

**Rebuilding.** Nothing is composed: ``config.yaml`` of the run dir (saved resolved by
:func:`metairm_pl.run.train`) is read with OmegaConf, the DataModule and the algorithm are
built with :func:`metairm_pl.build.build_datamodule` / :func:`metairm_pl.build.build_algorithm`
(so the data are exactly the run's: same ``data_seed``, same envs), and the network weights
are loaded from the run's checkpoint with ``torch.load(weights_only=True)``.

**Which weights.** A run writes ``checkpoints/last.ckpt`` every ``checkpoint_every`` steps,
*never at its final step* (nor at an early stop): the weights analysed are those of the
last periodic checkpoint, which may precede the run's final step by up to
``checkpoint_every`` steps (and a run with ``checkpoint_every=0`` has none).  The final step
(``final.json``, else the last record of ``results.jsonl`` for an unfinished run) is compared
with the checkpoint's step; when they differ a :class:`CheckpointStepWarning` says so and
both are kept on :class:`LoadedRun` (the figure CSVs carry both).  For a finished run a file
``checkpoints/final.ckpt``, if present, is preferred over ``last.ckpt`` (the run writes one
today; it is the name proposed for weights saved at the end of a run).

**Layers.** For a network whose hidden layers end in ``nn.ReLU`` modules (``MLP``, the
bag-of-words MLP), the layers are ``hidden1`` … ``hiddenL``, the outputs of the ReLUs in
module order, and ``output``, the network's output (the logits; the classifier layer's
output).  Aliases: ``last_hidden`` (the input of the classifier layer) and ``output``.
Activations are shaped ``(neurons, datapoints)``, float32 on the CPU, as
:mod:`metairm_pl.analysis.pwcca` expects.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.func import functional_call

from metairm_pl.analysis.pwcca import pwcca_similarity
from metairm_pl.errors import ConfigError
from metairm_pl.run_dir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    FINAL_FILE,
    LAST_CHECKPOINT,
    final_checkpoint_path,
    last_checkpoint_path,
    results_path,
)

NETWORK_PREFIX = "network."

OUTPUT_LAYER = "output"
LAST_HIDDEN = "last_hidden"
HIDDEN_PREFIX = "hidden"

DEFAULT_EPSILON = 1e-6  # relative singular-value cutoff for float32 activations (pwcca.cca)
DEFAULT_CHUNK_SIZE = 8192


class CheckpointStepWarning(UserWarning):
    """The checkpoint analysed was saved before the run's final step."""


# --------------------------------------------------------------------------- loading


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


# --------------------------------------------------------------------------- layers


def hidden_modules(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[("hidden1", relu1), ...]``: the network's ``nn.ReLU`` modules in module order."""
    relus = [module for module in network.modules() if isinstance(module, nn.ReLU)]
    return [(f"{HIDDEN_PREFIX}{index}", module) for index, module in enumerate(relus, start=1)]


def layer_names(network: nn.Module) -> list[str]:
    """``["hidden1", ..., "hiddenL", "output"]``."""
    return [name for name, _ in hidden_modules(network)] + [OUTPUT_LAYER]


def resolve_layer(network: nn.Module, layer: str) -> str:
    """The canonical name of ``layer`` (``last_hidden`` → ``hiddenL``); ConfigError if unknown."""
    names = layer_names(network)
    if layer == LAST_HIDDEN:
        if len(names) < 2:
            raise ConfigError("layer 'last_hidden' does not exist: the network has no hidden layer.")
        return names[-2]
    if layer not in names:
        raise ConfigError(f"layer {layer!r} does not exist: the network's layers are {names} (or '{LAST_HIDDEN}').")
    return layer


def capture_activations(
    network: nn.Module,
    x: Tensor,
    params: Optional[Mapping[str, Tensor]] = None,
    layers: Optional[Sequence[str]] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, Tensor]:
    """``{layer: activations (neurons, datapoints)}`` of ``network`` on the inputs ``x``.

    With ``params`` (a parameter dict θ', e.g. from ``inner_loop.adapt``) the network is
    run through ``torch.func.functional_call``; its own parameters are not modified.
    ``layers``: names or aliases (default: every layer, in order). Forward hooks on the
    ReLU modules record the hidden layers; ``output`` is the network's return value
    (flattened to ``(datapoints, outputs)`` before transposing). No gradient is kept.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size!r} is invalid: use a positive integer.")
    wanted = [resolve_layer(network, layer) for layer in (layers or layer_names(network))]
    chunks: dict[str, list[Tensor]] = {name: [] for name in wanted}
    handles = []

    def recorder(name: str):
        def hook(module, inputs, output):
            chunks[name].append(output.detach().flatten(start_dim=1).float().cpu())

        return hook

    for name, module in hidden_modules(network):
        if name in chunks:
            handles.append(module.register_forward_hook(recorder(name)))
    try:
        with torch.no_grad():
            for start in range(0, len(x), chunk_size):
                batch = x[start : start + chunk_size]
                output = network(batch) if params is None else functional_call(network, dict(params), (batch,))
                if OUTPUT_LAYER in chunks:
                    chunks[OUTPUT_LAYER].append(output.detach().flatten(start_dim=1).float().cpu())
                expected = start // chunk_size + 1
                reused = [name for name, recorded in chunks.items() if len(recorded) != expected]
                if reused:
                    raise ConfigError(
                        f"layer(s) {reused} ran more (or less) than once per forward pass: a ReLU module that is "
                        "applied several times cannot name one layer; give each hidden layer its own nn.ReLU."
                    )
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(recorded).T for name, recorded in chunks.items()}


# --------------------------------------------------------------------------- similarity


def representation_similarity(
    acts1: Tensor, acts2: Tensor, epsilon: float = DEFAULT_EPSILON, symmetric: bool = False
) -> float:
    """PWCCA similarity of two ``(neurons, datapoints)`` representations of the same inputs.

    Weighted by side 1 (the reference: θ in Fig. 9, the p_e = 0.1 env in Fig. 10) unless
    ``symmetric``. ``epsilon`` defaults to 1e-6, the cutoff for float32 activations
    (:func:`metairm_pl.analysis.pwcca.cca`), so dead ReLUs and float32 round-off directions
    are dropped. One neuron on each side (a binary task's logit): PWCCA is then the absolute
    Pearson correlation. Raises ConfigError where PWCCA is undefined (a constant layer) or
    degenerate (neurons of both sides ≥ datapoints).
    """
    return pwcca_similarity(acts1, acts2, epsilon=epsilon, symmetric=symmetric)


def safe_similarity(
    acts1: Tensor, acts2: Tensor, epsilon: float = DEFAULT_EPSILON, symmetric: bool = False
) -> tuple[float, str]:
    """``(similarity, "")``, or ``(nan, reason)`` where :func:`representation_similarity` raises."""
    try:
        return representation_similarity(acts1, acts2, epsilon, symmetric), ""
    except ConfigError as error:
        return math.nan, str(error)


# --------------------------------------------------------------------------- figure commands (shared)

ALGORITHM_LABELS = {
    "erm": "ERM",
    "irm": "IRMv1",
    "vrex": "V-REx",
    "mmrex": "MM-REx",
    "grayscale": "ERM (grayscale)",
    "meta_irm": "Meta-IRM",
    "meta_irm_no_std": "Meta-IRM (no std loss)",
    "meta_irm_first_order": "Meta-IRM (first order)",
    "meta_irm_same_env": "Meta-IRM (same env)",
}


def run_label(run: LoadedRun) -> str:
    """Display name of the run's method (``IRMv1``, ``Meta-IRM``, else the config name), plus its tag."""
    label = ALGORITHM_LABELS.get(run.algorithm_name, run.algorithm_name)
    return f"{label} [{run.tag}]" if run.tag else label


def find_trained_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Each path that holds ``config.yaml`` is a run dir; any other folder is searched at any
    depth for run dirs with a checkpoint (``checkpoints/*.ckpt``), in sorted order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / CONFIG_FILE).is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(
                config.parent
                for config in path.rglob(CONFIG_FILE)
                if any((config.parent / CHECKPOINT_DIR).glob("*.ckpt"))
            )
        else:
            raise ConfigError(f"{path} does not exist.")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise ConfigError(
            f"no run directory with a checkpoint found under {', '.join(map(str, paths))} "
            f"(a run dir holds {CONFIG_FILE} and {CHECKPOINT_DIR}/{LAST_CHECKPOINT})."
        )
    return unique


def summarize_by(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """One row per distinct ``keys`` tuple (first-seen order) with the mean, sample std and n
    of its ``pwcca`` values over runs."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row["pwcca"])
    summary = []
    for values_of_keys, values in groups.items():
        mean, std, n = mean_std(values)
        summary.append({**dict(zip(keys, values_of_keys)), "mean": mean, "std": std, "n": n})
    return summary


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """``(mean, sample std, n)`` over the finite values; std is NaN below 2 values, mean NaN at 0."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return math.nan, math.nan, 0
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, math.nan, len(finite)
    variance = sum((value - mean) ** 2 for value in finite) / (len(finite) - 1)
    return mean, math.sqrt(variance), len(finite)


def write_csv(path: str | Path, fields: Sequence[str], rows: Sequence[Mapping]) -> Path:
    """Write ``rows`` (mappings with ``fields``) as CSV, atomically; floats with full precision."""
    import csv
    import io

    from metairm_pl.files import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(row.get(key)) for key in fields})
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def run_fields(run: LoadedRun) -> dict:
    """The columns that identify a run and the weights analysed, for the figure CSVs."""
    return {
        "run": str(run.run_dir),
        "algorithm": run.algorithm_name,
        "tag": run.tag,
        "seed": run.seed,
        "checkpoint_step": run.checkpoint_step,
        "final_step": run.final_step,
    }


RUN_FIELDS = ("run", "algorithm", "tag", "seed", "checkpoint_step", "final_step")


def load_runs_for_figure(
    run_dirs: Sequence[str | Path], data_dir: Optional[str] = None, overrides: Sequence[str] = (), stream=None
) -> list[LoadedRun]:
    """:func:`rebuild_run` for each dir; checkpoint-step warnings printed as ``warning: ...`` lines."""
    import sys

    stream = stream if stream is not None else sys.stderr
    runs = []
    for run_dir in run_dirs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CheckpointStepWarning)
            runs.append(rebuild_run(run_dir, data_dir=data_dir, overrides=overrides))
        for warning in caught:
            if issubclass(warning.category, CheckpointStepWarning):
                print(f"warning: {warning.message}", file=stream)
            else:
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return runs


def check_epsilon_argument(value: str) -> float:
    """argparse type of ``--epsilon``: a float in [0, 1)."""
    import argparse

    try:
        epsilon = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= epsilon < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1)")
    return epsilon


def add_common_arguments(parser) -> None:
    """Run dirs, ``--out``, ``--epsilon``, ``--symmetric``, ``--data-dir``, ``--override`` of the figure commands."""
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders searched for run dirs with a checkpoint"
    )
    parser.add_argument("--out", required=True, help="output folder for the CSV files and the PNG")
    parser.add_argument(
        "--epsilon",
        type=check_epsilon_argument,
        default=DEFAULT_EPSILON,
        help=f"PWCCA relative singular-value cutoff (default {DEFAULT_EPSILON:g}, right for float32 activations)",
    )
    parser.add_argument(
        "--symmetric", action="store_true", help="average the PWCCA weights of both sides (default: the reference side)"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="replaces data.data_dir of every run's config (where MNIST lies on this machine)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change every run's config before rebuilding it (OmegaConf dotlist, repeatable), e.g. other test envs: "
        "'data.test_envs=[{name: p0.1, p_color: 0.1}, {name: p0.5, p_color: 0.5}]' (YAML values; Colored MNIST "
        "builds the test envs after the training envs, so the training data stay the run's)",
    )


__all__ = [
    "ALGORITHM_LABELS",
    "DEFAULT_EPSILON",
    "LAST_HIDDEN",
    "OUTPUT_LAYER",
    "CheckpointStepWarning",
    "LoadedRun",
    "capture_activations",
    "checkpoint_path",
    "final_step_of",
    "find_trained_run_dirs",
    "hidden_modules",
    "layer_names",
    "rebuild_run",
    "load_runs_for_figure",
    "mean_std",
    "read_run_config",
    "representation_similarity",
    "resolve_layer",
    "run_fields",
    "run_label",
    "safe_similarity",
    "write_csv",
]


def all_undefined(rows: Sequence[dict], what: str) -> bool:
    """Warn (stderr) about every row whose PWCCA is undefined; True, after an error line,
    when that is every row (nothing to plot)."""
    for row in rows:
        if row["note"]:
            print(
                f"warning: {row['run']} env {row['env']} layer {row['layer']}: pwcca=nan: {row['note']}",
                file=sys.stderr,
            )
    if all(math.isnan(row["pwcca"]) for row in rows):
        print(f"error: PWCCA is undefined for every {what} (see the warnings above).", file=sys.stderr)
        return True
    return False


def write_figure_outputs(
    out: str | Path,
    rows: Sequence[dict],
    summary: Sequence[dict],
    figure,
    files: tuple[str, str, str],
    fields: tuple[Sequence[str], Sequence[str]],
    print_keys: Sequence[str],
) -> int:
    """Write the rows CSV, the summary CSV and the PNG (``files`` names them); print the
    summary (``print_keys`` then mean ± std and n) and the written paths; return exit code 0."""
    from metairm_pl.reporting.plots import save_figure

    out = Path(out)
    csv_name, summary_name, png_name = files
    written = [
        write_csv(out / csv_name, fields[0], rows),
        write_csv(out / summary_name, fields[1], summary),
        save_figure(figure, out / png_name),
    ]
    for row in summary:
        std = "" if math.isnan(row["std"]) else f" ± {row['std']:.4f}"
        labels = "\t".join(str(row[key]) for key in print_keys)
        print(f"{labels}\t{row['mean']:.4f}{std}\t(n={row['n']})")
    print("wrote: " + ", ".join(map(str, written)), file=sys.stderr)
    return 0
