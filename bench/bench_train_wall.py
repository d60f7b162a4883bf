"""Whole-process wall time of ``python train.py [overrides]`` at bf16-mixed vs 32-true.

Runs the command as a user would (a fresh process each time: imports, data building,
training, evaluations, writing the run directory), in pairs: fp32 then bf16 on even
pairs, bf16 then fp32 on odd ones, each run in its own fresh output directory.  Reports
each run's wall seconds and final accuracies, the median per precision and the ratio
bf16/fp32 (target <= 0.35 for the default command, IRMv1 with the official settings).

Needs MNIST in ``--data-dir`` (``python -m metairm_pl.data.prepare --data-dir DIR``).

Example:  python bench/bench_train_wall.py --data-dir data --pairs 2 --out bench/results/train_wall_cpu.json
Example:  python bench/bench_train_wall.py --data-dir data -- algorithm=meta_irm
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")
TARGET = 0.35


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="MNIST location (paths.data_dir)")
    p.add_argument("--pairs", type=int, default=2, help="fp32/bf16 pairs (order alternates)")
    p.add_argument("--out", default=None, help="write a JSON result here")
    p.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = p.parse_args(argv)
    if args.pairs < 1:
        p.error("--pairs must be >= 1")
    return args


def run_once(precision: str, overrides: list[str], data_dir: str, workdir: Path) -> dict:
    command = [sys.executable, str(bc.REPO_ROOT / "train.py"), *overrides, f"trainer.precision={precision}",
               f"paths.data_dir={Path(data_dir).resolve()}", "logger=none", "trainer.enable_progress_bar=false"]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    (final_path,) = workdir.glob("outputs/runs/*/*/*/seed=*/final.json")
    final = json.loads(final_path.read_text())
    return {"precision": precision, "wall_s": wall, "step": final["step"], "summary": final["summary"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    info = bc.system_info(torch.device("cpu"), deterministic=True)
    bc.print_system(info)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        for pair in range(args.pairs):
            for precision in PRECISIONS if pair % 2 == 0 else PRECISIONS[::-1]:
                workdir = Path(scratch) / f"{pair}-{precision}"
                workdir.mkdir()
                runs.append(run_once(precision, args.overrides, args.data_dir, workdir))
                last = runs[-1]
                accuracies = ", ".join(f"{k} {v:.4f}" for k, v in last["summary"].items())
                print(
                    f"pair {pair} {precision:10s} {last['wall_s']:7.1f} s  step {last['step']}  {accuracies}",
                    flush=True,
                )
    medians = {p: statistics.median(r["wall_s"] for r in runs if r["precision"] == p) for p in PRECISIONS}
    ratio = medians["bf16-mixed"] / medians["32-true"]
    print(f"\nmedian wall: fp32 {medians['32-true']:.1f} s, bf16 {medians['bf16-mixed']:.1f} s; "
          f"bf16/fp32 {ratio:.3f} (target <= {TARGET}: {'PASS' if ratio <= TARGET else 'FAIL'})")  # fmt: skip
    bc.write_json(args.out, {
        "benchmark": "train_wall",
        "command": ["python", "train.py", *args.overrides],
        "system": info,
        "runs": runs,
        "median_wall_s": medians,
        "ratio_bf16_to_fp32": ratio,
        "target": TARGET,
        "pass": ratio <= TARGET,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
