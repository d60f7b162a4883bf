"""The linear unit-tests' table, selected and aggregated as the reference's ``collect_results.py``.

    python -m metairm_pl.reporting.unit_tests DIR... [--per-env] [--out FILE]

For each problem (data name) and method, the runs are grouped by their settings (the run
directory's override name) and model seed, i.e. one hyperparameter configuration (the reference's
"model seed": ``experiment=unit_tests_search``); the configuration kept is
the one with the smallest sum over the training envs of the mean, over data seeds, of the
validation error (training-domain validation: the reference's selection). Runs on shuffled data
(``data.oracle=true``) form the Oracle row. Its test error is
reported per env (mean over data seeds, ± the population std, ddof 0) and as the reference's
"Avg": the mean over envs of those means, ± the mean over envs of those stds. The error is the
reference's: the mean squared error for regression (``error`` in the records), the 0-1 error
(1 − accuracy) for classification. Only finished runs count; nothing reads a test env to choose.

``--published`` adds the reference paper's own figures (its ERM, IRMv1, IGA, AND-mask and Oracle,
``evidence/unit_tests_published.json``) as rows beside ours; they are for the default setting
(3 envs, 5 invariant and 5 spurious dimensions), so runs with another setting are refused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from metairm_pl.algorithms.registry import label, table_sort_key
from metairm_pl.errors import ConfigError, exits_on_user_error
from metairm_pl.reporting.records import Run, RunStatus, load_runs, metric_envs, natural_key

ORACLE = "oracle"  # the method column of runs on shuffled data (data.oracle=true), the reference's Oracle
PUBLISHED_FIGURES = Path(__file__).resolve().parent.parent / "evidence" / "unit_tests_published.json"
PUBLISHED_LABELS = {"ERM": "ERM", "IRMv1": "IRMv1", "IGA": "IGA", "ANDMask": "AND-mask", "Oracle": "Oracle"}


def method_label(method: str) -> str:
    return "Oracle (shuffled data)" if method == ORACLE else label(method)


def method_order(method: str) -> tuple:
    return (1, "") if method == ORACLE else (0, *table_sort_key(method))


def error(record: Mapping, split: str, env: str) -> float:
    """The reference's error of ``env`` in ``split``: the MSE, or 1 − accuracy."""
    value = record.get(f"{split}/{env}/error")
    return float(value) if value is not None else 1.0 - float(record[f"{split}/{env}/acc"])


def configuration(settings: str, seed: Optional[int] = None) -> str:
    """A run's hyperparameter configuration: its settings without the data seed (and the oracle
    flag, which makes its own row), the items the protocol averages or splits over; and its model
    seed, which is the reference's configuration (``experiment=unit_tests_search``) as its
    ``collect_results.py`` groups by model seed."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(settings + ","):
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(settings[start:index])
            start = index + 1
    kept = [item for item in items if item and not item.startswith(("data_seed=", "data.oracle="))]
    if seed is not None:
        kept.append(f"seed={seed}")
    return ",".join(kept)


def population_std(values: Sequence[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Selected:
    """The kept configuration of one (problem, method): its settings, seeds and test errors."""

    settings: str
    n: int
    per_env: Mapping[str, tuple[float, float]]  # test env -> (mean, population std) over seeds
    validation_score: float

    @property
    def average(self) -> tuple[float, float]:
        means, stds = zip(*self.per_env.values())
        return statistics.fmean(means), statistics.fmean(stds)


def select(runs: Sequence[Run]) -> dict[tuple[str, str], Selected]:
    """(problem, method) -> the configuration the reference's rule keeps."""
    groups: dict[tuple[str, str], dict[str, list[Mapping]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.status is RunStatus.DONE and run.records:
            method = ORACLE if run.config_value("data.oracle") else run.algorithm
            groups[(run.data, method)][configuration(run.settings, run.seed)].append(run.records[-1])
    kept = {}
    for key, by_settings in groups.items():
        candidates = []
        for settings, records in by_settings.items():
            val_envs = metric_envs(records[0], "val", "loss")
            score = sum(statistics.fmean(error(r, "val", env) for r in records) for env in val_envs)
            test_envs = metric_envs(records[0], "test", "loss")
            per_env = {}
            for env in test_envs:
                values = [error(r, "test", env) for r in records]
                per_env[env] = (statistics.fmean(values), population_std(values))
            candidates.append(Selected(settings, len(records), per_env, score))
        kept[key] = min(candidates, key=lambda s: (s.validation_score, s.settings))
    return kept


def published_figures() -> dict:
    """The reference's published table: ``{"test_error_mean_std": {problem: {method: [mean, std]}},
    "setting": ..., "n_data_seeds": ..., "source": ..., "protocol": ...}``."""
    return json.loads(PUBLISHED_FIGURES.read_text())


def check_published_setting(runs: Sequence[Run]) -> None:
    """Refuse to set the published figures beside runs of another data setting than theirs."""
    setting = published_figures()["setting"]
    for run in runs:
        for key, value in setting.items():
            ours = run.config_value(f"data.{key}")
            if ours is not None and ours != value:
                raise ConfigError(
                    f"--published: the reference's figures are for data.{key}={value}, but {run.path} has "
                    f"data.{key}={ours}; report these runs without --published."
                )


def published_rows(problems: Sequence[str]) -> list[str]:
    """The reference's rows for ``problems`` ("—" where it has no figure) and the line naming its source."""
    figures = published_figures()
    table = figures["test_error_mean_std"]
    methods = list(next(iter(table.values())))
    rows = []
    for method in methods:
        cells = []
        for problem in problems:
            value = table.get(problem, {}).get(method)
            cells.append("—" if value is None else f"{value[0]:.2f} ± {value[1]:.2f}")
        rows.append(
            f"| {PUBLISHED_LABELS.get(method, method)}, published (n={figures['n_data_seeds']}) | "
            + " | ".join(cells)
            + " |"
        )
    return rows + ["", f"Published: Aubin et al. 2021, {figures['source']}; {figures['protocol']}."]


def render(kept: Mapping[tuple[str, str], Selected], per_env: bool = False, published: bool = False) -> str:
    problems = sorted({problem for problem, _ in kept}, key=natural_key)
    methods = sorted({method for _, method in kept}, key=method_order)
    lines = [
        "Test error (MSE for Example1/1s, 0-1 error otherwise) of the configuration with the smallest "
        "summed training-env validation error; Avg = mean over test envs of the mean over data seeds, "
        "± mean over envs of the population std; n = data seeds.",
        "",
        "| method | " + " | ".join(problems) + " |",
        "| --- |" + " ---: |" * len(problems),
    ]
    for method in methods:
        cells = []
        for problem in problems:
            selected = kept.get((problem, method))
            if selected is None:
                cells.append("—")
                continue
            mean, std = selected.average
            cells.append(f"{mean:.2f} ± {std:.2f} (n={selected.n})")
        lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")
    if published:
        lines += published_rows(problems)
    if per_env:
        lines += ["", "| problem | method | settings | " + "per test env (mean ± std) |", "| --- | --- | --- | --- |"]
        for (problem, method), selected in sorted(
            kept.items(), key=lambda kv: (natural_key(kv[0][0]), method_order(kv[0][1]))
        ):
            envs = ", ".join(f"{env} {m:.3g} ± {s:.2g}" for env, (m, s) in selected.per_env.items())
            lines.append(f"| {problem} | {method_label(method)} | {selected.settings or 'default'} | {envs} |")
    return "\n".join(lines) + "\n"


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metairm_pl.reporting.unit_tests", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("dirs", nargs="+", help="folders searched at any depth for run dirs")
    parser.add_argument("--per-env", action="store_true", help="also each kept configuration's per-env errors")
    parser.add_argument(
        "--published", action="store_true", help="add the reference paper's figures (3 envs, 5 + 5 dims only)"
    )
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    runs = load_runs(args.dirs)
    if args.published:
        check_published_setting(runs)
    text = render(select(runs), per_env=args.per_env, published=args.published)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
