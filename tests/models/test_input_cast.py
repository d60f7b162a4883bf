"""AutocastInputCache: the cached cast is autocast's own, reused only while the input is
unchanged, and whole bf16 runs are bit-identical with and without it."""

from __future__ import annotations

import sys

import pytest
import torch

from metairm_pl.models import input_cast
from metairm_pl.models.input_cast import AutocastInputCache
from metairm_pl.models.mlp import MLP
from metairm_pl.run import train

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def test_the_cast_is_made_once_and_equals_autocasts_own():
    cache = AutocastInputCache()
    x = torch.rand(64, 10) * 3.7  # values that bf16 must round
    with torch.autocast(**BF16):
        first, second = cache(x), cache(x)
    assert first.dtype == torch.bfloat16 and torch.equal(first, x.to(torch.bfloat16))
    assert second is first and (cache.misses, cache.hits) == (1, 1)


def test_an_in_place_change_or_another_view_gets_a_new_cast():
    cache = AutocastInputCache()
    x = torch.rand(8, 4)
    with torch.autocast(**BF16):
        before = cache(x)
        x.add_(1.0)  # bumps the version counter
        after = cache(x)
        half = cache(x[:4])  # same storage, other shape
    assert after is not before and torch.equal(after, x.to(torch.bfloat16))
    assert torch.equal(half, x[:4].to(torch.bfloat16)) and cache.misses == 3


@pytest.mark.parametrize(
    "case",
    ["autocast off", "needs grad", "integer", "already bf16"],
)
def test_inputs_autocast_would_not_cast_come_back_as_they_are(case):
    cache = AutocastInputCache()
    x = {
        "autocast off": torch.rand(3, 2),
        "needs grad": torch.rand(3, 2, requires_grad=True),
        "integer": torch.arange(6).reshape(3, 2),
        "already bf16": torch.rand(3, 2).to(torch.bfloat16),
    }[case]
    with torch.autocast(**BF16, enabled=case != "autocast off"):
        assert cache(x) is x
    assert len(cache) == 0


def test_the_least_recently_used_entry_goes_first():
    cache = AutocastInputCache(max_entries=2)
    a, b, c = torch.rand(2, 2), torch.rand(2, 2), torch.rand(2, 2)
    with torch.autocast(**BF16):
        cache(a), cache(b), cache(a), cache(c)  # b is the oldest when c arrives
        cache(a)
        cache(b)
    assert (cache.hits, cache.misses) == (2, 4) and len(cache) == 2
    with pytest.raises(ValueError, match="max_entries=0"):
        AutocastInputCache(max_entries=0)


def _train_mlp(reuse: bool, steps: int = 15) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = MLP((2, 14, 14), 5, hidden_dim=32, reuse_input_cast=reuse)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.rand(256, 2, 14, 14), torch.randint(0, 5, (256,))
    for _ in range(steps):
        with torch.autocast(**BF16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if reuse:
        assert (model.input_cache.misses, model.input_cache.hits) == (1, steps - 1)
    return [p.detach().clone() for p in model.parameters()]


def test_training_an_mlp_is_bit_identical_with_and_without_the_cache():
    with_cache, without = _train_mlp(True), _train_mlp(False)
    assert all(torch.equal(a, b) for a, b in zip(with_cache, without))


def test_grayscale_and_bag_of_words_heads_have_no_cache():
    assert MLP((2, 4, 4), 1, grayscale=True).input_cache is None
    assert MLP((2, 4, 4), 1, reuse_input_cast=False).input_cache is None


@pytest.mark.parametrize("algorithm", ["erm", "irm", "meta_irm"])
def test_whole_bf16_runs_give_the_same_records_with_and_without_the_cache(
    make_config, fake_mnist, monkeypatch, algorithm
):
    overrides = ["data=cmnist", f"algorithm={algorithm}", "model.hidden_dim=16", "trainer.max_steps=6",
                 "trainer.val_check_interval=3", "data.train_pool_size=200", "trainer.precision=bf16-mixed",
                 "data.train_envs=[{name:p0.2,p_color:0.2,size:100},{name:p0.1,p_color:0.1,size:100}]"]  # fmt: skip
    caches: list[AutocastInputCache] = []
    original_init = AutocastInputCache.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        caches.append(self)

    monkeypatch.setattr(AutocastInputCache, "__init__", recording_init)
    cached = train(make_config(overrides, name="cached"))
    assert len(caches) == 1 and caches[0].hits > 0  # the full batch recurs: the cast was reused
    assert caches[0].misses == 2  # once per training env
    monkeypatch.setattr(input_cast.AutocastInputCache, "__call__", lambda self, x: x)  # autocast casts
    uncached = train(make_config(overrides, name="uncached"))
    assert cached["metrics"] == uncached["metrics"]


def test_the_benchmark_finds_equal_losses_on_a_tiny_case(monkeypatch, capsys):
    """bench/bench_input_cast.py exits 0 only when the per-step losses agree bit for bit."""
    import importlib
    import logging
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.delitem(sys.modules, "bench_input_cast", raising=False)
    bench = importlib.import_module("bench_input_cast")
    deterministic = torch.are_deterministic_algorithms_enabled()
    level = logging.getLogger("pytorch_lightning").level
    argv = ["--env-size", "64", "--steps", "3", "--repeats", "1", "--warmup-steps", "0", "--classes", "2", "5"]
    try:
        assert bench.main(argv) == 0
    finally:  # the script sets process-wide switches
        torch.use_deterministic_algorithms(deterministic)
        logging.getLogger("pytorch_lightning").setLevel(level)
        sys.modules.pop("bench_input_cast", None)
    assert "bitwise equal with and without the cache: yes" in capsys.readouterr().out


@pytest.mark.parametrize("bf16", [False, True])
def test_features_then_classifier_is_the_forward_bit_for_bit(bf16):
    """Methods that read the classifier's input (IB-IRM, Fishr) see exactly the forward's logits."""
    torch.manual_seed(0)
    network = MLP((2, 14, 14), 1, hidden_dim=16)
    x = torch.rand(64, 2, 14, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = network(x)
        split = network.classifier(network.features(x))
    assert torch.equal(logits, split) and network.features(x).shape == (64, 16)
