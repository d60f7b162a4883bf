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


def test_the_run_directory_layout_has_one_owner():
    """Only metairm_pl/run_dir.py spells the run directory's file names; everyone imports them."""
    from metairm_pl import run_dir

    names = {run_dir.RESULTS_FILE, run_dir.CONFIG_FILE, run_dir.FINAL_FILE, run_dir.PROVENANCE_FILE,
             run_dir.DONE_MARKER, run_dir.FAILED_MARKER, run_dir.LOCK_FILE, run_dir.LAST_CHECKPOINT,
             run_dir.FINAL_CHECKPOINT, run_dir.CHECKPOINT_DIR}  # fmt: skip
    owners = set()
    for source in SRC.rglob("*.py"):
        for node in ast.parse(source.read_text()).body:  # module-level constants
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value in names:
                owners.add(source.relative_to(SRC).as_posix())
    assert owners == {"run_dir.py"}


def test_reading_records_imports_neither_torch_nor_lightning():
    import subprocess
    import sys

    code = "import sys, metairm_pl.reporting.records, metairm_pl.reporting.tables, metairm_pl.run_dir; print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_archived_records_are_read_like_plain_ones(tmp_path):
    import gzip

    plain, archived = tmp_path / "plain", tmp_path / "archived"
    text = line(step=1, algorithm="irm", data="d", seed=0) + line(step=2, algorithm="irm", data="d", seed=0)
    write(plain / "results.jsonl", text)
    write(plain / "done", "")
    archived.mkdir()
    (archived / "results.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    write(archived / "done", "")
    assert find_run_dirs([archived]) == [archived.resolve()]
    assert load_run(archived).records == load_run(plain).records and load_run(archived).status is RunStatus.DONE


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
