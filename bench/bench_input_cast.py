"""bf16-mixed training-step time with and without the MLP's input-cast cache.

Under bf16-mixed, autocast casts the float32 full batch to bfloat16 at every step before
the first ``nn.Linear``; :class:`metairm_pl.models.input_cast.AutocastInputCache` casts it
once. Cases: ERM as Table 2 runs it (hidden 256, lr 1e-3, l2 1e-3) on k-class
Colored-MNIST-shaped data, 2 envs × ``--env-size`` examples of ``[k, 14, 14]``, k = 2, 5, 10,
under a real ``pl.Trainer`` (``bench_common``). Per k: one untimed warm-up run per variant,
then ``--repeats`` timed runs with the two variants alternating. Each run's per-step losses
must be bitwise equal between the variants (the cache changes no number); the script exits
1 otherwise. Target: cached/uncached ≤ 0.85 at k = 10.

Example (full size, CPU):  python bench/bench_input_cast.py --threads 1 --out bench/results/input_cast_cpu.json
Example (tiny check):      python bench/bench_input_cast.py --env-size 500 --steps 4 --repeats 1
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

CLASSES = (2, 5, 10)
VARIANTS = ("uncached", "cached")
TARGET_K10 = 0.85


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per timed run (>= 2)")
    p.add_argument("--repeats", type=int, default=4, help="timed runs of each k and variant")
    p.add_argument("--warmup-steps", type=int, default=3, help="steps of the untimed warm-up runs")
    p.add_argument("--env-size", type=int, default=bc.CMNIST_ENV_SIZE, help="examples per env (2 envs)")
    p.add_argument("--classes", type=int, nargs="+", default=list(CLASSES), help="values of k")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default=None, help="write a JSON result here")
    args = p.parse_args(argv)
    if args.steps < 2 or args.repeats < 1 or args.warmup_steps < 0 or min(args.classes) < 2:
        p.error("need --steps >= 2, --repeats >= 1, --warmup-steps >= 0 and every k >= 2")
    return args


def build_erm(num_classes: int, cached: bool, seed: int):
    from metairm_pl.algorithms.erm import ERM
    from metairm_pl.models.mlp import MLP

    torch.manual_seed(seed)
    num_outputs = 1 if num_classes == 2 else num_classes  # one logit for the binary task, as data=cmnist
    network = MLP((num_classes, 14, 14), num_outputs=num_outputs, hidden_dim=256, reuse_input_cast=cached)
    return ERM(network, functools.partial(torch.optim.Adam, lr=1e-3), num_classes=num_classes, l2_weight=1e-3)


def run(k: int, variant: str, args, envs, steps: int, device: torch.device) -> dict:
    module = build_erm(k, variant == "cached", args.seed)
    return bc.fit_and_time(module, envs, steps, device, args.deterministic, "bf16-mixed", num_classes=k)


def main(argv=None) -> int:
    args = parse_args(argv)
    bc.quiet_lightning()
    bc.configure_torch(args.threads, args.deterministic)
    device = bc.resolve_device(args.device)
    info = bc.system_info(device, args.deterministic)
    bc.print_system(info)
    print(f"config: steps={args.steps} repeats={args.repeats} envs=2x{args.env_size} k={args.classes} "
          "(ERM hidden 256, bf16-mixed; path: pl.Trainer.fit -> training_step)")  # fmt: skip

    per_step: dict[str, list[float]] = {}
    same_losses = True
    for k in args.classes:
        envs = bc.make_cmnist_like_envs(args.env_size, seed=args.data_seed, num_classes=k)
        if args.warmup_steps >= 2:
            for variant in VARIANTS:
                run(k, variant, args, envs, args.warmup_steps, device)
        for repeat in range(args.repeats):
            order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
            results = {variant: run(k, variant, args, envs, args.steps, device) for variant in order}
            for variant, result in results.items():
                per_step.setdefault(f"k{k}/{variant}", []).append(result["s_per_step"])
            same_losses &= torch.equal(results["cached"]["losses"], results["uncached"]["losses"])

    medians = {key: bc.median(values) for key, values in per_step.items()}
    ratios = {f"k{k}": medians[f"k{k}/cached"] / medians[f"k{k}/uncached"] for k in args.classes}
    rows = [
        [f"k = {k}", f"{medians[f'k{k}/uncached']:.4f}", f"{medians[f'k{k}/cached']:.4f}", f"{ratios[f'k{k}']:.3f}"]
        for k in args.classes
    ]
    print()
    bc.print_table(["case", "uncached s/step", "cached s/step", "cached/uncached"], rows)
    print(f"\nper-step losses bitwise equal with and without the cache: {'yes' if same_losses else 'NO'}")
    if 10 in args.classes:
        verdict = "PASS" if ratios["k10"] <= TARGET_K10 else "FAIL"
        print(f"target cached/uncached <= {TARGET_K10} at k = 10: {verdict}")
    bc.write_step_timings(
        args.out,
        "input_cast",
        info,
        args,
        per_step,
        ratio_cached_to_uncached=ratios,
        losses_bitwise_equal=same_losses,
        target_k10=TARGET_K10,
    )
    return 0 if same_losses else 1


if __name__ == "__main__":
    sys.exit(main())
