"""Collect run directories into paper-style tables and plots (``python -m metairm_pl.reporting``).

* :mod:`~metairm_pl.reporting.records` — find run dirs, load records and status;
* :mod:`~metairm_pl.reporting.selection` — model selection as pure functions over records;
* :mod:`~metairm_pl.reporting.tables` — mean ± sample std per algorithm × test env, markdown/CSV;
* :mod:`~metairm_pl.reporting.plots` — accuracy vs p_e, vs label-noise gap, IRMv1 penalty vs step
  (imports matplotlib, so it is not imported here).
"""

from metairm_pl.reporting.records import Run, RunStatus, find_run_dirs, load_run, load_runs
from metairm_pl.reporting.selection import (
    DEFAULT_SELECTION,
    LAST,
    TRAIN_VAL,
    SelectionMethod,
    get_selection,
    oracle,
    select_last,
    select_oracle,
    select_train_val,
)
from metairm_pl.reporting.tables import Table, build_tables, render_csv, render_markdown

__all__ = [
    "DEFAULT_SELECTION",
    "LAST",
    "TRAIN_VAL",
    "Run",
    "RunStatus",
    "SelectionMethod",
    "Table",
    "build_tables",
    "find_run_dirs",
    "get_selection",
    "load_run",
    "load_runs",
    "oracle",
    "render_csv",
    "render_markdown",
    "select_last",
    "select_oracle",
    "select_train_val",
]
