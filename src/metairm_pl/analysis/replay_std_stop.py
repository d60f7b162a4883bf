"""Replay Meta-IRM's std-threshold stop on a finished run for other (min_steps, threshold).

    python -m metairm_pl.analysis.replay_std_stop RUN_DIR --min-steps 150 200 250 [--threshold 0.001 ...]
                                                  [--max-steps N] [--objective std_stopped_val_acc]
                                                  [--metric loss|acc]

Training does not depend on the stop's settings: the stop only truncates a run. So the
records of one run that went on past its stop (for example with a threshold no std reaches,
``callbacks.std_early_stopping.std_threshold=1e-9``) hold, for every (min_steps, threshold),
the exact run that setting would have trained: the first evaluation at step >= min_steps
whose ``early_stop/val_loss_std`` (the std the callback computed) is below the threshold, or
the last evaluation if there is none (``--metric acc``: the std of the training envs'
validation accuracies instead, the callback's ``metric=acc``). With ``--max-steps``, evaluations after it are left
out; a run capped there also evaluates at the cap itself, which the longer run did not, so
a "never" row reads the last evaluation before the cap. For each setting this prints the
stop step and the search objective of that record (:mod:`metairm_pl.search_objective`);
it reads validation metrics only and prints no test number, so it can stand in for a
validation-only search over these two settings (``hparams_search=meta_irm_cmnist_stop``).
Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from metairm_pl.callbacks.std_early_stopping import METRICS, population_std
from metairm_pl.errors import ConfigError, exits_on_user_error
from metairm_pl.files import read_jsonl
from metairm_pl.run_dir import RESULTS_FILE, results_path
from metairm_pl.search_objective import OBJECTIVES, search_objective


def record_std(record: dict, metric: str = "loss") -> float:
    """The std of ``metric`` the callback computed for this evaluation, else the population
    std of the record's ``val/*/<metric>``."""
    computed = record.get(f"early_stop/val_{metric}_std")
    if computed is not None:
        return float(computed)
    values = [v for k, v in record.items() if k.startswith("val/") and k.endswith(f"/{metric}")]
    if len(values) < 2:
        raise ConfigError(
            f"record at step {record.get('step')} has no {metric} std and < 2 validation {METRICS[metric]} to compute it."
        )
    return population_std(values)


def replay_stop(
    records: Sequence[dict],
    std_threshold: float,
    min_steps: int,
    max_steps: Optional[int] = None,
    metric: str = "loss",
) -> tuple[dict, bool]:
    """The record the stop would keep, and whether it stopped (else the last record)."""
    if max_steps is not None:
        records = [r for r in records if r["step"] <= max_steps]
    if not records:
        raise ConfigError("the run has no evaluation records to replay.")
    for record in records:
        if record["step"] >= min_steps and record_std(record, metric) < std_threshold:
            return record, True
    return records[-1], False


def as_final(record: dict, stopped: bool) -> dict:
    """A ``final.json``-shaped mapping of one record, as the search objectives read it."""
    metrics = {k: v for k, v in record.items() if "/" in k}
    return {"metrics": metrics, "stopped_early": stopped, "step": record["step"]}


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--min-steps", type=int, nargs="+", required=True)
    parser.add_argument("--threshold", type=float, nargs="+", default=[0.001])
    parser.add_argument("--max-steps", type=int, default=None, help="leave out evaluations after this step")
    parser.add_argument("--objective", default="std_stopped_val_acc", choices=sorted(OBJECTIVES))
    parser.add_argument(
        "--metric", default="loss", choices=sorted(METRICS), help="std of validation losses or accuracies"
    )
    args = parser.parse_args(argv)
    results = results_path(args.run_dir)
    if not results.is_file():
        raise ConfigError(f"{results} does not exist: pass a run directory (it holds {RESULTS_FILE}).")
    if any(t <= 0 for t in args.threshold) or any(m < 0 for m in args.min_steps):
        raise ConfigError(f"need thresholds > 0 and min_steps >= 0, got {args.threshold} and {args.min_steps}.")
    records = read_jsonl(results)
    print(f"{'threshold':>10} {'min_steps':>9} {'stop step':>9} {args.objective:>20}")
    for threshold in args.threshold:
        for min_steps in args.min_steps:
            record, stopped = replay_stop(records, threshold, min_steps, args.max_steps, args.metric)
            value = search_objective(as_final(record, stopped), args.objective)
            where = str(record["step"]) if stopped else f"never ({record['step']})"
            print(f"{threshold:>10g} {min_steps:>9d} {where:>9} {value:>20.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
