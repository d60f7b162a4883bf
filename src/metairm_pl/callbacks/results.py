"""Writes one JSON line per evaluation to ``results.jsonl`` (the source of truth for reports)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl

from metairm_pl.callbacks.run_callback import RunCallback
from metairm_pl.files import append_jsonl, atomic_write_text
from metairm_pl.run_dir import RESULTS_FILE


class ResultsWriter(pl.Callback):
    """After every evaluation append ``{"step", **run_info, **metrics}`` to ``results.jsonl``.

    ``run_info`` carries what identifies the run (algorithm, data, seed, data_seed, ...).
    Each line is appended and fsynced on its own, so a killed run keeps every record it
    finished.  Metrics come from the module's ``eval_metrics`` plus the ``record_fields()``
    of every :class:`~metairm_pl.callbacks.run_callback.RunCallback` (e.g. the early stop's std); attach this writer after
    those callbacks, so their fields are those of the current evaluation.  A run resumed from a
    checkpoint first drops the records written after it (:meth:`keep_until`).
    """

    def __init__(self, run_dir: str, run_info: Mapping[str, Any]) -> None:
        self.path = Path(run_dir) / RESULTS_FILE
        self.run_info = dict(run_info)
        self.last_step: int | None = None

    def keep_until(self, step: int) -> int:
        """For a resumed run: keep only the records with ``step <= step``, atomically.

        Kept lines are copied byte for byte; later records (and a truncated last line of a
        killed writer) are dropped, so after the resumed run the file equals an
        uninterrupted run's.  Returns the number of records kept.
        """
        kept: list[str] = []
        if self.path.exists():
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    if not line.endswith("\n"):
                        break
                    if line.strip() and json.loads(line)["step"] <= step:
                        kept.append(line)
            atomic_write_text(self.path, "".join(kept))
        self.last_step = json.loads(kept[-1])["step"] if kept else None
        return len(kept)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        record = {"step": int(trainer.global_step), **self.run_info}
        record.update(pl_module.eval_metrics)
        for callback in trainer.callbacks:
            if isinstance(callback, RunCallback):
                record.update(callback.record_fields())
        append_jsonl(self.path, record)
        self.last_step = record["step"]
