"""Colored MNIST + patch on tiny synthetic MNIST arrays (injected; real MNIST is never read).

Synthetic pixels lie in 1..254, so every digit pixel is in (0, 1) after /255 and non-zero in
exactly one colour channel: a pixel equal to 1.0 in every channel can only be a patch.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from metairm_pl.build import build_datamodule
from metairm_pl.config_checks import check_known_keys
from metairm_pl.data.cmnist import ColoredMNISTDataModule
from metairm_pl.data.cmnist_patch import ColoredMNISTPatchDataModule, PatchEnvSpec, add_patches
from metairm_pl.data.mnist_source import MnistArrays
from metairm_pl.errors import ConfigError


def make_arrays(n_train: int, n_test: int = 60, seed: int = 0) -> MnistArrays:
    g = torch.Generator().manual_seed(seed)
    return MnistArrays(
        train_images=torch.randint(1, 255, (n_train, 28, 28), generator=g, dtype=torch.uint8),
        train_labels=torch.randint(0, 10, (n_train,), generator=g),
        test_images=torch.randint(1, 255, (n_test, 28, 28), generator=g, dtype=torch.uint8),
        test_labels=torch.randint(0, 10, (n_test,), generator=g),
    )


SMALL = make_arrays(260)  # pool 200, 60 test-env digits
LARGE = make_arrays(16_060, n_test=2_000)  # pool 16,000: two envs of 8,000 for the rates


def built(train_envs, test_envs, arrays=SMALL, pool=200, cls=ColoredMNISTPatchDataModule, **kw):
    dm = cls(train_envs, test_envs, train_pool_size=pool, mnist_loader=lambda: arrays, **kw)
    dm.setup()
    return dm


def without_patch(envs):
    return [{k: v for k, v in env.items() if k != "p_patch"} for env in envs]


def patch_ids(x: torch.Tensor) -> torch.Tensor:
    """z' read off the images; asserts that every example has exactly one of the two patches."""
    top_left = (x[:, :, :3, :3] == 1.0).flatten(1).all(1)
    bottom_right = (x[:, :, -2:, -2:] == 1.0).flatten(1).all(1)
    assert torch.all(top_left ^ bottom_right)
    return bottom_right.long()


def colours(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, 7, 7].argmax(1)  # centre pixel: non-zero in the colour channel only


def assert_rate(observed: float, expected: float, n: int, sds: float = 5.0) -> None:
    tol = sds * math.sqrt(expected * (1.0 - expected) / n)
    assert abs(observed - expected) <= tol, f"rate {observed:.4f} not within {tol:.4f} of {expected}"


TRAIN = [
    {"name": "a", "p_color": 0.1, "p_patch": 0.2, "size": 100},
    {"name": "b", "p_color": 0.2, "p_patch": 0.1, "size": 100},
]
TEST = [{"name": "t", "p_color": 0.9, "p_patch": 0.9}]


# ---------------------------------------------------------------------------------------
# the patch itself
# ---------------------------------------------------------------------------------------


def test_add_patches_writes_exactly_the_corner_blocks():
    x = torch.full((2, 2, 14, 14), 0.5)
    out = add_patches(x, torch.tensor([0, 1]))
    expected = x.clone()
    expected[0, :, 0:3, 0:3] = 1.0
    expected[1, :, 12:14, 12:14] = 1.0
    assert torch.equal(out, expected)
    assert torch.equal(x, torch.full((2, 2, 14, 14), 0.5)), "input must not be modified"


@pytest.mark.parametrize("val_source", ["heldout", "split"])
def test_patched_envs_equal_cmnist_except_the_patch(val_source):
    pairing = "shared" if val_source == "heldout" else "independent"
    patched = built(TRAIN, TEST, val_fraction=0.2, val_source=val_source, val_pairing=pairing, data_seed=3)
    plain = built(
        without_patch(TRAIN),
        without_patch(TEST),
        cls=ColoredMNISTDataModule,
        val_fraction=0.2,
        val_source=val_source,
        val_pairing=pairing,
        data_seed=3,
    )
    for split in ("train", "val", "test"):
        assert set(getattr(patched.splits, split)) == set(getattr(plain.splits, split))
        for name, (x, y) in getattr(patched.splits, split).items():
            x_plain, y_plain = getattr(plain.splits, split)[name]
            assert torch.equal(y, y_plain) and x.shape == x_plain.shape == (len(y), 2, 14, 14)
            z = patch_ids(x)
            block = torch.zeros_like(x, dtype=torch.bool)
            block[z == 0, :, :3, :3] = True
            block[z == 1, :, 12:, 12:] = True
            assert torch.all(x[block] == 1.0)
            assert torch.equal(x[~block], x_plain[~block]), "nothing outside the patch may change"
            assert torch.all(x_plain[block] < 1.0)  # so the patch really changed those pixels


def test_patch_id_is_the_label_flipped_with_p_patch():
    train = [{"name": "same", "p_color": 0.3, "p_patch": 0.0}, {"name": "flipped", "p_color": 0.3, "p_patch": 1.0}]
    dm = built(train, TEST)
    x, y = dm.splits.train["same"]
    assert torch.equal(patch_ids(x), y)
    x, y = dm.splits.train["flipped"]
    assert torch.equal(patch_ids(x), 1 - y)


# ---------------------------------------------------------------------------------------
# rates and independence (8,000 examples per env; 5 binomial standard deviations)
# ---------------------------------------------------------------------------------------

RATE_ENVS = [
    {"name": "c0.1_p0.3", "p_color": 0.1, "p_patch": 0.3},
    {"name": "c0.3_p0.1", "p_color": 0.3, "p_patch": 0.1},
]


@pytest.fixture(scope="module")
def large():
    return built(
        RATE_ENVS, [{"name": "t", "p_color": 0.9, "p_patch": 0.9}], arrays=LARGE, pool=16_000, val_fraction=0.0
    )


def test_patch_agrees_with_label_at_one_minus_p_patch(large):
    for env in RATE_ENVS:
        x, y = large.splits.train[env["name"]]
        agree = (patch_ids(x) == y).float()
        assert_rate(agree.mean().item(), 1.0 - env["p_patch"], len(y))
    x, y = large.splits.test["t"]
    assert_rate((patch_ids(x) == y).float().mean().item(), 0.1, len(y))


@pytest.mark.parametrize("env", RATE_ENVS, ids=lambda env: env["name"])
def test_patch_is_independent_of_colour_given_the_label(large, env):
    x, y = large.splits.train[env["name"]]
    patch_agrees, colour_agrees = patch_ids(x) == y, colours(x) == y
    assert_rate(colour_agrees.float().mean().item(), 1.0 - env["p_color"], len(y))
    for label in (0, 1):
        for colour_agreement in (True, False):
            cell = (y == label) & (colour_agrees == colour_agreement)
            n = int(cell.sum())
            assert n > 300
            assert_rate(patch_agrees[cell].float().mean().item(), 1.0 - env["p_patch"], n)


def test_patch_flips_follow_data_seed():
    def flips(seed):
        x, y = built(TRAIN, TEST, data_seed=seed).splits.train["a"]
        return patch_ids(x) != y

    assert torch.equal(flips(1), flips(1))
    assert not torch.equal(flips(1), flips(2))


# ---------------------------------------------------------------------------------------
# bad input and config
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True])
def test_p_patch_outside_unit_interval_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=r"p_patch=.*\[0, 1\]") as info:
        ColoredMNISTPatchDataModule(TRAIN, [{"name": "t", "p_color": 0.9, "p_patch": bad}])
    assert repr(bad) in str(info.value) and "env t" in str(info.value)
    with pytest.raises(ConfigError, match="p_patch"):
        PatchEnvSpec(name="e", p_color=0.1, p_patch=bad)


def test_missing_p_patch_and_multiclass_are_config_errors():
    with pytest.raises(ConfigError, match="'t' has no p_patch"):
        ColoredMNISTPatchDataModule(TRAIN, [{"name": "t", "p_color": 0.9}])
    with pytest.raises(ConfigError, match="num_classes=10 .*use 2"):
        ColoredMNISTPatchDataModule(TRAIN, TEST, num_classes=10)


def test_config_holds_the_paper_environments(make_config):
    data = make_config(["data=cmnist_patch"]).data
    train = [(e.p_color, e.p_patch, e.p_label_noise, e.size) for e in data.train_envs]
    assert train == [(0.1, 0.2, 0.25, 25000), (0.2, 0.1, 0.25, 25000)]
    assert [(e.name, e.p_color, e.p_patch) for e in data.test_envs] == [
        ("p0.1", 0.1, 0.1),
        ("p0.2", 0.2, 0.2),
        ("p0.9", 0.9, 0.9),
    ]


def test_config_builds_through_the_cmnist_loader(make_config, monkeypatch):
    monkeypatch.setattr("metairm_pl.data.cmnist._load_mnist", lambda data_dir, allow_download: SMALL)
    cfg = make_config(
        [
            "data=cmnist_patch",
            "data.train_pool_size=200",
            "data.train_envs=[{name:a,p_color:0.1,p_patch:0.2,size:100},{name:b,p_color:0.2,p_patch:0.1,size:100}]",
        ]
    )
    dm = build_datamodule(cfg)
    assert isinstance(dm, ColoredMNISTPatchDataModule) and dm.name == "cmnist_patch"
    assert dm.train_env_names == ["a", "b"] and dm.test_env_names == ["p0.1", "p0.2", "p0.9"]
    for x, _ in dm.splits.test.values():
        patch_ids(x)
    typo = OmegaConf.create({**OmegaConf.to_container(cfg.data), "p_pach": 0.1})
    with pytest.raises(ConfigError, match="p_pach.*allowed keys"):  # explicit signature: keys checked
        check_known_keys("data", typo)


def test_patch_rates_of_train_and_test_envs_with_the_same_name_are_kept_apart():
    from metairm_pl.data.cmnist_patch import ColoredMNISTPatchDataModule

    generator = torch.Generator().manual_seed(5)
    arrays = MnistArrays(
        train_images=torch.randint(1, 256, (400, 28, 28), generator=generator, dtype=torch.uint8),
        train_labels=torch.randint(0, 10, (400,), generator=generator),
        test_images=torch.randint(1, 256, (100, 28, 28), generator=generator, dtype=torch.uint8),
        test_labels=torch.randint(0, 10, (100,), generator=generator),
    )
    dm = ColoredMNISTPatchDataModule(
        [{"name": "p0.1", "p_color": 0.1, "p_patch": 0.0}, {"name": "p0.2", "p_color": 0.2, "p_patch": 0.0}],
        [{"name": "p0.1", "p_color": 0.1, "p_patch": 1.0}],
        train_pool_size=300,
        mnist_loader=lambda: arrays,
    )
    dm.setup()
    x, y = dm.splits.train["p0.1"]
    top_left = (x[:, :, :3, :3] == 1.0).flatten(1).all(dim=1)
    assert torch.equal(top_left, y == 0)  # p_patch 0: patch id == label, never the test env's 1.0
    x_test, y_test = dm.splits.test["p0.1"]
    assert torch.equal((x_test[:, :, :3, :3] == 1.0).flatten(1).all(dim=1), y_test == 1)


def test_shared_validation_patches_are_coupled_across_envs():
    """Paired validation: same digits and labels; a patch "against" the label at the lower
    rate is also against it at the higher rate (one uniform draw per digit)."""
    train = [
        {"name": "lo", "p_color": 0.1, "p_patch": 0.2, "size": 100},
        {"name": "hi", "p_color": 0.2, "p_patch": 0.6, "size": 100},
    ]
    dm = built(train, TEST, val_fraction=0.4, val_pairing="shared")
    (x_lo, y_lo), (x_hi, y_hi) = dm.splits.val["lo"], dm.splits.val["hi"]
    assert torch.equal(y_lo, y_hi)
    against_lo, against_hi = patch_ids(x_lo) != y_lo, patch_ids(x_hi) != y_hi
    assert torch.all(~against_lo | against_hi)
    assert against_hi.sum() > against_lo.sum()


def test_paired_test_envs_couple_colour_and_patch_and_leave_train_unchanged():
    train = [
        {"name": "a", "p_color": 0.1, "p_patch": 0.2, "size": 100},
        {"name": "b", "p_color": 0.2, "p_patch": 0.1, "size": 100},
    ]
    test = [{"name": "lo", "p_color": 0.1, "p_patch": 0.2}, {"name": "hi", "p_color": 0.9, "p_patch": 0.8}]
    paired, independent = built(train, test, test_pairing="shared"), built(train, test)
    (x_lo, y_lo), (x_hi, y_hi) = paired.splits.test["lo"], paired.splits.test["hi"]
    assert torch.equal(y_lo, y_hi)
    for read in (patch_ids, colours):
        against_lo, against_hi = read(x_lo) != y_lo, read(x_hi) != y_hi
        assert torch.all(~against_lo | against_hi) and against_hi.sum() > against_lo.sum()
    for name in train:
        a, b = independent.splits.train[name["name"]], paired.splits.train[name["name"]]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_the_three_env_patch_data_breaks_the_mirror(make_config, fake_mnist):
    """data=cmnist_patch3: the two mirror envs plus one with both rates 0.3, the pool dealt in three."""
    from metairm_pl.build import build_datamodule

    cfg = make_config(["data=cmnist_patch3", "data.train_pool_size=240", "data.val_fraction=0.1"])
    datamodule = build_datamodule(cfg)
    rates = {spec.name: (spec.p_color, spec.p_patch) for spec in datamodule.train_specs}
    assert rates == {"c0.1_p0.2": (0.1, 0.2), "c0.2_p0.1": (0.2, 0.1), "c0.3_p0.3": (0.3, 0.3)}
    assert [len(y) for _, y in datamodule.splits.train.values()] == [80, 80, 80]
    assert cfg.data.name == "cmnist_patch3" and list(datamodule.splits.test) == ["p0.1", "p0.2", "p0.9"]
