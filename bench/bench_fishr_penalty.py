"""Where Fishr's extra step time goes: its per-sample gradients beside a second backward.

On the Colored-MNIST-shaped synthetic envs (2 x ``--env-size``, full batch) and the MLP
(``--hidden``), one process times, interleaved over ``--repeats`` and reported as medians:

* ``forward``: both envs' features, logits and risks (what ERM computes);
* ``backward``: one backward of the mean risk through the whole network (the "second backward"
  the per-sample gradients are judged against);
* ``logit_grads``: Fishr's per-sample gradients w.r.t. the logits (``torch.func`` ``vmap`` of
  ``grad``), forward and backward, for both envs;
* ``variance_fp64``: Fishr's gradient variances of the classifier layer, as the method computes
  them (moments accumulated in float64), forward and backward into the features, both envs;
* ``variance_fp32``: the same two moments accumulated in float32 (not the method's code: what
  dropping float64 would save, with its largest relative error against float64).

Example (full size, CPU):  python bench/bench_fishr_penalty.py --threads 1 --out bench/results/fishr_penalty_cpu.json
Example (tiny check):      python bench/bench_fishr_penalty.py --env-size 500 --hidden 32 --repeats 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

from metairm_pl.algorithms.fishr import gradient_variance, logit_gradients  # noqa: E402
from metairm_pl.models.mlp import MLP  # noqa: E402

PARTS = ("forward", "backward", "logit_grads", "variance_fp64", "variance_fp32")


def variance_fp32(logit_grads, features):
    """The two moments of ``gradient_variance`` in float32 (for comparison only)."""
    n = len(features)
    weight = (logit_grads.square().t() @ features.square()) / n - ((logit_grads.t() @ features) / n).square()
    bias = logit_grads.square().mean(dim=0) - logit_grads.mean(dim=0).square()
    return torch.cat([bias.flatten(), weight.flatten()])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_repeat(network, envs) -> tuple[dict[str, float], float]:
    risk_fn = torch.nn.functional.binary_cross_entropy_with_logits
    out = {}
    for name, (x, y) in envs.items():
        features = network.features(x)
        logits = network.classifier(features)
        out[name] = (features, logits, y.float().view(-1, 1))
    seconds = {}

    def forward():
        for x, y in envs.values():
            risk_fn(network(x), y.float().view(-1, 1))

    seconds["forward"] = timed(forward)
    risk = torch.stack([risk_fn(logits, y) for _, logits, y in out.values()]).mean()
    seconds["backward"] = timed(lambda: risk.backward(retain_graph=True))
    leaves = {name: (f.detach().requires_grad_(), z.detach().requires_grad_(), y) for name, (f, z, y) in out.items()}

    def grads_only():
        total = sum(logit_gradients(z, y, risk_fn).sum() for _, z, y in leaves.values())
        total.backward()

    seconds["logit_grads"] = timed(grads_only)
    fixed = {name: (f, logit_gradients(z, y, risk_fn).detach().requires_grad_()) for name, (f, z, y) in leaves.items()}
    seconds["variance_fp64"] = timed(lambda: sum(gradient_variance(g, f).sum() for f, g in fixed.values()).backward())
    seconds["variance_fp32"] = timed(lambda: sum(variance_fp32(g, f).sum() for f, g in fixed.values()).backward())
    error = max(
        ((variance_fp32(g, f) - gradient_variance(g, f)).abs() / gradient_variance(g, f).abs().clamp_min(1e-30))
        .max()
        .item()
        for f, g in fixed.values()
    )
    network.zero_grad(set_to_none=True)
    return seconds, error


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hidden", type=int, default=390)
    p.add_argument("--env-size", type=int, default=bc.CMNIST_ENV_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", choices=["cpu"])
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    _, envs, info = bc.setup(args)
    bc.print_system(info)
    torch.manual_seed(args.seed)
    network = MLP(bc.CMNIST_INPUT_SHAPE, num_outputs=1, hidden_dim=args.hidden)
    one_repeat(network, envs)  # warm-up
    runs = [one_repeat(network, envs) for _ in range(args.repeats)]
    per_part = {part: [seconds[part] for seconds, _ in runs] for part in PARTS}
    medians = {part: bc.median(values) for part, values in per_part.items()}
    rows = [[part, f"{medians[part]:.4f}", f"{medians[part] / medians['backward']:.2f}"] for part in PARTS]
    bc.print_table(["part (both envs)", "median s", "/ backward"], rows)
    error = max(e for _, e in runs)
    print(f"variance_fp32 vs variance_fp64: largest relative difference {error:.2e}")
    bc.write_json(args.out, {
        "benchmark": "fishr_penalty", "system": info,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds": per_part, "median_seconds": medians, "fp32_max_relative_difference": error,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
