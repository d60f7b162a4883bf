"""What the Fig. 9 and Fig. 10 commands share: finding and loading runs, labels, CSV and
summary output, common arguments."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Mapping, Optional, Sequence

from metairm_pl.algorithms import registry
from metairm_pl.analysis.similarity import DEFAULT_EPSILON, DEFAULT_METHOD, METHODS
from metairm_pl.analysis.trained_run import CheckpointStepWarning, LoadedRun, rebuild_run
from metairm_pl.errors import ConfigError
from metairm_pl.run_dir import CHECKPOINT_DIR, CONFIG_FILE, LAST_CHECKPOINT


def run_label(run: LoadedRun) -> str:
    """Display label of the run's method (its registry ``label``, else the config name), plus its tag."""
    label = registry.label(run.algorithm_name)
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
    """Run dirs, ``--out``, ``--epsilon``, ``--pwcca``, ``--symmetric``, ``--data-dir``, ``--override``."""
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders searched for run dirs with a checkpoint"
    )
    parser.add_argument("--out", required=True, help="output folder for the CSV files and the PNG")
    parser.add_argument(
        "--epsilon",
        type=check_epsilon_argument,
        default=DEFAULT_EPSILON,
        help="PWCCA cutoff for float32 activations (default: 1e-10 for svcca, a variance cutoff and ridge; "
        "1e-6 for textbook, a relative singular-value cutoff)",
    )
    parser.add_argument(
        "--pwcca",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help="PWCCA as the authors' released code computes it (svcca, default) or the textbook definition",
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
