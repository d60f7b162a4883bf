"""Records say where they ran: final.json names hardware, threads, versions and precision, and
the report marks a row whose runs ran on different hardware."""

from __future__ import annotations

import json

import pytorch_lightning as pl
import torch

from metairm_pl.provenance import cpu_model
from metairm_pl.reporting import get_selection, load_runs
from metairm_pl.reporting.tables import build_tables, render_markdown
from metairm_pl.run import train


def test_final_json_names_where_the_run_trained(make_config):
    cfg = make_config(["data=synthetic", "algorithm=erm", "trainer.max_steps=2", "trainer.val_check_interval=2"])
    final = train(cfg)
    (segment,) = final["provenance"]
    assert segment["device"] == cpu_model() and segment["accelerator"] == "cpu"
    assert segment["threads"] == torch.get_num_threads() >= 1
    assert (segment["torch"], segment["lightning"]) == (torch.__version__, pl.__version__)
    assert segment["precision"] == cfg.trainer.precision and segment["from_step"] == 0
    with open(f"{cfg.paths.output_dir}/final.json") as handle:
        assert json.load(handle)["provenance"] == final["provenance"]


def write_run(root, seed: int, device: str | None, threads: int = 2) -> None:
    run = root / "runs" / "cmnist" / "irm" / "default" / f"seed={seed}"
    run.mkdir(parents=True)
    record = {"step": 500, "algorithm": "irm", "data": "cmnist", "seed": seed, "tag": "", "test/p0.9/acc": 0.6,
              "train/p0.1/acc": 0.7, "train/p0.2/acc": 0.7}  # fmt: skip
    (run / "results.jsonl").write_text(json.dumps(record) + "\n")
    final = {"status": "done"}
    if device is not None:
        final["provenance"] = [{"from_step": 0, "device": device, "threads": threads, "torch": "2.14.1"}]
    (run / "final.json").write_text(json.dumps(final))
    (run / "done").write_text("")


def report(root) -> str:
    selection = get_selection("last")
    return render_markdown(build_tables(load_runs([root]), selection), selection)


def test_the_report_marks_rows_from_different_hardware(tmp_path):
    write_run(tmp_path / "same", 0, "CPU A")
    write_run(tmp_path / "same", 1, "CPU A")
    assert "hardware" not in report(tmp_path / "same")
    write_run(tmp_path / "mixed", 0, "CPU A")
    write_run(tmp_path / "mixed", 1, "CPU B")
    write_run(tmp_path / "mixed", 2, "CPU A", threads=1)
    assert "runs from 3 hardware setups" in report(tmp_path / "mixed")
    write_run(tmp_path / "old", 0, None)  # from before provenance was recorded
    assert "hardware" not in report(tmp_path / "old")
    write_run(tmp_path / "old", 1, "CPU A")
    assert "hardware unrecorded for 1" in report(tmp_path / "old")
