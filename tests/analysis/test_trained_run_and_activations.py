"""Representations of trained runs (rebuild, activations, θ') and the Fig. 9 / Fig. 10
commands, on tiny runs trained in-process (synthetic data; Colored MNIST from random
"digits" for Fig. 10, whose test envs must share examples)."""

from __future__ import annotations

import csv
import math
import shutil
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from metairm_pl.analysis import fig9, fig10
from metairm_pl.analysis.activations import capture_activations, layer_names, resolve_layer
from metairm_pl.analysis.similarity import representation_similarity
from metairm_pl.analysis.trained_run import CheckpointStepWarning, rebuild_run
from metairm_pl.errors import ConfigError
from metairm_pl.run import train

HIDDEN = 8
# A checkpoint lands at step 10; the run ends at 12 (no checkpoint is written at the last step).
TINY = [f"model.hidden_dim={HIDDEN}", "trainer.max_steps=12", "checkpoint_every=5", "trainer.val_check_interval=6"]
SYNTHETIC_VAL_SIZE = 102  # 0.2 x 512


def trained(make_config, overrides, name="run") -> Path:
    keys = {override.split("=")[0] for override in overrides}
    cfg = make_config([o for o in TINY if o.split("=")[0] not in keys] + overrides, name=name)
    train(cfg)
    return Path(cfg.paths.output_dir)


def load(run_dir, **kwargs):
    """Load a finished 12-step run: from checkpoints/final.ckpt when the run wrote it (no
    warning), else from the periodic checkpoint of step 10 (with a warning)."""
    if (Path(run_dir) / "checkpoints" / "final.ckpt").exists():
        run = rebuild_run(run_dir, **kwargs)
        assert run.checkpoint.name == "final.ckpt" and run.checkpoint_step == run.final_step == 12
        return run
    with pytest.warns(CheckpointStepWarning, match="step 10.*final step is 12"):
        return rebuild_run(run_dir, **kwargs)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_png(path: Path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.fixture
def meta_irm_run(make_config) -> Path:
    """A finished run without checkpoints/final.ckpt (as one killed between its last
    evaluation and the final save, or made before final checkpoints existed): exercises the
    fallback to the last periodic checkpoint (step 10 of 12)."""
    run_dir = trained(make_config, ["data=synthetic", "algorithm=meta_irm"])
    (run_dir / "checkpoints" / "final.ckpt").unlink()
    return run_dir


# --------------------------------------------------------------------------- rebuild + activations


def test_rebuilt_run_has_checkpoint_weights_and_layer_activations(meta_irm_run):
    rng_before = torch.get_rng_state()
    run = load(meta_irm_run)
    assert torch.equal(torch.get_rng_state(), rng_before)  # rebuilding draws from a forked RNG
    assert (run.checkpoint_step, run.final_step, run.finished) == (10, 12, True)
    assert run.checkpoint == meta_irm_run / "checkpoints" / "last.ckpt" and not run.checkpoint_is_final
    saved = torch.load(run.checkpoint, weights_only=True)["state_dict"]
    assert torch.equal(run.network.layers[4].weight, saved["network.layers.4.weight"])

    assert layer_names(run.network) == ["hidden1", "hidden2", "output"]
    assert resolve_layer(run.network, "last_hidden") == "hidden2"
    with pytest.raises(ConfigError, match="hidden3"):
        resolve_layer(run.network, "hidden3")
    x, _ = run.env_data("val", "p0.1")
    acts = capture_activations(run.network, x, chunk_size=40)  # chunks of 40, 40, 22
    assert {name: tuple(a.shape) for name, a in acts.items()} == {
        "hidden1": (HIDDEN, SYNTHETIC_VAL_SIZE),
        "hidden2": (HIDDEN, SYNTHETIC_VAL_SIZE),
        "output": (1, SYNTHETIC_VAL_SIZE),
    }
    layers = run.network.layers  # manual walk: Linear, ReLU, Linear, ReLU, Linear
    with torch.no_grad():
        hidden1 = torch.relu(layers[0](x))
        hidden2 = torch.relu(layers[2](hidden1))
        torch.testing.assert_close(acts["hidden1"], hidden1.T)
        torch.testing.assert_close(acts["hidden2"], hidden2.T)
        torch.testing.assert_close(acts["output"], layers[4](hidden2).T)
    assert list(capture_activations(run.network, x, layers=["last_hidden"])) == ["hidden2"]


def test_adapted_parameters_change_representations_and_pwcca_of_theta_with_itself_is_one(meta_irm_run):
    run = load(meta_irm_run)
    theta = {name: value.detach().clone() for name, value in run.parameters().items()}
    lr, steps = fig9.inner_hyperparameters(run)
    assert (lr, steps) == (0.1, 1)
    adapted = fig9.adapted_parameters(run, "p0.1", lr, steps)
    assert all(torch.equal(theta[name], value) for name, value in run.parameters().items())  # θ untouched
    assert any(not torch.allclose(adapted[name], theta[name]) for name in theta)

    x, _ = run.env_data("val", "p0.1")
    before = capture_activations(run.network, x)
    again = capture_activations(run.network, x, params=theta)
    after = capture_activations(run.network, x, params=adapted)
    for layer in layer_names(run.network):
        assert representation_similarity(before[layer], again[layer]) == pytest.approx(1.0, abs=1e-9)
        assert not torch.equal(before[layer], after[layer])
        assert 0.0 <= representation_similarity(before[layer], after[layer]) <= 1.0 + 1e-12


def test_one_neuron_representations_compare_by_absolute_correlation():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 200, generator=generator)
    other = -0.5 * logits + 0.3 * torch.randn(1, 200, generator=generator)
    correlation = np.corrcoef(logits.double().numpy()[0], other.double().numpy()[0])[0, 1]
    assert representation_similarity(logits, other) == pytest.approx(abs(correlation), abs=1e-9)
    assert representation_similarity(logits, other, method="textbook") == pytest.approx(abs(correlation), abs=1e-9)
    for method in ("svcca", "textbook"):
        with pytest.raises(ConfigError, match="no neuron that varies"):
            representation_similarity(logits, torch.zeros(1, 200), method=method)


def test_missing_checkpoint_and_preferred_final_checkpoint(make_config, meta_irm_run):
    no_checkpoint = trained(make_config, ["data=synthetic", "algorithm=erm", "checkpoint_every=0"], name="none")
    (no_checkpoint / "checkpoints" / "final.ckpt").unlink()  # no periodic one either
    with pytest.raises(ConfigError, match="no checkpoint.*checkpoint_every=0"):
        rebuild_run(no_checkpoint)

    state = torch.load(meta_irm_run / "checkpoints" / "last.ckpt", weights_only=True)
    state["global_step"] = 12  # stands in for weights saved at the end of the run
    torch.save(state, meta_irm_run / "checkpoints" / "final.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointStepWarning)
        run = rebuild_run(meta_irm_run)
    assert run.checkpoint.name == "final.ckpt" and run.checkpoint_is_final
    (meta_irm_run / "final.json").unlink()  # unfinished: a final.ckpt may be stale, the last one is used
    with pytest.warns(CheckpointStepWarning, match="step 10.*final step is 12 \\(unfinished run\\)"):
        assert rebuild_run(meta_irm_run).checkpoint.name == "last.ckpt"


# --------------------------------------------------------------------------- Fig. 9


def test_fig9_cli_writes_csv_and_png(meta_irm_run, tmp_path, capsys):
    out = tmp_path / "fig9"
    assert fig9.main([str(meta_irm_run), "--out", str(out)]) == 0
    assert "final step is 12" in capsys.readouterr().err
    rows = read_csv(out / "fig9.csv")
    assert [(r["env"], r["layer"]) for r in rows] == [
        (env, layer) for env in ("p0.1", "p0.2") for layer in ("hidden1", "hidden2", "output")
    ]
    for row in rows:
        assert row["algorithm"] == "meta_irm" and row["eval_data"] == f"val/{row['env']}"
        assert (row["checkpoint_step"], row["final_step"], row["datapoints"]) == ("10", "12", str(SYNTHETIC_VAL_SIZE))
        assert 0.0 < float(row["pwcca"]) <= 1.0 + 1e-12 and row["note"] == ""
    summary = read_csv(out / "fig9_summary.csv")
    assert len(summary) == 6 and all(r["n"] == "1" and r["std"] == "nan" for r in summary)
    assert_png(out / "fig9.png")

    figure = fig9.fig9_figure(fig9.summarize(fig9.fig9_rows(load(meta_irm_run))))
    axes = figure.axes[0]
    assert axes.get_xlabel() == "layer" and "PWCCA" in axes.get_ylabel()
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["inner step on p0.1", "inner step on p0.2"]

    fixed = tmp_path / "fig9_test"
    assert fig9.main([str(meta_irm_run), "--out", str(fixed), "--eval-data", "test"]) == 0
    assert {r["eval_data"] for r in read_csv(fixed / "fig9.csv")} == {"test/p0.9"}


def test_fig9_needs_an_inner_step(make_config, tmp_path, capsys):
    erm_run = trained(make_config, ["data=synthetic", "algorithm=erm"], name="erm")
    assert fig9.main([str(erm_run), "--out", str(tmp_path / "a")]) == 2
    assert "no inner step" in capsys.readouterr().err
    assert fig9.main([str(erm_run), "--out", str(tmp_path / "b"), "--inner-lr", "0.1", "--inner-steps", "2"]) == 0
    assert {r["inner_steps"] for r in read_csv(tmp_path / "b" / "fig9.csv")} == {"2"}


# --------------------------------------------------------------------------- Fig. 10


TINY_CMNIST = [
    "data=cmnist",
    "data.train_pool_size=200",  # test envs: the remaining 100 digits, in the same order in every env
    "data.train_envs=[{name:p0.2,p_color:0.2,size:100},{name:p0.1,p_color:0.1,size:100}]",
    "data.test_envs=[{name:p0.1,p_color:0.1},{name:p0.5,p_color:0.5},{name:p0.9,p_color:0.9}]",
]


def test_fig10_cli_compares_matched_test_envs(make_config, fake_mnist, tmp_path, capsys):
    runs = [
        trained(make_config, TINY_CMNIST + ["algorithm=irm", f"seed={seed}"], name=f"irm{seed}") for seed in (0, 1)
    ] + [trained(make_config, TINY_CMNIST + ["algorithm=meta_irm"], name="meta")]
    out = tmp_path / "fig10"
    assert fig10.main([str(tmp_path / "irm0"), str(tmp_path / "irm1"), str(tmp_path / "meta"), "--out", str(out)]) == 0
    all_rows = read_csv(out / "fig10.csv")
    assert [(r["algorithm"], r["seed"], r["env"], r["control"]) for r in all_rows] == [
        (algorithm, seed, env, control)
        for algorithm, seed in (("irm", "0"), ("irm", "1"), ("meta_irm", "0"))
        for env, control in (("p0.1", "0"), ("p0.5", "0"), ("p0.9", "0"), ("p0.1_redraw", "1"))
    ]
    rows = [r for r in all_rows if r["control"] == "0"]
    for row in all_rows:
        assert row["layer"] == ("output" if row["algorithm"] == "irm" else "hidden2")
        assert row["reference"] == "p0.1" and row["datapoints"] == "100" and row["note"] == ""
        assert float(row["p_e"]) == float(row["env"][1:4])
        if row["env"] == "p0.1":
            assert float(row["pwcca"]) == pytest.approx(1.0, abs=1e-8)  # svcca's 1e-10 ridge: 1 - ~3e-9
        if row["control"] == "1":  # same digits and p_e, other colours: below 1
            assert 0.0 <= float(row["pwcca"]) < 0.999

    # IRMv1's representation is its one logit: PWCCA = |corr| of the logits of the same digits.
    run = load(runs[0])
    logits = {
        env: run.network(run.env_data("test", env)[0]).detach().double().numpy()[:, 0] for env in ("p0.1", "p0.9")
    }
    irm_p09 = next(r for r in rows if r["seed"] == "0" and r["algorithm"] == "irm" and r["env"] == "p0.9")
    assert float(irm_p09["pwcca"]) == pytest.approx(abs(np.corrcoef(logits["p0.1"], logits["p0.9"])[0, 1]), abs=1e-6)
    x01, x09 = run.env_data("test", "p0.1")[0], run.env_data("test", "p0.9")[0]
    assert torch.equal(x01.sum(dim=1), x09.sum(dim=1)) and not torch.equal(x01, x09)  # same digits, other colours

    summary = {(r["method"], r["env"]): r for r in read_csv(out / "fig10_summary.csv")}
    assert summary[("IRMv1", "p0.9")]["n"] == "2" and summary[("Meta-IRM", "p0.9")]["n"] == "1"
    irm_values = [float(r["pwcca"]) for r in rows if r["algorithm"] == "irm" and r["env"] == "p0.5"]
    assert float(summary[("IRMv1", "p0.5")]["mean"]) == pytest.approx(np.mean(irm_values))
    assert float(summary[("IRMv1", "p0.5")]["std"]) == pytest.approx(np.std(irm_values, ddof=1))
    assert_png(out / "fig10.png")

    figure = fig10.fig10_figure(fig10.summarize([row for run_dir in runs for row in fig10.fig10_rows(load(run_dir))]))
    axes = figure.axes[0]
    assert "p_e" in axes.get_xlabel() and "PWCCA" in axes.get_ylabel()
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "IRMv1 (network output; n=2)",
        "Meta-IRM (hidden2, classifier input; n=1)",
    ]

    assert fig10.main([str(runs[0]), "--out", str(tmp_path / "h1"), "--layer", "hidden1", "--no-control"]) == 0
    h1_rows = read_csv(tmp_path / "h1" / "fig10.csv")
    assert [r["env"] for r in h1_rows] == ["p0.1", "p0.5", "p0.9"] and {r["layer"] for r in h1_rows} == {"hidden1"}
    assert fig10.main([str(runs[0]), "--out", str(tmp_path / "bad"), "--reference", "p0.3"]) == 2
    assert "reference env 'p0.3'" in capsys.readouterr().err


def test_fig10_refuses_test_envs_without_shared_examples(meta_irm_run, tmp_path, capsys):
    assert fig10.main([str(meta_irm_run), "--out", str(tmp_path / "out"), "--reference", "p0.9"]) == 2
    assert "same examples in the same order" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_dirs_are_found_under_a_folder(meta_irm_run, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(meta_irm_run, sweep / "a" / "seed=0")
    (sweep / "not_a_run").mkdir()
    assert fig9.main([str(sweep), "--out", str(tmp_path / "found")]) == 0
    assert {Path(r["run"]).name for r in read_csv(tmp_path / "found" / "fig9.csv")} == {"seed=0"}
    assert math.isfinite(float(read_csv(tmp_path / "found" / "fig9.csv")[0]["pwcca"]))
