"""Training-step time at ``bf16-mixed`` vs ``32-true``, per method, full size.

Cases (2 envs x ``--env-size`` Colored-MNIST-shaped examples, full batch, the project's
LightningModules under a real ``pl.Trainer``, see ``bench_common``):

* ``erm``            ERM, hidden 390 (lr 1e-3, l2 1e-3)
* ``irm``            IRMv1, hidden 390, the official hyperparameters (the dummy-scale penalty)
* ``meta_irm_390``   Meta-IRM second order, hidden 390 (the meta_irm preset's other values)
* ``meta_irm_128``   the same at the preset's hidden width 128

Each case is timed at both precisions in one process: one untimed warm-up run per case and
precision, then ``--repeats`` timed runs per case in which the two precisions alternate
(fp32 first on even repeats, bf16 first on odd ones).  The ratio is median bf16 s/step
over median fp32 s/step; targets: ERM and IRMv1 <= 0.40, Meta-IRM <= 0.50.

Example (full size, CPU):  python bench/bench_precision.py --out bench/results/precision_cpu.json
Example (tiny check):      python bench/bench_precision.py --env-size 500 --steps 4 --repeats 1
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
import bench_meta_irm_step as meta_bench  # noqa: E402

CASES = ("erm", "irm", "meta_irm_390", "meta_irm_128")
PRECISIONS = ("32-true", "bf16-mixed")
TARGETS = {"erm": 0.40, "irm": 0.40, "meta_irm_390": 0.50, "meta_irm_128": 0.50}
# conf/algorithm/irm.yaml (the official IRM Colored MNIST values)
IRM = {"lr": 0.0004898536566546834, "l2": 0.00110794568, "penalty_weight": 91257.18613115903, "anneal": 190}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per timed run (>= 2)")
    p.add_argument("--repeats", type=int, default=4, help="timed runs of each case and precision")
    p.add_argument("--warmup-steps", type=int, default=3, help="steps of the untimed warm-up runs")
    p.add_argument("--env-size", type=int, default=bc.CMNIST_ENV_SIZE, help="examples per env (2 envs)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default=None, help="write a JSON result here")
    args = p.parse_args(argv)
    if args.steps < 2 or args.repeats < 1 or args.warmup_steps < 0:
        p.error("need --steps >= 2, --repeats >= 1, --warmup-steps >= 0")
    return args


def build_module(case: str, seed: int):
    from metairm_pl.algorithms.erm import ERM
    from metairm_pl.algorithms.irm import IRMv1
    from metairm_pl.algorithms.schedule import PenaltySchedule
    from metairm_pl.models.mlp import MLP

    if case.startswith("meta_irm"):
        hidden = int(case.rsplit("_", 1)[1])
        options = argparse.Namespace(
            seed=seed, hidden=hidden, inner_lr=0.1, inner_steps=1, dropgrad=meta_bench.META_DROPGRAD
        )
        return meta_bench.build_module("meta_irm_2nd", options)
    torch.manual_seed(seed)
    network = MLP(bc.CMNIST_INPUT_SHAPE, num_outputs=1, hidden_dim=390)
    if case == "erm":
        return ERM(network, functools.partial(torch.optim.Adam, lr=meta_bench.ERM_LR), l2_weight=meta_bench.ERM_L2)
    schedule = PenaltySchedule(
        weight=IRM["penalty_weight"], anneal_steps=IRM["anneal"], warmup_weight=1.0, rescale=True
    )
    return IRMv1(network, functools.partial(torch.optim.Adam, lr=IRM["lr"]), l2_weight=IRM["l2"], penalty=schedule)


def run(case: str, precision: str, args, envs, steps: int, device: torch.device) -> dict:
    result = bc.fit_and_time(build_module(case, args.seed), envs, steps, device, args.deterministic, precision)
    result["final_loss"] = float(result["losses"][-1])
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    device, envs, info = bc.setup(args)
    from metairm_pl.precision import native_bf16

    info["native_bf16"] = native_bf16("gpu" if device.type == "cuda" else "cpu")
    bc.print_system(info)
    cases = [c for c in CASES if c in args.cases]
    print(f"config: steps={args.steps} repeats={args.repeats} warmup_steps={args.warmup_steps} "
          f"envs=2x{args.env_size} cases={cases} (path: pl.Trainer.fit -> training_step)")  # fmt: skip

    runs: dict[tuple[str, str], list[dict]] = {(c, p): [] for c in cases for p in PRECISIONS}
    for case in cases:
        if args.warmup_steps >= 2:
            for precision in PRECISIONS:
                run(case, precision, args, envs, args.warmup_steps, device)
        for repeat in range(args.repeats):
            order = PRECISIONS if repeat % 2 == 0 else PRECISIONS[::-1]
            for precision in order:
                runs[case, precision].append(run(case, precision, args, envs, args.steps, device))

    per_step = {f"{c}/{p}": [r["s_per_step"] for r in rs] for (c, p), rs in runs.items()}
    medians = {key: bc.median(values) for key, values in per_step.items()}
    ratios = {c: medians[f"{c}/bf16-mixed"] / medians[f"{c}/32-true"] for c in cases}
    finite = all(math.isfinite(r["final_loss"]) for rs in runs.values() for r in rs)
    rows = [
        [c, f"{medians[f'{c}/32-true']:.4f}", f"{medians[f'{c}/bf16-mixed']:.4f}", f"{ratios[c]:.3f}",
         f"<= {TARGETS[c]}", "PASS" if ratios[c] <= TARGETS[c] else "FAIL"]
        for c in cases
    ]  # fmt: skip
    print()
    bc.print_table(["case", "fp32 s/step", "bf16 s/step", "bf16/fp32", "target", ""], rows)
    print(f"\nall losses finite: {'yes' if finite else 'NO'}")
    bc.write_step_timings(
        args.out,
        "precision",
        info,
        args,
        per_step,
        ratio_bf16_to_fp32=ratios,
        targets={c: TARGETS[c] for c in cases},
        **{"pass": {c: ratios[c] <= TARGETS[c] for c in cases}},
    )
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
