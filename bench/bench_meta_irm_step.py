"""Cost of one full-batch training step: Meta-IRM (second order), Meta-IRM (first order) and ERM.

All three methods train the project's ``MLP`` (same width, same init seed) on the same
synthetic Colored-MNIST-shaped tensors (2 envs x ``--env-size`` examples of [2, 14, 14],
full batch).  Each is the project's LightningModule (``metairm_pl.algorithms.erm.ERM``,
``metairm_pl.algorithms.meta_irm.MetaIRM`` with ``first_order`` False/True) fitted by a
real ``pl.Trainer`` (max_steps=N, no logger, checkpointing, progress bar or validation),
so a step is exactly what a training run executes: data fetch and transfer hooks,
``training_step`` (objective, L2, finite checks, schedule, manual backward, Adam step,
``log_dict``) and the loop's bookkeeping.

Hyperparameters follow conf/algorithm/meta_irm.yaml (lr 1e-3, l2 1e-3, penalty weight 100,
inner_lr 0.1, 1 inner step, DropGrad 0.1, meta envs "others") and conf/algorithm/erm.yaml
(lr 1e-3, l2 1e-3) except the width, which is ``--hidden`` for all three (equal model).
Step cost does not depend on these values, except that a DropGrad rate > 0 draws one
Gaussian per parameter element per inner step (``--dropgrad 0`` leaves it out).

After one warm-up run of each method, the runs are interleaved with a rotating order over
``--repeats``; the table shows the median steady-state seconds per step (see
``bench_common``) and the ratios second-order/ERM and first-order/ERM, each judged against its
floor: the FLOP ratio of the same steps (``flops_meta_irm_step.py``), which no implementation
of this math beats by more than the elementwise work it removes. A ratio passes within
``OVERHEAD_ALLOWED`` (1.25) times its floor.

Example (full size, CPU):  python bench/bench_meta_irm_step.py --out bench/results/meta_irm_step_cpu.json
Example (tiny check):      python bench/bench_meta_irm_step.py --env-size 500 --hidden 32 --steps 5 --repeats 2
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

METHODS = ("erm", "meta_irm_2nd", "meta_irm_1st")
OVERHEAD_ALLOWED = 1.25  # a time ratio to ERM passes within this factor of its FLOP ratio (the floor)

# conf/algorithm/erm.yaml and conf/algorithm/meta_irm.yaml
ERM_LR, ERM_L2 = 0.001, 0.001
META_LR, META_L2, META_PENALTY_WEIGHT, META_DROPGRAD = 0.001, 0.001, 100.0, 0.1


def flop_floors(methods, args, envs) -> dict[str, float]:
    """FLOP ratio to ERM of each method's step on the same envs (``flops_meta_irm_step.py``)."""
    from flops_meta_irm_step import step_flops

    totals = {m: step_flops(m, args, envs)[0] for m in set(methods) | {"erm"}}
    return {m: totals[m] / totals["erm"] for m in methods if m != "erm"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per timed run (>= 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each method (order rotates)")
    p.add_argument("--warmup-steps", type=int, default=3, help="steps of the untimed warm-up run of each method")
    p.add_argument("--hidden", type=int, default=390)
    p.add_argument("--env-size", type=int, default=bc.CMNIST_ENV_SIZE, help="examples per env (2 envs)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--inner-lr", type=float, default=0.1)
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--dropgrad", type=float, default=META_DROPGRAD, help="Meta-IRM's DropGrad rate")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seed", type=int, default=0, help="model init seed (all methods)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch deterministic algorithms (the project's default: on)",
    )
    p.add_argument("--out", default=None, help="write a JSON result here")
    args = p.parse_args(argv)
    if args.steps < 2 or args.repeats < 1 or args.warmup_steps < 0:
        p.error("need --steps >= 2, --repeats >= 1, --warmup-steps >= 0")
    if "erm" not in args.methods:
        p.error("--methods must include erm (the ratios are relative to it)")
    return args


def build_module(method: str, args):
    from metairm_pl.algorithms.erm import ERM
    from metairm_pl.algorithms.meta_irm import MetaIRM
    from metairm_pl.algorithms.schedule import PenaltySchedule
    from metairm_pl.models.mlp import MLP

    torch.manual_seed(args.seed)  # same initialisation for every method; seeds MetaIRM's generator too
    network = MLP(bc.CMNIST_INPUT_SHAPE, num_outputs=1, hidden_dim=args.hidden)
    if method == "erm":
        return ERM(network, functools.partial(torch.optim.Adam, lr=ERM_LR), num_classes=2, l2_weight=ERM_L2)
    return MetaIRM(
        network,
        functools.partial(torch.optim.Adam, lr=META_LR),
        num_classes=2,
        l2_weight=META_L2,
        penalty=PenaltySchedule(weight=META_PENALTY_WEIGHT, anneal_steps=0, warmup_weight=1.0, rescale=True),
        inner_lr=args.inner_lr,
        inner_steps=args.inner_steps,
        meta_envs="others",
        first_order=(method == "meta_irm_1st"),
        dropgrad=args.dropgrad,
    )


def run(method: str, args, envs, steps: int, device: torch.device) -> dict:
    result = bc.fit_and_time(build_module(method, args), envs, steps, device, args.deterministic)
    losses = result["losses"]
    result["final_loss"] = float(losses[-1]) if losses is not None and len(losses) else float("nan")
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    device, envs, info = bc.setup(args)
    bc.print_system(info)
    methods = [m for m in METHODS if m in args.methods]
    print(
        f"config: steps={args.steps} repeats={args.repeats} warmup_steps={args.warmup_steps} hidden={args.hidden} "
        f"envs=2x{args.env_size} inner_lr={args.inner_lr} inner_steps={args.inner_steps} "
        f"dropgrad={args.dropgrad} methods={methods} "
        f"(path: pl.Trainer.fit -> training_step)"
    )

    if args.warmup_steps >= 2:
        for method in methods:
            run(method, args, envs, args.warmup_steps, device)

    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for repeat in range(args.repeats):
        shift = repeat % len(methods)
        for method in methods[shift:] + methods[:shift]:
            runs[method].append(run(method, args, envs, args.steps, device))

    per_step = {m: [r["s_per_step"] for r in runs[m]] for m in methods}
    medians = {m: bc.median(v) for m, v in per_step.items()}
    ratios = {m: medians[m] / medians["erm"] for m in methods if m != "erm"}
    floors = flop_floors(methods, args, envs)
    finite = {m: all(math.isfinite(r["final_loss"]) for r in runs[m]) for m in methods}

    rows = []
    for m in methods:
        ratio, floor = ratios.get(m), floors.get(m)
        verdict = "" if ratio is None else ("PASS" if ratio <= OVERHEAD_ALLOWED * floor else "FAIL")
        rows.append(
            [
                m,
                f"{medians[m]:.6f}",
                f"{min(per_step[m]):.6f}",
                f"{max(per_step[m]):.6f}",
                "1.000" if m == "erm" else f"{ratio:.3f}",
                "-" if ratio is None else f"{floor:.2f}",
                "-" if ratio is None else f"{ratio / floor:.2f}x",
                verdict,
                f"{runs[m][-1]['final_loss']:.5f}",
            ]
        )
    print()
    bc.print_table(
        ["method", "median s/step", "min s/step", "max s/step", "ratio to ERM", "FLOP floor", "of floor",
         f"<= {OVERHEAD_ALLOWED}x", "final loss (last run)"],
        rows,
    )  # fmt: skip
    print()
    print(f"all losses finite: {'yes' if all(finite.values()) else 'NO ' + str(finite)}")

    payload = {
        "benchmark": "meta_irm_step",
        "path": "pl.Trainer.fit (max_steps) -> LightningModule.training_step",
        "system": info,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "hyperparameters": {
            "erm": {"lr": ERM_LR, "l2": ERM_L2},
            "meta_irm": {
                "lr": META_LR,
                "l2": META_L2,
                "penalty_weight": META_PENALTY_WEIGHT,
                "dropgrad": args.dropgrad,
            },
        },
        "seconds_per_step": per_step,
        "median_seconds_per_step": medians,
        "ratio_to_erm": ratios,
        "flop_floor": floors,
        "ratio_of_floor": {m: ratios[m] / floors[m] for m in ratios},
        "pass": {m: ratios[m] <= OVERHEAD_ALLOWED * floors[m] for m in ratios},
        "final_loss": {m: [r["final_loss"] for r in runs[m]] for m in methods},
        "fit_seconds": {m: [r["fit_seconds"] for r in runs[m]] for m in methods},
    }
    bc.write_json(args.out, payload)
    return 0 if all(finite.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
