"""ColoredMNISTDataModule on tiny synthetic MNIST arrays (injected via ``mnist_loader``).

The real MNIST is never loaded.  Every synthetic image has all pixels > 0 and a unique
14x14 subsample, so the grey digit behind any coloured example can be recovered (sum of
channels x 255) and traced back to its source row.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.utilities import CombinedLoader

from metairm_pl.data.cmnist import ColoredMNISTDataModule
from metairm_pl.data.environments import digits_to_classes
from metairm_pl.data.mnist_source import MnistArrays
from metairm_pl.errors import ConfigError

N_TRAIN, N_TEST, POOL = 260, 80, 200


def make_arrays(seed: int = 0) -> MnistArrays:
    g = torch.Generator().manual_seed(seed)
    return MnistArrays(
        train_images=torch.randint(1, 256, (N_TRAIN, 28, 28), generator=g, dtype=torch.uint8),
        train_labels=torch.randint(0, 10, (N_TRAIN,), generator=g),
        test_images=torch.randint(1, 256, (N_TEST, 28, 28), generator=g, dtype=torch.uint8),
        test_labels=torch.randint(0, 10, (N_TEST,), generator=g),
    )


ARRAYS = make_arrays()


def _key(small: torch.Tensor) -> bytes:
    return small.contiguous().numpy().tobytes()


SOURCE = {}
for _i in range(N_TRAIN):
    SOURCE[_key(ARRAYS.train_images[_i, ::2, ::2])] = ("train", _i)
for _j in range(N_TEST):
    SOURCE[_key(ARRAYS.test_images[_j, ::2, ::2])] = ("test", _j)
assert len(SOURCE) == N_TRAIN + N_TEST  # subsamples are unique


def sources(x: torch.Tensor) -> list[tuple[str, int]]:
    """(split, row) of the MNIST digit behind every coloured example."""
    grey = torch.round(x.sum(1) * 255).to(torch.uint8)
    return [SOURCE[_key(img)] for img in grey]


def rows(x: torch.Tensor, split: str) -> list[int]:
    found = sources(x)
    assert all(s == split for s, _ in found), f"all examples must come from MNIST {split}"
    return [i for _, i in found]


def make_dm(train_sizes=(100, 100), test_sizes=(None,), arrays=ARRAYS, p_color=0.0, p_label_noise=0.0, **kw):
    train_envs = [
        {"name": f"env{i}", "p_color": p_color, "p_label_noise": p_label_noise, "size": s}
        for i, s in enumerate(train_sizes)
    ]
    test_envs = [
        {"name": f"test{i}", "p_color": 1.0 - p_color, "p_label_noise": p_label_noise, "size": s}
        for i, s in enumerate(test_sizes)
    ]
    kw.setdefault("train_pool_size", POOL)
    kw.setdefault("mnist_loader", lambda: arrays)
    return ColoredMNISTDataModule(train_envs, test_envs, **kw)


def built(**kw) -> ColoredMNISTDataModule:
    dm = make_dm(**kw)
    dm.setup()
    return dm


def colour_of(x: torch.Tensor) -> torch.Tensor:
    nonzero = x.flatten(2).sum(2) > 0
    assert torch.all(nonzero.sum(1) == 1)
    return nonzero.float().argmax(1)


# ---------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------


def test_train_envs_partition_the_shuffled_pool():
    dm = built()
    r0 = rows(dm.splits.train["env0"][0], "train")
    r1 = rows(dm.splits.train["env1"][0], "train")
    assert len(r0) == 100 and len(r1) == 100
    assert len(set(r0)) == 100 and len(set(r1)) == 100
    assert not set(r0) & set(r1)
    assert set(r0) | set(r1) == set(range(POOL))  # only (and all of) train[:pool]
    # shuffled, not the unshuffled even/odd rows
    assert r0 != list(range(0, POOL, 2))
    assert r0 != sorted(r0)


def test_train_envs_interleave_the_permutation_drawn_from_data_seed():
    # documented: pool shuffled with data_seed (first draw of the generator), env i takes i, i+n, ...
    dm = built(train_sizes=(20, 30, 10), data_seed=5)
    order = torch.randperm(POOL, generator=torch.Generator().manual_seed(5)).tolist()
    assert rows(dm.splits.train["env0"][0], "train") == order[0::3][:20]
    assert rows(dm.splits.train["env1"][0], "train") == order[1::3][:30]
    assert rows(dm.splits.train["env2"][0], "train") == order[2::3][:10]


@pytest.mark.parametrize("sizes", [(100, 100), (37, 64), (None, 10)])
def test_env_sizes_and_labels_follow_their_digits(sizes):
    dm = built(train_sizes=sizes)
    for i, size in enumerate(sizes):
        x, y = dm.splits.train[f"env{i}"]
        assert len(x) == len(y) == (size or POOL // 2)
        assert x.shape[1:] == (2, 14, 14)
        # noiseless, p_color=0: label = clean label of the source digit, colour = label
        src = torch.tensor(rows(x, "train"))
        assert torch.equal(y, digits_to_classes(ARRAYS.train_labels[src], 2))
        assert torch.equal(colour_of(x), y)


def test_test_envs_use_the_digits_after_the_pool_in_order():
    dm = built(test_sizes=(None, 25))
    x0, y0 = dm.splits.test["test0"]
    x1, y1 = dm.splits.test["test1"]
    assert rows(x0, "train") == list(range(POOL, N_TRAIN))
    assert rows(x1, "train") == list(range(POOL, POOL + 25))
    assert torch.equal(y0, digits_to_classes(ARRAYS.train_labels[POOL:], 2))
    assert torch.equal(colour_of(x0), 1 - y0)  # test p_color = 1.0


def test_test_envs_are_coloured_independently():
    train_envs = [{"name": "a", "p_color": 0.1}]
    test_envs = [{"name": "t0", "p_color": 0.5}, {"name": "t1", "p_color": 0.5}]
    dm = ColoredMNISTDataModule(train_envs, test_envs, train_pool_size=POOL, mnist_loader=lambda: ARRAYS)
    dm.setup()
    x0, _ = dm.splits.test["t0"]
    x1, _ = dm.splits.test["t1"]
    assert rows(x0, "train") == rows(x1, "train")
    assert not torch.equal(colour_of(x0), colour_of(x1))


@pytest.mark.parametrize("sizes,fraction", [((100, 100), 0.1), ((100, 60), 0.2), ((None, 40), 0.3)])
def test_heldout_validation_comes_from_the_test_set(sizes, fraction):
    dm = built(train_sizes=sizes, val_fraction=fraction, val_source="heldout", val_pairing="independent")
    seen = set()
    for i, size in enumerate(sizes):
        size = size or POOL // 2
        vx, vy = dm.splits.val[f"env{i}"]
        expected = int(round(fraction * size))
        assert len(vx) == len(vy) == expected
        vr = rows(vx, "test")
        assert len(set(vr)) == expected
        assert not seen & set(vr), "validation sets must be disjoint across envs"
        seen |= set(vr)
        assert torch.equal(vy, digits_to_classes(ARRAYS.test_labels[torch.tensor(vr)], 2))
        # the training env keeps its full size
        assert len(dm.splits.train[f"env{i}"][0]) == size


def test_heldout_validation_uses_env_colouring():
    train_envs = [
        {"name": "a", "p_color": 0.0, "p_label_noise": 0.0, "size": 100},
        {"name": "b", "p_color": 1.0, "p_label_noise": 0.0, "size": 100},
    ]
    dm = ColoredMNISTDataModule(
        train_envs,
        [{"name": "t", "p_color": 0.9}],
        val_fraction=0.2,
        train_pool_size=POOL,
        mnist_loader=lambda: ARRAYS,
    )
    dm.setup()
    xa, ya = dm.splits.val["a"]
    xb, yb = dm.splits.val["b"]
    assert torch.equal(colour_of(xa), ya)
    assert torch.equal(colour_of(xb), 1 - yb)


def test_split_validation_is_carved_from_the_env():
    dm = built(train_sizes=(100, 80), val_fraction=0.2, val_source="split", val_pairing="independent")
    all_rows = set()
    for i, size in enumerate((100, 80)):
        tx, ty = dm.splits.train[f"env{i}"]
        vx, vy = dm.splits.val[f"env{i}"]
        val_size = int(round(0.2 * size))
        assert len(vx) == len(vy) == val_size
        assert len(tx) == len(ty) == size - val_size
        tr, vr = rows(tx, "train"), rows(vx, "train")
        assert not set(tr) & set(vr)
        assert all(r < POOL for r in tr + vr)
        assert not all_rows & (set(tr) | set(vr)), "envs must not share digits"
        all_rows |= set(tr) | set(vr)


def test_zero_val_fraction_gives_no_validation():
    dm = built(val_fraction=0.0)
    assert dm.splits.val == {}
    assert set(dm.splits.train) == {"env0", "env1"}


# ---------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------


def _all_tensors(dm):
    out = []
    for part in (dm.splits.train, dm.splits.val, dm.splits.test):
        for name in sorted(part):
            out.extend(part[name])
    return out


def test_same_data_seed_gives_identical_tensors():
    a = built(p_color=0.2, p_label_noise=0.25, data_seed=3)
    b = built(p_color=0.2, p_label_noise=0.25, data_seed=3)
    ta, tb = _all_tensors(a), _all_tensors(b)
    assert len(ta) == len(tb) == 10  # 2 train + 2 val + 1 test envs, (x, y) each
    assert all(torch.equal(u, v) for u, v in zip(ta, tb))


def test_different_data_seed_gives_different_tensors():
    a = built(p_color=0.2, p_label_noise=0.25, data_seed=3)
    b = built(p_color=0.2, p_label_noise=0.25, data_seed=4)
    assert not torch.equal(a.splits.train["env0"][0], b.splits.train["env0"][0])
    assert set(rows(a.splits.train["env0"][0], "train")) != set(rows(b.splits.train["env0"][0], "train"))
    assert not torch.equal(a.splits.test["test0"][1], b.splits.test["test0"][1])


# ---------------------------------------------------------------------------------------
# size and config errors
# ---------------------------------------------------------------------------------------


def _never_called():
    raise AssertionError("MNIST must not be loaded at construction")


def test_env_size_above_share_raises_at_construction():
    with pytest.raises(ConfigError) as info:
        make_dm(train_sizes=(100, 101), mnist_loader=_never_called)
    message = str(info.value)
    assert "env1" in message and "101" in message and "100" in message


def test_env_size_above_share_of_three_envs_raises():
    with pytest.raises(ConfigError, match="66"):
        make_dm(train_sizes=(10, 67, 10), mnist_loader=_never_called)
    make_dm(train_sizes=(66, 66, 66), mnist_loader=_never_called)  # exactly the share is fine


def test_val_fraction_needing_more_heldout_digits_than_exist_raises():
    dm = make_dm(train_sizes=(100, 100), val_fraction=0.5, val_pairing="independent")  # 50 + 50 > 80
    with pytest.raises(ConfigError, match="val_fraction"):
        dm.setup()
    built(train_sizes=(100, 100), val_fraction=0.4, val_pairing="independent")  # 40 + 40 = 80 is fine
    built(train_sizes=(100, 100), val_fraction=0.5, val_source="split", val_pairing="independent")  # needs none


def test_val_fraction_beyond_real_heldout_raises_at_construction():
    # default pool (50,000 -> 25,000 per env) and 10,000 MNIST test digits: 0.3 needs 15,000
    with pytest.raises(ConfigError, match="15000"):
        ColoredMNISTDataModule(
            [{"name": "a", "p_color": 0.1}, {"name": "b", "p_color": 0.2}],
            [{"name": "t", "p_color": 0.9}],
            val_fraction=0.3,
            val_pairing="independent",
            mnist_loader=_never_called,
        )


def test_test_env_size_beyond_available_raises():
    dm = make_dm(test_sizes=(N_TRAIN - POOL + 1,))
    with pytest.raises(ConfigError) as info:
        dm.setup()
    assert "test0" in str(info.value) and str(N_TRAIN - POOL) in str(info.value)
    built(test_sizes=(N_TRAIN - POOL,))


def test_pool_leaving_no_test_digits_raises():
    dm = make_dm(train_sizes=(None, None), train_pool_size=N_TRAIN)
    with pytest.raises(ConfigError, match="train_pool_size"):
        dm.setup()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_classes": 3}, "num_classes"),
        ({"val_source": "test"}, "val_source"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"full_batch": False}, "batch_size"),
        ({"full_batch": False, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_dm(mnist_loader=_never_called, **kwargs)


def test_a_test_env_may_share_a_name_with_a_train_env():
    # Metric keys carry the split (train/p0.1/acc vs test/p0.1/acc), so the p_e sweep's
    # test env p0.1 may coexist with the training env p0.1.
    dm = ColoredMNISTDataModule(
        [{"name": "env0", "p_color": 0.1, "size": 50}, {"name": "env1", "p_color": 0.2, "size": 50}],
        [{"name": "env0", "p_color": 0.9}],
        train_pool_size=POOL,
        mnist_loader=lambda: ARRAYS,
    )
    dm.setup()
    assert dm.train_env_names == ["env0", "env1"] and dm.test_env_names == ["env0"]


# ---------------------------------------------------------------------------------------
# k classes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [5, 10])
def test_k_classes(k):
    dm = built(num_classes=k)
    assert dm.num_classes == k
    assert dm.input_shape == (k, 14, 14)
    for part in (dm.splits.train, dm.splits.val, dm.splits.test):
        for x, y in part.values():
            assert x.shape[1] == k
            assert 0 <= int(y.min()) and int(y.max()) < k
    x, y = dm.splits.train["env0"]
    src = torch.tensor(rows(x, "train"))
    assert torch.equal(y, ARRAYS.train_labels[src] // (10 // k))
    assert torch.equal(colour_of(x), y)
    xt, yt = dm.splits.test["test0"]
    assert torch.equal(colour_of(xt), (yt + 1) % k)  # test p_color = 1: colour = label + 1 mod k


# ---------------------------------------------------------------------------------------
# dataloaders
# ---------------------------------------------------------------------------------------


def test_full_batch_train_loader_yields_all_train_envs_every_step():
    dm = built()
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(3)]
    for batch in batches:
        assert set(batch) == {"env0", "env1"}
        for name, (x, y) in batch.items():
            # the very same tensors (no copy, no shuffle) at every step
            assert x is dm.splits.train[name][0]
            assert y is dm.splits.train[name][1]


def test_full_batch_train_loader_yields_the_same_object_every_step():
    dm = built()
    it = iter(dm.train_dataloader())
    b1, b2, b3 = next(it), next(it), next(it)
    assert b1 is b2 is b3


def test_eval_loader_yields_one_batch_with_train_val_test():
    dm = built(test_sizes=(None, 10))
    batches = list(dm.val_dataloader())
    assert len(batches) == 1
    batch = batches[0]
    assert set(batch) == {"train", "val", "test"}
    assert set(batch["train"]) == {"env0", "env1"}
    assert set(batch["val"]) == {"env0", "env1"}
    assert set(batch["test"]) == {"test0", "test1"}
    for part in ("train", "val", "test"):
        for name, (x, y) in batch[part].items():
            assert x is getattr(dm.splits, part)[name][0]
            assert y is getattr(dm.splits, part)[name][1]
    assert len(list(dm.test_dataloader())) == 1


def test_transfer_batch_to_device_caches_the_copy():
    dm = built()
    batch = next(iter(dm.train_dataloader()))
    cpu = torch.device("cpu")
    first = dm.transfer_batch_to_device(batch, cpu, 0)
    second = dm.transfer_batch_to_device(batch, cpu, 0)
    assert first is second
    assert torch.equal(first["env0"][0], batch["env0"][0])
    eval_batch = next(iter(dm.val_dataloader()))
    e1 = dm.transfer_batch_to_device(eval_batch, cpu, 0)
    assert dm.transfer_batch_to_device(eval_batch, cpu, 0) is e1
    assert e1 is not first


def test_transfer_cache_hits_for_batches_from_the_train_loader():
    dm = built()
    it = iter(dm.train_dataloader())
    cpu = torch.device("cpu")
    copies = [dm.transfer_batch_to_device(next(it), cpu, 0) for _ in range(3)]
    assert len(dm._device_copies) == 1
    assert copies[0] is copies[1] is copies[2]


def test_minibatch_mode_uses_combined_loader():
    dm = built(full_batch=False, batch_size=16)
    loader = dm.train_dataloader()
    assert isinstance(loader, CombinedLoader)
    it = iter(loader)
    item = next(it)
    # pytorch_lightning 2.x: iterating a CombinedLoader yields (batch, batch_idx, dataloader_idx)
    assert isinstance(item, tuple) and len(item) == 3
    batch, batch_idx, dataloader_idx = item
    assert batch_idx == 0 and dataloader_idx == 0
    assert set(batch) == {"env0", "env1"}
    for name, (x, y) in batch.items():
        assert x.shape == (16, 2, 14, 14)
        assert y.shape == (16,)
        # each row is an example of that env, with its own label
        env_x, env_y = dm.splits.train[name]
        flat = env_x.flatten(1)
        for row, label in zip(x.flatten(1), y):
            match = (flat == row).all(1).nonzero().flatten()
            assert len(match) == 1
            assert env_y[match[0]] == label
    # max_size_cycle over two envs of 100 with batch 16 -> 7 batches
    assert sum(1 for _ in iter(loader)) == 7


def test_eval_loader_yields_the_same_object_on_every_pass():
    dm = built()
    loader = dm.val_dataloader()
    first, second = next(iter(loader)), next(iter(loader))
    assert first is second


def test_minibatches_of_an_env_named_train_are_not_cached():
    dm = ColoredMNISTDataModule(
        [{"name": "train", "p_color": 0.1, "size": 64}],
        [{"name": "t", "p_color": 0.9}],
        train_pool_size=POOL,
        mnist_loader=lambda: ARRAYS,
        full_batch=False,
        batch_size=16,
    )
    dm.setup()
    for batch, _, _ in dm.train_dataloader():
        dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert len(dm._device_copies) == 0


def test_train_env_size_knob_resizes_every_training_env():
    dm = ColoredMNISTDataModule(
        [{"name": "a", "p_color": 0.1, "size": 100}, {"name": "b", "p_color": 0.2}],
        [{"name": "t", "p_color": 0.9}],
        train_pool_size=POOL,
        train_env_size=40,
        mnist_loader=lambda: ARRAYS,
    )
    dm.setup()
    assert [len(dm.splits.train[name][1]) for name in ("a", "b")] == [40, 40]


def test_label_noise_gap_spreads_noise_as_the_paper_states():
    dm = ColoredMNISTDataModule(
        [{"name": "p0.2", "p_color": 0.2}, {"name": "p0.1", "p_color": 0.1}],
        [{"name": "p0.9", "p_color": 0.9}],
        train_pool_size=POOL,
        label_noise_gap=0.04,
        mnist_loader=_never_called,
    )
    noise = {spec.name: spec.p_label_noise for spec in dm.train_specs}
    assert noise == {"p0.1": pytest.approx(0.27), "p0.2": pytest.approx(0.23)}
    with pytest.raises(ConfigError, match="label_noise_gap=1.5"):
        ColoredMNISTDataModule(
            [{"name": "a", "p_color": 0.1}],
            [{"name": "t", "p_color": 0.9}],
            train_pool_size=POOL,
            label_noise_gap=1.5,
            mnist_loader=_never_called,
        )


# ---------------------------------------------------------------------------------------
# paired ("shared") validation
# ---------------------------------------------------------------------------------------


def make_two_rate_dm(val_pairing, sizes=(100, 100), noise=(0.25, 0.25), **kw):
    train_envs = [
        {"name": "p0.2", "p_color": 0.2, "p_label_noise": noise[0], "size": sizes[0]},
        {"name": "p0.1", "p_color": 0.1, "p_label_noise": noise[1], "size": sizes[1]},
    ]
    test_envs = [{"name": "p0.9", "p_color": 0.9, "p_label_noise": 0.25}]
    kw.setdefault("val_fraction", 0.3)
    dm = ColoredMNISTDataModule(
        train_envs, test_envs, train_pool_size=POOL, mnist_loader=lambda: ARRAYS, val_pairing=val_pairing, **kw
    )
    dm.setup()
    return dm


def test_shared_validation_uses_the_same_digits_and_labels_in_every_env():
    dm = make_two_rate_dm("shared")
    (x_a, y_a), (x_b, y_b) = dm.splits.val["p0.2"], dm.splits.val["p0.1"]
    assert rows(x_a, "test") == rows(x_b, "test") == list(rows(x_a, "test"))
    assert len(x_a) == 30
    assert torch.equal(y_a, y_b)  # equal label noise -> identical noisy labels
    assert torch.equal(x_a.sum(1), x_b.sum(1))  # same grey digits
    # the colours are coupled: every example coloured "against" its label at rate 0.1 is
    # also against it at rate 0.2 (u < 0.1 implies u < 0.2)
    against_a, against_b = colour_of(x_a) != y_a, colour_of(x_b) != y_b
    assert torch.all(against_a | ~against_b)
    assert against_a.sum() >= against_b.sum()


def test_shared_validation_colour_blind_model_sees_identical_envs():
    dm = make_two_rate_dm("shared", val_fraction=0.4)
    (x_a, y_a), (x_b, y_b) = dm.splits.val["p0.2"], dm.splits.val["p0.1"]
    grey_loss = [torch.nn.functional.mse_loss(x.sum(1).mean((1, 2)), y.float()) for x, y in ((x_a, y_a), (x_b, y_b))]
    assert grey_loss[0].item() == grey_loss[1].item()


def test_coupled_colouring_keeps_each_envs_rates():
    """Marginally every coupled env has its own colour and noise rates (binomial tolerance)."""
    from metairm_pl.data.environments import EnvSpec, colour_digits_coupled

    n = 60_000
    g = torch.Generator().manual_seed(3)
    images = torch.randint(1, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    digits = torch.zeros(n, dtype=torch.long)  # clean label 1 everywhere (digit < 5)
    specs = [EnvSpec("a", p_color=0.2, p_label_noise=0.3), EnvSpec("b", p_color=0.1, p_label_noise=0.2)]
    built = colour_digits_coupled(images, digits, specs, 2, g)
    for spec in specs:
        x, y = built[spec.name]
        rates = {
            "noise": ((y != 1).float().mean().item(), spec.p_label_noise),
            "colour": ((colour_of(x) != y).float().mean().item(), spec.p_color),
        }
        for kind, (rate, expected) in rates.items():
            tolerance = 4 * (expected * (1 - expected) / n) ** 0.5
            assert abs(rate - expected) < tolerance, (spec.name, kind, rate, expected)
    # coupled: a label flipped at rate 0.2 is also flipped at rate 0.3
    assert torch.all((built["b"][1] == 1) | (built["a"][1] == 0))


def test_shared_validation_leaves_train_and_test_envs_unchanged():
    independent, shared = make_two_rate_dm("independent"), make_two_rate_dm("shared")
    for split in ("train", "test"):
        a, b = getattr(independent.splits, split), getattr(shared.splits, split)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name][0], b[name][0]) and torch.equal(a[name][1], b[name][1])


def test_shared_validation_needs_only_the_largest_val_set_of_heldout_digits():
    # 2 envs x 50 = 100 > 80 held-out digits independent, but 50 <= 80 shared
    with pytest.raises(ConfigError, match="held-out validation digits"):
        make_two_rate_dm("independent", val_fraction=0.5)
    dm = make_two_rate_dm("shared", val_fraction=0.5)
    assert len(dm.splits.val["p0.2"][0]) == 50


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_pairing": "paired"}, "val_pairing='paired'.*independent.*shared"),
        ({"val_pairing": "shared", "val_source": "split"}, "val_pairing=shared needs val_source=heldout"),
    ],
)
def test_bad_val_pairing_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_dm(**kwargs)


# --------------------------------------------------------------------------- paired test envs (Fig. 10)


def make_pe_sweep_dm(test_pairing, sizes=(None, None, 40)):
    train_envs = [{"name": "p0.2", "p_color": 0.2, "size": 100}, {"name": "p0.1", "p_color": 0.1, "size": 100}]
    test_envs = [
        {"name": f"p{p}", "p_color": p, "p_label_noise": 0.25, "size": size} for p, size in zip((0.1, 0.5, 0.9), sizes)
    ]
    dm = ColoredMNISTDataModule(
        train_envs, test_envs, train_pool_size=POOL, mnist_loader=lambda: ARRAYS, test_pairing=test_pairing
    )
    dm.setup()
    return dm


def test_paired_test_envs_share_digits_and_labels_and_differ_only_in_colour():
    dm = make_pe_sweep_dm("shared")
    (x1, y1), (x5, y5), (x9, y9) = (dm.splits.test[name] for name in ("p0.1", "p0.5", "p0.9"))
    assert rows(x1, "train") == rows(x5, "train") and rows(x9, "train") == rows(x1, "train")[:40]
    assert torch.equal(y1, y5) and torch.equal(y9, y1[:40])  # the same label noise
    assert torch.equal(x1.sum(1), x5.sum(1))  # the same grey digits
    against = [colour_of(x) != y for x, y in ((x1, y1), (x5, y5))]
    assert torch.all(against[1] | ~against[0])  # coupled: against at 0.1 implies against at 0.5
    assert against[0].float().mean() < against[1].float().mean()


def test_paired_test_envs_leave_train_and_validation_unchanged_and_keep_the_default_protocol():
    independent, shared = make_pe_sweep_dm("independent"), make_pe_sweep_dm("shared")
    for split in ("train", "val"):
        a, b = getattr(independent.splits, split), getattr(shared.splits, split)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[n][0], b[n][0]) and torch.equal(a[n][1], b[n][1]) for n in a)
    # independent (the IRM protocol's default): each test env draws its own label noise
    assert not torch.equal(independent.splits.test["p0.1"][1], independent.splits.test["p0.5"][1])
    with pytest.raises(ConfigError, match="test_pairing='paired'.*independent"):
        make_pe_sweep_dm("paired")
