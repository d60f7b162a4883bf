"""What the training envs' paired validation sets say about the test gap (a post-hoc check).

    python -m metairm_pl.analysis.colour_gap RUN_DIR_OR_FOLDER... [--from-step 150]
                                             [--val p0.2 p0.1] [--test p0.1 p0.9]

For every evaluation at step >= ``--from-step`` of every run found (a folder is searched
for ``results.jsonl`` or its archived ``.gz``), it pairs the test gap, test accuracy on the
env with little colour flipping minus on the env with much (points; 0 for a model that
ignores colour, negative for one that uses colour reversed), with two validation-only
signals of the training envs (``--val FLIPPED_MORE FLIPPED_LESS``):

* loss gap: loss(FLIPPED_MORE) − loss(FLIPPED_LESS), the signed form of the paper's
  stopping statistic (for two envs the std of their losses is half its absolute value);
* accuracy gap: acc(FLIPPED_LESS) − acc(FLIPPED_MORE), in points.

It prints each signal's least-squares line through the pairs. The intercept is the test gap
a model has, on average, when that signal reads zero: the bias a stop that drives the signal
to zero carries. This reads test accuracies, so it explains a stop rule; it must not choose
one's settings. Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from metairm_pl.errors import ConfigError, exits_on_user_error
from metairm_pl.files import read_jsonl
from metairm_pl.run_dir import RESULTS_FILE


@dataclass(frozen=True)
class Line:
    """A least-squares line ``y = slope * x + intercept`` through ``n`` points, and Pearson's r."""

    n: int
    slope: float
    intercept: float
    r: float


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Line:
    """Ordinary least squares of ``ys`` on ``xs`` (at least 2 points, ``xs`` not all equal)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ConfigError(f"a line needs >= 2 paired points, got {n} x and {len(ys)} y values.")
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    syy = sum((y - mean_y) ** 2 for y in ys)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    if sxx == 0:
        raise ConfigError("every x value is the same: no line can be fitted.")
    slope = sxy / sxx
    r = sxy / math.sqrt(sxx * syy) if syy > 0 else 0.0
    return Line(n=n, slope=slope, intercept=mean_y - slope * mean_x, r=r)


def gap_points(
    records: Sequence[dict], val_pair: tuple[str, str], test_pair: tuple[str, str], from_step: int
) -> list[tuple[float, float, float]]:
    """(loss gap, accuracy gap in points, test gap in points) of each record at step >= ``from_step``."""
    more, less = val_pair
    low, high = test_pair
    keys = [f"val/{more}/loss", f"val/{less}/loss", f"val/{more}/acc", f"val/{less}/acc"]
    keys += [f"test/{low}/acc", f"test/{high}/acc"]
    points = []
    for record in records:
        if record["step"] < from_step:
            continue
        missing = [key for key in keys if key not in record]
        if missing:
            raise ConfigError(f"record at step {record['step']} has no {missing}: check --val and --test.")
        loss_gap = record[f"val/{more}/loss"] - record[f"val/{less}/loss"]
        acc_gap = 100 * (record[f"val/{less}/acc"] - record[f"val/{more}/acc"])
        test_gap = 100 * (record[f"test/{low}/acc"] - record[f"test/{high}/acc"])
        points.append((loss_gap, acc_gap, test_gap))
    return points


def find_results(paths: Sequence[Path]) -> list[Path]:
    """The ``results.jsonl`` (or ``.gz``) files under each path, in sorted order."""
    found = []
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path} does not exist.")
        found += sorted(p for p in path.rglob(f"{RESULTS_FILE}*") if p.name in (RESULTS_FILE, f"{RESULTS_FILE}.gz"))
    if not found:
        raise ConfigError(f"no {RESULTS_FILE} (or .gz) under {', '.join(map(str, paths))}.")
    return found


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", type=Path, nargs="+")
    parser.add_argument("--from-step", type=int, default=150)
    parser.add_argument("--val", nargs=2, default=["p0.2", "p0.1"], metavar=("FLIPPED_MORE", "FLIPPED_LESS"))
    parser.add_argument("--test", nargs=2, default=["p0.1", "p0.9"], metavar=("FLIPPED_LESS", "FLIPPED_MORE"))
    args = parser.parse_args(argv)
    files = find_results(args.paths)
    points = [p for f in files for p in gap_points(read_jsonl(f), tuple(args.val), tuple(args.test), args.from_step)]
    loss_gaps, acc_gaps, test_gaps = zip(*points) if points else ((), (), ())
    print(f"{len(files)} runs, {len(points)} evaluations at step >= {args.from_step}; test gap in points")
    print(f"{'signal':<28} {'slope':>10} {'intercept':>10} {'r':>6}")
    for name, xs in (("loss gap (paper's statistic)", loss_gaps), ("accuracy gap (points)", acc_gaps)):
        line = fit_line(list(xs), list(test_gaps))
        print(f"{name:<28} {line.slope:>10.3f} {line.intercept:>+10.2f} {line.r:>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
