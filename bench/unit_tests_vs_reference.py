"""ERM and IRMv1 on the six linear unit-tests, ours beside the reference's own ``scripts/main.py``.

Runs facebookresearch/InvarianceUnitTests (a checkout given by ``--reference``; nothing of it is
part of this project) offline on the CPU at its default hyperparameters (``--hparams default``,
model seed 0: Adam lr 1e-3, no weight decay; IRMv1 λ 0.9) for the given data seeds, and ours with
the same settings, problem by problem:

* ERM: ``algorithm=erm``, lr 1e-3, L2 0 (the reference pools the envs; with equal env sizes its
  loss is our mean of env risks);
* IRMv1: ``algorithm=irm`` with the reference's penalty (``dummy_bias=true``: the squared gradients
  w.r.t. a dummy scale and a dummy shift) and objective: the reference minimises
  ``(1 − λ)·mean_e R_e + λ·Σ_e P_e``, which is ``(1 − λ)`` times ours,
  ``mean_e R_e + w·mean_e P_e``, with ``w = n_envs·λ / (1 − λ)`` (27 for 3 envs), applied from
  step 0 without rescaling; Adam's steps do not depend on that factor (but for its ε).

Our runs use ``seed=1000`` (the reference seeds its model with ``model_seed + 1000``), so the
linear layer starts from the reference's weights, and ``data_seed`` as the reference's, so the
envs are its draws (``tests/data/test_linear_unit_tests.py``). The reference's ``torch.qr``
(removed from torch) is mapped to ``torch.linalg.qr`` and its ``git`` import (it names result
folders by commit) is stubbed, both by a ``sitecustomize`` of this script's; its code runs as is.

Per problem and method it prints the test error (the reference's "Avg" over the test envs) of
each side, mean ± standard error over the data seeds, and whether they agree within seed noise
(|difference| <= 2 standard errors of the difference). Exit status 1 if any pair does not.

Example:  python bench/unit_tests_vs_reference.py --reference /tmp/iut --data-seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = ("Example1", "Example1s", "Example2", "Example2s", "Example3", "Example3s")
IRM_LAMBDA = 0.9  # the reference's default
SHIM = {
    "sitecustomize.py": (
        "import torch\n"
        "def _qr(a, some=True):\n"
        "    return torch.linalg.qr(a, mode='reduced' if some else 'complete')\n"
        "torch.qr = _qr\n"
    ),
    "git.py": (
        "class _Head:\n    class object:\n        hexsha = 'reference'\n"
        "class Repo:\n    def __init__(self, *args, **kwargs):\n        self.head = _Head()\n"
    ),
}


def reference_errors(reference: Path, problem: str, model: str, seed: int, args, workdir: Path) -> list[float]:
    """The reference's test errors (one per env) of one run of its ``scripts/main.py``."""
    out = workdir / f"ref-{problem}-{model}-{seed}"
    command = [sys.executable, str(reference / "scripts" / "main.py"), "--model", model, "--dataset", problem,
               "--data_seed", str(seed), "--model_seed", "0", "--hparams", "default",
               "--num_iterations", str(args.num_iterations), "--num_samples", str(args.num_samples),
               "--output_dir", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(workdir / "shim"), "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=reference / "scripts")
    (results,) = out.rglob("*.jsonl")
    record = json.loads(results.read_text().splitlines()[0])
    return [value for key, value in sorted(record.items()) if key.startswith("error_test_E")]


def our_errors(problem: str, model: str, seeds: list[int], args, workdir: Path) -> dict[int, list[float]]:
    """Our test errors (one per env) for each data seed: one multirun of ``train.py``."""
    settings = ["algorithm=erm"] if model == "ERM" else [
        "algorithm=irm", "algorithm.dummy_bias=true", f"algorithm.penalty.weight={3 * IRM_LAMBDA / (1 - IRM_LAMBDA)}",
        "algorithm.penalty.anneal_steps=0", "algorithm.penalty.rescale=false",
    ]  # fmt: skip
    out = workdir / f"ours-{problem}-{model}"
    out.mkdir()
    command = [sys.executable, str(ROOT / "train.py"), "-m", "data=linear_unit_tests", f"data.problem={problem}",
               f"data.num_samples={args.num_samples}", "seed=1000", f"data_seed={','.join(map(str, seeds))}",
               *settings, "algorithm.optimizer.lr=0.001", "algorithm.l2_weight=0",
               f"trainer.max_steps={args.num_iterations}", f"trainer.val_check_interval={args.num_iterations}",
               "checkpoint_every=0", "logger=none", "tag=vs_reference"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}  # this checkout's code
    env.pop("METAIRM_LAUNCH_DIR", None)
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=out)
    errors = {}
    for final in out.rglob("final.json"):
        result = json.loads(final.read_text())
        metrics = result["metrics"]
        envs = sorted(key.split("/")[1] for key in metrics if key.startswith("test/") and key.endswith("/loss"))
        errors[result["data_seed"]] = [
            metrics.get(f"test/{env}/error", 1.0 - metrics.get(f"test/{env}/acc", math.nan)) for env in envs
        ]
    return errors


def mean_se(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, type=Path, help="a checkout of facebookresearch/InvarianceUnitTests")
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    p.add_argument("--models", nargs="+", default=["ERM", "IRMv1"], choices=["ERM", "IRMv1"])
    p.add_argument("--data-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--num-iterations", type=int, default=10000)
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--out", default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    if not (args.reference / "scripts" / "main.py").is_file():
        p.error(f"--reference {args.reference}: no scripts/main.py there")
    lines = [
        f"{args.num_iterations} full-batch steps, {args.num_samples} examples per env and split, data seeds "
        f"{', '.join(map(str, args.data_seeds))}; test error averaged over the test envs, mean ± standard error over seeds.",
        "",
        "| problem | method | reference | ours | difference | agree (≤ 2 SE) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    all_agree = True
    with tempfile.TemporaryDirectory() as root:
        workdir = Path(root)
        (workdir / "shim").mkdir()
        for name, text in SHIM.items():
            (workdir / "shim" / name).write_text(text)
        for problem in args.problems:
            for model in args.models:
                ours = our_errors(problem, model, args.data_seeds, args, workdir)
                ref = {s: reference_errors(args.reference, problem, model, s, args, workdir) for s in args.data_seeds}
                ref_avg = [statistics.fmean(ref[s]) for s in args.data_seeds]
                our_avg = [statistics.fmean(ours[s]) for s in args.data_seeds]
                (rm, rs), (om, os_) = mean_se(ref_avg), mean_se(our_avg)
                diff = om - rm
                agree = abs(diff) <= 2 * math.hypot(rs, os_) or abs(diff) < 1e-9
                all_agree &= agree
                lines.append(f"| {problem} | {model} | {rm:.4f} ± {rs:.4f} | {om:.4f} ± {os_:.4f} | {diff:+.4f} | "
                             f"{'yes' if agree else 'NO'} |")  # fmt: skip
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if all_agree else 1


if __name__ == "__main__":
    sys.exit(main())
