"""PWCCA similarity of two layers' activations, as the figures use it (undefined cases reported, not raised)."""

from __future__ import annotations

import math

from torch import Tensor

from metairm_pl.analysis.pwcca import pwcca_similarity
from metairm_pl.errors import ConfigError

DEFAULT_EPSILON = 1e-6  # relative singular-value cutoff for float32 activations (pwcca.cca)


def representation_similarity(
    acts1: Tensor, acts2: Tensor, epsilon: float = DEFAULT_EPSILON, symmetric: bool = False
) -> float:
    """PWCCA similarity of two ``(neurons, datapoints)`` representations of the same inputs.

    Weighted by side 1 (the reference: θ in Fig. 9, the p_e = 0.1 env in Fig. 10) unless
    ``symmetric``. ``epsilon`` defaults to 1e-6, the cutoff for float32 activations
    (:func:`metairm_pl.analysis.pwcca.cca`), so dead ReLUs and float32 round-off directions
    are dropped. One neuron on each side (a binary task's logit): PWCCA is then the absolute
    Pearson correlation. Raises ConfigError where PWCCA is undefined (a constant layer) or
    degenerate (neurons of both sides ≥ datapoints).
    """
    return pwcca_similarity(acts1, acts2, epsilon=epsilon, symmetric=symmetric)


def safe_similarity(
    acts1: Tensor, acts2: Tensor, epsilon: float = DEFAULT_EPSILON, symmetric: bool = False
) -> tuple[float, str]:
    """``(similarity, "")``, or ``(nan, reason)`` where :func:`representation_similarity` raises."""
    try:
        return representation_similarity(acts1, acts2, epsilon, symmetric), ""
    except ConfigError as error:
        return math.nan, str(error)
