"""Finding run dirs at any depth and loading records + status without crashing."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from metairm_pl.reporting import records as records_module
from metairm_pl.reporting.records import RunStatus, find_run_dirs, load_run, load_runs, natural_key

SRC = Path(records_module.__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def line(**record) -> str:
    return json.dumps(record) + "\n"


def test_file_names_agree_with_the_writer():
    """records.py copies the names (importing run.py would import Lightning): keep them equal."""
    constants = {}
    for source in (SRC / "run.py", SRC / "callbacks" / "results.py"):
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                constants[node.targets[0].id] = node.value.value
    assert constants["RESULTS_FILE"] == records_module.RESULTS_FILE
    assert constants["DONE_MARKER"] == records_module.DONE_MARKER
    assert constants["FAILED_MARKER"] == records_module.FAILED_MARKER
    assert constants["CONFIG_FILE"] == records_module.CONFIG_FILE


def test_finds_run_dirs_at_any_depth_skipping_hidden_dirs(tmp_path):
    write(tmp_path / "a" / "results.jsonl", "")
    write(tmp_path / "b" / "c" / "d" / "seed=10" / "results.jsonl", "")
    write(tmp_path / "b" / "c" / "d" / "seed=2" / "results.jsonl", "")
    write(tmp_path / ".hydra" / "results.jsonl", "")
    write(tmp_path / "x" / "final.json", "{}")  # not a run dir
    write(tmp_path / "e" / "failed", "boom")  # failed before its first evaluation
    write(tmp_path / "e" / "config.yaml", "seed: 1\n")
    found = find_run_dirs([tmp_path, tmp_path / "a", tmp_path / "missing"])
    rel = [str(p.relative_to(tmp_path.resolve())) for p in found]
    assert rel == ["a", "b/c/d/seed=2", "b/c/d/seed=10", "e"]
    assert find_run_dirs([tmp_path / "a"]) == [(tmp_path / "a").resolve()]  # a root may be a run dir


def test_status_and_identity(tmp_path):
    record = line(step=1, algorithm="irm", data="cmnist", seed=3, tag="t", **{"test/p0.9/acc": 0.5})
    write(tmp_path / "done_run" / "results.jsonl", record)
    write(tmp_path / "done_run" / "done", "")
    write(tmp_path / "failed_run" / "results.jsonl", record)
    write(tmp_path / "failed_run" / "failed", "RuntimeError: boom\n")
    write(tmp_path / "running" / "results.jsonl", record)
    runs = {run.path.name: run for run in load_runs([tmp_path])}
    assert runs["done_run"].status is RunStatus.DONE
    assert runs["failed_run"].status is RunStatus.FAILED and runs["failed_run"].error == "RuntimeError: boom"
    assert runs["running"].status is RunStatus.UNFINISHED
    assert runs["done_run"].group_key == ("cmnist", "irm", "t") and runs["done_run"].seed == 3


def test_truncated_last_line_is_skipped(tmp_path):
    text = line(step=1, algorithm="erm", data="d", seed=0, tag="") + '{"step": 2, "algo'
    write(tmp_path / "results.jsonl", text)
    run = load_run(tmp_path)
    assert [r["step"] for r in run.records] == [1] and run.read_error == ""


def test_corrupt_file_does_not_crash(tmp_path):
    write(tmp_path / "results.jsonl", "not json\n" + line(step=1))
    write(tmp_path / "done", "")
    run = load_run(tmp_path)
    assert run.records == () and "results.jsonl" in run.read_error and run.status is RunStatus.DONE


def test_identity_falls_back_to_config_yaml(tmp_path):
    config = "algorithm:\n  name: vrex\ndata:\n  name: cmnist\n  label_noise_gap: 0.03\nseed: 4\ntag: ''\n"
    write(tmp_path / "config.yaml", config)
    write(tmp_path / "failed", "ValueError: bad\n")
    run = load_run(tmp_path)
    assert (run.algorithm, run.data, run.seed, run.tag, run.status) == ("vrex", "cmnist", 4, "", RunStatus.FAILED)
    assert run.config_value("data.label_noise_gap") == 0.03 and run.config_value("data.nope") is None


def test_natural_key_compares_numbers_as_numbers():
    assert sorted(["p0.9", "p0.1", "p0.05", "e10", "e2"], key=natural_key) == ["e2", "e10", "p0.05", "p0.1", "p0.9"]
