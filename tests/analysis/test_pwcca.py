import math

import numpy as np
import pytest
import torch

from metairm_pl.analysis.pwcca import cca, pwcca_distance, pwcca_similarity
from metairm_pl.errors import ConfigError


def gaussian(rows: int, datapoints: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, datapoints))


def well_conditioned(size: int, seed: int) -> np.ndarray:
    """A random invertible matrix with singular values in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    q1, _ = np.linalg.qr(rng.standard_normal((size, size)))
    q2, _ = np.linalg.qr(rng.standard_normal((size, size)))
    return q1 @ np.diag(rng.uniform(0.5, 2.0, size)) @ q2


def noisy_copy(acts: np.ndarray, rows: int, noise: float, seed: int) -> np.ndarray:
    """``rows`` random mixtures of ``acts`` plus independent Gaussian noise."""
    rng = np.random.default_rng(seed)
    mixed = rng.standard_normal((rows, acts.shape[0])) @ acts
    return mixed + noise * rng.standard_normal((rows, acts.shape[1]))


def centred_orthonormal(datapoints: int, count: int, seed: int) -> np.ndarray:
    """``count`` orthonormal, zero-mean vectors over the datapoints, as rows."""
    vectors = np.random.default_rng(seed).standard_normal((datapoints, count))
    q, _ = np.linalg.qr(vectors - vectors.mean(axis=0))
    return q.T


# --------------------------------------------------------------------------- formulas


def test_single_neurons_give_absolute_pearson_correlation():
    x = gaussian(1, 300, seed=0)
    y = -0.6 * x + gaussian(1, 300, seed=1) + 5.0
    pearson = abs(np.corrcoef(x[0], y[0])[0, 1])
    assert cca(x, y).correlations == pytest.approx([pearson], abs=1e-12)
    assert pwcca_similarity(x, y) == pytest.approx(pearson, abs=1e-12)


def test_one_neuron_against_many_gives_multiple_correlation():
    x = gaussian(3, 400, seed=2)
    y = np.array([1.0, -2.0, 0.5]) @ x + 2.0 * gaussian(1, 400, seed=3)[0]
    design = np.column_stack([x.T, np.ones(400)])
    fitted = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    multiple_r = abs(np.corrcoef(fitted, y)[0, 1])
    assert pwcca_similarity(y[None], x) == pytest.approx(multiple_r, abs=1e-12)


def test_hand_computed_weights_and_asymmetry():
    # side 1: neurons 3·u1 and u2; side 2: u1 and cosθ·u2 + sinθ·u3 (u orthonormal).
    # Correlations are 1 (along u1) and cosθ (along u2).
    # Side-1 weights: |<u1, 3u1>| = 3 and |<u2, u2>| = 1  -> (3 + cosθ) / 4.
    # Side-2 weights: |<u1, u1>| = 1 and |<y2, y2>| = 1   -> (1 + cosθ) / 2.
    u1, u2, u3 = centred_orthonormal(60, 3, seed=4)
    cos = 0.3
    side1 = np.stack([3.0 * u1, u2])
    side2 = np.stack([u1, cos * u2 + math.sqrt(1 - cos**2) * u3])
    forward, backward = (3 + cos) / 4, (1 + cos) / 2
    assert cca(side1, side2).correlations == pytest.approx([1.0, cos], abs=1e-12)
    assert pwcca_similarity(side1, side2) == pytest.approx(forward, abs=1e-12)
    assert pwcca_similarity(side2, side1) == pytest.approx(backward, abs=1e-12)
    assert pwcca_similarity(side1, side2, symmetric=True) == pytest.approx((forward + backward) / 2, abs=1e-12)
    assert pwcca_distance(side1, side2) == pytest.approx(1 - forward, abs=1e-12)


def test_canonical_variates_are_orthonormal_centred_and_paired():
    x = gaussian(8, 500, seed=5)
    y = noisy_copy(x, 12, noise=1.5, seed=6)
    result = cca(x, y)
    for directions in (result.directions1, result.directions2):
        assert directions.shape == (8, 500)
        np.testing.assert_allclose(directions @ directions.T, np.eye(8), atol=1e-10)
        np.testing.assert_allclose(directions.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(result.directions1 @ result.directions2.T, np.diag(result.correlations), atol=1e-10)
    assert np.all(np.diff(result.correlations) <= 0)


# --------------------------------------------------------------------------- invariances


def test_identical_activations_give_one():
    x = gaussian(20, 2000, seed=7)
    assert pwcca_similarity(x, x) == pytest.approx(1.0, abs=1e-10)
    assert pwcca_distance(x, x) == pytest.approx(0.0, abs=1e-10)


def test_invariant_to_invertible_map_and_permutation_of_either_side():
    x = gaussian(20, 2000, seed=8)
    mapped = well_conditioned(20, seed=9) @ x
    permuted = x[np.random.default_rng(10).permutation(20)]
    for other in (mapped, permuted):
        assert pwcca_similarity(x, other) == pytest.approx(1.0, abs=1e-6)
        assert pwcca_similarity(other, x) == pytest.approx(1.0, abs=1e-6)


def test_side2_transforms_and_side1_permutations_leave_similarity_unchanged():
    # weights depend on side 1's neurons only; correlations on the two spans only
    x = gaussian(10, 1000, seed=11)
    y = noisy_copy(x, 15, noise=3.0, seed=12)
    reference = pwcca_similarity(x, y)
    assert 0.2 < reference < 0.9
    assert pwcca_similarity(x, well_conditioned(15, seed=13) @ y) == pytest.approx(reference, abs=1e-10)
    assert pwcca_similarity(x[::-1], y) == pytest.approx(reference, abs=1e-10)


def test_per_neuron_offsets_are_removed():
    x, y = gaussian(10, 800, seed=14), gaussian(10, 800, seed=15)
    offsets = 100.0 * np.arange(1, 11)[:, None]  # same offsets on both sides
    assert pwcca_similarity(x + offsets, y + offsets) == pytest.approx(pwcca_similarity(x, y), abs=1e-10)


def test_dead_and_duplicated_neurons_are_cut():
    x = gaussian(6, 400, seed=16)
    padded = np.vstack([x, np.full((2, 400), 0.7), x[:2] * 2.0])  # 2 dead, 2 dependent
    result = cca(padded, x)
    assert (result.rank1, result.rank2) == (6, 6)
    assert pwcca_similarity(padded, x) == pytest.approx(1.0, abs=1e-10)


def test_torch_and_numpy_inputs_agree():
    x, y = gaussian(5, 300, seed=17), gaussian(7, 300, seed=18)
    as_numpy = pwcca_similarity(x.astype(np.float32), y)
    assert pwcca_similarity(torch.from_numpy(x).float(), torch.from_numpy(y)) == pytest.approx(as_numpy, abs=1e-12)


# --------------------------------------------------------------------------- finite-sample behaviour

# For independent Gaussian sets of p and q neurons over N datapoints (p, q << N):
# * E[Σ ρ_i²] = p·q / (N − 1): trace of the product of two random projections of ranks
#   p and q in the (N − 1)-dim centred space.  For p = q = 20, N = 2000: 0.2001.
# * the largest ρ² tends to the Wachter edge (√(c1(1−c2)) + √(c2(1−c1)))², c = p/N, q/N:
#   0.0396 here, ρ_max ≈ 0.20.  PWCCA is a weighted mean of the ρ_i, so below ρ_max;
#   with near-uniform weights it is about mean ρ ≤ √(mean ρ²) = √(q / (N − 1)) ≈ 0.10.
# * all ρ scale like √(q / N), so 10x the datapoints divides the similarity by ≈ √10.


def test_independent_gaussians_match_finite_sample_theory():
    x, y = gaussian(20, 2000, seed=19), gaussian(20, 2000, seed=20)
    correlations = cca(x, y).correlations
    similarity = pwcca_similarity(x, y)
    assert np.sum(correlations**2) == pytest.approx(20 * 20 / 1999, rel=0.25)
    assert correlations.max() < 0.25
    assert 0.5 * math.sqrt(20 / 1999) < similarity < math.sqrt(20 / 1999)
    assert similarity < 0.25


def test_chance_similarity_shrinks_like_one_over_sqrt_datapoints():
    small = pwcca_similarity(gaussian(20, 500, seed=21), gaussian(20, 500, seed=22))
    large = pwcca_similarity(gaussian(20, 5000, seed=23), gaussian(20, 5000, seed=24))
    assert small > large
    assert 2.5 < small / large < 4.0  # √10 ≈ 3.16


def test_partial_overlap_is_strictly_between_and_weighted_by_variance():
    # 10 shared and 10 private signals on each side; side 2 sees the shared ones mixed
    shared, private1, private2 = gaussian(10, 2000, 25), gaussian(10, 2000, 26), gaussian(10, 2000, 27)
    side2 = well_conditioned(20, seed=28) @ np.vstack([shared, private2])
    correlations = cca(np.vstack([shared, private1]), side2).correlations
    assert np.all(correlations[:10] > 1 - 1e-8) and np.all(correlations[10:] < 0.3)
    # equal variances: about half the weight on the ρ = 1 directions
    balanced = pwcca_similarity(np.vstack([shared, private1]), side2)
    assert 0.45 < balanced < 0.7
    # shared signals 3x louder on side 1: their directions carry more weight
    loud_shared = pwcca_similarity(np.vstack([3.0 * shared, private1]), side2)
    assert balanced < loud_shared < 1.0
    quiet_shared = pwcca_similarity(np.vstack([shared, 3.0 * private1]), side2)
    assert 0.0 < quiet_shared < balanced


# --------------------------------------------------------------------------- widths


def test_width_mismatch_both_ways_and_symmetric_average():
    narrow = gaussian(10, 1500, seed=29)
    wide = noisy_copy(narrow, 30, noise=4.0, seed=30)
    narrow_first, wide_first = cca(narrow, wide), cca(wide, narrow)
    assert narrow_first.correlations.shape == wide_first.correlations.shape == (10,)
    assert narrow_first.directions1.shape == wide_first.directions1.shape == (10, 1500)
    np.testing.assert_allclose(narrow_first.correlations, wide_first.correlations, atol=1e-10)
    forward, backward = pwcca_similarity(narrow, wide), pwcca_similarity(wide, narrow)
    assert 0.0 < forward < 1.0 and 0.0 < backward < 1.0
    assert abs(forward - backward) > 1e-3  # the measure is not symmetric
    symmetric = pwcca_similarity(narrow, wide, symmetric=True)
    assert symmetric == pytest.approx((forward + backward) / 2, abs=1e-10)
    assert pwcca_similarity(wide, narrow, symmetric=True) == pytest.approx(symmetric, abs=1e-10)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("acts1", "acts2", "match"),
    [
        (np.zeros(50), np.zeros((2, 50)), r"acts1 has shape \(50,\).*2-D"),
        (np.zeros((2, 50)), np.zeros((2, 5, 10)), r"acts2 has shape \(2, 5, 10\).*2-D"),
        (np.ones((2, 50)), np.ones((2, 40)), "acts1 has 50 datapoints.*acts2 has 40"),
        (np.full((2, 50), np.nan), np.ones((2, 50)), "acts1 contains NaN"),
        ([["a", "b"]], np.ones((1, 2)), "acts1 of type list is not numeric"),
        (np.ones((3, 50)), gaussian(3, 50, seed=31), "acts1 has no neuron that varies"),
        (gaussian(20, 30, seed=32), gaussian(15, 30, seed=33), "rank 20 .* rank 15 .* only 30 datapoints"),
    ],
)
def test_bad_activations_raise_config_error(acts1, acts2, match):
    with pytest.raises(ConfigError, match=match):
        pwcca_similarity(acts1, acts2)


@pytest.mark.parametrize("epsilon", [-1e-3, 1.0, float("nan"), "small"])
def test_bad_epsilon_raises_config_error(epsilon):
    x = gaussian(2, 50, seed=34)
    with pytest.raises(ConfigError, match="epsilon="):
        cca(x, x, epsilon=epsilon)


# --------------------------------------------------------------------------- method="svcca"


def released_compute_pwcca(acts1: np.ndarray, acts2: np.ndarray, epsilon: float = 0.0) -> float:
    """google/svcca's compute_pwcca, step by step from its definition (cca_core.get_cca_similarity
    with compute_coefs, then the projection weighting), for inputs where the released code
    runs: no neuron cut, and side 1 no wider than side 2 (its first branch)."""
    n1 = acts1.shape[0]
    covariance = np.cov(np.vstack([acts1, acts2]))
    sxx, sxy, syy = covariance[:n1, :n1].copy(), covariance[:n1, n1:].copy(), covariance[n1:, n1:].copy()
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)
    assert (np.abs(np.diag(sxx)) >= epsilon).all() and (np.abs(np.diag(syy)) >= epsilon).all()
    sxx += epsilon * np.eye(len(sxx))
    syy += epsilon * np.eye(len(syy))

    def matrix_sqrt(a):
        w, v = np.linalg.eigh(a)
        return v @ np.diag(np.sqrt(w)) @ v.conj().T

    invsqrt_xx, invsqrt_yy = matrix_sqrt(np.linalg.pinv(sxx)), matrix_sqrt(np.linalg.pinv(syy))
    u, s, _ = np.linalg.svd(invsqrt_xx @ sxy @ invsqrt_yy)
    assert acts1.shape[0] <= acts2.shape[0]
    means = acts1.mean(axis=1, keepdims=True)
    dirns = u.T @ (acts1 - means) + means
    p, _ = np.linalg.qr(dirns.T)
    weights = np.sum(np.abs(p.T @ acts1.T), axis=1)
    return float(np.sum(weights / weights.sum() * np.abs(s)))


def random_layers(seed: int, width1: int, width2: int, datapoints: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Two ReLU layers of one random network on the same inputs (correlated, not identical)."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(6, datapoints))
    first = np.maximum(rng.normal(size=(width1, 6)) @ inputs + 0.3, 0.0)
    second = np.maximum(rng.normal(size=(width2, width1)) @ first + rng.normal(size=(width2, datapoints)), 0.0)
    return first, second


@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
def test_svcca_method_matches_the_released_code_on_equal_and_unequal_widths(epsilon):
    """Largest |ours − released| over 12 random pairs (widths 5/5, 5/12, 3/20, 12/12): <= 1e-6
    (measured when written: about 1e-15)."""
    differences = []
    for seed in range(3):
        for width1, width2 in ((5, 5), (5, 12), (3, 20), (12, 12)):
            acts1, acts2 = random_layers(seed, width1, width2)
            ours = pwcca_similarity(acts1, acts2, epsilon=epsilon, method="svcca")
            differences.append(abs(ours - released_compute_pwcca(acts1, acts2, epsilon)))
    assert max(differences) <= 1e-6, max(differences)


def test_svcca_method_weights_the_narrower_side_in_both_orientations():
    acts1, acts2 = random_layers(7, 4, 15)
    forward = pwcca_similarity(acts1, acts2, method="svcca")
    assert pwcca_similarity(acts2, acts1, method="svcca") == pytest.approx(forward, abs=1e-12)
    assert forward == pytest.approx(released_compute_pwcca(acts1, acts2), abs=1e-9)
    # the textbook variant weights side 1, so it depends on the order, and differs from the code's
    textbook = [pwcca_similarity(acts1, acts2, epsilon=0.0), pwcca_similarity(acts2, acts1, epsilon=0.0)]
    assert abs(textbook[0] - textbook[1]) > 1e-3
    assert min(abs(t - forward) for t in textbook) > 1e-4


def test_svcca_method_known_answers():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(4, 200))
    assert pwcca_similarity(acts, acts, method="svcca") == pytest.approx(1.0, abs=1e-9)
    x = rng.normal(size=(1, 300))
    y = 0.6 * x + 0.8 * rng.normal(size=(1, 300))
    pearson = abs(np.corrcoef(x[0], y[0])[0, 1])  # one neuron each: PWCCA = |Pearson r|
    assert pwcca_similarity(x, y, method="svcca") == pytest.approx(pearson, abs=1e-9)
    assert pwcca_similarity(y, x, method="svcca") == pytest.approx(pearson, abs=1e-9)


def test_svcca_method_drops_dead_neurons_where_the_released_code_would_fail():
    acts1, acts2 = random_layers(3, 5, 9)
    with_dead = np.vstack([acts1, np.zeros((2, acts1.shape[1]))])  # two dead ReLUs
    assert pwcca_similarity(with_dead, acts2, epsilon=1e-6, method="svcca") == pytest.approx(
        pwcca_similarity(acts1, acts2, epsilon=1e-6, method="svcca"), abs=1e-9
    )


@pytest.mark.parametrize("bad", [{"method": "cka"}, {"method": "svcca", "epsilon": 1.5}])
def test_unknown_method_or_bad_epsilon_is_named(bad):
    acts1, acts2 = random_layers(0, 3, 3)
    with pytest.raises(ConfigError, match="method|epsilon"):
        pwcca_similarity(acts1, acts2, **bad)
