"""Writes the checked-in fixture run dirs under ``fixtures/`` (run by hand, not by pytest):

    python tests/reporting/make_fixtures.py

``fixtures/runs`` — Colored MNIST, erm × seeds 0–2 (done) and irm × seeds 0–1 (done),
seed 2 (failed after one evaluation), seed 3 (unfinished, with a truncated last line).
Three evaluations per run (steps 100, 200, 300); the numbers are chosen so the three
selection methods pick different steps and the means are easy to check by hand (see
test_golden.py).  ``fixtures/gap_sweep`` — irm (gap from config.yaml) and meta_irm (gap
from the tag, no config.yaml) at label-noise gaps 0, 0.02, 0.04 × seeds 0–1.

The expected outputs under ``fixtures/expected`` are written by
``UPDATE_GOLDEN=1 python -m pytest tests/reporting/test_golden.py`` and must be checked by eye.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent / "fixtures"
TRAIN_ENVS = ("p0.1", "p0.2")
TEST_ENVS = ("p0.1", "p0.2", "p0.9")

# (step, (val p0.1, val p0.2), (train p0.1, train p0.2), (test p0.1, p0.2, p0.9), (penalty p0.1, p0.2))
ERM = {
    0: [
        (100, (0.80, 0.78), (0.82, 0.80), (0.85, 0.78, 0.30), (0.010, 0.012)),
        (200, (0.86, 0.84), (0.87, 0.85), (0.88, 0.80, 0.18), (0.030, 0.034)),
        (300, (0.85, 0.83), (0.89, 0.86), (0.89, 0.80, 0.15), (0.060, 0.064)),
    ],
    1: [
        (100, (0.81, 0.79), (0.83, 0.81), (0.86, 0.79, 0.28), (0.012, 0.010)),
        (200, (0.86, 0.84), (0.88, 0.84), (0.88, 0.79, 0.17), (0.028, 0.036)),
        (300, (0.84, 0.86), (0.90, 0.86), (0.89, 0.80, 0.14), (0.058, 0.070)),  # val tie with step 200
    ],
    2: [
        (100, (0.79, 0.77), (0.81, 0.79), (0.84, 0.77, 0.32), (0.008, 0.012)),
        (200, (0.84, 0.82), (0.86, 0.84), (0.87, 0.79, 0.20), (0.026, 0.030)),
        (300, (0.87, 0.85), (0.89, 0.87), (0.90, 0.81, 0.16), (0.050, 0.058)),
    ],
}
IRM = {
    0: [
        (100, (0.70, 0.72), (0.71, 0.73), (0.72, 0.71, 0.60), (0.004, 0.006)),
        (200, (0.73, 0.71), (0.72, 0.72), (0.71, 0.70, 0.66), (0.002, 0.002)),
        (300, (0.70, 0.70), (0.71, 0.71), (0.70, 0.70, 0.68), (0.001, 0.001)),
    ],
    1: [
        (100, (0.69, 0.71), (0.70, 0.72), (0.71, 0.70, 0.62), (0.005, 0.005)),
        (200, (0.72, 0.72), (0.71, 0.71), (0.70, 0.70, 0.64), (0.002, 0.003)),
        (300, (0.71, 0.71), (0.70, 0.70), (0.70, 0.69, 0.69), (0.001, 0.002)),
    ],
    2: [  # failed after its first evaluation: never averaged
        (100, (0.99, 0.99), (0.99, 0.99), (0.99, 0.99, 0.99), (0.5, 0.5)),
    ],
    3: [  # unfinished: never averaged; a third, truncated line follows
        (100, (0.98, 0.98), (0.98, 0.98), (0.98, 0.98, 0.98), (0.5, 0.5)),
        (200, (0.97, 0.97), (0.97, 0.97), (0.97, 0.97, 0.97), (0.5, 0.5)),
    ],
}


def record(algorithm, seed, tag, step, val, train, test, penalty, extra=None):
    out = {"step": step, "algorithm": algorithm, "data": "cmnist", "seed": seed, "data_seed": seed, "tag": tag}
    for env, v, t, pen in zip(TRAIN_ENVS, val, train, penalty):
        out.update({f"train/{env}/acc": t, f"train/{env}/loss": round(1.2 - t, 3), f"train/{env}/penalty": pen})
        out.update({f"val/{env}/acc": v, f"val/{env}/loss": round(1.2 - v, 3), f"val/{env}/penalty": pen})
    for env, a in zip(TEST_ENVS[-len(test) :], test):
        out.update({f"test/{env}/acc": a, f"test/{env}/loss": round(1.2 - a, 3), f"test/{env}/penalty": 0.1})
    out.update(extra or {})
    return dict(sorted(out.items()))


def config_yaml(algorithm, seed, tag, gap=0.0):
    return (
        f"data:\n  name: cmnist\n  label_noise_gap: {gap}\nalgorithm:\n  name: {algorithm}\n"
        f"seed: {seed}\ntag: '{tag}'\n"
    )


def write_run(run_dir: Path, records, marker=None, marker_text="", config=None, truncated_tail=None):
    run_dir.mkdir(parents=True)
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if truncated_tail:
        lines += truncated_tail
    (run_dir / "results.jsonl").write_text(lines)
    if config is not None:
        (run_dir / "config.yaml").write_text(config)
    if marker:
        (run_dir / marker).write_text(marker_text)


def main_runs(root: Path) -> None:
    for algorithm, table in (("erm", ERM), ("irm", IRM)):
        for seed, rows in table.items():
            records = [record(algorithm, seed, "", *row) for row in rows]
            marker, text, tail = "done", "", None
            if algorithm == "irm" and seed == 2:
                marker, text = "failed", "RuntimeError: loss is NaN at step 150\n"
            if algorithm == "irm" and seed == 3:
                marker, tail = None, '{"step": 300, "algorithm": "irm", "data": "cm'
            run_dir = root / "cmnist" / algorithm / "default" / f"seed={seed}"
            write_run(run_dir, records, marker, text, config_yaml(algorithm, seed, ""), tail)


# p0.9 accuracy at the selected step (step 200) per (algorithm, gap, seed); step 100 is worse on val.
GAP_ACC = {
    ("irm", 0.0): (0.67, 0.66), ("irm", 0.02): (0.62, 0.60), ("irm", 0.04): (0.55, 0.52),
    ("meta_irm", 0.0): (0.70, 0.69), ("meta_irm", 0.02): (0.69, 0.70), ("meta_irm", 0.04): (0.68, 0.67),
}  # fmt: skip


def gap_runs(root: Path) -> None:
    for (algorithm, gap), accs in GAP_ACC.items():
        for seed, acc in enumerate(accs):
            tag = "" if algorithm == "irm" else f"gap={gap}"
            early = {"early_stop/stopped": True, "early_stop/stop_step": 200} if algorithm == "meta_irm" else None
            early_first = {"early_stop/stopped": False, "early_stop/stop_step": None} if early else None
            records = [
                record(algorithm, seed, tag, 100, (0.70, 0.70), (0.72, 0.72), (0.50,), (0.02, 0.02), early_first),
                record(algorithm, seed, tag, 200, (0.74, 0.72), (0.75, 0.73), (acc,), (0.01, 0.01), early),
            ]
            config = config_yaml(algorithm, seed, tag, gap) if algorithm == "irm" else None
            run_dir = root / "cmnist" / algorithm / f"gap={gap}" / f"seed={seed}"
            write_run(run_dir, records, "done", "", config)


if __name__ == "__main__":
    for name, build in (("runs", main_runs), ("gap_sweep", gap_runs)):
        shutil.rmtree(HERE / name, ignore_errors=True)
        build(HERE / name)
    print(f"wrote fixtures under {HERE}")
