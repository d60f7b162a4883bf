"""Copy the compact record of finished runs into a tree meant for the repository (``results/``).

    python -m metairm_pl.reporting.archive SWEEP_DIR... --to results/table1

For every run directory under each SWEEP_DIR that has ended (``done`` or ``failed``), the
copy at ``<to>/<path of the run dir relative to its SWEEP_DIR>/`` holds ``config.yaml``,
``final.json``, the end marker, ``results.jsonl.gz`` and ``csv/metrics.csv.gz``
(:mod:`metairm_pl.run_dir`); no checkpoints, no logs.  The report reads the copy like the
run (``python -m metairm_pl.reporting results/table1``).  Runs still going are skipped and
listed; an existing copy is replaced only when its source changed (gzip without a
timestamp, so the same records give the same bytes and git sees no change).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from metairm_pl.files import atomic_write_bytes
from metairm_pl.reporting.records import RunStatus, find_run_dirs, run_status
from metairm_pl.run_dir import (
    ARCHIVED_SUFFIX,
    CONFIG_FILE,
    CSV_LOG,
    DONE_MARKER,
    FAILED_MARKER,
    FINAL_FILE,
    RESULTS_FILE,
)

COPIED = (CONFIG_FILE, FINAL_FILE, DONE_MARKER, FAILED_MARKER)
COMPRESSED = (RESULTS_FILE, CSV_LOG)


def archive_run(run_dir: Path, target: Path) -> None:
    """Write the compact copy of ``run_dir`` at ``target`` (files of an earlier copy that the
    run no longer has, e.g. a ``failed`` marker after a successful relaunch, are removed).
    ``run_dir`` may itself be a compact copy (a sweep resumed from ``results/``): its
    compressed records are taken as they are."""
    target.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source, copy = run_dir / name, target / name
        if source.is_file():
            _write_if_changed(copy, source.read_bytes())
        else:
            copy.unlink(missing_ok=True)
    for name in COMPRESSED:
        source, compressed, copy = run_dir / name, run_dir / (name + ARCHIVED_SUFFIX), target / (name + ARCHIVED_SUFFIX)
        if source.is_file():
            _write_if_changed(copy, gzip.compress(source.read_bytes(), mtime=0))
        elif compressed.is_file():
            _write_if_changed(copy, compressed.read_bytes())
        else:
            copy.unlink(missing_ok=True)


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.is_file() or path.read_bytes() != data:
        atomic_write_bytes(path, data)


def archive(sweep_dirs: Sequence[str | os.PathLike], to: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """Archive every ended run under ``sweep_dirs`` into ``to``; return (archived, skipped)."""
    archived, skipped = [], []
    for sweep_dir in map(Path, sweep_dirs):
        root = sweep_dir.resolve()
        for run_dir in find_run_dirs([root]):
            if run_status(run_dir) is RunStatus.UNFINISHED:
                skipped.append(run_dir)
                continue
            archive_run(run_dir, Path(to) / run_dir.relative_to(root))
            archived.append(run_dir)
    return archived, skipped


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metairm_pl.reporting.archive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="folders holding run directories")
    parser.add_argument("--to", required=True, help="the archive folder (e.g. results/table1)")
    args = parser.parse_args(argv)
    archived, skipped = archive(args.sweep_dirs, args.to)
    print(f"archived {len(archived)} ended run(s) into {args.to}")
    for run_dir in skipped:
        print(f"skipped (still running or killed): {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
