"""Multiruns: one failed job costs one line, never the sweep.

Inside a job of ``python train.py -m ...``, :func:`fail_job` turns the job's error into one
log line naming the job and the reason, appends it to the sweep directory's
``failed_jobs.jsonl``, and lets the sweep go on.  Hydra's basic sweeper would otherwise stop
the whole sweep at the end of the batch with a traceback (and ``sys.exit`` in a job would
stop it at once).

:class:`SweepSummary` (a Hydra callback, ``conf/hydra/default.yaml``) lists the jobs that
failed in this launch when the multirun ends, and makes the command exit with status 1 if
any did, so scripts notice.  The jobs may run in other processes or on other machines
(joblib, submitit, SLURM): the sweep directory is what they share.

:class:`ResumableSearch` (also a Hydra callback) lets a search whose Optuna study is kept in
storage (our ``hparams_search`` presets: SQLite in the sweep directory) resume: it creates
the sweep directory before the study is opened there, and lowers ``n_trials`` by the trials
the study has completed, so a relaunch completes the budget (hydra-optuna-sweeper would
otherwise run ``n_trials`` more); trials a killed launcher left running are marked failed.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from metairm_pl.files import append_jsonl, read_jsonl

log = logging.getLogger("sweep")

FAILED_JOBS_FILE = "failed_jobs.jsonl"  # in the sweep directory: one line per failed job

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class JobFailed(Exception):
    """Raised to a sweeper that reads objectives (Optuna): it records a failed trial."""


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_label() -> str:
    """``#<job number> (<the job's overrides>)``."""
    hydra_cfg = HydraConfig.get()
    return f"#{hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)})"


def fail_job(reason: str) -> None:
    """Report a failed sweep job in one line and hand the failure to the sweeper.

    The basic sweeper (with any launcher: basic, joblib, submitit) gets a normal return, so
    the other jobs run and the sweep ends with :class:`SweepSummary`'s list.  A sweeper that
    reads the return value as an objective (Optuna) gets :class:`JobFailed`, which it records
    as a failed trial (``hydra.sweeper.max_failure_rate`` decides how many it tolerates; our
    ``hparams_search`` presets tolerate all of them).
    """
    hydra_cfg = HydraConfig.get()
    label = job_label()
    log.error("job %s failed: %s", label, reason)
    record = {"time": time.time(), "job": label, "run_dir": hydra_cfg.runtime.output_dir, "reason": reason}
    append_jsonl(Path(hydra_cfg.sweep.dir) / FAILED_JOBS_FILE, record)
    if hydra_cfg.sweeper.get("_target_") != BASIC_SWEEPER:
        raise JobFailed(reason)


def failed_jobs(sweep_dir: Path, since: float) -> list[dict[str, Any]]:
    """The failed-job records of ``sweep_dir`` written at or after time ``since``."""
    path = sweep_dir / FAILED_JOBS_FILE
    if not path.is_file():
        return []
    return [record for record in read_jsonl(path) if record["time"] >= since]


class SweepSummary(Callback):
    """At the end of a multirun: one line per job that failed in it, and exit status 1."""

    def __init__(self) -> None:
        self.started: Optional[float] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.started is None:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        failures = failed_jobs(sweep_dir, self.started)
        if not failures:
            return
        log.error("%d job(s) of this multirun failed (listed in %s):", len(failures), sweep_dir / FAILED_JOBS_FILE)
        for record in failures:
            log.error("  job %s: %s", record["job"], record["reason"])
        sys.exit(1)


class ResumableSearch(Callback):
    """Before a multirun: create the sweep directory; for an Optuna study kept in storage,
    run only the trials its ``n_trials`` budget still lacks."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        sweeper = config.hydra.sweeper
        storage, study_name = sweeper.get("storage"), sweeper.get("study_name")
        if not storage or not study_name or "n_trials" not in sweeper:
            return
        held = trials_in_storage(str(storage), str(study_name))
        remaining = max(int(sweeper.n_trials) - held, 0)
        if held:
            log.info(
                "study %s holds %d trial(s): running %d more of n_trials=%d",
                study_name,
                held,
                remaining,
                sweeper.n_trials,
            )
        with read_write(sweeper):
            sweeper.n_trials = remaining


def trials_in_storage(storage: str, study_name: str) -> int:
    """How many trials study ``study_name`` in ``storage`` has ended (0 if there is no such study).

    Runs only while no launcher of the study runs, so a trial still ``RUNNING`` was left by a
    killed launcher: it is marked ``FAIL`` (its job may have finished its run directory, which a
    later trial with the same parameters then reads instead of training again) and not counted."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # optuna 2.10: no study of that name
        return 0
    stale = [trial for trial in study.trials if trial.state == TrialState.RUNNING]
    for trial in stale:
        study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
    if stale:
        log.info("study %s: %d trial(s) left running by a killed launcher marked failed", study_name, len(stale))
    return sum(trial.state == TrialState.COMPLETE for trial in study.trials)
