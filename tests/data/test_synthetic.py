"""SyntheticDataModule: the planted invariant / spurious structure, shapes and determinism."""

from __future__ import annotations

import math

import pytest
import torch

from metairm_pl.data.environments import EnvSpec
from metairm_pl.data.synthetic import DEFAULT_ENV_SIZE, SyntheticDataModule, sample_environment
from metairm_pl.errors import ConfigError

N = 20_000
PHI_1 = 0.5 * (1.0 + math.erf(1.0 / math.sqrt(2.0)))  # Phi(1) ~ 0.8413


def assert_rate(observed: float, expected: float, n: int, sds: float = 5.0) -> None:
    tol = sds * math.sqrt(expected * (1.0 - expected) / n)
    assert abs(observed - expected) <= tol, f"rate {observed:.4f} not within {tol:.4f} of {expected:.4f}"


def sign_agreement(feature: torch.Tensor, labels: torch.Tensor) -> float:
    return ((feature > 0).long() == labels).double().mean().item()


@pytest.fixture(scope="module")
def big():
    dm = SyntheticDataModule(
        train_envs=[
            {"name": "e1", "p_color": 0.1, "size": N},
            {"name": "clean", "p_color": 0.2, "p_label_noise": 0.0, "size": N},
        ],
        test_envs=[{"name": "test", "p_color": 0.9, "size": N}],
        val_fraction=0.0,
        data_seed=0,
    )
    dm.setup()
    return dm


def test_spurious_feature_agrees_with_label_at_one_minus_p_color(big):
    x, y = big.splits.train["e1"]
    assert_rate(sign_agreement(x[:, 1], y), 0.9, N)
    x, y = big.splits.train["clean"]
    assert_rate(sign_agreement(x[:, 1], y), 0.8, N)


def test_spurious_feature_is_reversed_in_the_test_env(big):
    x, y = big.splits.test["test"]
    assert_rate(sign_agreement(x[:, 1], y), 0.1, N)


def test_spurious_feature_is_plus_minus_one_with_small_noise(big):
    x, _ = big.splits.train["e1"]
    assert torch.all((x[:, 1].abs() - 1.0).abs() < 0.6)
    assert abs(x[:, 1].abs().mean().item() - 1.0) < 0.01


def test_invariant_feature_agrees_with_clean_label_at_phi_one(big):
    # p_label_noise = 0: the observed label is the clean label
    x, y = big.splits.train["clean"]
    assert_rate(sign_agreement(x[:, 0], y), PHI_1, N)


def test_invariant_feature_agrees_with_noisy_label(big):
    expected = 0.75 * PHI_1 + 0.25 * (1.0 - PHI_1)  # ~ 0.671
    x, y = big.splits.train["e1"]
    assert_rate(sign_agreement(x[:, 0], y), expected, N)
    x, y = big.splits.test["test"]
    assert_rate(sign_agreement(x[:, 0], y), expected, N)  # invariant: same in the test env


def test_invariant_feature_against_clean_label_from_sample_environment():
    # the clean label is the generator's first draw (module docstring order): recover it
    spec = EnvSpec("e", p_color=0.1, p_label_noise=0.25)
    x, y = sample_environment(spec, N, 4, torch.Generator().manual_seed(9))
    clean = torch.randint(0, 2, (N,), generator=torch.Generator().manual_seed(9))
    assert_rate(sign_agreement(x[:, 0], clean), PHI_1, N)
    assert_rate((y == clean).double().mean().item(), 0.75, N)
    # invariant feature = (2c - 1) + N(0, 1)
    residual = x[:, 0] - (2 * clean - 1).float()
    assert abs(residual.mean().item()) < 5 / math.sqrt(N)
    assert abs(residual.std().item() - 1.0) < 0.05


def test_noise_features_carry_no_label_information(big):
    x, y = big.splits.train["e1"]
    for j in range(2, x.shape[1]):
        assert_rate(sign_agreement(x[:, j], y), 0.5, N)
    noise = x[:, 2:]
    assert abs(noise.mean().item()) < 0.02
    assert abs(noise.std().item() - 1.0) < 0.02


def test_labels_are_binary_and_balanced(big):
    _, y = big.splits.train["e1"]
    assert y.dtype == torch.int64
    assert set(y.unique().tolist()) == {0, 1}
    assert_rate(y.double().mean().item(), 0.5, N)


# ---------------------------------------------------------------------------------------
# shapes, sizes, config
# ---------------------------------------------------------------------------------------


def test_shapes_and_sizes():
    dm = SyntheticDataModule(
        train_envs=[{"name": "a", "p_color": 0.1, "size": 50}, {"name": "b", "p_color": 0.2}],
        test_envs=[{"name": "t", "p_color": 0.9, "size": 30}, {"name": "u", "p_color": 0.5}],
        n_features=5,
        val_fraction=0.2,
    )
    dm.setup()
    assert dm.num_classes == 2
    assert dm.input_shape == (5,)
    assert dm.train_env_names == ["a", "b"]
    assert dm.test_env_names == ["t", "u"]
    expected = {
        ("train", "a"): 50,
        ("train", "b"): DEFAULT_ENV_SIZE,
        ("val", "a"): 10,
        ("val", "b"): int(round(0.2 * DEFAULT_ENV_SIZE)),
        ("test", "t"): 30,
        ("test", "u"): DEFAULT_ENV_SIZE,
    }
    for (part, name), n in expected.items():
        x, y = getattr(dm.splits, part)[name]
        assert x.shape == (n, 5) and x.dtype == torch.float32
        assert y.shape == (n,)


def test_zero_val_fraction_gives_no_validation_envs():
    dm = SyntheticDataModule(
        [{"name": "a", "p_color": 0.1, "size": 20}], [{"name": "t", "p_color": 0.9}], val_fraction=0.0
    )
    dm.setup()
    assert dm.splits.val == {}


def test_two_features_is_the_minimum():
    dm = SyntheticDataModule([{"name": "a", "p_color": 0.1, "size": 20}], [{"name": "t", "p_color": 0.9}], n_features=2)
    dm.setup()
    assert dm.splits.train["a"][0].shape == (20, 2)
    with pytest.raises(ConfigError, match="n_features"):
        SyntheticDataModule([{"name": "a", "p_color": 0.1}], [{"name": "t", "p_color": 0.9}], n_features=1)


@pytest.mark.parametrize(
    "kwargs,match", [({"val_fraction": -0.1}, "val_fraction"), ({"full_batch": False}, "batch_size")]
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SyntheticDataModule([{"name": "a", "p_color": 0.1}], [{"name": "t", "p_color": 0.9}], **kwargs)


def test_empty_env_lists_raise():
    with pytest.raises(ConfigError, match="train_envs"):
        SyntheticDataModule([], [{"name": "t", "p_color": 0.9}])
    with pytest.raises(ConfigError, match="test_envs"):
        SyntheticDataModule([{"name": "a", "p_color": 0.1}], [])


# ---------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------


def _build(seed):
    dm = SyntheticDataModule(
        [{"name": "a", "p_color": 0.1, "size": 64}, {"name": "b", "p_color": 0.2, "size": 64}],
        [{"name": "t", "p_color": 0.9, "size": 64}],
        data_seed=seed,
    )
    dm.setup()
    return [t for part in (dm.splits.train, dm.splits.val, dm.splits.test) for pair in part.values() for t in pair]


def test_same_data_seed_is_identical():
    a, b = _build(1), _build(1)
    assert len(a) == len(b) == 10
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_different_data_seed_differs():
    a, b = _build(1), _build(2)
    assert all(not torch.equal(u, v) for u, v in zip(a[0::2], b[0::2]))  # every x differs


def test_envs_are_sampled_independently():
    dm = SyntheticDataModule(
        [{"name": "a", "p_color": 0.1, "size": 64}, {"name": "b", "p_color": 0.1, "size": 64}],
        [{"name": "t", "p_color": 0.9, "size": 64}],
    )
    dm.setup()
    assert not torch.equal(dm.splits.train["a"][0], dm.splits.train["b"][0])
    assert dm.splits.val["a"][0].shape == (13, 8)
    assert not torch.equal(dm.splits.train["a"][0][:13], dm.splits.val["a"][0])
