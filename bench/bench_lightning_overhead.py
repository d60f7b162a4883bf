"""Lightning overhead: our IRMv1 module under ``pl.Trainer`` vs a plain PyTorch loop of the same math.

Both paths train the project's ``MLP`` (same class, same init seed) with Adam on the same
synthetic Colored-MNIST-shaped tensors (2 envs x ``--env-size`` examples of [2, 14, 14],
full batch), with the official IRM Colored MNIST loss::

    loss = mean_e NLL_e + l2 * sum_w ||w||^2 + w_t * mean_e penalty_e,   divided by w_t if w_t > 1
    penalty_e = (d NLL_e(logits * s) / d s |_{s=1})^2,   w_t = 1 before --anneal steps, --penalty-weight after

* "ours":  ``metairm_pl.algorithms.irm.IRMv1`` fitted by a ``pl.Trainer`` (max_steps=N, no
  logger, checkpointing, progress bar or validation) on a ``MultiEnvDataModule`` subclass
  in full-batch mode (see ``bench_common.make_datamodule``).
* "plain": a hand-written loop (below), data moved to the device once, labels converted to
  float once, no Lightning.

The runs alternate (plain, ours, ours, plain, ...) after one warm-up run of each.  The
per-run time is the steady-state seconds per step (see ``bench_common``); the table shows
the median over the repeats and the ratio ours/plain (target <= 1.05).  Every run starts
from the same initialisation, so every run's final parameters and per-step losses are
compared with the first plain run's: the two paths must compute the same thing.

Example (full size, CPU):  python bench/bench_lightning_overhead.py --out bench/results/overhead_cpu.json
Example (tiny check):      python bench/bench_lightning_overhead.py --env-size 500 --hidden 32 --steps 5 --repeats 2
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

# Official IRM Colored MNIST hyperparameters (facebookresearch/InvariantRiskMinimization
# README), as in conf/algorithm/irm.yaml and conf/tuned/irm/cmnist.yaml.
OFFICIAL = {
    "hidden": 390,
    "lr": 0.0004898536566546834,
    "l2": 0.00110794568,
    "penalty_weight": 91257.18613115903,
    "anneal": 190,
}

TARGET_RATIO = 1.05
PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-5  # float32 tolerance for "same result"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50, help="optimizer steps per timed run (>= 2)")
    p.add_argument("--repeats", type=int, default=6, help="timed runs of each path (order alternates)")
    p.add_argument("--warmup-steps", type=int, default=5, help="steps of the untimed warm-up run of each path")
    p.add_argument("--hidden", type=int, default=OFFICIAL["hidden"])
    p.add_argument("--env-size", type=int, default=bc.CMNIST_ENV_SIZE, help="examples per env (2 envs)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--lr", type=float, default=OFFICIAL["lr"])
    p.add_argument("--l2", type=float, default=OFFICIAL["l2"])
    p.add_argument("--penalty-weight", type=float, default=OFFICIAL["penalty_weight"])
    p.add_argument("--anneal", type=int, default=OFFICIAL["anneal"], help="step from which the penalty weight applies")
    p.add_argument("--seed", type=int, default=0, help="model init seed (both paths)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch deterministic algorithms for both paths (the project's default: on)",
    )
    p.add_argument("--out", default=None, help="write a JSON result here")
    args = p.parse_args(argv)
    if args.steps < 2 or args.repeats < 1 or args.warmup_steps < 0:
        p.error("need --steps >= 2, --repeats >= 1, --warmup-steps >= 0")
    return args


# --------------------------------------------------------------------------- the two paths


def build_mlp(hidden: int, seed: int, device: torch.device):
    from metairm_pl.models.mlp import MLP

    torch.manual_seed(seed)
    return MLP(bc.CMNIST_INPUT_SHAPE, num_outputs=1, hidden_dim=hidden).to(device)


def run_plain(args, envs, steps: int, device: torch.device) -> dict:
    """The official IRMv1 objective as a bare PyTorch loop."""
    mlp = build_mlp(args.hidden, args.seed, device)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=args.lr)
    data = [(x.to(device), y.to(device=device, dtype=torch.float32)) for x, y in envs.values()]

    def mean_nll(logits, y):
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), y)

    def penalty(logits, y):
        scale = torch.ones((), device=device, requires_grad=True)
        (grad,) = torch.autograd.grad(mean_nll(logits * scale, y), [scale], create_graph=True)
        return grad.pow(2).sum()

    def step(index: int) -> torch.Tensor:
        nlls, penalties = [], []
        for x, y in data:
            logits = mlp(x)
            nlls.append(mean_nll(logits, y))
            penalties.append(penalty(logits, y))
        nll = torch.stack(nlls).mean()
        train_penalty = torch.stack(penalties).mean()
        weight_norm = sum(p.pow(2).sum() for p in mlp.parameters())  # = sum ||w||^2 (official: w.norm().pow(2))
        loss = nll + args.l2 * weight_norm
        weight = args.penalty_weight if index >= args.anneal else 1.0
        loss = loss + weight * train_penalty
        if weight > 1.0:
            loss = loss / weight
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    result = bc.time_plain_loop(step, steps, device)
    result["params"] = {k: v.detach().cpu().clone() for k, v in mlp.state_dict().items()}
    return result


def run_ours(args, envs, steps: int, device: torch.device) -> dict:
    """The project's IRMv1 LightningModule through pl.Trainer."""
    from metairm_pl.algorithms.irm import IRMv1
    from metairm_pl.algorithms.schedule import PenaltySchedule

    module = IRMv1(
        network=build_mlp(args.hidden, args.seed, torch.device("cpu")),  # the Trainer moves it
        optimizer=functools.partial(torch.optim.Adam, lr=args.lr),
        num_classes=2,
        l2_weight=args.l2,
        penalty=PenaltySchedule(weight=args.penalty_weight, anneal_steps=args.anneal, warmup_weight=1.0, rescale=True),
    )
    result = bc.fit_and_time(module, envs, steps, device, args.deterministic)
    result["params"] = {k: v.detach().cpu().clone() for k, v in module.network.state_dict().items()}
    return result


# --------------------------------------------------------------------------- comparison


def compare(reference: dict, other: dict) -> dict:
    param_diff = max((reference["params"][k] - other["params"][k]).abs().max().item() for k in reference["params"])
    params_close = all(
        torch.allclose(reference["params"][k], other["params"][k], rtol=PARAM_RTOL, atol=PARAM_ATOL)
        for k in reference["params"]
    )
    bitwise = all(torch.equal(reference["params"][k], other["params"][k]) for k in reference["params"])
    ref_losses, losses = reference["losses"], other["losses"]
    if losses is None or losses.shape != ref_losses.shape:
        loss_diff, losses_close = float("nan"), False
    else:
        loss_diff = (ref_losses - losses).abs().max().item()
        losses_close = torch.allclose(ref_losses, losses, rtol=PARAM_RTOL, atol=PARAM_ATOL)
        bitwise = bitwise and torch.equal(ref_losses, losses)
    return {
        "match": bool(params_close and losses_close),
        "bitwise": bool(bitwise),
        "max_abs_param_diff": param_diff,
        "max_abs_loss_diff": loss_diff,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    device, envs, info = bc.setup(args)
    bc.print_system(info)
    print(
        f"config: steps={args.steps} repeats={args.repeats} warmup_steps={args.warmup_steps} hidden={args.hidden} "
        f"envs=2x{args.env_size} lr={args.lr} l2={args.l2} penalty_weight={args.penalty_weight} anneal={args.anneal}"
    )
    conf = bc.load_composed(["algorithm=irm", "data=cmnist"])
    if conf is not None:
        a = conf["algorithm"]
        expected = {
            "lr": a.get("optimizer", {}).get("lr"),
            "l2": a.get("l2_weight"),
            "penalty_weight": a.get("penalty", {}).get("weight"),
            "anneal": a.get("penalty", {}).get("anneal_steps"),
            "hidden": conf.get("model", {}).get("hidden_dim"),
        }
        differ = {k: v for k, v in expected.items() if v != getattr(args, k)}
        print(
            "config cross-check (algorithm=irm data=cmnist): "
            + ("same values" if not differ else f"differs from conf in {differ}")
        )

    paths = {"plain": run_plain, "ours": run_ours}
    if args.warmup_steps >= 2:
        for name in ("plain", "ours"):
            paths[name](args, envs, args.warmup_steps, device)

    runs: dict[str, list[dict]] = {"plain": [], "ours": []}
    for repeat in range(args.repeats):
        order = ("plain", "ours") if repeat % 2 == 0 else ("ours", "plain")
        for name in order:
            runs[name].append(paths[name](args, envs, args.steps, device))

    reference = runs["plain"][0]
    checks = [compare(reference, run) for name in ("plain", "ours") for run in runs[name]]
    ours_checks = [compare(reference, run) for run in runs["ours"]]
    match = all(c["match"] for c in checks)

    per_step = {name: [r["s_per_step"] for r in runs[name]] for name in runs}
    medians = {name: bc.median(values) for name, values in per_step.items()}
    ratio = medians["ours"] / medians["plain"]
    paired = bc.median([o / p for o, p in zip(per_step["ours"], per_step["plain"])])

    rows = [
        [
            name,
            f"{medians[name]:.6f}",
            f"{min(per_step[name]):.6f}",
            f"{max(per_step[name]):.6f}",
            f"{bc.median([r['fit_seconds'] for r in runs[name]]):.3f}",
        ]
        for name in ("plain", "ours")
    ]
    print()
    bc.print_table(["path", "median s/step", "min s/step", "max s/step", "median run s (incl. setup)"], rows)
    print()
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"ratio ours/plain (of medians) = {ratio:.4f}   target <= {TARGET_RATIO}: {verdict}")
    print(f"ratio ours/plain (median of paired runs) = {paired:.4f}")
    worst = max(checks, key=lambda c: (c["max_abs_param_diff"], c["max_abs_loss_diff"]))
    print(
        f"same result (all {len(checks)} runs vs the first plain run, rtol={PARAM_RTOL} atol={PARAM_ATOL}): "
        f"{'yes' if match else 'NO -- the two paths compute different things'}; "
        f"bitwise identical: {'yes' if all(c['bitwise'] for c in checks) else 'no'}; "
        f"max |dparam| = {worst['max_abs_param_diff']:.3e}, max |dloss| = {worst['max_abs_loss_diff']:.3e}"
    )
    print(
        f"penalty anneal reached (steps > anneal), so the rescaled branch was compared too: {'yes' if args.steps > args.anneal else 'no'}"
    )
    cache = [r["device_cache_entries"] for r in runs["ours"]]
    print(
        f"datamodule device-copy cache entries after an ours run: {cache[0]} (1 expected if the full batch is reused)"
    )

    payload = {
        "benchmark": "lightning_overhead_irmv1",
        "system": info,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds_per_step": per_step,
        "median_seconds_per_step": medians,
        "fit_seconds": {name: [r["fit_seconds"] for r in runs[name]] for name in runs},
        "ratio_ours_over_plain": ratio,
        "ratio_ours_over_plain_paired_median": paired,
        "target_ratio": TARGET_RATIO,
        "pass": ratio <= TARGET_RATIO,
        "same_result": match,
        "comparisons_ours_vs_plain": ours_checks,
        "worst_comparison": worst,
        "device_cache_entries_after_ours_run": cache,
    }
    bc.write_json(args.out, payload)
    return 0 if match else 1


if __name__ == "__main__":
    sys.exit(main())
