"""Every config option composes; every algorithm trains a few steps and writes its records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metairm_pl.files import read_jsonl
from metairm_pl.run import train

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["data", "model", "algorithm", "trainer", "callbacks", "logger", "paths"]
ALGORITHMS = sorted(p.stem for p in (CONF / "algorithm").glob("*.yaml"))
IMAGE_ONLY = {"grayscale"}  # sums colour channels: needs image data
SHORT = ["data=synthetic", "trainer.max_steps=3", "trainer.val_check_interval=2"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_option_composes(make_config, group, option):
    cfg = make_config([f"{group}={option}"])
    assert cfg.algorithm.name and cfg.data.name
    if group == "algorithm":
        assert cfg.algorithm.name == option


@pytest.mark.parametrize("algorithm", sorted(set(ALGORITHMS) - IMAGE_ONLY))
def test_every_algorithm_trains_and_writes_records(make_config, algorithm):
    cfg = make_config(SHORT + [f"algorithm={algorithm}"])
    final = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    records = read_jsonl(run_dir / "results.jsonl")
    # evaluations at step 2 (interval) and after the last step (3)
    assert [r["step"] for r in records] == [2, 3]
    for record in records:
        assert record["algorithm"] == algorithm and record["data"] == "synthetic"
        assert record["seed"] == 0 and record["data_seed"] == 0
        for split, envs in {"train": ["p0.1", "p0.2"], "val": ["p0.1", "p0.2"], "test": ["p0.9"]}.items():
            for env in envs:
                for metric in ("loss", "acc", "penalty"):
                    assert f"{split}/{env}/{metric}" in record
    assert (run_dir / "done").exists() and (run_dir / "config.yaml").exists()
    saved = json.loads((run_dir / "final.json").read_text())
    assert saved == final and saved["status"] == "done" and saved["step"] == 3
    assert saved["metrics"]["test/p0.9/acc"] == records[-1]["test/p0.9/acc"]


def test_finished_run_is_not_repeated(make_config):
    cfg = make_config(SHORT + ["algorithm=erm"])
    first = train(cfg)
    results = Path(cfg.paths.output_dir) / "results.jsonl"
    before = results.read_text()
    assert train(cfg) == first
    assert results.read_text() == before


def test_same_seed_gives_identical_records(make_config):
    runs = [train(make_config(SHORT + ["algorithm=irm"], name=f"run{i}")) for i in range(2)]
    assert runs[0]["metrics"] == runs[1]["metrics"]
    other = train(make_config(SHORT + ["algorithm=irm", "seed=1"], name="seed1"))
    assert other["metrics"] != runs[0]["metrics"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cmnist_pipeline_with_synthetic_digits(make_config, fake_mnist, algorithm):
    cfg = make_config(
        [
            "data=cmnist",
            f"algorithm={algorithm}",
            "model.hidden_dim=16",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "data.train_pool_size=200",
            "data.train_envs=[{name:p0.2,p_color:0.2,size:100},{name:p0.1,p_color:0.1,size:100}]",
        ]
    )
    final = train(cfg)
    assert final["step"] == 3
    assert set(final["summary"]) == {"train_acc", "test/p0.9/acc"}
    assert "val/p0.2/loss" in final["metrics"] and "val/p0.1/loss" in final["metrics"]


def test_a_run_directory_in_use_waits_for_its_holder_then_reuses_its_results(make_config):
    """Two launches of one run (duplicate search trials, an orphaned sweep job): the second
    waits on the run-dir lock, writes nothing meanwhile, then finds the finished run."""
    import multiprocessing
    import threading

    from metairm_pl.run_dir import LOCK_FILE

    cfg = make_config(["data=synthetic", "algorithm=erm", "trainer.max_steps=3"])
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold_lock, args=(run_dir / LOCK_FILE, ready, release))
    holder.start()
    results = {}
    waiter = threading.Thread(target=lambda: results.update(final=train(cfg)))
    try:
        assert ready.wait(30)
        waiter.start()
        waiter.join(3)
        assert waiter.is_alive(), "train() must wait while another process holds the run dir"
        assert not (run_dir / "config.yaml").exists() and not (run_dir / "results.jsonl").exists()
    finally:
        release.set()
        holder.join(30)
    waiter.join(120)
    assert results["final"]["status"] == "done"


def _hold_lock(path, ready, release):
    from metairm_pl.files import exclusive_lock

    with exclusive_lock(path):
        ready.set()
        release.wait(60)
