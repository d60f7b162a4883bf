"""A run killed after a checkpoint and launched again resumes and ends bit-identical to an
uninterrupted run (CPU): every record of ``results.jsonl`` and ``final.json``, in full-batch
mode and in minibatch mode (envs of unequal sizes, checkpoints mid-epoch).

The end-to-end test runs the real command (``python train.py ...``) in subprocesses and
kills one with SIGKILL; the other tests exercise the pieces in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metairm_pl.callbacks.checkpointing import checkpoint_step
from metairm_pl.callbacks.results import ResultsWriter
from metairm_pl.files import read_jsonl
from metairm_pl.run import train
from metairm_pl.run_dir import last_checkpoint_path

ROOT = Path(__file__).resolve().parents[1]
# Tiny network and data. Checkpoints every 20 steps and a kill after the record of step 30:
# usually the resumed run must drop records written after its checkpoint.
COMMON = [
    "data=synthetic",
    "model.hidden_dim=16",
    "trainer.val_check_interval=10",
    "checkpoint_every=20",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "seed=3",
]
KILL_AFTER_RECORD = 30  # the checkpoint at step 20 is on disk once the record of step 30 is
# Minibatch mode, batch 32: env p0.1 has 100 examples (4 batches, the last of 4), env p0.2
# 224 (7 batches), so an epoch of the combined loader is 7 batches and p0.1 is cycled in it.
# The checkpoint at step 20 is mid-epoch (batch 6 of 7) and mid-pass of p0.1's second
# permutation, which the epoch's end cuts short; one at 40 would be at batch 5, mid-pass too.
MINIBATCH = [
    "data.full_batch=false",
    "data.batch_size=32",
    "data.train_envs.0.size=100",
    "data.train_envs.1.size=224",
]
MINIBATCH_EPOCH = 7
MAX_STEPS = (160, 640)  # a second attempt, longer, if the run ended before the kill landed
TIMEOUT_S = 240


def case_overrides(algorithm: str, max_steps: int) -> list[str]:
    cases = {
        "erm": ["algorithm=erm"],
        # the penalty weight jumps from 1 to 91257 at step 45, after the checkpoint resumed from
        "irm": ["algorithm=irm", "algorithm.penalty.anneal_steps=45"],
        "irm_minibatch": ["algorithm=irm", "algorithm.penalty.anneal_steps=45", *MINIBATCH],
        # DropGrad draws from the module's generator; early stopping (a stateful callback)
        # fires at the first evaluation after 3/4 of the steps
        "meta_irm": [
            "algorithm=meta_irm",
            "algorithm.dropgrad=0.3",
            "callbacks.std_early_stopping.std_threshold=1000",
            f"callbacks.std_early_stopping.min_steps={max_steps * 3 // 4}",
        ],
    }
    # bf16-mixed: the same cases with the network's matmuls in bfloat16 (autocast); the
    # others name 32-true, whatever this machine's default (metairm_pl.precision)
    fp32 = {name: overrides + ["trainer.precision=32-true"] for name, overrides in cases.items()}
    cases = fp32 | {f"{name}_bf16": overrides + ["trainer.precision=bf16-mixed"] for name, overrides in cases.items()}
    return COMMON + [f"trainer.max_steps={max_steps}"] + cases[algorithm]


def launch(overrides: list[str], output_root: Path, log_name: str) -> subprocess.Popen:
    """``python train.py`` as a user types it, in ``output_root``'s parent directory (which
    the default ``paths.output_root``, ``./outputs``, must then be), with one intra-op thread
    (both runs alike; spares the shared cores)."""
    assert output_root.name == "outputs", output_root
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    output_root.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(output_root.parent / log_name, "w")  # noqa: SIM115 - closed by finish()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        cwd=output_root.parent,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    process.log_file = log_file  # type: ignore[attr-defined]
    return process


def finish(process: subprocess.Popen) -> str:
    """Wait for ``process``; return its output; fail with the output if it failed."""
    try:
        process.wait(timeout=TIMEOUT_S)
    finally:
        stop(process)
    output = Path(process.log_file.name).read_text()
    assert process.returncode == 0, f"train.py exited with {process.returncode}:\n{output[-4000:]}"
    return output


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
    process.log_file.close()


def run_dir(output_root: Path) -> Path:
    (config,) = output_root.glob("runs/*/*/*/seed=*/config.yaml")
    return config.parent


def max_record_step(output_root: Path) -> int:
    results = list(output_root.glob("runs/*/*/*/seed=*/results.jsonl"))
    if not results:
        return -1
    return max((record["step"] for record in read_jsonl(results[0])), default=-1)


def kill_after_record(process: subprocess.Popen, output_root: Path, step: int) -> bool:
    """SIGKILL ``process`` once ``results.jsonl`` holds a record at ``step`` or later.

    False when the run ended by itself first (then there is nothing to resume).
    """
    deadline = time.monotonic() + TIMEOUT_S
    while max_record_step(output_root) < step:
        if process.poll() is not None:
            stop(process)
            return False
        if time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"no record at step >= {step} after {TIMEOUT_S} s")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=TIMEOUT_S)
    stop(process)
    # A kill that came too late shows as a clean exit, or as a finished run.
    return process.returncode == -signal.SIGKILL and not (run_dir(output_root) / "done").exists()


@pytest.mark.parametrize("algorithm", ["erm", "irm", "meta_irm", "irm_minibatch", "irm_bf16", "meta_irm_bf16"])
def test_killed_run_resumes_bit_identical(tmp_path, algorithm):
    for attempt, max_steps in enumerate(MAX_STEPS):
        overrides = case_overrides(algorithm, max_steps)
        reference_root, resumed_root = (
            tmp_path / f"reference{attempt}" / "outputs",
            tmp_path / f"resumed{attempt}" / "outputs",
        )
        # The uninterrupted run and the run to kill go side by side.
        reference = launch(overrides, reference_root, "run.log")
        victim = launch(overrides, resumed_root, "killed.log")
        try:
            killed = kill_after_record(victim, resumed_root, KILL_AFTER_RECORD)
            if killed:
                directory = run_dir(resumed_root)
                resume_step = checkpoint_step(last_checkpoint_path(directory))
                assert resume_step >= 20
                if algorithm.endswith("minibatch"):
                    assert resume_step % MINIBATCH_EPOCH != 0  # mid-epoch
                    assert [s["served"] for s in loader_states(last_checkpoint_path(directory))] == [resume_step] * 2
                output = finish(launch(overrides, resumed_root, "relaunch.log"))
            finish(reference)
        finally:
            stop(reference)
            stop(victim)
        if killed:
            break
    else:
        pytest.fail(f"every run ended before the kill landed (max_steps {MAX_STEPS}): the machine is too loaded")

    assert f"resumed from step {resume_step} " in output
    expected, actual = run_dir(reference_root), run_dir(resumed_root)
    assert (actual / "done").exists()
    expected_records, actual_records = read_jsonl(expected / "results.jsonl"), read_jsonl(actual / "results.jsonl")
    assert [r["step"] for r in actual_records] == [r["step"] for r in expected_records]
    assert actual_records == expected_records  # every key, exact floats
    assert (actual / "results.jsonl").read_bytes() == (expected / "results.jsonl").read_bytes()
    actual_final, expected_final = (json.loads((d / "final.json").read_text()) for d in (actual, expected))
    segments = actual_final.pop("provenance")  # where each process trained: the only difference
    assert [s["from_step"] for s in segments] == [0, resume_step]
    assert [s["from_step"] for s in expected_final.pop("provenance")] == [0]
    assert actual_final == expected_final
    if algorithm == "meta_irm":
        stop_step = max_steps * 3 // 4
        assert expected_records[-1]["step"] == stop_step and expected_records[-1]["early_stop/stop_step"] == stop_step


def loader_states(checkpoint_path) -> list[dict]:
    """The training loaders' states Lightning keeps in a checkpoint's fit-loop state."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    return checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]


# ----------------------------------------------------------------------------- in-process


SHORT = ["data=synthetic", "model.hidden_dim=16", "trainer.val_check_interval=10", "seed=5"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on shared, loaded cores run many times faster on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resume_from_a_checkpoint_between_evaluations(make_config):
    """Checkpoint at step 15 (no evaluation there) → the resumed run matches exactly."""
    overrides = SHORT + ["algorithm=meta_irm", "algorithm.dropgrad=0.3", "checkpoint_every=15"]
    expected = train(make_config(overrides + ["trainer.max_steps=40"], name="reference"))

    first = make_config(overrides + ["trainer.max_steps=25"], name="resumed")
    train(first)  # checkpoints at 15 only; writes records 10, 20 and 25 (the final evaluation)
    directory = Path(first.paths.output_dir)
    assert checkpoint_step(last_checkpoint_path(directory)) == 15
    (directory / "done").unlink()  # as if killed after the record of step 25
    (directory / "config.yaml").unlink()  # ... of a run whose budget was 40 steps all along

    resumed = train(make_config(overrides + ["trainer.max_steps=40"], name="resumed"))
    assert [segment["from_step"] for segment in resumed.pop("provenance")] == [0, 15]
    expected.pop("provenance")
    assert resumed == expected
    reference_dir = directory.parent / "reference"
    assert (directory / "results.jsonl").read_bytes() == (reference_dir / "results.jsonl").read_bytes()
    assert [r["step"] for r in read_jsonl(directory / "results.jsonl")] == [10, 20, 30, 40]


# Minibatch mode, batch 32: env p0.1 has 90 examples (3 batches, the last of 26), p0.2 has
# 160 (5 batches): an epoch is 5 batches, p0.1's second pass in it is cut after 2.
MINIBATCH_SHORT = SHORT + [
    "algorithm=irm",
    "algorithm.penalty.anneal_steps=12",
    "data.full_batch=false",
    "data.batch_size=32",
    "data.train_envs.0.size=90",
    "data.train_envs.1.size=160",
]


@pytest.mark.parametrize(
    ("every", "first_max_steps"),
    [
        (4, 6),  # step 4: mid-epoch, mid-pass of p0.1's cut-short second pass
        (3, 4),  # step 3: p0.1 has just run out (max_size_cycle starts it again next)
        (5, 6),  # step 5: end of an epoch, saved after the batch (Lightning restarts an epoch)
        (10, 12),  # step 10: end of an epoch, saved after the evaluation there
    ],
    ids=["mid-pass", "short-env-pass-end", "epoch-end", "epoch-end-after-evaluation"],
)
def test_minibatch_run_resumes_bit_identical(make_config, every, first_max_steps):
    """Every kind of place a minibatch checkpoint can fall at: the resumed run matches exactly."""
    expected = train(make_config(MINIBATCH_SHORT + ["trainer.max_steps=24", "checkpoint_every=0"], name="reference"))

    overrides = MINIBATCH_SHORT + [f"checkpoint_every={every}"]
    first = make_config(overrides + [f"trainer.max_steps={first_max_steps}"], name="resumed")
    train(first)
    directory = Path(first.paths.output_dir)
    assert checkpoint_step(last_checkpoint_path(directory)) == every
    states = loader_states(last_checkpoint_path(directory))
    assert [(s["num_examples"], s["served"]) for s in states] == [(90, every), (160, every)]
    (directory / "done").unlink()  # as if killed after the final record of that shorter run
    (directory / "config.yaml").unlink()  # ... of a run whose budget was 24 steps all along

    resumed = train(make_config(overrides + ["trainer.max_steps=24"], name="resumed"))
    assert [segment["from_step"] for segment in resumed.pop("provenance")] == [0, every]
    expected.pop("provenance")
    assert resumed == expected
    reference_dir = directory.parent / "reference"
    assert (directory / "results.jsonl").read_bytes() == (reference_dir / "results.jsonl").read_bytes()
    assert [r["step"] for r in read_jsonl(directory / "results.jsonl")] == [10, 20, 24]


def test_checkpoint_holds_everything_and_loads_weights_only(make_config):
    cfg = make_config(SHORT + ["algorithm=meta_irm", "trainer.max_steps=25", "checkpoint_every=10"])
    train(cfg)
    checkpoint = torch.load(last_checkpoint_path(cfg.paths.output_dir), map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 20
    assert checkpoint["optimizer_states"][0]["state"]  # Adam moments, manual optimization
    assert "StdThresholdEarlyStopping" in checkpoint["callbacks"]
    assert checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 20
    assert set(checkpoint["rng_states"]) >= {"torch", "numpy", "python", "generators"}
    assert "generator" in checkpoint["rng_states"]["generators"]
    assert not list(Path(cfg.paths.output_dir, "checkpoints").glob(".*"))  # no temporary left


def test_resume_false_starts_afresh_and_sets_partial_results_aside(make_config, caplog):
    overrides = SHORT + ["algorithm=erm", "trainer.max_steps=20", "checkpoint_every=10"]
    cfg = make_config(overrides)
    first = train(cfg)
    directory = Path(cfg.paths.output_dir)
    (directory / "done").unlink()
    partial = (directory / "results.jsonl").read_text()

    caplog.set_level("INFO", logger="metairm_pl.run")
    again = train(make_config(overrides + ["resume=false"]))
    assert "resuming" not in caplog.text
    assert again == first
    assert (directory / "results.interrupted-0.jsonl").read_text() == partial
    assert [r["step"] for r in read_jsonl(directory / "results.jsonl")] == [10, 20]


def test_no_checkpoint_at_the_last_step_or_when_disabled(make_config):
    cfg = make_config(SHORT + ["algorithm=erm", "trainer.max_steps=20", "checkpoint_every=10"])
    train(cfg)
    assert checkpoint_step(last_checkpoint_path(cfg.paths.output_dir)) == 10  # not 20: the run ends there
    off = make_config(SHORT + ["algorithm=erm", "trainer.max_steps=20", "checkpoint_every=0"], name="off")
    train(off)
    assert not last_checkpoint_path(off.paths.output_dir).exists()


def test_keep_until_drops_later_records_and_a_partial_line(tmp_path):
    writer = ResultsWriter(str(tmp_path), {})
    lines = [json.dumps({"step": step, "x": step / 3}, sort_keys=True) + "\n" for step in (10, 20, 30)]
    writer.path.write_text("".join(lines) + '{"step": 40, "x"')
    assert writer.keep_until(20) == 2
    assert writer.path.read_text() == "".join(lines[:2])
    assert writer.last_step == 20
    assert writer.keep_until(5) == 0 and writer.path.read_text() == "" and writer.last_step is None
