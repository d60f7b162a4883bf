"""The same command in fresh processes writes byte-identical records: another hash seed, and
every module compiled anew (as the first run after an install), change nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fresh_processes_write_the_same_bytes(capsys):
    spec = importlib.util.spec_from_file_location("bit_identity", ROOT / "bench" / "bit_identity.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    overrides = ["data=synthetic", "model.hidden_dim=64", "trainer.max_steps=12", "trainer.val_check_interval=6",
                 "trainer.precision=bf16-mixed"]  # fmt: skip
    status = bench.main(["--repeats", "1", "--variants", "plain", "hash-seed", "cold-bytecode", "--", *overrides])
    output = capsys.readouterr().out
    assert status == 0 and "same-thread variants: identical" in output, output
    assert output.count("2 records, sha256") == 3
