"""The protocol between the generic run and the callbacks that take part in its bookkeeping.

A :class:`RunCallback` is a Lightning callback that may

* add fields to every evaluation record (:meth:`~RunCallback.record_fields`, written by the
  results writer),
* end training before ``max_steps`` by design (:meth:`~RunCallback.finished_by_design`: the
  run is then complete and marked ``done``, with ``stopped_early`` in ``final.json``), and
* need something of the data (:meth:`~RunCallback.check_data`, called before training).

The run (:mod:`metairm_pl.run`) and the search objectives ask every callback through this
protocol; none of them names a callback.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


class RunCallback(pl.Callback):
    """Base of callbacks that contribute to records, the run's verdict or its data checks."""

    def record_fields(self) -> dict[str, Any]:
        """Fields this callback adds to the record of the latest evaluation."""
        return {}

    def finished_by_design(self) -> bool:
        """Whether this callback ended training before ``max_steps`` as its rule says."""
        return False

    def check_data(self, datamodule: Any) -> None:
        """Raise a ConfigError, before training, if ``datamodule`` lacks what this callback needs."""
