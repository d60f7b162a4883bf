"""Ours beside the linear unit-tests' reference code (slow; needs a checkout of
facebookresearch/InvarianceUnitTests named by METAIRM_IUT_REFERENCE)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = os.environ.get("METAIRM_IUT_REFERENCE")


@pytest.mark.slow
@pytest.mark.skipif(
    not REFERENCE, reason="set METAIRM_IUT_REFERENCE to a checkout of facebookresearch/InvarianceUnitTests"
)
def test_erm_and_irmv1_agree_with_the_reference_within_seed_noise(capsys):
    spec = importlib.util.spec_from_file_location("vs_reference", ROOT / "bench" / "unit_tests_vs_reference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    status = bench.main(["--reference", REFERENCE, "--data-seeds", "0", "1", "--num-iterations", "300",
                         "--num-samples", "1000"])  # fmt: skip
    assert status == 0, capsys.readouterr().out
