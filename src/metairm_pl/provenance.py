"""Where a run ran: what decides whether two runs' records can be bit-identical.

Float rounding depends on the processor (its vector units, the kernels torch picks for it),
on the number of threads a reduction is split over and on the software versions, so records
are bit-identical only for the same command on the same hardware, thread count, precision,
torch and Lightning. Each process that trains a run (a resumed run has several) appends one
:func:`provenance` line to the run directory's ``provenance.jsonl``; ``final.json`` carries
them all, and the report marks a row whose runs ran on different hardware
(:func:`hardware_key`).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Mapping, Optional


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance(precision: str, accelerator: str, from_step: int = 0) -> dict[str, Any]:
    """The facts of this process that the bits of a record depend on."""
    import pytorch_lightning as pl
    import torch

    on_gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return {
        "from_step": int(from_step),
        "device": torch.cuda.get_device_name(0) if on_gpu else cpu_model(),
        "accelerator": "cuda" if on_gpu else "cpu",
        "threads": torch.get_num_threads(),
        "precision": precision,
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def hardware_key(segment: Mapping[str, Any]) -> str:
    """What must be equal for two runs' records to be comparable bit for bit (precision is
    part of the run's name already)."""
    return f"{segment.get('device')} ×{segment.get('threads')} threads, torch {segment.get('torch')}"


def hardware_of(final: Optional[Mapping[str, Any]]) -> Optional[frozenset[str]]:
    """The hardware keys of a run's ``final.json`` segments; None when it recorded none."""
    segments = (final or {}).get("provenance")
    if not segments:
        return None
    return frozenset(hardware_key(segment) for segment in segments)
