"""Colored MNIST construction (IRM protocol, k-class variant) and EnvSpec validation.

Everything runs on tiny synthetic uint8 "digit" images; no MNIST is read.
"""

from __future__ import annotations

import math

import pytest
import torch

from metairm_pl.data.environments import (
    EnvSpec,
    check_probability,
    colour_digits,
    digits_to_classes,
    flip_with_probability,
    parse_env_specs,
)
from metairm_pl.errors import ConfigError

N = 20_000  # large enough for tight binomial checks


def binomial_tolerance(p: float, n: int, sds: float = 5.0) -> float:
    """``sds`` standard deviations of a binomial proportion with success rate ``p`` over ``n`` draws."""
    return sds * math.sqrt(p * (1.0 - p) / n)


def assert_rate(observed: float, expected: float, n: int) -> None:
    if expected in (0.0, 1.0):
        assert observed == expected, f"rate {observed} must be exactly {expected}"
    else:
        tol = binomial_tolerance(expected, n)
        assert abs(observed - expected) <= tol, f"rate {observed} not within {tol:.4f} of {expected}"


def synthetic_digits(n: int, seed: int = 0, side: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 ``side x side`` images with every pixel > 0, and digits 0..9 drawn uniformly."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, side, side), generator=g, dtype=torch.uint8)
    digits = torch.randint(0, 10, (n,), generator=g)
    return images, digits


@pytest.fixture(scope="module")
def data():
    # The rate checks only need labels and colours: 4x4 images (2x2 after subsampling) keep
    # them fast on a busy machine; the 28x28 construction is checked separately below.
    return synthetic_digits(N, side=4)


def colour_of(x: torch.Tensor) -> torch.Tensor:
    """Index of the (single) non-zero channel of each image."""
    nonzero = x.flatten(2).abs().sum(2) > 0  # [n, channels]
    assert torch.all(nonzero.sum(1) == 1), "every image must have exactly one non-zero channel"
    return nonzero.float().argmax(1)


# ---------------------------------------------------------------------------------------
# clean labels
# ---------------------------------------------------------------------------------------


def test_binary_clean_label_is_digit_below_five():
    digits = torch.arange(10)
    expected = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    assert torch.equal(digits_to_classes(digits, 2), expected)


def test_five_class_clean_label_is_digit_floor_half():
    digits = torch.arange(10)
    assert torch.equal(digits_to_classes(digits, 5), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]))


def test_ten_class_clean_label_is_the_digit():
    digits = torch.arange(10)
    assert torch.equal(digits_to_classes(digits, 10), digits)


@pytest.mark.parametrize("k", [3, 4, 7])
def test_class_counts_not_dividing_ten_are_rejected(k):
    with pytest.raises(ConfigError, match=f"num_classes={k}"):
        digits_to_classes(torch.arange(10), k)


# ---------------------------------------------------------------------------------------
# label noise and colour rates
# ---------------------------------------------------------------------------------------

RATE_CASES = [
    # (num_classes, p_color, p_label_noise)
    (2, 0.1, 0.25),
    (2, 0.2, 0.25),
    (2, 0.9, 0.25),
    (2, 0.0, 0.0),
    (2, 1.0, 1.0),
    (2, 0.0, 1.0),
    (2, 1.0, 0.0),
    (2, 0.5, 0.5),
    (5, 0.1, 0.25),
    (5, 0.9, 0.1),
    (5, 0.0, 1.0),
    (5, 1.0, 0.0),
    (10, 0.2, 0.25),
    (10, 1.0, 1.0),
    (10, 0.0, 0.0),
]


@pytest.mark.parametrize("num_classes,p_color,p_label_noise", RATE_CASES)
def test_agreement_rates_and_flip_targets(data, num_classes, p_color, p_label_noise):
    images, digits = data
    spec = EnvSpec("e", p_color=p_color, p_label_noise=p_label_noise)
    x, y = colour_digits(images, digits, spec, num_classes, torch.Generator().manual_seed(123))
    clean = digits_to_classes(digits, num_classes)
    colours = colour_of(x)

    assert y.shape == (N,)
    assert y.min() >= 0 and y.max() < num_classes

    # label agrees with the clean label w.p. 1 - p_label_noise; colour with the label w.p. 1 - p_color
    assert_rate((y == clean).double().mean().item(), 1.0 - p_label_noise, N)
    assert_rate((colours == y).double().mean().item(), 1.0 - p_color, N)

    # every disagreement is exactly "+1 mod k" (for k = 2 this is the flip), never another class
    noisy = y != clean
    assert torch.equal(y[noisy], (clean[noisy] + 1) % num_classes)
    recoloured = colours != y
    assert torch.equal(colours[recoloured], (y[recoloured] + 1) % num_classes)


def test_flip_with_probability_edges_are_exact():
    labels = torch.randint(0, 5, (1000,), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    assert torch.equal(flip_with_probability(labels, 0.0, 5, g), labels)
    assert torch.equal(flip_with_probability(labels, 1.0, 5, g), (labels + 1) % 5)
    assert torch.equal(flip_with_probability(labels % 2, 1.0, 2, g), 1 - labels % 2)


def test_label_noise_and_colour_draws_are_independent(data):
    # With p_color = p_label_noise = 0.5 (binary), the colour agrees with the *clean* label
    # w.p. 0.5 * 0.5 + 0.5 * 0.5 = 0.5, and joint agreement has probability 0.25.
    images, digits = data
    spec = EnvSpec("e", p_color=0.5, p_label_noise=0.5)
    x, y = colour_digits(images, digits, spec, 2, torch.Generator().manual_seed(7))
    clean = digits_to_classes(digits, 2)
    both = ((y == clean) & (colour_of(x) == y)).double().mean().item()
    assert_rate(both, 0.25, N)


# ---------------------------------------------------------------------------------------
# image construction
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 5, 10])
def test_image_construction(num_classes):
    images, digits = synthetic_digits(300, seed=3)
    spec = EnvSpec("e", p_color=0.3, p_label_noise=0.25)
    x, y = colour_digits(images, digits, spec, num_classes, torch.Generator().manual_seed(0))
    channels = max(2, num_classes)
    assert x.shape == (300, channels, 14, 14)
    assert x.dtype == torch.float32

    colours = colour_of(x)  # asserts exactly one non-zero channel (all pixels are > 0)
    expected = images[:, ::2, ::2].float() / 255.0
    rows = torch.arange(300)
    assert torch.equal(x[rows, colours], expected)
    assert torch.all(expected > 0)
    # the other channels are all zero
    mask = torch.ones(300, channels, dtype=torch.bool)
    mask[rows, colours] = False
    assert torch.all(x[mask] == 0)
    # every channel is used for some image
    assert set(colours.tolist()) == set(range(num_classes))


def test_subsample_takes_even_rows_and_columns():
    images = torch.zeros(1, 28, 28, dtype=torch.uint8)
    images[0, 0, 0] = 255  # kept
    images[0, 1, 1] = 200  # dropped (odd row and column)
    images[0, 2, 4] = 51  # kept at [1, 2]
    images[0, 27, 26] = 17  # dropped (odd row)
    spec = EnvSpec("e", p_color=0.0, p_label_noise=0.0)
    x, y = colour_digits(images, torch.tensor([7]), spec, 2, torch.Generator().manual_seed(0))
    assert y.tolist() == [0]  # digit 7 -> label 0 -> colour 0
    expected = torch.zeros(14, 14)
    expected[0, 0] = 1.0
    expected[1, 2] = 51 / 255.0
    assert torch.allclose(x[0, 0], expected)
    assert torch.all(x[0, 1] == 0)


# ---------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------


def test_same_seed_same_output_different_seed_different_output():
    images, digits = synthetic_digits(500, seed=4)
    spec = EnvSpec("e", p_color=0.2, p_label_noise=0.25)
    x1, y1 = colour_digits(images, digits, spec, 2, torch.Generator().manual_seed(11))
    x2, y2 = colour_digits(images, digits, spec, 2, torch.Generator().manual_seed(11))
    x3, y3 = colour_digits(images, digits, spec, 2, torch.Generator().manual_seed(12))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not (torch.equal(x1, x3) and torch.equal(y1, y3))
    assert not torch.equal(y1, y3)


# ---------------------------------------------------------------------------------------
# EnvSpec validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["p_color", "p_label_noise"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf")])
def test_probability_out_of_range_raises_naming_field_and_value(field, value):
    kwargs = {"p_color": 0.1, "p_label_noise": 0.25, field: value}
    with pytest.raises(ConfigError) as info:
        EnvSpec("env0", **kwargs)
    message = str(info.value)
    assert field in message
    assert "env0" in message
    assert repr(value) in message
    assert "[0, 1]" in message


@pytest.mark.parametrize("value", ["0.5", None, True])
def test_probability_of_wrong_type_raises(value):
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        EnvSpec("env0", p_color=value)


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 0.25])
def test_probability_edges_accepted(value):
    spec = EnvSpec("env0", p_color=value, p_label_noise=value)
    assert spec.p_color == value
    assert check_probability("x", value) == float(value)


@pytest.mark.parametrize("size", [0, -1, -100, True, False, 2.5, 10.0, "10"])
def test_bad_sizes_raise(size):
    with pytest.raises(ConfigError) as info:
        EnvSpec("env0", p_color=0.1, size=size)
    assert "size" in str(info.value)
    assert "env0" in str(info.value)


@pytest.mark.parametrize("size", [None, 1, 25_000])
def test_good_sizes_accepted(size):
    assert EnvSpec("env0", p_color=0.1, size=size).size == size


@pytest.mark.parametrize("name", ["", "a/b"])
def test_bad_names_raise(name):
    with pytest.raises(ConfigError):
        EnvSpec(name, p_color=0.1)


@pytest.mark.parametrize("envs", [[], None])
def test_parse_env_specs_rejects_empty(envs):
    with pytest.raises(ConfigError, match="train_envs"):
        parse_env_specs("train_envs", envs)


def test_parse_env_specs_rejects_duplicates():
    envs = [{"name": "a", "p_color": 0.1}, {"name": "b", "p_color": 0.2}, {"name": "a", "p_color": 0.3}]
    with pytest.raises(ConfigError, match="unique") as info:
        parse_env_specs("train_envs", envs)
    assert "'a'" in str(info.value)


def test_parse_env_specs_validates_each_entry():
    with pytest.raises(ConfigError, match="p_label_noise"):
        parse_env_specs("test_envs", [{"name": "t", "p_color": 0.9, "p_label_noise": 2.0}])


def test_parse_env_specs_accepts_mappings_and_specs():
    specs = parse_env_specs("train_envs", [{"name": "a", "p_color": 0.1, "size": 5}, EnvSpec("b", p_color=0.2)])
    assert specs == [EnvSpec("a", 0.1, 0.25, 5), EnvSpec("b", 0.2, 0.25, None)]
