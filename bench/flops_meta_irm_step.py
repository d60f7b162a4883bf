"""Floating-point operations of one training step: Meta-IRM (2nd and 1st order) vs ERM.

Counts, with ``torch.utils.flop_counter.FlopCounterMode``, the FLOPs of exactly what the
project's modules compute in a step: ``objective`` (ERM: one forward per env; Meta-IRM:
``meta_objective``'s inner forwards, inner gradients and meta forwards), the L2 term, and
the backward pass of the combined loss, on the ``MLP`` of ``--hidden`` over Colored-MNIST-shaped
synthetic envs.  FLOP ratios are what the time ratios of ``bench_meta_irm_step.py`` tend to
when the step is compute-bound (large batches on CPU), so they are the floor of those
ratios for this math: no implementation of the same computation can beat them by more
than the non-matmul overhead it removes.

Example:  python bench/flops_meta_irm_step.py --env-size 2500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
from bench_meta_irm_step import METHODS, build_module  # noqa: E402


def step_flops(method: str, args, envs) -> tuple[int, dict]:
    module = build_module(method, args)
    batch = {name: (x, y) for name, (x, y) in envs.items()}
    counter = FlopCounterMode(display=False)
    with counter:
        objective = module.objective(batch)
        penalty = objective.penalty if objective.penalty is not None else torch.zeros(())
        loss = module.schedule.combine(objective.risk, penalty, module.l2_term(), 0)
        loss.backward()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=390)
    p.add_argument("--env-size", type=int, default=bc.CMNIST_ENV_SIZE)
    p.add_argument("--inner-lr", type=float, default=0.1)
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--dropgrad", type=float, default=0.1, help="Meta-IRM's DropGrad rate (the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    args = p.parse_args(argv)
    envs = bc.make_cmnist_like_envs(args.env_size, seed=args.data_seed)
    totals = {}
    for method in METHODS:
        totals[method], by_op = step_flops(method, args, envs)
        ops = ", ".join(f"{op.split('.')[-1]} {n / 1e9:.2f}" for op, n in sorted(by_op.items()))
        print(f"{method:14s} {totals[method] / 1e9:9.2f} GFLOP/step   ({ops})")
    for method in METHODS[1:]:
        print(f"{method} / erm = {totals[method] / totals['erm']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
