"""``trainer.precision``: validation, what runs in bf16 and what stays float32, and bf16 runs
of every method (repeatable, and really bf16).  The bf16 meta-gradient against float64 is in
``tests/algorithms/test_inner_loop.py``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from metairm_pl import precision
from metairm_pl.algorithms.base import irm_penalty, risk_function
from metairm_pl.algorithms.inner_loop import meta_objective
from metairm_pl.errors import ConfigError
from metairm_pl.models.bow import BagOfWordsMLP
from metairm_pl.models.mlp import MLP
from metairm_pl.run import train

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)
binary_risk = risk_function(2)


# --------------------------------------------------------------------------- the config value


@pytest.mark.parametrize("value", ["16-mixed", "bf16-true", "64-true", "bf16", 32, None])
def test_only_the_documented_precisions_are_accepted(value):
    with pytest.raises(ConfigError, match=r"trainer\.precision=.*allowed values are \['32-true', 'bf16-mixed'\]"):
        precision.check_precision(value)


def test_bf16_without_native_support_warns_once_in_one_line(monkeypatch, caplog):
    monkeypatch.setattr(precision.log, "disabled", False)  # an earlier Hydra app may have disabled it
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"fpu", "avx2"})
    precision._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="metairm_pl.precision"):
        for _ in range(3):
            assert precision.check_precision("bf16-mixed") == "bf16-mixed"
    (record,) = caplog.records
    assert "\n" not in record.getMessage() and "trainer.precision=32-true" in record.getMessage()


def test_accelerator_auto_cannot_be_told_so_the_default_is_float32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    assert precision.native_bf16("cpu") is True and precision.native_bf16("auto") is None
    assert precision.default_precision("irm", "cmnist", "auto") == "32-true"


@pytest.mark.parametrize("flags", [{"avx512_bf16"}, {"amx_bf16", "avx2"}, {"bf16", "asimd"}, set()])
def test_no_warning_with_native_bf16_or_when_it_cannot_be_told(monkeypatch, caplog, flags):
    monkeypatch.setattr(precision.log, "disabled", False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    precision._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="metairm_pl.precision"):
        precision.check_precision("bf16-mixed")
        precision.check_precision("32-true")
    assert not caplog.records


# --------------------------------------------------------------------------- the default

PARITY_TABLE = Path(__file__).resolve().parents[1] / "src" / "metairm_pl" / "evidence" / "precision_parity.md"


def parity_verdicts() -> dict[str, tuple[int, str, str, str]]:
    """algorithm -> (pairs, mean difference, standard error, verdict) of the committed
    Colored MNIST parity table (``bench/precision_parity.py``'s first table)."""
    verdicts = {}
    first_table = PARITY_TABLE.read_text().split("\n\n")[0]
    for line in first_table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] == "cmnist" and cells[2].isdigit():
            verdicts[cells[1]] = (int(cells[2]), cells[3], cells[4], cells[5])
    return verdicts


def test_the_bf16_default_is_exactly_the_methods_whose_committed_parity_holds(monkeypatch):
    """A method defaults to bf16-mixed if and only if the committed parity table shows its 10
    paired seeds within 1 point, and the reason the console prints quotes that table."""
    from metairm_pl.algorithms import registry

    monkeypatch.setattr(precision, "native_bf16", lambda accelerator: True)
    verdicts = parity_verdicts()
    assert {"irm", "meta_irm"} <= set(verdicts)  # the table was read
    shown = {name for name, (pairs, _, _, verdict) in verdicts.items() if pairs >= 10 and verdict == "yes"}
    assert registry.PARITY_TABLE == PARITY_TABLE  # the code reads the committed table, no copy of it
    for name in registry.methods():
        expected = "bf16-mixed" if name in shown else "32-true"
        assert precision.default_precision(name, "cmnist") == expected, name
    for name in shown:
        _, mean, stderr, _ = verdicts[name]
        assert f"{mean} ± {stderr} points, 10 paired seeds" in precision.describe_precision(
            "bf16-mixed", name, "cmnist"
        )


@pytest.mark.parametrize(
    ("algorithm", "data", "native", "expected"),
    [
        ("irm", "cmnist", True, "bf16-mixed"),
        ("meta_irm", "cmnist_patch", True, "bf16-mixed"),
        ("irm", "cmnist", False, "32-true"),  # emulated bf16 is slower than float32
        ("irm", "cmnist", None, "32-true"),  # cannot tell: the safe choice
        ("irm", "psst2", True, "32-true"),  # the bag-of-words model has no parity runs
        ("meta_irm_no_std", "cmnist", True, "32-true"),  # a variant is not the method
    ],
)
def test_default_precision_needs_parity_image_data_and_native_bf16(monkeypatch, algorithm, data, native, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda accelerator: native)
    assert precision.default_precision(algorithm, data, "cpu") == expected
    line = precision.describe_precision(expected, algorithm, data, "cpu")
    verdicts = parity_verdicts()
    reason = {
        "bf16-mixed": f"{algorithm} has bf16 parity on cmnist, {verdicts.get(algorithm, (0, '', ''))[1]} ± ",
        "32-true": (
            f"{algorithm} has no bf16 parity evidence yet" if algorithm not in verdicts
            else f"{algorithm}'s bf16 parity was shown on cmnist, not on {data}" if data == "psst2"
            else "this cpu has no native bf16" if native is False
            else "whether this cpu has native bf16 cannot be told"
        ),
    }[expected]  # fmt: skip
    assert line.startswith(f"precision: {expected} (default: {reason}") and "\n" not in line


def test_an_unlisted_method_defaults_to_float32_and_says_why(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda accelerator: True)
    unlisted = "meta_irm_no_std"  # an ablation: no parity runs of its own
    assert unlisted not in parity_verdicts()
    assert precision.default_precision(unlisted, "cmnist") == "32-true"
    assert "no bf16 parity evidence yet" in precision.describe_precision("32-true", unlisted, "cmnist")
    typed = precision.describe_precision("bf16-mixed", unlisted, "cmnist")
    assert typed == "precision: bf16-mixed (set explicitly; the default here is 32-true)"


@pytest.mark.parametrize("native", [True, False])
def test_the_default_and_the_typed_precision_share_a_run_directory_and_fingerprint(monkeypatch, tmp_path, native):
    """``python train.py`` resolves ``trainer.precision`` from the evidence; the run then lands
    in the directory, with the fingerprint, of the same run typed with that precision, so a
    run is found (or resumed) whichever way it was asked for.  The other precision gets its own
    directory.  Directory names of 32-true runs are what they were before the default existed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from metairm_pl.resolvers import register_resolvers
    from metairm_pl.run_identity import fingerprint

    monkeypatch.setattr(precision, "native_bf16", lambda accelerator: native)
    register_resolvers()

    def composed(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(Path(precision.__file__).parents[2] / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.output_root={tmp_path}", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        run_dir = cfg.hydra.run.dir
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        return run_dir, fingerprint(OmegaConf.to_container(cfg, resolve=True)), cfg.trainer.precision

    default_dir, default_print, default_precision = composed()
    assert default_precision == ("bf16-mixed" if native else "32-true")
    other = "32-true" if native else "bf16-mixed"
    typed_dir, typed_print, _ = composed(f"trainer.precision={default_precision}")
    other_dir, other_print, _ = composed(f"trainer.precision={other}")
    assert (typed_dir, typed_print) == (default_dir, default_print)
    assert other_dir != default_dir and other_print != default_print
    bf16_dir, fp32_dir = (default_dir, other_dir) if native else (other_dir, default_dir)
    assert Path(fp32_dir) == tmp_path / "runs" / "cmnist" / "irm" / "default" / "seed=0"
    assert Path(bf16_dir) == tmp_path / "runs" / "cmnist" / "irm" / "trainer.precision=bf16-mixed" / "seed=0"
    assert Path(composed("tag=x", "trainer.precision=32-true")[0]).parent.name == "tag=x"
    # in its sorted place, as Hydra named typed bf16 runs before the default existed
    knobs = ("tag=x", "trainer.val_check_interval=50", "trainer.precision=bf16-mixed")
    assert Path(composed(*knobs)[0]).parent.name == "tag=x,trainer.precision=bf16-mixed,trainer.val_check_interval=50"
    assert (
        Path(composed("tag=x", "trainer.precision=bf16-mixed")[0]).parent.name == "tag=x,trainer.precision=bf16-mixed"
    )


# --------------------------------------------------------------------------- what runs in bf16


def test_under_autocast_the_logits_are_bf16_and_every_loss_term_float32():
    torch.manual_seed(0)
    network = MLP(input_shape=(2, 3, 3), num_outputs=1, hidden_dim=8)
    x, y = torch.randn(16, 2, 3, 3), torch.randint(0, 2, (16,))
    with torch.autocast(**BF16):
        logits = network(x)
        risk = binary_risk(logits, y)
        penalty = irm_penalty(logits, y, binary_risk)
        multi = risk_function(3)(torch.randn(16, 3).to(torch.bfloat16), torch.randint(0, 3, (16,)))
    assert logits.dtype == torch.bfloat16
    assert risk.dtype == penalty.dtype == multi.dtype == torch.float32
    (risk + penalty).backward()
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in network.parameters())


def test_meta_irm_inner_updates_meta_losses_and_sigma_are_float32_under_autocast():
    torch.manual_seed(0)
    network = MLP(input_shape=(4,), num_outputs=1, hidden_dim=8)
    envs = [(torch.randn(12, 4), torch.randint(0, 2, (12,)).float()) for _ in range(3)]
    params = dict(network.named_parameters())
    with torch.autocast(**BF16):
        result = meta_objective(network, params, envs, binary_risk, inner_lr=0.1, inner_steps=2)
    assert result.meta_losses.dtype == result.meta_loss_std.dtype == torch.float32
    result.meta_loss_sum.backward()
    assert all(p.grad.dtype == torch.float32 for p in network.parameters())


def test_bag_of_words_model_runs_its_head_in_bf16_and_keeps_embeddings_float32():
    embeddings = torch.randn(6, 4)
    model = BagOfWordsMLP(input_shape=(3,), num_outputs=1, embeddings=embeddings, hidden_dim=5)
    tokens = torch.tensor([[1, 2, 0], [3, 4, 5]])
    with torch.autocast(**BF16):
        logits = model(tokens)
        risk = binary_risk(logits, torch.tensor([0, 1]))
    assert logits.dtype == torch.bfloat16 and risk.dtype == torch.float32
    risk.backward()
    assert model.embeddings.dtype == torch.float32
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


# --------------------------------------------------------------------------- whole runs

SHORT = ["data=synthetic", "trainer.max_steps=4", "trainer.val_check_interval=2", "model.hidden_dim=16"]
METHODS = ["erm", "irm", "vrex", "mmrex", "meta_irm", "meta_irm_first_order", "meta_irm_same_env", "meta_irm_no_std"]


@pytest.mark.parametrize("algorithm", METHODS)
def test_every_method_trains_in_bf16_repeatably_and_differently_from_fp32(make_config, algorithm):
    overrides = SHORT + [f"algorithm={algorithm}"]
    bf16 = [train(make_config(overrides + ["trainer.precision=bf16-mixed"], name=f"bf16_{i}")) for i in range(2)]
    fp32 = train(make_config(overrides + ["trainer.precision=32-true"], name="fp32"))
    assert bf16[0]["metrics"] == bf16[1]["metrics"]  # same seed, same records, bit for bit
    assert bf16[0]["metrics"] != fp32["metrics"]  # the matmuls really ran in bf16


def test_grayscale_trains_in_bf16(make_config, fake_mnist):
    cfg = make_config(["data=cmnist", "algorithm=grayscale", "model.hidden_dim=16", "trainer.max_steps=3",
                       "data.train_pool_size=200", "trainer.precision=bf16-mixed",
                       "data.train_envs=[{name:p0.2,p_color:0.2,size:100},{name:p0.1,p_color:0.1,size:100}]"])  # fmt: skip
    assert train(cfg)["step"] == 3


def test_evaluation_is_float32_whatever_the_training_precision(make_config):
    """The same weights evaluated inside and outside a bf16 autocast give the same numbers."""
    from metairm_pl.build import build_algorithm, build_datamodule

    cfg = make_config(SHORT + ["algorithm=irm"])
    datamodule = build_datamodule(cfg)
    algorithm = build_algorithm(cfg, datamodule)
    batch = next(iter(datamodule.val_dataloader()))
    plain = algorithm.evaluate(batch)
    with torch.autocast(**BF16):
        assert algorithm.evaluate(batch) == plain
        assert algorithm(batch["test"]["p0.9"][0]).dtype == torch.bfloat16  # autocast was on
