"""OmegaConf resolvers used by the configs."""

import hashlib

from omegaconf import OmegaConf

MAX_DIRNAME_CHARS = 200  # file systems allow 255 bytes per path component


def run_dirname(overrides: str, default: str) -> str:
    """A run directory name from Hydra's ``override_dirname``: ``default`` when empty, the
    overrides themselves when short enough, else their first characters plus a hash of all
    of them (deterministic, so a relaunch finds the same directory)."""
    if not overrides:
        return default
    if len(overrides.encode()) <= MAX_DIRNAME_CHARS:
        return overrides
    digest = hashlib.sha256(overrides.encode()).hexdigest()[:12]
    return f"{overrides.encode()[: MAX_DIRNAME_CHARS - 14].decode(errors='ignore')}..{digest}"


def register_resolvers() -> None:
    """Register the resolvers below (idempotent).

    * ``${or_default:VALUE,DEFAULT}``: VALUE unless it is empty, then DEFAULT.
    * ``${run_dirname:OVERRIDES,DEFAULT}``: :func:`run_dirname`.
    """
    if not OmegaConf.has_resolver("or_default"):
        OmegaConf.register_new_resolver("or_default", lambda value, default: value if value else default)
    if not OmegaConf.has_resolver("run_dirname"):
        OmegaConf.register_new_resolver("run_dirname", run_dirname)
