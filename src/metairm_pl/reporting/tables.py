"""Paper-style result tables: one per data set, rows = algorithms × tag × settings (the
command-line overrides a run directory is named after; tag and settings are shown when they
tell rows apart), columns = test envs plus ``train`` (mean accuracy over the training envs).

A cell is the mean ± *sample* standard deviation (ddof = 1) over the n finished runs of its
row, in percent with one decimal (``70.4 ± 0.9``); with n = 1 the std is ``—``; a cell no
finished run has is ``—``.  Each run contributes one record, chosen by a
:class:`~metairm_pl.reporting.selection.SelectionMethod`.  Failed and unfinished runs are
never averaged: they are counted in the row's notes.  With ``expected_seeds`` = N, a row
whose averaged runs lack some of the seeds 0 … N − 1 names them in its notes (``seeds 5–9
missing``), so a row short of its planned seeds says so in the table itself.

The CSV has the same content, one line per cell: ``mean``, ``std`` (percent; empty when
undefined) and ``n``, and the ``selection`` that chose the cell's records.

A second selection (``--also-selection``) adds one column: the most OOD test env (the last
in natural order, e.g. ``p0.9``) under that selection, from the same runs, so a table can
show the paper's selection and training-env validation side by side.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from metairm_pl.algorithms.registry import table_sort_key
from metairm_pl.reporting.records import Run, RunStatus, finite_value, metric_envs, natural_key
from metairm_pl.reporting.selection import SelectionMethod

TRAIN_COLUMN = "train"
DASH = "—"


def train_acc(record: Mapping[str, Any]) -> Optional[float]:
    """Mean over the training envs of ``train/<env>/acc`` (None if one is not finite)."""
    values = [finite_value(record, f"train/{env}/acc") for env in metric_envs(record, "train")]
    if not values or any(v is None for v in values):
        return None
    return math.fsum(values) / len(values)


def column_value(record: Mapping[str, Any], column: str) -> Optional[float]:
    """The accuracy (fraction) of ``record`` for a table column: a test env or ``train``."""
    if column == TRAIN_COLUMN:
        return train_acc(record)
    return finite_value(record, f"test/{column}/acc")


@dataclass(frozen=True)
class Cell:
    """Accuracies in percent of the runs that have this column."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        """Sample standard deviation (ddof = 1); None for fewer than two runs."""
        return statistics.stdev(self.values) if self.n >= 2 else None


@dataclass(frozen=True)
class Row:
    data: str
    algorithm: str
    tag: str
    cells: Mapping[str, Cell]
    n: int  # finished runs with a selected record
    n_failed: int
    n_unfinished: int
    n_unselected: int  # finished runs the selection found no record in
    duplicate_seeds: tuple[tuple[int, int], ...] = ()  # (seed, count) for seeds seen twice or more
    settings: str = ""  # the run directories' override name ("" for the defaults)
    seeds: tuple[int, ...] = ()  # the seeds of the averaged runs, sorted, each once
    hardware: tuple[str, ...] = ()  # the distinct hardware the averaged runs recorded (provenance)
    n_unrecorded_hardware: int = 0  # averaged runs from before provenance was recorded

    def label(self, show_tag: bool, show_settings: bool = False) -> str:
        label = f"{self.algorithm} [{self.tag}]" if show_tag and self.tag else self.algorithm
        return f"{label} [{self.settings}]" if show_settings and self.settings else label


@dataclass(frozen=True)
class Table:
    data: str
    train_envs: tuple[str, ...]
    columns: tuple[str, ...]  # test envs (natural order), then "train"
    rows: tuple[Row, ...]
    selection: SelectionMethod
    expected_seeds: Optional[int] = None  # rows should hold seeds 0 … expected_seeds − 1

    @property
    def show_tags(self) -> bool:
        """Tags go into row labels only when they tell rows apart."""
        return len({row.tag for row in self.rows}) > 1

    @property
    def show_settings(self) -> bool:
        """Settings go into row labels only when they tell rows apart."""
        return len({row.settings for row in self.rows}) > 1


@dataclass(frozen=True)
class SelectedRun:
    """A finished run and the record the selection chose (None: nothing selectable)."""

    run: Run
    record: Optional[Mapping[str, Any]]


def select_runs(runs: Iterable[Run], selection: SelectionMethod) -> list[SelectedRun]:
    """Apply ``selection`` to every finished run (failed and unfinished runs are left out)."""
    return [SelectedRun(run, selection(run.records)) for run in runs if run.status is RunStatus.DONE]


def _envs_of(runs: Sequence[Run], split: str) -> tuple[str, ...]:
    names = {env for run in runs for record in run.records for env in metric_envs(record, split)}
    return tuple(sorted(names, key=natural_key))


def build_row(
    data: str,
    algorithm: str,
    tag: str,
    runs: Sequence[Run],
    columns: Sequence[str],
    selection: SelectionMethod,
    settings: str = "",
) -> Row:
    status = Counter(run.status for run in runs)
    chosen = [s for s in select_runs(runs, selection) if s.record is not None]
    selected = [s.record for s in chosen]
    cells = {}
    for column in columns:
        values = [column_value(record, column) for record in selected]
        cells[column] = Cell(tuple(100.0 * v for v in values if v is not None))
    seeds = Counter(run.seed for run in runs if run.status is RunStatus.DONE and run.seed is not None)
    return Row(
        data=data,
        algorithm=algorithm,
        tag=tag,
        cells=cells,
        n=len(selected),
        n_failed=status[RunStatus.FAILED],
        n_unfinished=status[RunStatus.UNFINISHED],
        n_unselected=status[RunStatus.DONE] - len(selected),
        duplicate_seeds=tuple(sorted((seed, count) for seed, count in seeds.items() if count > 1)),
        settings=settings,
        seeds=tuple(sorted({s.run.seed for s in chosen if s.run.seed is not None})),
        hardware=tuple(sorted({key for s in chosen for key in (s.run.hardware or ())})),
        n_unrecorded_hardware=sum(s.run.hardware is None for s in chosen),
    )


def build_tables(runs: Iterable[Run], selection: SelectionMethod, expected_seeds: Optional[int] = None) -> list[Table]:
    """One table per data set (sorted by name); rows grouped by algorithm × tag × settings.
    ``expected_seeds`` = N: rows missing any of the seeds 0 … N − 1 name them in their notes."""
    if expected_seeds is not None and expected_seeds < 1:
        raise ValueError(f"expected_seeds must be a positive number of seeds, got {expected_seeds}")
    by_data: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_data[run.data].append(run)
    tables = []
    for data in sorted(by_data, key=natural_key):
        data_runs = by_data[data]
        columns = _envs_of(data_runs, "test") + (TRAIN_COLUMN,)
        groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
        for run in data_runs:
            groups[(run.algorithm, run.tag, run.settings)].append(run)
        order = sorted(groups, key=lambda key: (table_sort_key(key[0]), natural_key(key[1]), natural_key(key[2])))
        rows = tuple(
            build_row(data, alg, tag, groups[(alg, tag, settings)], columns, selection, settings)
            for alg, tag, settings in order
        )
        tables.append(Table(data, _envs_of(data_runs, "train"), columns, rows, selection, expected_seeds))
    return tables


# -- rendering -------------------------------------------------------------------------
def format_cell(cell: Cell, row_n: int) -> str:
    if cell.n == 0:
        return DASH
    std = DASH if cell.std is None else f"{cell.std:.1f}"
    text = f"{cell.mean:.1f} ± {std}"
    return text if cell.n == row_n else f"{text} (n={cell.n})"


def seed_ranges(seeds: Iterable[int]) -> str:
    """``0, 2, 3, 4, 7`` -> ``"0, 2–4, 7"`` (runs of consecutive seeds joined by an en dash)."""
    ordered = sorted(set(seeds))
    spans: list[list[int]] = []
    for seed in ordered:
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in spans)


def missing_seeds(row: Row, expected_seeds: Optional[int]) -> tuple[int, ...]:
    """The seeds 0 … ``expected_seeds`` − 1 that no averaged run of ``row`` has."""
    if expected_seeds is None:
        return ()
    return tuple(sorted(set(range(expected_seeds)) - set(row.seeds)))


def row_notes(row: Row, selection: SelectionMethod, expected_seeds: Optional[int] = None) -> str:
    notes = []
    missing = missing_seeds(row, expected_seeds)
    if missing:
        notes.append(f"seed{'s' if len(missing) > 1 else ''} {seed_ranges(missing)} missing")
    if row.n_failed:
        notes.append(f"{row.n_failed} failed")
    if row.n_unfinished:
        notes.append(f"{row.n_unfinished} unfinished")
    if row.n_unselected:
        notes.append(f"{row.n_unselected} without a selectable record ({selection.missing})")
    for seed, count in row.duplicate_seeds:
        notes.append(f"seed {seed} ×{count}")
    if len(row.hardware) > 1:
        notes.append(f"runs from {len(row.hardware)} hardware setups: {'; '.join(row.hardware)}")
    if row.hardware and row.n_unrecorded_hardware:
        notes.append(f"hardware unrecorded for {row.n_unrecorded_hardware}")
    return ", ".join(notes)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def selection_header(selection: SelectionMethod) -> list[str]:
    return [
        f"Selection: {selection.label} — {selection.description}.",
        "",
        f"Accuracy (%): mean ± sample std (ddof = 1) over the n finished runs of a row; std {DASH} when n = 1; "
        f"{DASH} alone: no finished run has the env. train: mean over the training envs. "
        "Failed and unfinished runs are never averaged; they are counted in the notes.",
    ]


@dataclass(frozen=True)
class ExtraColumn:
    """One test env's cells under a second selection, keyed by row (algorithm, tag, settings)."""

    env: str
    selection: SelectionMethod
    cells: Mapping[tuple[str, str, str], Cell]  # row key -> cell

    @property
    def header(self) -> str:
        return f"{self.env} ({self.selection.label})"


def row_key(row: Row) -> tuple[str, str, str]:
    return (row.algorithm, row.tag, row.settings)


def extra_column(table: Table, runs: Iterable[Run], selection: SelectionMethod) -> Optional[ExtraColumn]:
    """``table``'s most OOD test env (the last test column) under ``selection``, from ``runs``
    (the runs the table was built from); None when the table has no test env."""
    test_columns = [c for c in table.columns if c != TRAIN_COLUMN]
    if not test_columns:
        return None
    env = test_columns[-1]
    (other,) = build_tables([run for run in runs if run.data == table.data], selection)
    cells = {row_key(row): row.cells.get(env, Cell(())) for row in other.rows}
    return ExtraColumn(env, selection, cells)


def render_table_markdown(table: Table, extra: Optional[ExtraColumn] = None) -> str:
    header = ["algorithm", *table.columns, *([extra.header] if extra else []), "n", "notes"]
    lines = [
        f"### {table.data}",
        "",
        f"Training envs: {', '.join(table.train_envs) or DASH}.",
        "",
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 2) + [" --- "]) + "|",
    ]
    for row in table.rows:
        cells = [format_cell(row.cells[c], row.n) for c in table.columns]
        if extra:  # "(n=…)" when the second selection found a record in fewer runs
            cells.append(format_cell(extra.cells.get(row_key(row), Cell(())), row.n))
        notes = _md_escape(row_notes(row, table.selection, table.expected_seeds))
        parts = [_md_escape(row.label(table.show_tags, table.show_settings)), *cells, str(row.n), notes]
        lines.append("| " + " | ".join(parts) + " |")
    if any(row.duplicate_seeds for row in table.rows):
        lines += [
            "",
            "Note: a seed that appears more than once in a row means runs whose settings differ but not "
            "in their tag or run-directory name were pooled; give them distinct `tag`s.",
        ]
    return "\n".join(lines)


def render_markdown(
    tables: Sequence[Table], selection: SelectionMethod, extras: Sequence[Optional[ExtraColumn]] = ()
) -> str:
    """The whole report: the selection header, then one table per data set (with its
    second-selection column from ``extras``, aligned with ``tables``, if given)."""
    parts = ["\n".join(selection_header(selection))]
    extras = list(extras) or [None] * len(tables)
    if any(extras):
        also = next(e for e in extras if e).selection
        parts[0] += f"\n\nThe column `<env> ({also.label})`: {also.description}."
    parts += [render_table_markdown(table, extra) for table, extra in zip(tables, extras)]
    return "\n\n".join(parts) + "\n"


CSV_FIELDS = (
    "data", "algorithm", "tag", "settings", "selection", "split", "env", "mean", "std", "n",
    "n_failed", "n_unfinished", "n_unselected",
)  # fmt: skip


def csv_rows(tables: Sequence[Table], extras: Sequence[Optional[ExtraColumn]] = ()) -> list[dict[str, Any]]:
    """One dict per table cell, then per second-selection cell (``extras``, aligned with
    ``tables``; its ``selection`` names it); ``mean``/``std`` in percent (None when undefined)."""
    rows = []
    extras = list(extras) or [None] * len(tables)
    for table, extra in zip(tables, extras):
        for row in table.rows:
            cells = [(table.selection, column, row.cells[column]) for column in table.columns]
            if extra:
                cells.append((extra.selection, extra.env, extra.cells.get(row_key(row), Cell(()))))
            for selection, column, cell in cells:
                split, env = ("train", "mean") if column == TRAIN_COLUMN else ("test", column)
                rows.append(
                    {
                        "data": table.data,
                        "algorithm": row.algorithm,
                        "tag": row.tag,
                        "settings": row.settings,
                        "selection": selection.label,
                        "split": split,
                        "env": env,
                        "mean": cell.mean,
                        "std": cell.std,
                        "n": cell.n,
                        "n_failed": row.n_failed,
                        "n_unfinished": row.n_unfinished,
                        "n_unselected": row.n_unselected,
                    }
                )
    return rows


def render_csv(tables: Sequence[Table], extras: Sequence[Optional[ExtraColumn]] = ()) -> str:
    """The tables as CSV, one line per cell; numbers in percent with 4 decimals."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(tables, extras):
        row = dict(row)
        for key in ("mean", "std"):
            row[key] = "" if row[key] is None else f"{row[key]:.4f}"
        writer.writerow(row)
    return buffer.getvalue()
