"""The linear unit-tests family equals facebookresearch/InvarianceUnitTests' generators
(``scripts/datasets.py``, transcribed below as an independent reference: torch's global RNG
seeded with the data seed, the reference's draws in its order; ``torch.qr`` -> ``linalg.qr``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from metairm_pl.data.linear_unit_tests import PROBLEMS, LinearUnitTestsDataModule
from metairm_pl.errors import ConfigError


# -- the reference, transcribed ------------------------------------------------------------
def _scramble(dim, scrambled):
    return torch.linalg.qr(torch.randn(dim, dim), mode="reduced")[0] if scrambled else torch.eye(dim)


def example1(dim_inv, dim_spu, n_envs, scrambled):
    envs = {"E0": 0.1, "E1": 1.5} if n_envs >= 2 else {}
    if n_envs >= 3:
        envs["E2"] = 2
    for e in range(3, n_envs):
        envs[f"E{e}"] = 10 ** torch.zeros(1).uniform_(-2, 1).item()
    wxy = torch.randn(dim_inv, dim_inv) / dim_inv
    wyz = torch.randn(dim_inv, dim_spu) / dim_spu
    scramble = _scramble(dim_inv + dim_spu, scrambled)

    def sample(n, env, split):
        sd = envs[env]
        x = torch.randn(n, dim_inv) * sd
        y = x @ wxy + torch.randn(n, dim_inv) * sd
        z = y @ wyz + torch.randn(n, dim_spu)
        if split == "test":
            z = z[torch.randperm(len(z))]
        return torch.cat((x, z), -1) @ scramble, y.sum(1, keepdim=True)

    return envs, sample


def example2(dim_inv, dim_spu, n_envs, scrambled):
    envs = {"E0": {"p": 0.95, "s": 0.3}, "E1": {"p": 0.97, "s": 0.5}} if n_envs >= 2 else {}
    if n_envs >= 3:
        envs["E2"] = {"p": 0.99, "s": 0.7}
    for e in range(3, n_envs):
        envs[f"E{e}"] = {"p": torch.zeros(1).uniform_(0.9, 1).item(), "s": torch.zeros(1).uniform_(0.3, 0.7).item()}
    cow, grass = torch.ones(1, dim_inv), torch.ones(1, dim_spu)
    avg_fg, avg_bg = torch.cat((cow, cow, -cow, -cow)), torch.cat((grass, -grass, -grass, grass))
    scramble = _scramble(dim_inv + dim_spu, scrambled)

    def sample(n, env, split):
        p, s = envs[env]["p"], envs[env]["s"]
        w = torch.Tensor([p, 1 - p] * 2) * torch.Tensor([s] * 2 + [1 - s] * 2)
        i = torch.multinomial(w, n, True)
        x = torch.cat(((torch.randn(n, dim_inv) / math.sqrt(10) + avg_fg[i]) * 1e-2,
                       (torch.randn(n, dim_spu) / math.sqrt(10) + avg_bg[i]) * 1), -1)  # fmt: skip
        if split == "test":
            x[:, dim_inv:] = x[torch.randperm(len(x)), dim_inv:]
        return x @ scramble, x[:, :dim_inv].sum(1, keepdim=True).gt(0).float()

    return envs, sample


def example3(dim_inv, dim_spu, n_envs, scrambled):
    envs = {f"E{e}": torch.randn(1, dim_spu) for e in range(n_envs)}
    scramble = _scramble(dim_inv + dim_spu, scrambled)

    def sample(n, env, split):
        m = n // 2
        inv0 = torch.randn(m, dim_inv) * 0.1 + torch.Tensor([[0.1] * dim_inv])
        inv1 = torch.randn(m, dim_inv) * 0.1 - torch.Tensor([[0.1] * dim_inv])
        sc0 = torch.randn(m, dim_spu) * 0.1 + envs[env]
        sc1 = torch.randn(m, dim_spu) * 0.1 - envs[env]
        x = torch.cat((torch.cat((inv0, sc0), -1), torch.cat((inv1, sc1), -1)))
        if split == "test":
            x[:, dim_inv:] = x[torch.randperm(len(x)), dim_inv:]
        return x @ scramble, torch.cat((torch.zeros(m, 1), torch.ones(m, 1)))

    return envs, sample


REFERENCE = {"Example1": example1, "Example2": example2, "Example3": example3}


def reference_envs(problem, dim_inv, dim_spu, n_envs, num_samples, data_seed, oracle):
    """main.py's data: set_seed(data_seed), the dataset, then train, validation, test samples."""
    torch.manual_seed(data_seed)
    envs, sample = REFERENCE[problem.rstrip("s")](dim_inv, dim_spu, n_envs, problem.endswith("s"))
    train_split = "test" if oracle else "train"
    return {key: {env: sample(num_samples, env, split) for env in envs}
            for key, split in (("train", train_split), ("val", train_split), ("test", "test"))}  # fmt: skip


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize(("dim_inv", "dim_spu", "n_envs", "seed", "oracle"),
                         [(5, 5, 3, 0, False), (3, 7, 5, 3, False), (4, 2, 2, 1, True)])  # fmt: skip
def test_environments_equal_the_reference_draw_for_draw(problem, dim_inv, dim_spu, n_envs, seed, oracle):
    ours = LinearUnitTestsDataModule(problem, n_envs, dim_inv, dim_spu, num_samples=101, oracle=oracle, data_seed=seed)
    splits = ours.build_environments()
    state = torch.get_rng_state()
    expected = reference_envs(problem, dim_inv, dim_spu, n_envs, 101, seed, oracle)
    torch.set_rng_state(state)
    for split in ("train", "val", "test"):
        ours_split = getattr(splits, split)
        assert list(ours_split) == list(expected[split])
        for env, (x, y) in expected[split].items():
            assert torch.equal(ours_split[env][0], x) and torch.equal(ours_split[env][1], y.squeeze(1))


def test_the_task_and_the_global_rng_untouched():
    before = torch.get_rng_state()
    data = LinearUnitTestsDataModule("Example1", num_samples=20)
    data.setup()
    assert torch.equal(torch.get_rng_state(), before)  # the model's initialisation is not shifted
    assert data.num_classes == 1 and data.num_outputs == 1 and data.input_shape == (10,)
    assert LinearUnitTestsDataModule("Example2s", num_samples=20).num_classes == 2


@pytest.mark.parametrize(("kwargs", "named"), [({"problem": "Example4"}, "data.problem='Example4'"),
                                               ({"problem": "Example2", "n_envs": 1}, "data.n_envs=1"),
                                               ({"dim_inv": 0}, "data.dim_inv=0")])  # fmt: skip
def test_bad_settings_are_named(kwargs, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        LinearUnitTestsDataModule(**kwargs)


@pytest.mark.parametrize("problem", ["Example1", "Example2"])
def test_every_method_trains_on_it_and_records_the_references_error(make_config, problem):
    """Regression (Example1: mean squared error) and classification (Example2) alike, every
    method but the image-only grayscale oracle runs a few steps on a tiny problem."""

    from metairm_pl.algorithms import registry
    from metairm_pl.files import read_jsonl
    from metairm_pl.run import train

    methods = [name for name in registry.methods() if name != "grayscale" and not name.endswith("_own")]
    for name in methods:
        cfg = make_config(["data=linear_unit_tests", f"data.problem={problem}", "data.num_samples=40",
                           f"algorithm={name}", "trainer.max_steps=3", "trainer.val_check_interval=3"], name=name)  # fmt: skip
        final = train(cfg)
        (record,) = read_jsonl(Path(cfg.paths.output_dir) / "results.jsonl")
        metric = "error" if problem == "Example1" else "acc"
        assert final["status"] == "done" and f"test/E2/{metric}" in record, name
        assert ("test/E2/acc" in record) == (problem != "Example1")


def test_the_unit_tests_experiment_sweeps_every_problem_method_and_ten_data_seeds(tmp_path):
    """experiment=unit_tests: 6 problems x 11 methods x data seeds 0-9, the reference's defaults
    (lr 1e-3, no L2, 10,000 steps, model seeded 1000), IRMv1 as the reference defines it."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from metairm_pl.resolvers import register_resolvers

    conf = Path(__file__).resolve().parents[2] / "conf"
    params = yaml.safe_load((conf / "experiment" / "unit_tests.yaml").read_text())["hydra"]["sweeper"]["params"]
    assert params["data.problem"].split(",") == list(PROBLEMS) and params["data_seed"] == "range(10)"
    methods = params["algorithm"].split(",")
    assert len(methods) == 11 and "grayscale" not in methods
    register_resolvers()
    for method, oracle in (("irm", False), ("erm", True), ("fishr", False)):
        GlobalHydra.instance().clear()
        overrides = ["experiment=unit_tests", f"algorithm={method}", "data.problem=Example2s", f"data.oracle={oracle}"]
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        assert (cfg.seed, cfg.algorithm.optimizer.lr, cfg.algorithm.l2_weight, cfg.trainer.max_steps) == (
            1000,
            0.001,
            0.0,
            10000,
        )
        assert cfg.model._target_ == "metairm_pl.models.linear.LinearModel" and cfg.data.name == "Example2s"
        assert cfg.data.oracle is oracle
    assert cfg.algorithm.penalty.anneal_steps == 0
