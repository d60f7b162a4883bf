"""PWCCA similarity of two layers' activations, as the figures use it (undefined cases reported, not raised)."""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor

from metairm_pl.analysis.pwcca import PWCCA_METHODS, pwcca_similarity
from metairm_pl.errors import ConfigError

DEFAULT_METHOD = "svcca"  # as the PWCCA authors' released code, which the paper's figures used
METHODS = PWCCA_METHODS
# Per method, for float32 activations.  svcca: a neuron whose variance is under 1e-10 of the
# layer's largest is cut (dead ReLUs; the released default 0 keeps them, and a dead neuron
# then pulls PWCCA(x, x) down to ~0.87), and the 1e-10 ridge moves PWCCA by ~1e-10.
# textbook: relative singular-value cutoff that drops float32 round-off directions.
DEFAULT_EPSILONS = {"svcca": 1e-10, "textbook": 1e-6}
DEFAULT_EPSILON = None  # None: DEFAULT_EPSILONS[method]


def representation_similarity(
    acts1: Tensor,
    acts2: Tensor,
    epsilon: Optional[float] = DEFAULT_EPSILON,
    symmetric: bool = False,
    method: str = DEFAULT_METHOD,
) -> float:
    """PWCCA similarity of two ``(neurons, datapoints)`` representations of the same inputs.

    ``method="svcca"`` (default) computes it as google/svcca's ``compute_pwcca``
    (:func:`metairm_pl.analysis.pwcca.pwcca_svcca`: the narrower side is weighted);
    ``"textbook"`` weights side 1 (the reference: θ in Fig. 9, the p_e = 0.1 env in Fig. 10)
    unless ``symmetric``. ``epsilon`` defaults to ``DEFAULT_EPSILONS[method]``; for the textbook method 1e-6, the cutoff for float32 activations
    (:func:`metairm_pl.analysis.pwcca.cca`), so dead ReLUs and float32 round-off directions
    are dropped. One neuron on each side (a binary task's logit): PWCCA is then the absolute
    Pearson correlation. Raises ConfigError where PWCCA is undefined (a constant layer) or
    degenerate (neurons of both sides ≥ datapoints).
    """
    if epsilon is None:
        epsilon = DEFAULT_EPSILONS.get(method, 0.0)
    return pwcca_similarity(acts1, acts2, epsilon=epsilon, symmetric=symmetric, method=method)


def safe_similarity(
    acts1: Tensor,
    acts2: Tensor,
    epsilon: Optional[float] = DEFAULT_EPSILON,
    symmetric: bool = False,
    method: str = DEFAULT_METHOD,
) -> tuple[float, str]:
    """``(similarity, "")``, or ``(nan, reason)`` where :func:`representation_similarity` raises."""
    try:
        return representation_similarity(acts1, acts2, epsilon, symmetric, method), ""
    except ConfigError as error:
        return math.nan, str(error)
