"""A Hydra multirun killed midway and launched again: finished jobs are not re-run, killed
jobs resume from their checkpoints, and the report fills every cell.

The sweep is 2 algorithms x 2 seeds on tiny synthetic data.  ERM runs are short and IRMv1
runs long (per-algorithm step budgets through ``+steps={erm:..,irm:..}`` and
``trainer.max_steps='${steps.${algorithm.name}}'``), so there is a wide window in which
some run is ``done`` and an IRMv1 run is not, with a checkpoint taken after its first
evaluation (so the relaunch must keep that record and drop later ones).  The test kills the
sweep in that window with SIGKILL to its whole process group (the command runs in its own
session), then runs the same command again.

Launchers (the test runs with each):

* ``hydra/launcher=local`` (the repo's joblib preset, 2 worker processes): jobs start in
  sweep order, so the ERM runs are done before the IRMv1 runs get far.
* ``hydra/launcher=submitit_local``: every job runs at once, in its own process under a
  submitit controller process (four jobs importing Lightning at once: on two cores about
  twice as long as the joblib case).

With either launcher the jobs run in other processes than ``train.py -m``, and killing
only that process does not stop them: a joblib worker finishes the job it is running (and
then idles, orphaned), and submitit's controllers are made to outlive the launching
process, so their jobs run to completion (both checked by hand).  All of them share the
command's process group, though, so a SIGKILL to the group stops everything at once, as a
crash of the machine or of the job allocation would; the test checks that no process of
the group survives before it looks at the files.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from metairm_pl.callbacks.checkpointing import checkpoint_step
from metairm_pl.files import read_jsonl
from metairm_pl.run_dir import last_checkpoint_path

ROOT = Path(__file__).resolve().parents[1]
TAG = "killed_sweep"
STEPS = {"erm": 20, "irm": 300}  # short, long
SEEDS = (0, 1)
VAL_EVERY = 50
CHECKPOINT_EVERY = 10
TIMEOUT_S = 300
LAUNCHERS = {
    "joblib": ["hydra/launcher=local"],
    "submitit_local": ["hydra/launcher=submitit_local"],
}
# Files a finished run never writes again (Hydra itself rewrites .hydra/ and appends to train.log).
FINISHED_FILES = (
    "results.jsonl", "final.json", "done", "config.yaml", "provenance.jsonl",
    "checkpoints/final.ckpt", "checkpoints/last.ckpt",
)  # fmt: skip


def sweep_command(launcher: str) -> list[str]:
    """The sweep as a user types it (run in a fresh directory: outputs go to ./outputs)."""
    steps = ",".join(f"{algorithm}:{n}" for algorithm, n in STEPS.items())
    return [
        sys.executable, str(ROOT / "train.py"), "-m",
        "data=synthetic", f"algorithm={','.join(STEPS)}", f"seed={','.join(map(str, SEEDS))}",
        "model.hidden_dim=8",
        f"+steps={{{steps}}}", "trainer.max_steps='${steps.${algorithm.name}}'",
        f"trainer.val_check_interval={VAL_EVERY}", f"checkpoint_every={CHECKPOINT_EVERY}",
        "logger=none", f"tag={TAG}", *LAUNCHERS[launcher],
    ]  # fmt: skip


def launch(command: list[str], log_path: Path) -> subprocess.Popen:
    """``command`` in its own session, in the log file's directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    log_file = open(log_path, "w")  # noqa: SIM115 - closed by running()
    process = subprocess.Popen(
        command, cwd=log_path.parent, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    process.log_file = log_file  # type: ignore[attr-defined]
    return process


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL every process of the command's group; wait until none is left."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)
    deadline = time.monotonic() + 60
    while group_members(process.pid):
        assert time.monotonic() < deadline, f"processes {group_members(process.pid)} survived the SIGKILL"
        time.sleep(0.05)


@contextlib.contextmanager
def running(command: list[str], log_path: Path) -> Iterator[subprocess.Popen]:
    """``command`` in its own session; whatever happens, no process of it outlives the block."""
    process = launch(command, log_path)
    try:
        yield process
    finally:
        if process.poll() is None or group_members(process.pid):
            kill_group(process)
        process.log_file.close()


def output_of(process: subprocess.Popen) -> str:
    return Path(process.log_file.name).read_text()


@dataclass(frozen=True)
class Job:
    algorithm: str
    seed: int


def run_dirs(sweep_dir: Path) -> dict[Job, Path]:
    """``sweeps/<tag>/synthetic/<algorithm>/<overrides>/seed=<seed>`` for every job started."""
    found = {}
    for directory in sweep_dir.glob("synthetic/*/*/seed=*"):
        job = Job(directory.parts[-3], int(directory.name.removeprefix("seed=")))
        assert job not in found, f"two directories for {job}: {found.get(job)}, {directory}"
        found[job] = directory
    return found


def is_done(directory: Path) -> bool:
    return (directory / "done").exists()


def is_resumable(directory: Path) -> bool:
    return not is_done(directory) and last_checkpoint_path(directory).exists()


def records_in(directory: Path) -> list[dict]:
    results = directory / "results.jsonl"
    return read_jsonl(results) if results.exists() else []  # none before the first evaluation


def resumable_after_an_evaluation(directory: Path) -> bool:
    records = records_in(directory)
    if not records or not is_resumable(directory):
        return False
    return checkpoint_step(last_checkpoint_path(directory)) >= records[0]["step"]  # replaced atomically: readable


def window_reached(sweep_dir: Path) -> bool:
    """Some run is done, and another is not, with a checkpoint taken after its first evaluation."""
    dirs = run_dirs(sweep_dir).values()
    return any(is_done(d) for d in dirs) and any(resumable_after_an_evaluation(d) for d in dirs)


def kill_in_window(process: subprocess.Popen, sweep_dir: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not window_reached(sweep_dir):
        if process.poll() is not None or time.monotonic() > deadline:
            state = {job: sorted(p.name for p in d.iterdir()) for job, d in run_dirs(sweep_dir).items()}
            pytest.fail(f"the sweep ended or timed out before the kill window; {state}\n{output_of(process)[-4000:]}")
        time.sleep(0.05)
    kill_group(process)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {name: ((directory / name).read_bytes(), (directory / name).stat().st_mtime_ns) for name in FINISHED_FILES}


def expected_steps(algorithm: str) -> list[int]:
    """Evaluation steps: every VAL_EVERY steps, and the last step."""
    return sorted(set(range(VAL_EVERY, STEPS[algorithm] + 1, VAL_EVERY)) | {STEPS[algorithm]})


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_killed_sweep_relaunch_skips_finished_and_resumes_the_rest(tmp_path, launcher):
    sweep_dir = tmp_path / "outputs" / "sweeps" / TAG
    command = sweep_command(launcher)

    with running(command, tmp_path / "first.log") as first:
        kill_in_window(first, sweep_dir)

    # What the kill left: finished runs, and unfinished ones (resumable where they have a checkpoint).
    before = run_dirs(sweep_dir)
    finished = {job: snapshot(d) for job, d in before.items() if is_done(d)}
    resumable = {job: checkpoint_step(last_checkpoint_path(d)) for job, d in before.items() if is_resumable(d)}
    kept_records = {job: [r for r in records_in(before[job]) if r["step"] <= step] for job, step in resumable.items()}
    assert finished and any(kept_records.values())
    assert len(finished) < len(STEPS) * len(SEEDS)

    with running(command, tmp_path / "relaunch.log") as relaunch:
        relaunch.wait(timeout=TIMEOUT_S)
    assert relaunch.returncode == 0, f"the relaunch exited with {relaunch.returncode}:\n{output_of(relaunch)[-6000:]}"

    after = run_dirs(sweep_dir)
    assert set(after) == {Job(algorithm, seed) for algorithm in STEPS for seed in SEEDS}
    for job, directory in after.items():
        log = (directory / "train.log").read_text()
        records = read_jsonl(directory / "results.jsonl")
        assert is_done(directory) and not (directory / "failed").exists(), job
        assert [r["step"] for r in records] == expected_steps(job.algorithm), job  # none lost, none twice
        assert json.loads((directory / "final.json").read_text())["step"] == STEPS[job.algorithm]
        if job in finished:  # (a) not re-run: its files untouched, and the skip is logged
            assert snapshot(directory) == finished[job], f"{job} was re-run"
            assert "run already finished in" in log, job
            assert "resuming" not in log, job
        else:  # (b) completed by the relaunch, resumed where it had a checkpoint
            assert "run already finished" not in log, job
        if job in resumable:
            assert f"resumed from step {resumable[job]} " in log, job
            assert records[: len(kept_records[job])] == kept_records[job], job

    # (c) the report fills every cell with both seeds
    report = subprocess.run(
        [sys.executable, "-m", "metairm_pl.reporting", str(sweep_dir), "--out", str(tmp_path / "report")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    rows = [line for line in report.stdout.splitlines() if line.startswith(("| erm ", "| irm "))]
    assert len(rows) == 2, report.stdout
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]  # algorithm, p0.9, train, n, notes
        assert "—" not in row and cells[-2] == str(len(SEEDS)) and cells[-1] == "", report.stdout
    with open(tmp_path / "report" / "table.csv", newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert {(c["algorithm"], c["env"]) for c in cells} == {(a, e) for a in STEPS for e in ("p0.9", "mean")}
    assert all(c["n"] == str(len(SEEDS)) and c["mean"] and c["std"] for c in cells), cells
    assert all(c["n_failed"] == c["n_unfinished"] == "0" for c in cells), cells
