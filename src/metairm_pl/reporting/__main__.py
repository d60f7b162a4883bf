"""Collect finished runs into paper-style tables and plots.

    python -m metairm_pl.reporting DIR... [--selection train_val|last|oracle] [--oracle-env p0.9]
                                       [--also-selection train_val|last] [--expect-seeds N]
                                       [--out OUTDIR] [--plots] [--wandb]

Searches every DIR at any depth for run dirs (``results.jsonl``), prints the markdown
table(s) under a header naming the selection method (``--expect-seeds N``: a row
missing any of the seeds 0 … N − 1 names them in its notes), and writes ``table.md`` and
``table.csv`` (and with ``--plots`` the PNGs) into OUTDIR (default: the first DIR).
``--wandb`` also logs the table (and with ``--plots`` the plots) to a W&B run, offline
without credentials.
Exit code 2 when no run is found or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from metairm_pl.errors import EXIT_USAGE
from metairm_pl.files import atomic_write_text
from metairm_pl.reporting.records import load_runs
from metairm_pl.reporting.selection import DEFAULT_SELECTION, SELECTION_NAMES, SelectionMethod, get_selection
from metairm_pl.reporting.tables import (
    CSV_FIELDS,
    ExtraColumn,
    Table,
    build_tables,
    csv_rows,
    extra_column,
    render_csv,
    render_markdown,
)
from metairm_pl.run_dir import RESULTS_FILE

TABLE_MD = "table.md"
TABLE_CSV = "table.csv"


def seed_count(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of seeds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metairm_pl.reporting",
        description="Tables (mean ± sample std over seeds) and plots from run directories.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="folders searched at any depth for run dirs")
    parser.add_argument(
        "--selection",
        choices=SELECTION_NAMES,
        default=DEFAULT_SELECTION,
        help="which evaluation of each run is reported: train_val = training-env validation (default), "
        "last = final evaluation, oracle = oracle (test env), best test accuracy on --oracle-env",
    )
    parser.add_argument("--oracle-env", default=None, help="the test env of --selection oracle, e.g. p0.9")
    parser.add_argument(
        "--also-selection",
        choices=[name for name in SELECTION_NAMES if name != "oracle"],
        default=None,
        help="add a column: the most OOD test env (the last one) under this second selection",
    )
    parser.add_argument(
        "--expect-seeds",
        type=seed_count,
        default=None,
        metavar="N",
        help="rows should hold seeds 0 … N-1; a row missing some names them in its notes",
    )
    parser.add_argument("--out", default=None, help="output folder for table.md, table.csv, plots (default: first DIR)")
    parser.add_argument("--plots", action="store_true", help="also save the figures as PNG")
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the table (and the plots, with --plots) to W&B; offline without credentials",
    )
    return parser


def log_to_wandb(
    tables: Sequence[Table],
    selection: SelectionMethod,
    plot_paths: Sequence[Path],
    out_dir: Path,
    dirs: Sequence[str],
    extras: Sequence[Optional[ExtraColumn]] = (),
) -> None:
    """Log the table (``wandb.Table``) and plots (``wandb.Image``) to a new W&B run."""
    import wandb

    from metairm_pl.loggers import wandb_credentials_available

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_available() else "offline")
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "metairm-pl"),
        job_type="report",
        dir=str(out_dir),
        mode=mode,
        config={"selection": selection.label, "dirs": [str(d) for d in dirs]},
    )
    try:
        rows = csv_rows(tables, extras)
        table = wandb.Table(columns=list(CSV_FIELDS), data=[[row[k] for k in CSV_FIELDS] for row in rows])
        payload = {"results": table}
        payload.update({f"plots/{path.stem}": wandb.Image(str(path)) for path in plot_paths})
        run.log(payload)
    finally:
        run.finish()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.selection == "oracle" and not args.oracle_env:
        parser.error("--selection oracle needs --oracle-env (the test env it maximises, e.g. p0.9)")
    if args.oracle_env and args.selection != "oracle":
        parser.error("--oracle-env is only used with --selection oracle")
    selection = get_selection(args.selection, args.oracle_env)

    runs = load_runs(args.dirs)
    if not runs:
        searched = ", ".join(f"{d}" + ("" if Path(d).is_dir() else " (does not exist)") for d in args.dirs)
        print(f"error: no run records ({RESULTS_FILE}) found under: {searched}", file=sys.stderr)
        return EXIT_USAGE
    for run in runs:
        if run.read_error:
            print(f"warning: could not read {run.read_error}", file=sys.stderr)

    tables = build_tables(runs, selection, args.expect_seeds)
    extras = (
        [extra_column(table, runs, get_selection(args.also_selection)) for table in tables]
        if args.also_selection
        else []
    )
    markdown = render_markdown(tables, selection, extras)
    print(markdown, end="")
    out_dir = Path(args.out or args.dirs[0])
    atomic_write_text(out_dir / TABLE_MD, markdown)
    atomic_write_text(out_dir / TABLE_CSV, render_csv(tables, extras))
    written = [out_dir / TABLE_MD, out_dir / TABLE_CSV]
    plot_paths: list[Path] = []
    if args.plots:
        from metairm_pl.reporting.plots import make_plots

        plot_paths = make_plots(runs, selection, out_dir, tables)
        written += plot_paths
    print("wrote: " + ", ".join(str(p) for p in written), file=sys.stderr)
    if args.wandb:
        log_to_wandb(tables, selection, plot_paths, out_dir, args.dirs, extras)
    return 0


if __name__ == "__main__":
    sys.exit(main())
