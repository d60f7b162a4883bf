"""Sweeps, requeues, time limits and searches on a real one-node SLURM cluster (marked ``slurm``:
``python -m pytest -m slurm``). The cluster is started by ``tests/slurm/cluster.sh start``; where it
cannot start (not root, no package registry) every test here is skipped with the reason."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = Path(__file__).resolve().parent / "cluster.sh"
TRAIN = str(ROOT / "train.py")
ON_CLUSTER = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
              "hydra.launcher.mem_gb=2", "logger=none"]  # fmt: skip
# Synthetic envs large enough that a job trains for a while (a few ms per step on one thread).
SLOW_SYNTHETIC = ["data=synthetic", "algorithm=irm", "data.n_features=400", "model.hidden_dim=128",
                  "data.train_envs.0.size=20000", "data.train_envs.1.size=20000", "algorithm.penalty.anneal_steps=100",
                  "trainer.val_check_interval=50", "checkpoint_every=50"]  # fmt: skip
TIMEOUT_S = 900

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("starting SLURM needs root")
    result = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.skip(f"the one-node SLURM cluster did not start: {(result.stdout + result.stderr)[-500:]}")
    return result.stdout


def environment() -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("METAIRM_LAUNCH_DIR", "HYDRA_FULL_ERROR")}
    return {**env, "PYTHONPATH": str(ROOT / "src")}


def launch(cwd: Path, *overrides: str) -> subprocess.Popen:
    """``python train.py -m`` on the cluster, in ``cwd`` (its console in ``cwd/launcher.log``)."""
    cwd.mkdir(parents=True, exist_ok=True)
    with open(cwd / "launcher.log", "w") as log:
        process = subprocess.Popen([sys.executable, TRAIN, "-m", *ON_CLUSTER, *overrides], cwd=cwd,
                                   env=environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    process.log_path = cwd / "launcher.log"  # type: ignore[attr-defined]
    return process


def finish(process: subprocess.Popen) -> str:
    """Wait for the launcher; its console."""
    process.wait(timeout=TIMEOUT_S)
    return process.log_path.read_text()  # type: ignore[attr-defined]


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs").rglob("results.jsonl"))


def wait_for(predicate, what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def job_logs(cwd: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (cwd / "outputs").rglob("*_log.out"))


def test_a_four_job_sweep_runs_as_an_array(cluster, tmp_path):
    process = launch(tmp_path, "data=synthetic", "algorithm=erm,irm", "seed=0,1", "trainer.max_steps=20",
                     "trainer.val_check_interval=10")  # fmt: skip
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    assert len([d for d in run_dirs(tmp_path) if (d / "done").exists()]) == 4
    assert output.count("Bypassing sacct error") == 0 and output.count("keeps no job accounting") == 1


def requeued_and_uninterrupted_agree(tmp_path: Path, settings: list[str]) -> None:
    """The same job twice on the cluster; one is requeued (``scontrol requeue``) once it has a
    checkpoint: it says it resumed, and its records equal the uninterrupted job's byte for byte."""
    reference = launch(tmp_path / "reference", *settings)
    requeued = launch(tmp_path / "requeued", *settings)
    wait_for(lambda: list((tmp_path / "requeued" / "outputs").rglob("checkpoints/last.ckpt")), "a checkpoint")
    (job,) = [p.name for p in (tmp_path / "requeued" / "outputs").rglob(".submitit/*") if re.fullmatch(r"\d+", p.name)]
    subprocess.run(["scontrol", "requeue", job], check=True)
    for process in (reference, requeued):
        output = finish(process)
        assert process.returncode == 0, output[-3000:]
    assert "resumed from step" in job_logs(tmp_path / "requeued")
    (expected,), (actual,) = run_dirs(tmp_path / "reference"), run_dirs(tmp_path / "requeued")
    assert (actual / "results.jsonl").read_bytes() == (expected / "results.jsonl").read_bytes()


def test_a_requeued_job_resumes_and_writes_the_same_bytes(cluster, tmp_path):
    requeued_and_uninterrupted_agree(tmp_path, [*SLOW_SYNTHETIC, "trainer.max_steps=1500"])


def test_a_job_past_its_time_limit_finishes_on_a_later_allocation(cluster, tmp_path):
    """A 1-minute time limit, signalled 30 s before it; the job needs about 1.5 allocations of
    training (under a varying load it may need more: up to 5 requeues are allowed)."""
    process = launch(tmp_path, *SLOW_SYNTHETIC, "trainer.max_steps=120", "trainer.val_check_interval=20",
                     "checkpoint_every=20", "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30",
                     "hydra.launcher.max_num_timeout=5")  # fmt: skip
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    (run,) = run_dirs(tmp_path)
    assert (run / "done").exists()
    logs = job_logs(tmp_path)
    assert "timed-out" in logs and "resumed from step" in logs


@pytest.mark.skipif(not os.environ.get("METAIRM_DATA_DIR"), reason="needs MNIST: set METAIRM_DATA_DIR")
def test_a_requeued_colored_mnist_job_writes_the_same_bytes(cluster, tmp_path):
    """The real thing: IRMv1 on Colored MNIST in bf16, requeued after its step-100 checkpoint."""
    requeued_and_uninterrupted_agree(
        tmp_path, ["algorithm=irm", "trainer.precision=bf16-mixed", "trainer.max_steps=301", "checkpoint_every=100"]
    )


def test_a_search_completes_its_study_after_its_launcher_is_killed(cluster, tmp_path):
    search = ["hparams_search=meta_irm_cmnist", "data=synthetic", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
              "model.hidden_dim=8", "trainer.max_steps=12", "trainer.val_check_interval=4",
              "callbacks.std_early_stopping.std_threshold=0.5", "algorithm.penalty.anneal_steps=2"]  # fmt: skip
    first = launch(tmp_path, *search)
    sweep = tmp_path / "outputs" / "sweeps" / "hparams_meta_irm_cmnist"
    wait_for(lambda: len(list(sweep.rglob("done"))) >= 2, "the first batch of trials")
    time.sleep(2)  # the launcher tells the study the batch's results
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    again = launch(tmp_path, *search)
    output = finish(again)
    assert again.returncode == 0, output[-3000:]
    import optuna

    study = optuna.load_study(study_name="meta_irm_cmnist", storage=f"sqlite:///{sweep}/optuna_synthetic.sqlite3")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6, [t.state.name for t in study.trials]  # and the killed batch's, if any, FAIL
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "FAIL"}
    trained = list(sweep.rglob("provenance.jsonl"))  # one line per process that trained a run
    assert all(len(p.read_text().splitlines()) == 1 for p in trained)  # no trial trained twice
