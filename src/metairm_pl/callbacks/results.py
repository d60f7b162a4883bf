"""Writes one JSON line per evaluation to ``results.jsonl`` (the source of truth for reports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl

from metairm_pl.io import append_jsonl

RESULTS_FILE = "results.jsonl"


class ResultsWriter(pl.Callback):
    """After every evaluation append ``{"step", **run_info, **metrics}`` to ``results.jsonl``.

    ``run_info`` carries what identifies the run (algorithm, data, seed, data_seed, ...).
    Each line is appended and fsynced on its own, so a killed run keeps every record it
    finished.  Metrics come from the module's ``eval_metrics`` plus ``extra_metrics`` that
    other callbacks put on the module (e.g. the early-stopping std).
    """

    def __init__(self, run_dir: str, run_info: Mapping[str, Any]) -> None:
        self.path = Path(run_dir) / RESULTS_FILE
        self.run_info = dict(run_info)
        self.last_step: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        record = {"step": int(trainer.global_step), **self.run_info}
        record.update(pl_module.eval_metrics)
        record.update(getattr(pl_module, "extra_metrics", {}))
        append_jsonl(self.path, record)
        self.last_step = record["step"]
