"""CCA and projection-weighted CCA (PWCCA) similarity of two layer representations.

Morcos, Raghu & Bengio (2018), used in the Meta-IRM appendix (A.1, A.2) to compare a
layer's representation before/after the inner step and across test environments.

Activations are shaped ``(neurons, datapoints)``: one row per neuron, one column per
input, the same inputs (same order) on both sides. Everything is computed in float64.

* ``cca``               canonical correlations and canonical variates of the two sides.
* ``pwcca_similarity``  Σ_i α_i ρ_i, where α_i is how much side 1's neurons project on
                        canonical variate i (normalised to sum to 1): the textbook
                        definition (``method="textbook"``), or ``method="svcca"``, below.
* ``pwcca_svcca``       PWCCA as the authors' released code computes it (google/svcca,
                        ``compute_pwcca`` over ``cca_core.get_cca_similarity``), which the
                        Meta-IRM paper's Figs. 9/10 used.
* ``pwcca_distance``    1 − similarity.

The textbook weights come from side 1 only, so ``pwcca_similarity(a, b) !=
pwcca_similarity(b, a)`` in general; ``symmetric=True`` averages the two directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metairm_pl.errors import ConfigError

# --------------------------------------------------------------------------- validation


def _as_matrix(acts: object, name: str) -> np.ndarray:
    """``acts`` (numpy array, torch tensor or nested sequence) as a finite float64 2-D array."""
    if isinstance(acts, torch.Tensor):
        acts = acts.detach().cpu().to(torch.float64).numpy()
    try:
        matrix = np.asarray(acts, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{name} of type {type(acts).__name__} is not numeric: pass a numpy array or torch "
            "tensor of real numbers shaped (neurons, datapoints)."
        ) from err
    if matrix.ndim != 2:
        raise ConfigError(
            f"{name} has shape {matrix.shape}: it must be 2-D, (neurons, datapoints); "
            "flatten feature maps into the neuron axis first."
        )
    if not np.isfinite(matrix).all():
        raise ConfigError(f"{name} contains NaN or infinite values: all activations must be finite.")
    return matrix


def _check_epsilon(epsilon: float) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 <= epsilon < 1.0:
        raise ConfigError(
            f"epsilon={epsilon!r} is invalid: it is the relative singular-value cutoff and must "
            "lie in [0, 1) (default 1e-10)."
        )


def _check_same_datapoints(acts1: np.ndarray, acts2: np.ndarray) -> None:
    if acts1.shape[1] != acts2.shape[1]:
        raise ConfigError(
            f"acts1 has {acts1.shape[1]} datapoints (shape {acts1.shape}) but acts2 has "
            f"{acts2.shape[1]} (shape {acts2.shape}): both must be (neurons, datapoints) "
            "activations of the same inputs."
        )


def _check_not_degenerate(rank1: int, rank2: int, datapoints: int) -> None:
    """Reject a pair whose CCA is decided by dimension counting rather than by the data.

    Centred activations live in a (datapoints − 1)-dimensional space, so two subspaces of
    ranks r1, r2 share at least r1 + r2 − (datapoints − 1) directions: that many
    correlations would be exactly 1 whatever the activations are.
    """
    for name, rank in (("acts1", rank1), ("acts2", rank2)):
        if rank == 0:
            raise ConfigError(
                f"{name} has no neuron that varies over the datapoints (rank 0 after the "
                "singular-value cutoff): CCA needs at least one non-constant neuron per side."
            )
    if rank1 + rank2 >= datapoints:
        raise ConfigError(
            f"CCA is degenerate: acts1 has rank {rank1} and acts2 rank {rank2} but there are "
            f"only {datapoints} datapoints; with rank1 + rank2 >= datapoints some correlations "
            "are 1 by construction. Use more datapoints (ideally many times the number of "
            "neurons) or fewer neurons."
        )


# --------------------------------------------------------------------------- CCA


@dataclass(frozen=True)
class CCAResult:
    """Canonical correlations, sorted descending, and the matching canonical variates.

    ``directions1[i]`` and ``directions2[i]`` are unit-norm, zero-mean vectors over the
    datapoints, in the span of side 1's and side 2's neurons; their inner product is
    ``correlations[i]``. ``k = min(rank1, rank2)``, ranks taken after the cutoff.
    """

    correlations: np.ndarray  # (k,)
    directions1: np.ndarray  # (k, datapoints)
    directions2: np.ndarray  # (k, datapoints)
    rank1: int
    rank2: int


def _centre(acts: np.ndarray) -> np.ndarray:
    """Each neuron minus its mean over the datapoints."""
    return acts - acts.mean(axis=1, keepdims=True)


def _row_space_basis(centred: np.ndarray, epsilon: float) -> np.ndarray:
    """Orthonormal rows spanning the neurons' span, dropping singular values ≤ ε·max."""
    _, singular_values, right_vectors = np.linalg.svd(centred, full_matrices=False)
    if singular_values.size == 0 or singular_values[0] == 0.0:
        return right_vectors[:0]
    keep = singular_values > epsilon * singular_values[0]
    return right_vectors[keep]


def _cca_centred(centred1: np.ndarray, centred2: np.ndarray, epsilon: float) -> CCAResult:
    basis1 = _row_space_basis(centred1, epsilon)
    basis2 = _row_space_basis(centred2, epsilon)
    _check_not_degenerate(len(basis1), len(basis2), centred1.shape[1])
    left, correlations, right_t = np.linalg.svd(basis1 @ basis2.T, full_matrices=False)
    return CCAResult(
        correlations=np.clip(correlations, 0.0, 1.0),
        directions1=left.T @ basis1,
        directions2=right_t @ basis2,
        rank1=len(basis1),
        rank2=len(basis2),
    )


def _validated_centred(acts1: object, acts2: object, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    _check_epsilon(epsilon)
    matrix1, matrix2 = _as_matrix(acts1, "acts1"), _as_matrix(acts2, "acts2")
    _check_same_datapoints(matrix1, matrix2)
    return _centre(matrix1), _centre(matrix2)


def cca(acts1: object, acts2: object, epsilon: float = 1e-10) -> CCAResult:
    """Canonical correlation analysis of two ``(neurons, datapoints)`` activation sets.

    Each neuron is centred; each side is whitened through its SVD, keeping singular values
    above ``epsilon`` times the largest (this drops dead and linearly dependent neurons).
    The correlations are the singular values of the product of the two orthonormal bases.
    For float32 activations that are rank-deficient up to float32 round-off, pass a larger
    ``epsilon`` (about 1e-6), or the round-off directions are kept as real ones.
    """
    centred1, centred2 = _validated_centred(acts1, acts2, epsilon)
    return _cca_centred(centred1, centred2, epsilon)


# --------------------------------------------------------------------------- PWCCA


def _projection_weights(directions: np.ndarray, centred: np.ndarray) -> np.ndarray:
    """α_i = Σ_j |⟨h_i, z_j⟩| over the (centred) neurons z_j, normalised to sum to 1."""
    weights = np.abs(directions @ centred.T).sum(axis=1)
    return weights / weights.sum()


def _weighted_correlation(result: CCAResult, directions: np.ndarray, centred: np.ndarray) -> float:
    return float(_projection_weights(directions, centred) @ result.correlations)


PWCCA_METHODS = ("textbook", "svcca")


def pwcca_svcca(acts1: object, acts2: object, epsilon: float = 0.0) -> float:
    """PWCCA computed as google/svcca's ``compute_pwcca(acts1, acts2, epsilon)`` does.

    Differences from the textbook :func:`pwcca_similarity`, all taken from that code:

    * the covariances (``np.cov``, ddof 1) are rescaled by the largest absolute entry of each
      side's covariance; a neuron is kept when its rescaled variance is ``>= epsilon``, and
      ``epsilon`` is added to the kept diagonals before ``pinv`` and an eigendecomposition
      square root whiten them (so ``epsilon`` is an absolute cutoff and a ridge, not the
      relative singular-value cutoff of :func:`cca`);
    * the weighted side is the one with fewer kept neurons (side 1 on a tie);
    * the directions projected onto are the un-whitened coefficients (the SVD's left singular
      vectors) applied to the centred activations, with the neuron means added back,
      orthonormalised by a QR decomposition, and the weights are the absolute projections of
      the *uncentred* activations.

    The released code runs correctly only in its first branch (side 1 no wider than side 2;
    its second branch reads ``acts1`` where it means ``acts2``, and raises for unequal
    widths), and only when no neuron is cut (it subtracts the means of all neurons from the
    kept ones).  Here the two sides are swapped when side 2 is the narrower one, so the first
    branch always applies and the value does not depend on the argument order (the second
    branch, even as intended, would not give the same number: the added-back means make the
    directions depend on the SVD's sign choices), and the means of the kept neurons are used,
    which agrees with the released code whenever it runs.  Negative round-off eigenvalues of
    the inverse covariance are set to 0 before the square root (the code would give NaN).
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 <= epsilon < 1.0:
        raise ConfigError(f"epsilon={epsilon!r} is invalid: for method='svcca' it must lie in [0, 1) (default 0).")
    matrix1, matrix2 = _as_matrix(acts1, "acts1"), _as_matrix(acts2, "acts2")
    _check_same_datapoints(matrix1, matrix2)
    for name, matrix in (("acts1", matrix1), ("acts2", matrix2)):
        if matrix.shape[0] >= matrix.shape[1]:
            raise ConfigError(f"{name} has shape {matrix.shape}: method='svcca' needs fewer neurons than datapoints.")
    keep1, keep2 = _kept_neurons(matrix1, epsilon), _kept_neurons(matrix2, epsilon)
    if keep1.sum() > keep2.sum():  # weight the narrower side, through the released first branch
        matrix1, matrix2, keep1, keep2 = matrix2, matrix1, keep2, keep1
    n1 = matrix1.shape[0]
    covariance = np.cov(matrix1, matrix2)
    sigma11, sigma12, sigma22 = covariance[:n1, :n1], covariance[:n1, n1:], covariance[n1:, n1:]
    scale1, scale2 = np.abs(sigma11).max(), np.abs(sigma22).max()
    sigma11, sigma22, sigma12 = sigma11 / scale1, sigma22 / scale2, sigma12 / np.sqrt(scale1 * scale2)
    whiten1 = _inverse_sqrt(sigma11[np.ix_(keep1, keep1)] + epsilon * np.eye(keep1.sum()))
    whiten2 = _inverse_sqrt(sigma22[np.ix_(keep2, keep2)] + epsilon * np.eye(keep2.sum()))
    left, correlations, _ = np.linalg.svd(whiten1 @ sigma12[np.ix_(keep1, keep2)] @ whiten2)
    kept = matrix1[keep1]
    means = kept.mean(axis=1, keepdims=True)
    directions = left.T @ (kept - means) + means
    basis, _ = np.linalg.qr(directions.T)
    weights = np.abs(basis.T @ kept.T).sum(axis=1)
    return float((weights / weights.sum()) @ np.abs(correlations))


def _kept_neurons(matrix: np.ndarray, epsilon: float) -> np.ndarray:
    """The released code's cut: variance over the side's largest covariance entry (a variance)
    ``>= epsilon``.  A side where no neuron varies is an error (PWCCA is undefined)."""
    variances = matrix.var(axis=1, ddof=1)
    if variances.max() == 0.0:
        raise ConfigError("a side has no neuron that varies over the datapoints: PWCCA is undefined.")
    return variances / variances.max() >= epsilon


def _inverse_sqrt(matrix: np.ndarray) -> np.ndarray:
    """(pinv(matrix))^(1/2) through a symmetric eigendecomposition."""
    eigenvalues, eigenvectors = np.linalg.eigh(np.linalg.pinv(matrix))
    return eigenvectors @ np.diag(np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def pwcca_similarity(
    acts1: object, acts2: object, epsilon: float = 1e-10, symmetric: bool = False, method: str = "textbook"
) -> float:
    """PWCCA similarity in [0, 1]: canonical correlations weighted by side 1's projections.

    ``method="svcca"`` computes it as the authors' released code does instead
    (:func:`pwcca_svcca`; ``symmetric`` does not apply, the code picks its side itself).

    Not symmetric: the weights say how much of *side 1's* activity each canonical
    direction accounts for, so swapping the arguments can change the value.
    ``symmetric=True`` returns the mean of both directions (one CCA, two weightings).
    With tied correlations the split of weight inside the tie depends on the basis the
    SVD picks; real activations practically never tie (except all-1, which gives 1).
    See ``cca`` for ``epsilon`` and the input checks.
    """
    if method not in PWCCA_METHODS:
        raise ConfigError(f"method={method!r} is not known: allowed PWCCA methods are {list(PWCCA_METHODS)}.")
    if method == "svcca":
        return pwcca_svcca(acts1, acts2, epsilon=epsilon)
    centred1, centred2 = _validated_centred(acts1, acts2, epsilon)
    result = _cca_centred(centred1, centred2, epsilon)
    forward = _weighted_correlation(result, result.directions1, centred1)
    if not symmetric:
        return forward
    backward = _weighted_correlation(result, result.directions2, centred2)
    return 0.5 * (forward + backward)


def pwcca_distance(
    acts1: object, acts2: object, epsilon: float = 1e-10, symmetric: bool = False, method: str = "textbook"
) -> float:
    """``1 − pwcca_similarity(acts1, acts2, epsilon, symmetric, method)``."""
    return 1.0 - pwcca_similarity(acts1, acts2, epsilon=epsilon, symmetric=symmetric, method=method)


__all__ = ["PWCCA_METHODS", "CCAResult", "cca", "pwcca_distance", "pwcca_similarity", "pwcca_svcca"]
