"""Fig. 10 of the Meta-IRM paper (appendix A.2): invariance of the data representation
across test environments.

    python -m metairm_pl.analysis.fig10 RUN_DIR... --out DIR [--layer auto|last_hidden|output|hiddenN]
                                        [--reference p0.1] [--no-control] [--epsilon E] [--symmetric]
                                        [--data-dir D] [--override KEY=VALUE]...

For each run (IRMv1, Meta-IRM, or any other method), the representation with θ of every
test env named like ``p0.1`` … ``p0.9`` (``data=cmnist_pe_sweep``) is compared by PWCCA
with that of the reference env (``p0.1``), weighted by the reference side. The
representation (``--layer auto``, default) is, as the paper says:

* the layer a method names as its ``pwcca_layer`` (:mod:`metairm_pl.algorithms.registry`):
  for Meta-IRM and its ablations the input of the classifier layer (``last_hidden``, the
  last ReLU's output, e.g. 390 neurons);
* for every other method, IRMv1 in particular: the network output (``output``; one logit
  for a binary task, for which PWCCA is the absolute Pearson correlation of the logits).

**Matched datapoints.** PWCCA needs the same inputs in the same order on both sides. Every
Colored MNIST test env is built from the same digits in the same order
(``ColoredMNISTDataModule.build_environments``: ``images, digits = test_pool``, optionally
cut to the env's ``size``), only label noise and colours are drawn per env; so example k is
the same digit in every test env (the first ``min(size)`` examples are compared when sizes
differ). This is relied on, and for plain Colored MNIST also checked (the colour-summed
images of all envs are equal); other data (``synthetic``, PunctuatedSST-2), whose test envs
do not share examples, is refused.

**Redraw control (default on).** Label noise and colour are drawn independently per test
env, so two envs with the *same* p_e already disagree in the colour of ~40 % of the digits
(with the default label noise 0.25), and the curve's drop from the reference itself (1 by
construction) to its neighbour mixes "other p_e" with "another draw". The control env
``<reference>_redraw`` — the reference's spec drawn a second time, appended to the run's
test envs by a config override (after all other envs, so they are unchanged) — measures the
draw-to-draw part; it is plotted as a dashed line per method (``--no-control`` omits it).
On an IRMv1 run of ``data=cmnist`` (seed 2, step 500), for example, the output's PWCCA is
1 → 0.924 (p 0.2) → 0.897 (p 0.9), and 0.929 for the redraw at p 0.1.

Runs trained on ``data=cmnist`` (test env p0.9 only) can be analysed on p0.1 … p0.9 with
``--override 'data.test_envs=[{name: p0.1, p_color: 0.1}, ..., {name: p0.9, p_color: 0.9}]'``
(YAML; the test envs are built after the training envs, so training data stay the run's).

Writes ``fig10.csv`` (one row per run and test env: ``p_e``, ``pwcca``; NaN with a
``note`` where PWCCA is undefined), ``fig10_summary.csv`` (mean, sample std, n over the
runs of each method and layer) and ``fig10.png`` (x: p_e; one line per method, band =
± std over seeds when there are several runs). Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import torch
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from metairm_pl.algorithms import registry
from metairm_pl.analysis.activations import OUTPUT_LAYER, capture_activations, resolve_layer
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
from metairm_pl.analysis.trained_run import LoadedRun, read_run_config
from metairm_pl.errors import EXIT_USAGE, ConfigError, exits_on_user_error
from metairm_pl.reporting.plots import parse_p

AUTO_LAYER = "auto"
DEFAULT_REFERENCE = "p0.1"
CSV_NAME = "fig10.csv"
SUMMARY_NAME = "fig10_summary.csv"
PNG_NAME = "fig10.png"
FIELDS = RUN_FIELDS + ("layer", "reference", "env", "p_e", "control", "datapoints", "pwcca", "note")
SUMMARY_FIELDS = ("method", "layer", "reference", "env", "p_e", "control", "mean", "std", "n")
CONTROL_SUFFIX = "_redraw"


def default_layer(algorithm_name: str) -> str:
    """The paper's data representation: the method's ``pwcca_layer`` (Meta-IRM and its
    ablations: ``last_hidden``), ``output`` for a method the registry does not know."""
    method = registry.method(algorithm_name)
    return method.pwcca_layer if method is not None else OUTPUT_LAYER


def p_envs(run: LoadedRun) -> list[tuple[float, str]]:
    """``[(p_e, name)]`` of the test envs named like ``p0.3``, by increasing p_e."""
    return sorted((parse_p(name), name) for name in run.datamodule.test_env_names if parse_p(name) is not None)


def check_shared_datapoints(run: LoadedRun, envs: Sequence[str]) -> int:
    """Number of leading examples the test envs ``envs`` share (same digit, same order).

    Raises ConfigError for data whose test envs are not built from shared examples; for
    plain Colored MNIST also checks that the colour-summed images agree.
    """
    from metairm_pl.data.cmnist import ColoredMNISTDataModule

    datamodule = run.datamodule
    if not isinstance(datamodule, ColoredMNISTDataModule):
        raise ConfigError(
            f"{run.run_dir}: data {run.data_name} ({type(datamodule).__name__}) does not build its test envs from "
            "the same examples in the same order, which Fig. 10 compares; use Colored MNIST test envs "
            "(e.g. data=cmnist_pe_sweep)."
        )
    inputs = [run.env_data("test", env)[0] for env in envs]
    shared = min(len(x) for x in inputs)
    if type(datamodule) is ColoredMNISTDataModule:
        reference = inputs[0][:shared].sum(dim=1)
        for env, x in zip(envs[1:], inputs[1:]):
            if not torch.equal(x[:shared].sum(dim=1), reference):
                raise ConfigError(
                    f"{run.run_dir}: test envs {envs[0]} and {env} do not hold the same digits in the same order "
                    "(their colour-summed images differ); Fig. 10 needs matched datapoints."
                )
    return shared


def control_env_name(reference: str) -> str:
    return reference + CONTROL_SUFFIX


def control_override(
    run_dir: str | Path, reference: str = DEFAULT_REFERENCE, overrides: Sequence[str] = ()
) -> list[str]:
    """Config override appending the redraw control env to the run's test envs: a copy of the
    ``reference`` env's spec named ``<reference>_redraw`` (same digits and p_e, its own label
    noise and colours). Appended last, so every other env (training, validation, test) is
    drawn exactly as in the run. Empty when the reference env is not in the config."""
    config = read_run_config(run_dir, overrides)
    envs = OmegaConf.to_container(config.data.get("test_envs") or [], resolve=True)
    names = [env.get("name") for env in envs]
    spec = next((env for env in envs if env.get("name") == reference), None)
    if spec is None or control_env_name(reference) in names:
        return []
    return ["data.test_envs=" + json.dumps(envs + [{**spec, "name": control_env_name(reference)}])]


def fig10_rows(
    run: LoadedRun,
    layer: str = AUTO_LAYER,
    reference: str = DEFAULT_REFERENCE,
    epsilon: Optional[float] = DEFAULT_EPSILON,
    symmetric: bool = False,
    pwcca_method: str = DEFAULT_METHOD,
) -> list[dict]:
    """One row per p-named test env: PWCCA(representation on ``reference``, on the env);
    plus a ``control`` row for the redraw env ``<reference>_redraw`` if the data has it."""
    layer = resolve_layer(run.network, default_layer(run.algorithm_name) if layer == AUTO_LAYER else layer)
    envs = p_envs(run)
    names = [name for _, name in envs]
    if reference not in names:
        raise ConfigError(
            f"{run.run_dir}: the reference env {reference!r} is not among the test envs named like p0.1 "
            f"({names or 'none'}); use data=cmnist_pe_sweep or --reference."
        )
    control = control_env_name(reference)
    if control in run.datamodule.test_env_names:
        envs.append((parse_p(reference), control))
    ordered = [reference] + [name for _, name in envs if name != reference]
    shared = check_shared_datapoints(run, ordered)
    representations = {
        name: capture_activations(run.network, run.env_data("test", name)[0][:shared], layers=[layer])[layer]
        for name in ordered
    }
    rows = []
    for p, name in envs:
        similarity, note = safe_similarity(
            representations[reference], representations[name], epsilon, symmetric, pwcca_method
        )
        rows.append(
            {
                **run_fields(run),
                "layer": layer,
                "reference": reference,
                "env": name,
                "p_e": p,
                "control": int(name == control),
                "datapoints": shared,
                "pwcca": similarity,
                "note": note,
                "method": run_label(run),
            }
        )
    return rows


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Mean, sample std and n over runs per (method, layer, reference, env), by p_e."""
    summary = summarize_by(rows, ("method", "layer", "reference", "p_e", "env", "control"))
    return sorted(summary, key=lambda row: (row["control"], row["p_e"], row["env"]))


def layer_description(layer: str) -> str:
    return "network output" if layer == OUTPUT_LAYER else f"{layer}, classifier input"


def fig10_figure(summary: Sequence[dict]) -> Figure:
    """PWCCA vs p_e, one line (mean over runs) per method and layer; band = ± sample std;
    the redraw control of a series (if any) as a dashed horizontal line in its colour."""
    series: dict[tuple, list[dict]] = defaultdict(list)
    controls: dict[tuple, dict] = {}
    for row in summary:
        if row["n"] and row["control"]:
            controls[(row["method"], row["layer"])] = row
        elif row["n"]:
            series[(row["method"], row["layer"])].append(row)
    figure = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for (method, layer), points in series.items():
        points = sorted(points, key=lambda row: row["p_e"])
        xs = [row["p_e"] for row in points]
        means = [row["mean"] for row in points]
        n = max(row["n"] for row in points)
        (line,) = axes.plot(xs, means, marker="o", markersize=4, label=f"{method} ({layer_description(layer)}; n={n})")
        if n > 1:
            stds = [0.0 if math.isnan(row["std"]) else row["std"] for row in points]
            axes.fill_between(
                xs,
                [m - s for m, s in zip(means, stds)],
                [m + s for m, s in zip(means, stds)],
                color=line.get_color(),
                alpha=0.2,
            )
        control = controls.get((method, layer))
        if control is not None:
            axes.axhline(
                control["mean"],
                color=line.get_color(),
                linestyle="--",
                linewidth=1,
                label=f"{method}: $p_e$ = {control['p_e']:g} redrawn (control)",
            )
    ps = sorted({row["p_e"] for row in summary if not row["control"]})
    axes.set_xticks(ps, [f"{p:g}" for p in ps])
    references = sorted({row["reference"] for row in summary})
    reference_p = [parse_p(name) for name in references]
    reference_text = ", ".join(f"{p:g}" for p in reference_p if p is not None) or ", ".join(references)
    axes.set_xlabel("test environment $p_e$ (colour flip probability)")
    axes.set_ylabel(f"PWCCA similarity to $p_e$ = {reference_text}")
    n_runs = max((row["n"] for row in summary), default=0)
    axes.set_title(
        f"Data representation across test environments\n(reference $p_e$ = {reference_text}"
        + ("; mean ± std over seeds)" if n_runs > 1 else ")"),
        fontsize=10,
    )
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    return figure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metairm_pl.analysis.fig10",
        description="Fig. 10: PWCCA similarity between the data representation on the p_e = 0.1 test env "
        "and on the test envs p_e = 0.1 ... 0.9 (IRMv1 and Meta-IRM runs).",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--layer",
        default=AUTO_LAYER,
        help="representation: auto (default: last_hidden for Meta-IRM, output for other methods such as IRMv1), "
        "last_hidden, output or hiddenN",
    )
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="the reference test env (default p0.1)")
    parser.add_argument(
        "--no-control",
        action="store_true",
        help="leave out the redraw control (the reference env drawn a second time: same digits and p_e, "
        "independent label noise and colours), drawn as a dashed line",
    )
    return parser


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    rows = []
    for run_dir in find_trained_run_dirs(args.runs):
        overrides = list(args.override)
        if not args.no_control:
            overrides += control_override(run_dir, args.reference, overrides)
        (run,) = load_runs_for_figure([run_dir], data_dir=args.data_dir, overrides=overrides)
        rows += fig10_rows(run, args.layer, args.reference, args.epsilon, args.symmetric, args.pwcca)
    if all_undefined(rows, "run and env"):
        return EXIT_USAGE

    summary = summarize(rows)
    return write_figure_outputs(
        args.out,
        rows,
        summary,
        fig10_figure(summary),
        (CSV_NAME, SUMMARY_NAME, PNG_NAME),
        (FIELDS, SUMMARY_FIELDS),
        ("method", "layer", "env"),
    )


if __name__ == "__main__":
    sys.exit(main())
