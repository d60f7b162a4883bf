"""Cost of one full-batch training step of every method, over ERM's, beside its FLOP count.

Each method is built from its own config (``conf/algorithm/<name>.yaml``, composed by Hydra,
so nothing here names a method) on the same MLP (``--hidden``, same init) and the same
Colored-MNIST-shaped synthetic envs (2 x ``--env-size`` of [2, 14, 14], full batch), with every
penalty switched on from the first step (anneal 0, EQRM's burn-in and PAIR-o's ERM phase 0), and fitted by a real
``pl.Trainer`` (``bench_common.fit_and_time``). The table shows the median steady-state seconds
per step over ``--repeats`` interleaved runs, the ratio to ERM, and the FLOPs of one step
(``objective``, L2 and backward, ``torch.utils.flop_counter``) over ERM's: the floor the time
ratio tends to when the step is compute-bound.

Example (full size, CPU):  python bench/bench_method_steps.py --out bench/results/method_steps_cpu.json
Example (tiny check):      python bench/bench_method_steps.py --env-size 500 --hidden 32 --steps 5 --repeats 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

from metairm_pl.algorithms import registry  # noqa: E402

BASELINE = "erm"


def build(name: str, args):
    """Method ``name`` as its config makes it, with every penalty on from step 0."""
    from metairm_pl.models.mlp import MLP

    composed = bc.load_composed([f"algorithm={name}", "data=cmnist"])
    if composed is None:
        raise SystemExit(f"conf/algorithm/{name}.yaml does not compose")
    node = {key: value for key, value in composed["algorithm"].items() if key != "name"}
    node.setdefault("penalty", {})["anneal_steps"] = 0
    for phase_end in ("burnin_steps", "switch_step"):  # EQRM's ERM burn-in, PAIR-o's ERM phase
        if phase_end in node:
            node[phase_end] = 0
    torch.manual_seed(args.seed)
    network = MLP(bc.CMNIST_INPUT_SHAPE, num_outputs=1, hidden_dim=args.hidden)
    method = instantiate(node, network=network, num_classes=2, num_outputs=1)
    method.setup_environments([env for env, _ in bc.CMNIST_ENVS])
    return method


def step_flops(name: str, args, envs) -> int:
    method = build(name, args)
    counter = FlopCounterMode(display=False)
    with counter:
        objective = method.objective(envs)
        penalty = objective.penalty if objective.penalty is not None else torch.zeros(())
        method.schedule.combine(objective.risk, penalty, method.l2_term(), 0).backward()
    return counter.get_total_flops()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=None, help="config names (default: every registered method)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed run (>= 2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hidden", type=int, default=390)
    p.add_argument("--env-size", type=int, default=bc.CMNIST_ENV_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    names = args.methods or [m.name for m in registry.methods().values() if m.preset_of is None]
    names = [BASELINE] + [n for n in names if n != BASELINE]
    device, envs, info = bc.setup(args)
    bc.print_system(info)
    flops = {name: step_flops(name, args, envs) for name in names}
    per_step: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # one untimed warm-up run each
        bc.fit_and_time(build(name, args), envs, 2, device, args.deterministic)
    for repeat in range(args.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            per_step[name].append(
                bc.fit_and_time(build(name, args), envs, args.steps, device, args.deterministic)["s_per_step"]
            )
    medians = {name: bc.median(values) for name, values in per_step.items()}
    rows = [
        [name, f"{medians[name]:.4f}", f"{medians[name] / medians[BASELINE]:.2f}", f"{flops[name] / 1e9:.2f}",
         f"{flops[name] / flops[BASELINE]:.2f}"]
        for name in sorted(names, key=registry.table_sort_key)
    ]  # fmt: skip
    bc.print_table(["method", "median s/step", "time / ERM", "GFLOP/step", "FLOPs / ERM"], rows)
    bc.write_step_timings(args.out, "method_steps", info, args, per_step, flops_per_step=flops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
