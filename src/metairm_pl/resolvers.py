"""OmegaConf resolvers used by the configs."""

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """``${or_default:VALUE,DEFAULT}``: VALUE unless it is empty, then DEFAULT."""
    if not OmegaConf.has_resolver("or_default"):
        OmegaConf.register_new_resolver("or_default", lambda value, default: value if value else default)
