"""``logger=wandb`` offline (``WANDB_MODE=offline``, no credentials): the run's W&B files,
read back with wandb's own reader, hold our config, grouping, history and summary; a run
that fails during training still finishes its W&B run.

wandb 0.31 writes an offline run as ``<run dir>/wandb/offline-run-<time>-<id>/`` whose
``run-<id>.wandb`` transaction log holds everything (``files/`` only gets
``requirements.txt`` and ``output.log``: ``config.yaml`` and ``wandb-summary.json`` are made
when the run is synced).  The log is read with ``wandb leet inspect --json`` (every record)
and ``--summary --json`` (the run's state, exit code, config and summary as wandb sees them).

Step stamps: Lightning logs with ``trainer/global_step`` = the number of batches finished
*before* the one after which it logs, so the evaluation that ``results.jsonl`` records at
step 10 (after 10 optimizer steps) is stamped 9 in W&B (and in ``csv/metrics.csv``);
:data:`LIGHTNING_STEP_OFFSET` names that shift.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
import yaml

from metairm_pl.errors import ConfigError
from metairm_pl.files import read_jsonl
from metairm_pl.run import train

SHORT = [
    "logger=wandb",
    "data=synthetic",
    "model.hidden_dim=8",
    "trainer.max_steps=20",
    "trainer.val_check_interval=5",
    "trainer.log_every_n_steps=5",
    "checkpoint_every=0",
]
EVAL_STEPS = [5, 10, 15, 20]
TRAIN_STEP_KEYS = {"step/loss", "step/risk", "step/penalty", "step/penalty_weight"}
LIGHTNING_STEP_OFFSET = 1  # W&B's trainer/global_step = our step - 1 (see the module docstring)


@pytest.fixture(autouse=True)
def wandb_offline(tmp_path, monkeypatch):
    """Offline, no credentials, every W&B directory under ``tmp_path``; a fresh W&B session."""
    for name in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_TAGS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc credentials
    for variable, folder in [("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "wandb_config"),
                             ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_DATA_DIR", "wandb_data")]:  # fmt: skip
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # settings are read when a W&B session starts
    yield
    wandb.teardown()


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def inspect(offline_run: Path, *flags: str) -> str:
    """The output of ``wandb leet inspect --json [flags] <offline run dir>``."""
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(offline_run)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def transaction_log(offline_run: Path) -> list[dict]:
    """Every record of the run's ``.wandb`` file, in order (``{"type": ..., <type>: {...}}``)."""
    return [json.loads(line) for line in inspect(offline_run).splitlines() if line.strip()]


def wandb_summary(offline_run: Path) -> dict:
    return json.loads(inspect(offline_run, "--summary"))


def records_of(log: list[dict], kind: str) -> list[dict]:
    return [record[kind] for record in log if record["type"] == kind]


def history(log: list[dict]) -> list[dict]:
    return [row["item"] for row in records_of(log, "history")]


def metrics_of(record: dict) -> dict:
    """The ``<split>/<env>/<metric>`` entries of a results.jsonl record."""
    return {key: value for key, value in record.items() if key.count("/") == 2}


def test_offline_run_holds_config_grouping_history_and_summary(make_config):
    cfg = make_config(SHORT + ["algorithm=irm", "seed=2", "tag=mysweep"])
    final = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert wandb.run is None  # finished by train()
    (offline_run,) = offline_runs(run_dir)
    log = transaction_log(offline_run)
    records = read_jsonl(run_dir / "results.jsonl")
    assert [r["step"] for r in records] == EVAL_STEPS

    # grouping: group = the tag (an experiment's or sweep's name), job type = algorithm
    (run,) = records_of(log, "run")
    assert run["project"] == "metairm-pl"
    assert run["run_group"] == "mysweep" and run["job_type"] == "irm"
    assert sorted(run["tags"]) == ["data=synthetic", "seed=2"]

    # config: the resolved config, as written to the run's config.yaml
    config = {}
    for update in [run.get("config", {})] + records_of(log, "config"):
        config.update(update.get("update", {}))
    config.pop("_wandb", None)
    assert config["algorithm"]["name"] == "irm" and config["seed"] == 2 and config["data"]["name"] == "synthetic"
    assert config == yaml.safe_load((run_dir / "config.yaml").read_text())

    # history: every evaluation with the values of results.jsonl, and the per-step training logs
    rows = history(log)
    eval_rows = [row for row in rows if "val/p0.1/acc" in row]
    assert [row["trainer/global_step"] + LIGHTNING_STEP_OFFSET for row in eval_rows] == EVAL_STEPS
    for row, record in zip(eval_rows, records):
        expected = metrics_of(record)
        assert {key: row[key] for key in expected} == expected
    assert {"val/p0.2/acc", "test/p0.9/acc", "train/p0.1/penalty"} <= set(expected)
    step_rows = [row for row in rows if "step/loss" in row]
    assert all(TRAIN_STEP_KEYS <= set(row) for row in step_rows)
    assert [row["trainer/global_step"] + LIGHTNING_STEP_OFFSET for row in step_rows] == [5, 10, 15, 20]
    # IRMv1's penalty weight: 1 until anneal_steps (190), so 1 at every logged step here
    assert [row["step/penalty_weight"] for row in step_rows] == [1.0] * 4

    # summary and state, as wandb's reader sees them: finished, the final evaluation's values
    summary = wandb_summary(offline_run)
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert sorted(summary["tags"]) == ["data=synthetic", "seed=2"]
    assert {key: summary["summary"][key] for key in final["metrics"]} == final["metrics"]
    assert summary["summary"]["test/p0.9/acc"] == final["summary"]["test/p0.9/acc"]
    assert summary["config"]["algorithm"]["name"] == "irm" and summary["config"]["seed"] == 2

    # the same command again finds the finished run: no second W&B run
    assert train(make_config(SHORT + ["algorithm=irm", "seed=2", "tag=mysweep"])) == final
    assert offline_runs(run_dir) == [offline_run]


def test_failed_run_still_finishes_its_wandb_run(make_config, monkeypatch):
    from metairm_pl.algorithms.base import Objective
    from metairm_pl.algorithms.erm import ERM
    from metairm_pl.errors import DivergenceError

    healthy = ERM.objective

    def diverging(self, batch):
        objective = healthy(self, batch)
        return Objective(risk=objective.risk * float("nan")) if self.global_step >= 7 else objective

    monkeypatch.setattr(ERM, "objective", diverging)
    cfg = make_config(SHORT + ["algorithm=erm", "seed=1"])
    with pytest.raises(DivergenceError, match="not finite at step 7"):
        train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert (run_dir / "failed").exists()
    assert wandb.run is None  # wandb.finish() ran on the way out

    (offline_run,) = offline_runs(run_dir)
    log = transaction_log(offline_run)
    (exit_record,) = records_of(log, "exit")
    assert exit_record["exit_code"] == 1
    (run,) = records_of(log, "run")
    assert run["run_group"] == "synthetic" and run["job_type"] == "erm"  # no tag: group = data name
    assert sorted(run["tags"]) == ["data=synthetic", "seed=1"]
    (record,) = read_jsonl(run_dir / "results.jsonl")  # the evaluation at step 5, before the divergence
    eval_rows = [row for row in history(log) if "val/p0.1/acc" in row]
    assert [row["trainer/global_step"] + LIGHTNING_STEP_OFFSET for row in eval_rows] == [record["step"]] == [5]

    summary = wandb_summary(offline_run)
    assert summary["state"] == "failed" and summary["exit_code"] == 1
    assert {key: summary["summary"][key] for key in metrics_of(record)} == metrics_of(record)


def test_config_error_before_training_leaves_no_wandb_run(make_config):
    """The W&B run starts lazily (at the first log): a run refused before training has none."""
    cfg = make_config(SHORT + ["algorithm=erm", "callbacks=std_early_stopping", "data.val_fraction=0"])
    with pytest.raises(ConfigError, match="val_fraction > 0"):
        train(cfg)
    assert wandb.run is None
    assert offline_runs(Path(cfg.paths.output_dir)) == []
