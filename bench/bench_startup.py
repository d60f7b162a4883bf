"""Where the seconds of a short ``python train.py`` go: interpreter, imports, exit, the run itself.

Each case is a fresh process, run ``--repeats`` times in turn; the table shows the median wall
and CPU (user + system) seconds. The differences between cases attribute the time:

* ``python``: the interpreter alone;
* ``import torch`` / ``import pytorch_lightning``: what the imports cost (Lightning imports
  torchmetrics, which imports torchvision, torch._dynamo and scipy.signal);
* ``... then os._exit``: the same without the interpreter's exit, whose final garbage
  collection traverses every object the imports made;
* ``... then gc.freeze()``: the same with those objects frozen out of the collector (what
  ``train.py`` does after its imports);
* ``train.py, 1 step``: a whole run on the synthetic data (Hydra, build, one step, evaluation,
  records), in a fresh temporary directory.

Example:  python bench/bench_startup.py --repeats 5 --out bench/results/startup_cpu.json
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "python": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "import pytorch_lightning": [sys.executable, "-c", "import pytorch_lightning"],
    "import pytorch_lightning, then os._exit": [sys.executable, "-c", "import os, pytorch_lightning; os._exit(0)"],
    "import pytorch_lightning, then gc.freeze()": [sys.executable, "-c", "import gc, pytorch_lightning; gc.freeze()"],
    "train.py, 1 step": [sys.executable, str(ROOT / "train.py"), "data=synthetic", "trainer.max_steps=1",
                         "trainer.val_check_interval=1", "logger=none", "trainer.enable_progress_bar=false"],
}  # fmt: skip


def timed(command: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of ``command`` in a fresh temporary directory."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the medians as JSON here")
    args = p.parse_args(argv)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name, command in CASES.items():
            samples[name].append(timed(command))
    rows, medians = [], {}
    for name, values in samples.items():
        wall, cpu = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        medians[name] = {"wall_s": wall, "cpu_s": cpu}
        rows.append([name, f"{wall:.2f}", f"{cpu:.2f}"])
    bc.print_table(["case", "median wall s", "median CPU s"], rows)
    info = bc.system_info(torch.device("cpu"), deterministic=True)
    bc.write_json(args.out, {"benchmark": "startup", "system": info, "repeats": args.repeats, "medians": medians})
    return 0


if __name__ == "__main__":
    sys.exit(main())
