"""Result tables embedded in markdown files, regenerated from committed run records.

A table in the README or in ``docs/`` is written between two comments that name the
report that produces it (directories relative to the repository root, and the options of
``python -m metairm_pl.reporting``)::

    <!-- report: results/table1 --selection last -->
    ### cmnist
    ...
    <!-- /report -->

``--unit-tests`` in the arguments makes the block the linear unit-tests' table instead
(``python -m metairm_pl.reporting.unit_tests``: the reference's selection and "Avg"); with
``--published`` too, the reference paper's figures as rows beside ours.

``python -m metairm_pl.reporting.embedded README.md docs/*.md`` rewrites every such block
from the records (``--check``: exit 1 and name the blocks that differ, without writing);
``tests/reporting/test_embedded_tables.py`` runs the check on the repository's own files, so
a number in the README that the records do not give fails the tests.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from metairm_pl.reporting import unit_tests
from metairm_pl.reporting.__main__ import seed_count
from metairm_pl.reporting.records import load_runs
from metairm_pl.reporting.selection import DEFAULT_SELECTION, SELECTION_NAMES, get_selection
from metairm_pl.reporting.tables import build_tables, extra_column, render_table_markdown

BLOCK = re.compile(r"(<!-- report: (?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- /report -->)", re.S)


@dataclass(frozen=True)
class Block:
    args: str  # the report's arguments, as written in the opening comment
    body: str  # the text between the comments


def blocks_in(text: str) -> list[Block]:
    return [Block(match["args"], match["body"]) for match in BLOCK.finditer(text)]


def report_arguments(args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="<!-- report: ... -->", add_help=False)
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--selection", choices=SELECTION_NAMES, default=DEFAULT_SELECTION)
    parser.add_argument("--oracle-env", default=None)
    parser.add_argument("--also-selection", choices=[n for n in SELECTION_NAMES if n != "oracle"], default=None)
    parser.add_argument("--expect-seeds", type=seed_count, default=None)
    parser.add_argument("--unit-tests", action="store_true")
    parser.add_argument("--published", action="store_true")  # with --unit-tests: the reference's figures too
    return parser.parse_args(shlex.split(args))


def render_block(args: str, root: Path) -> str:
    """The tables the report prints for ``args`` (directories relative to ``root``)."""
    options = report_arguments(args)
    missing = [d for d in options.dirs if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"report block '{args}': no directory {missing} under {root}")
    runs = load_runs([root / d for d in options.dirs])
    if options.unit_tests:
        if options.published:
            unit_tests.check_published_setting(runs)
        return unit_tests.render(unit_tests.select(runs), published=options.published)
    selection = get_selection(options.selection, options.oracle_env)
    also = get_selection(options.also_selection) if options.also_selection else None
    tables = build_tables(runs, selection, options.expect_seeds)
    return "\n\n".join(render_table_markdown(t, also and extra_column(t, runs, also)) for t in tables) + "\n"


def refresh(text: str, root: Path) -> tuple[str, list[str]]:
    """``text`` with every block regenerated, and the arguments of the blocks that changed."""
    changed: list[str] = []

    def replace(match: re.Match) -> str:
        body = render_block(match["args"], root)
        if body != match["body"]:
            changed.append(match["args"])
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text), changed


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metairm_pl.reporting.embedded", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("files", nargs="+", type=Path, help="markdown files holding report blocks")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="where the blocks' directories are (default: .)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block differs")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        text = path.read_text()
        new_text, changed = refresh(text, args.root)
        stale += [f"{path}: <!-- report: {block} -->" for block in changed]
        if changed and not args.check:
            path.write_text(new_text)
    for line in stale:
        print(("differs from its records: " if args.check else "regenerated: ") + line)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
