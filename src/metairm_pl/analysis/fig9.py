"""Fig. 9 of the Meta-IRM paper (appendix A.1): PWCCA similarity of each layer's
representation before and after the inner step.

    python -m metairm_pl.analysis.fig9 RUN_DIR... --out DIR [--eval-data val|train|test|SPLIT/ENV]
                                       [--inner-lr A] [--inner-steps K] [--epsilon E] [--symmetric]
                                       [--data-dir D]

For each Meta-IRM run and each training env e_i: θ'_i = θ adapted on e_i's *training* data
(all of it, one batch, as the full-batch inner step of training) with the run's
``inner_lr`` and ``inner_steps`` (:func:`metairm_pl.algorithms.inner_loop.adapt`; no
DropGrad; first order, which gives the same θ' — the order only matters for gradients
through θ'). Then, per layer (``hidden1`` … ``hiddenL``, ``output`` = the classifier's
output), PWCCA(activations with θ, activations with θ'_i), weighted by the θ side, on an
evaluation set that is not the adaptation data:

* ``--eval-data val`` (default): e_i's own *validation* data (held-out digits coloured
  with e_i's parameters, 2,500 per env on Colored MNIST);
* ``train``: e_i's training data (the adaptation batch itself);
* ``test`` (the data's only test env) or ``SPLIT/ENV`` (e.g. ``test/p0.9``): one fixed set
  for every e_i.

The paper measures Meta-IRM trained *without the std loss* (``algorithm=meta_irm_no_std``),
"just before the training is converged"; it finds layers 1 and 2 ≈ 1 and the classifier
lower. The weights are those of the run's last checkpoint (see
:mod:`metairm_pl.analysis.trained_run`).

Writes ``fig9.csv`` (one row per run, env, layer: ``pwcca``; NaN with a ``note`` where
PWCCA is undefined, e.g. a constant layer), ``fig9_summary.csv`` (mean, sample std, n
over runs per method, env, layer) and ``fig9.png`` (layers on x, one bar series per env,
error bars = std over runs). Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Optional, Sequence

from matplotlib.figure import Figure
from torch import Tensor

from metairm_pl.algorithms.inner_loop import adapt
from metairm_pl.analysis.activations import OUTPUT_LAYER, capture_activations, layer_names
from metairm_pl.analysis.figure_cli import (
    RUN_FIELDS,
    add_common_arguments,
    all_undefined,
    find_trained_run_dirs,
    load_runs_for_figure,
    run_fields,
    run_label,
    summarize_by,
    write_figure_outputs,
)
from metairm_pl.analysis.similarity import DEFAULT_EPSILON, DEFAULT_METHOD, safe_similarity
from metairm_pl.analysis.trained_run import LoadedRun
from metairm_pl.errors import EXIT_USAGE, ConfigError, exits_on_user_error

CSV_NAME = "fig9.csv"
SUMMARY_NAME = "fig9_summary.csv"
PNG_NAME = "fig9.png"
EVAL_SPLITS = ("train", "val", "test")
FIELDS = RUN_FIELDS + ("inner_lr", "inner_steps", "env", "eval_data", "datapoints", "layer", "pwcca", "note")
SUMMARY_FIELDS = ("method", "env", "layer", "mean", "std", "n")


def inner_hyperparameters(
    run: LoadedRun, inner_lr: Optional[float] = None, inner_steps: Optional[int] = None
) -> tuple[float, int]:
    """The run's ``inner_lr``/``inner_steps`` unless given; ConfigError for a run without them."""
    lr = inner_lr if inner_lr is not None else getattr(run.algorithm, "inner_lr", None)
    steps = inner_steps if inner_steps is not None else getattr(run.algorithm, "inner_steps", None)
    if lr is None or steps is None:
        raise ConfigError(
            f"{run.run_dir}: algorithm {run.algorithm_name} has no inner step (inner_lr/inner_steps): Fig. 9 "
            "is for Meta-IRM runs; pass --inner-lr and --inner-steps to adapt another method's network anyway."
        )
    return float(lr), int(steps)


def adapted_parameters(run: LoadedRun, env: str, inner_lr: float, inner_steps: int) -> dict[str, Tensor]:
    """θ'_i: the run's θ after ``inner_steps`` SGD steps of ``inner_lr`` on env ``env``'s
    whole training data (no DropGrad; detached)."""
    x, y = run.env_data("train", env)
    adapted = adapt(
        run.network,
        run.parameters(),
        x,
        y,
        run.algorithm.risk_fn,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=True,
        dropgrad_rate=0.0,
    )
    return {name: value.detach() for name, value in adapted.items()}


def evaluation_set(run: LoadedRun, eval_data: str, env: str) -> tuple[str, Tensor]:
    """``(label, x)`` of the evaluation inputs for inner env ``env`` (see module docstring)."""
    if "/" in eval_data:
        split, name = eval_data.split("/", 1)
    else:
        split, name = eval_data, env
        if split == "test":
            tests = run.datamodule.test_env_names
            if len(tests) != 1:
                raise ConfigError(f"--eval-data test is ambiguous: the data has test envs {tests}; use test/ENV.")
            name = tests[0]
    if split not in EVAL_SPLITS:
        raise ConfigError(f"--eval-data {eval_data!r}: use val, train, test or SPLIT/ENV with SPLIT in {EVAL_SPLITS}.")
    x, _ = run.env_data(split, name)
    return f"{split}/{name}", x


def fig9_rows(
    run: LoadedRun,
    eval_data: str = "val",
    epsilon: Optional[float] = DEFAULT_EPSILON,
    symmetric: bool = False,
    inner_lr: Optional[float] = None,
    inner_steps: Optional[int] = None,
    pwcca_method: str = DEFAULT_METHOD,
) -> list[dict]:
    """One row per training env and layer: PWCCA(θ, θ'_i) on the evaluation set."""
    lr, steps = inner_hyperparameters(run, inner_lr, inner_steps)
    rows = []
    for env in run.datamodule.train_env_names:
        label, x = evaluation_set(run, eval_data, env)
        before = capture_activations(run.network, x)
        after = capture_activations(run.network, x, params=adapted_parameters(run, env, lr, steps))
        for layer in layer_names(run.network):
            similarity, note = safe_similarity(before[layer], after[layer], epsilon, symmetric, pwcca_method)
            rows.append(
                {
                    **run_fields(run),
                    "inner_lr": lr,
                    "inner_steps": steps,
                    "env": env,
                    "eval_data": label,
                    "datapoints": len(x),
                    "layer": layer,
                    "pwcca": similarity,
                    "note": note,
                    "method": run_label(run),
                }
            )
    return rows


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Mean, sample std and n over runs per (method, env, layer), in first-seen order."""
    return summarize_by(rows, ("method", "env", "layer"))


def describe_eval_data(rows: Sequence[dict]) -> str:
    """Words for the evaluation sets of ``rows``, for the figure title."""
    labels = list(dict.fromkeys(row["eval_data"] for row in rows))
    own = {f"{split}/{row['env']}" for row in rows for split in ("train", "val")}
    if labels and all(label in own for label in labels) and len(labels) > 1:
        split = labels[0].split("/", 1)[0]
        return f"each env's {'validation' if split == 'val' else 'training'} data"
    return ", ".join(labels)


def layer_tick(layer: str) -> str:
    if layer == OUTPUT_LAYER:
        return "output\n(classifier)"
    return layer.replace("hidden", "hidden ")


def fig9_figure(summary: Sequence[dict], eval_description: str = "") -> Figure:
    """Grouped bars: layers on x, one series per (method and) training env; error bars =
    sample std over runs; bar values written above the bars; legend below the axes.
    ``eval_description`` (see :func:`describe_eval_data`) goes into the title."""
    layers = list(dict.fromkeys(row["layer"] for row in summary))
    methods = list(dict.fromkeys(row["method"] for row in summary))
    series = list(dict.fromkeys((row["method"], row["env"]) for row in summary))
    cells = {(row["method"], row["env"], row["layer"]): row for row in summary}
    figure = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(series))
    for index, (method, env) in enumerate(series):
        xs, means, stds = [], [], []
        for position, layer in enumerate(layers):
            cell = cells.get((method, env, layer))
            if cell is None or cell["n"] == 0:
                continue
            xs.append(position + (index - (len(series) - 1) / 2) * width)
            means.append(cell["mean"])
            stds.append(0.0 if math.isnan(cell["std"]) else cell["std"])
        n = max((cells[(method, env, layer)]["n"] for layer in layers if (method, env, layer) in cells), default=0)
        label = f"inner step on {env}" if len(methods) == 1 else f"{method}: inner step on {env}"
        bars = axes.bar(xs, means, width=width * 0.95, yerr=stds if n > 1 else None, capsize=3, label=label)
        axes.bar_label(bars, labels=[f"{m:.3f}" for m in means], fontsize=7, padding=2)
    axes.set_xticks(range(len(layers)), [layer_tick(layer) for layer in layers])
    axes.set_xlabel("layer")
    axes.set_ylabel("PWCCA similarity of θ and θ'$_i$")
    axes.set_ylim(0.0, 1.12)
    n_runs = max((row["n"] for row in summary), default=0)
    method_text = methods[0] if len(methods) == 1 else "several methods"
    details = [f"on {eval_description}"] if eval_description else []
    details.append(f"mean ± std over {n_runs} runs" if n_runs > 1 else "1 run")
    axes.set_title(
        f"{method_text}: representations before vs after the inner step\n({'; '.join(details)})", fontsize=10
    )
    axes.grid(True, axis="y", alpha=0.3)
    figure.legend(fontsize=8, loc="outside lower center", ncol=min(len(series), 3))
    return figure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metairm_pl.analysis.fig9",
        description="Fig. 9: PWCCA similarity per layer between θ and θ'_i (θ after the inner step on "
        "training env e_i), for Meta-IRM runs.",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--eval-data",
        default="val",
        help="inputs the representations are computed on: val (default: each env's own validation data), "
        "train (each env's training data), test (the only test env) or SPLIT/ENV for one fixed set, e.g. test/p0.9",
    )
    parser.add_argument("--inner-lr", type=float, default=None, help="inner learning rate (default: the run's)")
    parser.add_argument("--inner-steps", type=int, default=None, help="inner SGD steps (default: the run's)")
    return parser


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    runs = load_runs_for_figure(find_trained_run_dirs(args.runs), data_dir=args.data_dir, overrides=args.override)
    rows = []
    for run in runs:
        rows += fig9_rows(
            run, args.eval_data, args.epsilon, args.symmetric, args.inner_lr, args.inner_steps, args.pwcca
        )
    if all_undefined(rows, "layer"):
        return EXIT_USAGE

    summary = summarize(rows)
    return write_figure_outputs(
        args.out,
        rows,
        summary,
        fig9_figure(summary, describe_eval_data(rows)),
        (CSV_NAME, SUMMARY_NAME, PNG_NAME),
        (FIELDS, SUMMARY_FIELDS),
        ("method", "env", "layer"),
    )


if __name__ == "__main__":
    sys.exit(main())
