"""Figures in the style of the paper (matplotlib, Agg; no pyplot global state).

* :func:`accuracy_vs_test_env_figure` — test accuracy vs the test env's p_e with error bars,
  one series per table row, dots shifted slightly so error bars do not overlap (Fig. 3/5/8).
  p_e is parsed from env names like ``p0.3``.
* :func:`accuracy_vs_gap_figure` — test accuracy vs the label-noise gap between training
  envs, mean line and ±std band per algorithm (Fig. 4).  The gap is ``data.label_noise_gap``
  of the run's config.yaml, else a ``gap=0.03`` item of its tag.
* :func:`penalty_vs_step_figure` — the IRMv1 penalty on the training envs
  (mean over envs of ``train/<env>/penalty``) vs step, one line per group (Fig. 6).

``*_figure`` functions build and return a ``Figure`` (or None when there is nothing to
plot) so tests can inspect it; :func:`make_plots` builds all of them and saves PNGs.
"""

from __future__ import annotations

import io
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional, Sequence

from matplotlib.figure import Figure

from metairm_pl.algorithms.registry import table_sort_key
from metairm_pl.files import atomic_write_bytes
from metairm_pl.reporting.records import Run, RunStatus, finite_value, metric_envs, natural_key
from metairm_pl.reporting.selection import SelectionMethod
from metairm_pl.reporting.tables import (
    Table,
    build_tables,
    column_value,
    select_runs,
)

FIGSIZE = (6.4, 4.2)
DPI = 100
SHIFT = 0.008  # x offset between neighbouring series, in units of p_e

_P_ENV = re.compile(r"^p(\d+(?:\.\d+)?)$")
_GAP_TAG = re.compile(r"(?:^|[^A-Za-z0-9_])(?:label_noise_gap|gap)=([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)")


def parse_p(env: str) -> Optional[float]:
    """p_e of an env named like ``p0.3``; None for other names."""
    match = _P_ENV.match(env)
    return float(match.group(1)) if match else None


def label_noise_gap(run: Run) -> Optional[float]:
    """The run's label-noise gap: config.yaml ``data.label_noise_gap``, else ``gap=…`` in its tag."""
    value = run.config_value("data.label_noise_gap")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _GAP_TAG.search(run.tag)
    return float(match.group(1)) if match else None


def most_ood_env(envs: Iterable[str]) -> Optional[str]:
    """The test env with the largest p_e (``p0.9`` for Colored MNIST), else the last by name."""
    envs = sorted(envs, key=natural_key)
    with_p = [e for e in envs if parse_p(e) is not None]
    if with_p:
        return max(with_p, key=parse_p)
    return envs[-1] if envs else None


def _new_axes(title: str, xlabel: str, ylabel: str):
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    return figure, axes


def accuracy_vs_test_env_figure(table: Table) -> Optional[Figure]:
    """Test accuracy (%) vs p_e per table row: dots = mean, error bars = sample std."""
    envs = [(parse_p(c), c) for c in table.columns if parse_p(c) is not None]
    series = [row for row in table.rows if any(row.cells[c].n for _, c in envs)]
    if not envs or not series:
        return None
    figure, axes = _new_axes(
        f"{table.data}: test accuracy vs $p_e$ ({table.selection.label})",
        "test environment $p_e$ (colour flip probability)",
        "test accuracy (%)",
    )
    for index, row in enumerate(series):
        offset = (index - (len(series) - 1) / 2) * SHIFT
        points = [(p + offset, row.cells[c]) for p, c in envs if row.cells[c].n]
        axes.errorbar(
            [x for x, _ in points],
            [cell.mean for _, cell in points],
            yerr=[cell.std or 0.0 for _, cell in points],
            fmt="o",
            markersize=4,
            capsize=3,
            elinewidth=1,
            label=f"{row.label(table.show_tags, table.show_settings)} (n={row.n})",
        )
    ps = [p for p, _ in envs]
    axes.set_xticks(ps, [f"{p:g}" for p in ps])
    pad = max(0.05, len(series) * SHIFT)  # keeps the shifts small next to the p_e spacing
    axes.set_xlim(min(ps) - pad, max(ps) + pad)
    axes.legend(fontsize=8, loc="best")
    return figure


def accuracy_vs_gap_figure(
    runs: Sequence[Run], selection: SelectionMethod, data: str, test_env: Optional[str] = None
) -> Optional[Figure]:
    """Test accuracy (%) on ``test_env`` (default: the most OOD) vs label-noise gap, per
    algorithm: line = mean over runs, band = ± sample std.  None with fewer than two gaps."""
    selected = [s for s in select_runs([r for r in runs if r.data == data], selection) if s.record is not None]
    if test_env is None:
        test_env = most_ood_env({e for s in selected for e in metric_envs(s.record, "test")})
    if test_env is None:
        return None
    values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item in selected:
        gap, acc = label_noise_gap(item.run), column_value(item.record, test_env)
        if gap is not None and acc is not None:
            values[item.run.algorithm][gap].append(100.0 * acc)
    if len({gap for by_gap in values.values() for gap in by_gap}) < 2:
        return None
    figure, axes = _new_axes(
        f"{data}: test accuracy on {test_env} vs label-noise gap ({selection.label})",
        "label-noise gap between training envs",
        f"test accuracy on {test_env} (%)",
    )
    for algorithm in sorted(values, key=table_sort_key):
        gaps = sorted(values[algorithm])
        means = [statistics.fmean(values[algorithm][g]) for g in gaps]
        stds = [statistics.stdev(values[algorithm][g]) if len(values[algorithm][g]) > 1 else 0.0 for g in gaps]
        counts = sorted({len(values[algorithm][g]) for g in gaps})
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        (line,) = axes.plot(gaps, means, marker="o", markersize=4, label=f"{algorithm} (n={n})")
        axes.fill_between(gaps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                          color=line.get_color(), alpha=0.2, linewidth=0)  # fmt: skip
    axes.legend(fontsize=8, loc="best")
    return figure


def mean_train_penalty(record) -> Optional[float]:
    """Mean over the training envs of ``train/<env>/penalty`` (None if one is not finite)."""
    values = [finite_value(record, f"train/{env}/penalty") for env in metric_envs(record, "train", "penalty")]
    if not values or any(v is None for v in values):
        return None
    return math.fsum(values) / len(values)


def penalty_vs_step_figure(runs: Sequence[Run], data: str, log_y: Optional[bool] = None) -> Optional[Figure]:
    """IRMv1 penalty on the training envs vs step, mean over the finished runs of each
    algorithm × tag group (band: ± sample std).  ``log_y=None``: log scale when all > 0."""
    groups: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.data != data or run.status is not RunStatus.DONE:
            continue
        for record in run.records:
            step, penalty = record.get("step"), mean_train_penalty(record)
            if isinstance(step, int) and penalty is not None:
                groups[(run.algorithm, run.tag)][step].append(penalty)
    if not groups:
        return None
    show_tags = len({tag for _, tag in groups}) > 1
    figure, axes = _new_axes(
        f"{data}: IRMv1 penalty on the training envs",
        "step",
        "IRMv1 penalty (mean over training envs)",
    )
    all_values = [v for by_step in groups.values() for vs in by_step.values() for v in vs]
    for algorithm, tag in sorted(groups, key=lambda k: (table_sort_key(k[0]), natural_key(k[1]))):
        by_step = groups[(algorithm, tag)]
        steps = sorted(by_step)
        means = [statistics.fmean(by_step[s]) for s in steps]
        stds = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
        n = max(len(v) for v in by_step.values())
        label = f"{algorithm} [{tag}]" if show_tags and tag else algorithm
        (line,) = axes.plot(steps, means, marker="o", markersize=3, label=f"{label} (n={n})")
        low = [max(m - s, 0.0) for m, s in zip(means, stds)]
        high = [m + s for m, s in zip(means, stds)]
        axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if log_y if log_y is not None else all(v > 0 for v in all_values):
        axes.set_yscale("log")
    axes.legend(fontsize=8, loc="best")
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Save ``figure`` as PNG atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def make_plots(
    runs: Sequence[Run],
    selection: SelectionMethod,
    out_dir: str | Path,
    tables: Optional[Sequence[Table]] = None,
) -> list[Path]:
    """Build every figure that has data, per data set, save PNGs into ``out_dir``; return
    the paths: ``acc_vs_test_env-<data>.png``, ``acc_vs_label_noise_gap-<data>.png``,
    ``penalty_vs_step-<data>.png``."""
    out_dir = Path(out_dir)
    tables = build_tables(runs, selection) if tables is None else tables
    paths = []
    for table in tables:
        figures = [
            ("acc_vs_test_env", accuracy_vs_test_env_figure(table)),
            ("acc_vs_label_noise_gap", accuracy_vs_gap_figure(runs, selection, table.data)),
            ("penalty_vs_step", penalty_vs_step_figure(runs, table.data)),
        ]
        for name, figure in figures:
            if figure is not None:
                paths.append(save_figure(figure, out_dir / f"{name}-{_safe(table.data)}.png"))
    return paths


__all__ = [
    "accuracy_vs_gap_figure",
    "accuracy_vs_test_env_figure",
    "label_noise_gap",
    "make_plots",
    "most_ood_env",
    "parse_p",
    "penalty_vs_step_figure",
    "save_figure",
]
