"""Run one ``train.py`` command in several fresh processes and compare their records byte for byte.

Every run starts a new process in a new empty directory, so nothing is shared but the files
on disk; the variants change what a first run after a fresh install could change:

* ``plain``: as typed (random string hashing, as Python's default);
* ``hash-seed``: another ``PYTHONHASHSEED`` (set and dict orders of strings);
* ``cold-bytecode``: an empty ``PYTHONPYCACHEPREFIX``, so every module is compiled anew, as on
  the first import after an install (it allocates differently before training starts);
* ``threads=N``: ``--threads`` intra-op threads instead of the default (records are
  bit-identical only for the same thread count where reductions split by thread: listed apart).

The records (``results.jsonl``) of every variant but ``threads=N`` must be byte-identical;
exit status 1 otherwise. ``--data-dir`` is passed as ``METAIRM_DATA_DIR`` (the real MNIST).

Example:  python bench/bit_identity.py --repeats 2 -- trainer.max_steps=101
          python bench/bit_identity.py --variants plain hash-seed -- data=synthetic trainer.max_steps=20
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("plain", "hash-seed", "cold-bytecode", "threads")
OUR_ENV = ("METAIRM_LAUNCH_DIR", "METAIRM_DATA_DIR", "HYDRA_FULL_ERROR")


def run_once(
    overrides: list[str], variant: str, index: int, threads: int, data_dir: str | None, workdir: Path
) -> bytes:
    """The ``results.jsonl`` bytes of one fresh-process run of ``train.py OVERRIDES``."""
    env = {key: value for key, value in os.environ.items() if key not in OUR_ENV}
    env.pop("PYTHONHASHSEED", None)
    if variant == "hash-seed":
        env["PYTHONHASHSEED"] = str(1000 + index)
    if variant == "cold-bytecode":
        env["PYTHONPYCACHEPREFIX"] = str(workdir / "bytecode")
    if variant == "threads":
        env["OMP_NUM_THREADS"] = str(threads)
    if data_dir:
        env["METAIRM_DATA_DIR"] = data_dir
    command = [sys.executable, str(ROOT / "train.py"), *overrides, "logger=none", "trainer.enable_progress_bar=false"]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{variant} run {index} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    (records,) = workdir.glob("outputs/runs/*/*/*/seed=*/results.jsonl")
    return records.read_bytes()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="runs of each variant")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the 'threads' variant")
    p.add_argument("--data-dir", default=os.environ.get("METAIRM_DATA_DIR"))
    p.add_argument("overrides", nargs="*", help="train.py overrides (after --)")
    args = p.parse_args(argv)
    digests: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as root:
        for variant in args.variants:
            for index in range(args.repeats):
                workdir = Path(root) / f"{variant}-{index}"
                workdir.mkdir()
                records = run_once(args.overrides, variant, index, args.threads, args.data_dir, workdir)
                digest = hashlib.sha256(records).hexdigest()[:16]
                digests.setdefault(variant, []).append(digest)
                print(f"{variant:14s} run {index}: {len(records.splitlines())} records, sha256 {digest}", flush=True)
    same_count = {d for variant, ds in digests.items() if variant != "threads" for d in ds}
    print(f"records across the same-thread variants: {'identical' if len(same_count) == 1 else 'DIFFERENT'}")
    if "threads" in digests:
        print(f"with {args.threads} thread(s): {'identical' if set(digests['threads']) == same_count else 'different'}")
    return 0 if len(same_count) <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
