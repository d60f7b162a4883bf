"""Runs on a SLURM cluster: one owner of preemption, threads from the allocation, a readable console.

* **Preemption and time limits** belong to submitit (``hydra/launcher=slurm``): on its signal
  (``signal_delay_s`` before the time limit) or a preemption it requeues the job with the same
  arguments (``conf/hydra/launcher/slurm.yaml``: ``max_num_timeout``), and the relaunched run
  resumes from its last periodic checkpoint (``checkpoint_every``), bit for bit. Lightning's own
  SLURM auto-requeue is switched off (:func:`trainer_plugins`), so one handler owns the signal.
  A ``scontrol requeue`` restarts the job the same way.
* **Threads follow the allocation**: inside a SLURM job a run uses ``SLURM_CPUS_PER_TASK``
  intra-op threads (:func:`apply_allocation`), whatever the node has; elsewhere torch's default.
  The count is in each run's provenance.
* **A cluster without accounting** (``sacct`` answers "accounting storage is disabled") makes
  submitit warn at every poll; :class:`SlurmConsole` says so once and has submitit read job
  states from ``squeue`` instead (:class:`QueueWatcher`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("slurm")

NO_ACCOUNTING = "accounting storage is disabled"
FINISHED = "COMPLETED"  # the state of a job that has left the queue (its result file tells how it ended)


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def allocated_threads() -> Optional[int]:
    """``SLURM_CPUS_PER_TASK`` inside a SLURM job (None elsewhere, or when SLURM does not say)."""
    value = os.environ.get("SLURM_CPUS_PER_TASK")
    if not in_slurm_job() or not value or not value.isdigit() or int(value) < 1:
        return None
    return int(value)


def apply_allocation() -> None:
    """Use the allocation's CPUs as torch's intra-op threads inside a SLURM job."""
    threads = allocated_threads()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def trainer_plugins() -> list:
    """Inside a SLURM job: Lightning's SLURM environment without its auto-requeue (submitit owns it)."""
    if not in_slurm_job():
        return []
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def accounting_disabled() -> bool:
    """Whether ``sacct`` says this cluster keeps no accounting (False where sacct is missing)."""
    try:
        result = subprocess.run(["sacct", "-n", "-o", "JobID", "-j", "1"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode != 0 and NO_ACCOUNTING in (result.stderr + result.stdout).lower()


def _queue_watcher_class() -> type:
    from submitit.slurm.slurm import SlurmInfoWatcher

    class QueueWatcher(SlurmInfoWatcher):
        """submitit's watcher, reading job states from ``squeue`` (no accounting): a job that has
        left the queue is finished, and its result file says how it ended."""

        def update(self) -> None:
            to_check = sorted(self._registered - self._finished)
            if not to_check:
                return
            self._num_calls += 1
            command = [
                "squeue",
                "--array",
                "--noheader",
                "-o",
                "%i|%T|%N",
                "-j",
                ",".join(sorted({j.split("_")[0] for j in to_check})),
            ]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            queued = {}
            for line in result.stdout.splitlines():
                job_id, state, nodes = (line.split("|") + ["", ""])[:3]
                queued[job_id] = {"JobID": job_id, "State": state, "NodeList": nodes}
            for job_id in to_check:
                self._info_dict[job_id] = queued.get(job_id, {"JobID": job_id, "State": FINISHED, "NodeList": ""})
            self._last_status_check = time.time()
            for job_id in to_check:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return QueueWatcher


class SlurmConsole(Callback):
    """Before a multirun on ``hydra/launcher=slurm``: on a cluster without accounting, one line
    that says so, and submitit polling ``squeue`` instead of warning at every ``sacct`` call."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(config.hydra.launcher.get("_target_", ""))
        if not target.endswith("SlurmLauncher") or not accounting_disabled():
            return
        from submitit.slurm.slurm import SlurmJob

        SlurmJob.watcher = _queue_watcher_class()(delay_s=SlurmJob.watcher._delay_s)
        log.info(
            "this cluster keeps no job accounting (sacct: '%s'): job states are read from squeue, so a "
            "job's end is seen when it leaves the queue and its result file tells how it ended; no sacct "
            "history (elapsed time, memory) is available.",
            NO_ACCOUNTING,
        )
