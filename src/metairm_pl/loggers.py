"""Logger factories whose behaviour depends on the run-time environment."""

from __future__ import annotations

import netrc
import os
from typing import Any, Optional, Sequence

from pytorch_lightning.loggers import WandbLogger


def wandb_credentials_available() -> bool:
    """True when W&B can authenticate: ``WANDB_API_KEY`` or an ``api.wandb.ai`` netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def make_wandb_logger(
    project: str,
    save_dir: str,
    entity: Optional[str] = None,
    group: Optional[str] = None,
    job_type: Optional[str] = None,
    name: Optional[str] = None,
    tags: Sequence[str] = (),
    offline: Optional[bool] = None,
    **kwargs: Any,
) -> WandbLogger:
    """A ``WandbLogger`` that goes offline by itself when no credentials are set.

    ``offline=None`` (default) decides from :func:`wandb_credentials_available` and the
    ``WANDB_MODE`` variable; offline runs can be uploaded later with ``wandb sync``.
    """
    if offline is None:
        offline = os.environ.get("WANDB_MODE") in ("offline", "disabled") or not wandb_credentials_available()
    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(
        project=project,
        entity=entity,
        group=group,
        job_type=job_type,
        name=name,
        tags=list(tags),
        save_dir=save_dir,
        offline=offline,
        **kwargs,
    )
