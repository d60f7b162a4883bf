"""Accuracy parity of bf16-mixed against 32-true: paired runs (same algorithm, data, seed).

Reads finished run directories under the given roots (e.g. the sweeps of
``python train.py -m experiment=table1`` with and without ``trainer.precision=bf16-mixed``),
takes each run's kept evaluation (``--selection last``: the fixed budget's last step, or
the std-stop step for Meta-IRM, the paper's selection), pairs runs by (data, algorithm,
seed) across the two precisions (a run without ``trainer.precision`` in its config.yaml
ran in 32-true, the only precision before it existed), and prints:

* per algorithm and seed: train (mean of training envs) and test-env accuracies at each
  precision, the stop step, and the bf16 − fp32 difference of ``--env`` accuracy;
* per algorithm: the mean paired difference, its standard error (sample std / √n) and n;
  parity means |mean difference| <= 1.0 point.

``--plot FILE`` draws IRMv1's training penalty vs step at both precisions (mean ± std over
seeds, from each run's ``csv/metrics.csv``, logged every 10 steps).

Example:  python bench/precision_parity.py results/parity --out src/metairm_pl/evidence/precision_parity.md \\
              --plot docs/figures/irm_penalty_bf16_vs_fp32.png
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from metairm_pl.reporting import RunStatus, get_selection, load_runs
from metairm_pl.reporting.records import metric_envs
from metairm_pl.run_dir import csv_log_path

FP32, BF16 = "32-true", "bf16-mixed"
REQUIRED_PAIRS = 10  # seeds 0-9, as the paper's tables
PARITY_POINTS = 1.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", help="directories holding the run directories of both precisions")
    p.add_argument("--env", default="p0.9", help="test env whose accuracy decides parity")
    p.add_argument("--selection", default="last", choices=["last", "train_val"])
    p.add_argument("--out", default=None, help="also write the markdown here")
    p.add_argument("--plot", default=None, help="IRMv1 penalty vs step, both precisions (PNG)")
    return p.parse_args(argv)


def precision_of(run) -> str:
    return str(run.config_value("trainer.precision") or FP32)


def kept_records(runs, selection) -> dict[tuple[str, str, int, str], dict]:
    """(data, algorithm, seed, precision) -> the kept record of that finished run."""
    kept: dict[tuple[str, str, int, str], dict] = {}
    for run in runs:
        if run.status is not RunStatus.DONE or run.seed is None:
            continue
        record = selection(run.records)
        key = (run.data, run.algorithm, run.seed, precision_of(run))
        if record is not None:
            if key in kept:
                raise SystemExit(f"two finished runs for {key}: give each root one run per algorithm, seed, precision")
            kept[key] = record
    return kept


def train_accuracy(record: dict) -> float:
    envs = metric_envs(record, "train")
    return 100 * statistics.fmean(record[f"train/{env}/acc"] for env in envs)


def parity_tables(kept: dict, env: str) -> tuple[list[str], list[str]]:
    """Markdown lines: the per-seed table and the per-algorithm summary."""
    key = f"test/{env}/acc"
    pairs: dict[tuple[str, str], list[tuple[int, dict, dict]]] = defaultdict(list)
    for (data, algorithm, seed, precision), record in kept.items():
        if precision == FP32 and (data, algorithm, seed, BF16) in kept:
            pairs[data, algorithm].append((seed, record, kept[data, algorithm, seed, BF16]))
    per_seed = [
        "| data | algorithm | seed | fp32: step, train, test "
        + env
        + " | bf16: step, train, test "
        + env
        + " | bf16 − fp32 |",
        "| --- | --- | ---: | --- | --- | ---: |",
    ]
    summary = [f"| data | algorithm | n | mean bf16 − fp32 ({env}, points) | standard error | parity (≤ {PARITY_POINTS}) |",
               "| --- | --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for (data, algorithm), rows in sorted(pairs.items()):
        differences = []
        for seed, fp32, bf16 in sorted(rows, key=lambda row: row[0]):
            difference = 100 * (bf16[key] - fp32[key])
            differences.append(difference)
            cells = [f"{r['step']}, {train_accuracy(r):.1f}, {100 * r[key]:.1f}" for r in (fp32, bf16)]
            per_seed.append(f"| {data} | {algorithm} | {seed} | {cells[0]} | {cells[1]} | {difference:+.1f} |")
        mean = statistics.fmean(differences)
        n = len(differences)
        error = f"{statistics.stdev(differences) / math.sqrt(n):.2f}" if n > 1 else "—"
        verdict = "yes" if abs(mean) <= PARITY_POINTS else "no"
        if n < REQUIRED_PAIRS:  # the verdict needs the paper's 10 seeds
            verdict = f"pending ({verdict} so far, {n} of {REQUIRED_PAIRS} pairs)"
        summary.append(f"| {data} | {algorithm} | {n} | {mean:+.2f} | {error} | {verdict} |")
    return per_seed, summary


def penalty_curve(run_dir: Path) -> dict[int, float]:
    """``step/penalty`` by step from the run's CSV log, plain or archived (Lightning's global step + 1)."""
    path = csv_log_path(run_dir)
    curve: dict[int, float] = {}
    if not path.is_file():
        return curve
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("step/penalty"):
                curve[int(row["step"]) + 1] = float(row["step/penalty"])
    return curve


def penalty_plot(runs, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for precision in (FP32, BF16):
        curves = [penalty_curve(run.path) for run in runs
                  if run.algorithm == "irm" and run.status is RunStatus.DONE and precision_of(run) == precision]  # fmt: skip
        curves = [c for c in curves if c]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        means = [statistics.fmean(c[s] for c in curves) for s in steps]
        stds = [statistics.stdev(c[s] for c in curves) if len(curves) > 1 else 0.0 for s in steps]
        (line,) = axes.plot(steps, means, label=f"{precision} (n={len(curves)})")
        axes.fill_between(steps, [max(m - s, 1e-12) for m, s in zip(means, stds)],
                          [m + s for m, s in zip(means, stds)], color=line.get_color(), alpha=0.2, linewidth=0)  # fmt: skip
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("IRMv1 penalty (training batch, mean over envs)")
    axes.set_title("IRMv1 on Colored MNIST: penalty vs step, bf16-mixed vs 32-true")
    axes.legend()
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = load_runs(args.roots)
    kept = kept_records(runs, get_selection(args.selection))
    per_seed, summary = parity_tables(kept, args.env)
    text = "\n".join(summary + [""] + per_seed) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    if args.plot:
        penalty_plot(runs, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
