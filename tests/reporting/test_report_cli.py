"""``python -m metairm_pl.reporting``: prints and writes the tables, plots on request, and says
clearly (exit code 2) when there is nothing to report."""

from __future__ import annotations

import csv
import subprocess
import sys
import types
from pathlib import Path

import pytest

from metairm_pl.reporting import __main__ as report

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = FIXTURES / "expected"


def test_empty_dir_is_one_clear_error_with_exit_code_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "metairm_pl.reporting", str(tmp_path / "empty"), str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message == (
        f"error: no run records (results.jsonl) found under: {tmp_path / 'empty'}, "
        f"{tmp_path / 'nowhere'} (does not exist)"
    )
    assert not (tmp_path / "empty" / "table.md").exists()


def test_prints_and_writes_the_golden_tables(tmp_path, capsys):
    assert report.main([str(FIXTURES / "runs"), "--out", str(tmp_path)]) == 0
    expected_md = (EXPECTED / "table_train_val.md").read_text(encoding="utf-8")
    out = capsys.readouterr()
    assert out.out == expected_md
    assert out.out.startswith("Selection: training-env validation")
    assert (tmp_path / "table.md").read_text(encoding="utf-8") == expected_md
    assert (tmp_path / "table.csv").read_text(encoding="utf-8") == (EXPECTED / "table_train_val.csv").read_text()
    assert not list(tmp_path.glob("*.png"))


def test_oracle_selection_is_labelled_and_plots_are_written(tmp_path, capsys):
    argv = [str(FIXTURES / "runs"), "--selection", "oracle", "--oracle-env", "p0.9", "--out", str(tmp_path), "--plots"]
    assert report.main(argv) == 0
    out = capsys.readouterr()
    assert out.out == (EXPECTED / "table_oracle_p0.9.md").read_text(encoding="utf-8")
    assert "oracle (test env)" in out.out.splitlines()[0]
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["acc_vs_test_env-cmnist.png", "penalty_vs_step-cmnist.png"]


def test_oracle_without_env_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(FIXTURES / "runs"), "--selection", "oracle"])
    assert exit_info.value.code == 2 and "--oracle-env" in capsys.readouterr().err


def test_out_defaults_to_the_first_dir(tmp_path, capsys):
    run_dir = tmp_path / "sweep" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "results.jsonl").write_text(
        '{"step": 1, "algorithm": "erm", "data": "d", "seed": 0, "tag": "", "test/p0.9/acc": 0.5, "val/a/acc": 0.5}\n'
    )
    (run_dir / "done").write_text("")
    assert report.main([str(tmp_path / "sweep")]) == 0
    assert (tmp_path / "sweep" / "table.md").exists() and (tmp_path / "sweep" / "table.csv").exists()


def test_wandb_logs_the_table_and_plots_offline(tmp_path, monkeypatch, capsys):
    """A stand-in ``wandb`` module records the calls (the real one is imported lazily)."""
    calls = {}

    class FakeRun:
        def log(self, payload):
            calls["log"] = payload

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    fake_wandb = types.ModuleType("wandb")
    fake_wandb.init = init
    fake_wandb.Table = lambda columns, data: ("Table", columns, data)
    fake_wandb.Image = lambda path: ("Image", path)
    fake_loggers = types.ModuleType("metairm_pl.loggers")
    fake_loggers.wandb_credentials_available = lambda: False
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    monkeypatch.setitem(sys.modules, "metairm_pl.loggers", fake_loggers)
    monkeypatch.delenv("WANDB_MODE", raising=False)

    argv = [str(FIXTURES / "runs"), "--out", str(tmp_path), "--plots", "--wandb"]
    assert report.main(argv) == 0
    assert calls["init"]["mode"] == "offline" and calls["finished"]
    kind, columns, data = calls["log"]["results"]
    assert kind == "Table" and columns[:7] == ["data", "algorithm", "tag", "settings", "selection", "split", "env"]
    assert len(data) == 8  # 2 algorithms × (3 test envs + train)
    assert sorted(k for k in calls["log"] if k.startswith("plots/")) == [
        "plots/acc_vs_test_env-cmnist", "plots/penalty_vs_step-cmnist",
    ]  # fmt: skip


def test_also_selection_adds_one_column_per_table_and_says_what_it_is(tmp_path, capsys):
    runs = str(FIXTURES / "runs")
    assert report.main([runs, "--selection", "last", "--also-selection", "train_val", "--out", str(tmp_path)]) == 0
    with_column = (tmp_path / "table.md").read_text()
    csv_selections = {row["selection"] for row in csv.DictReader((tmp_path / "table.csv").open())}
    assert csv_selections == {"last evaluation", "training-env validation"}
    assert report.main([runs, "--selection", "last", "--out", str(tmp_path)]) == 0
    without = (tmp_path / "table.md").read_text()
    capsys.readouterr()

    def headers(text):
        return [line for line in text.splitlines() if line.startswith("| algorithm |")]

    assert len(headers(with_column)) == len(headers(without)) >= 1
    for extended, plain in zip(headers(with_column), headers(without)):
        assert extended.count("|") == plain.count("|") + 1 and "(training-env validation) | n |" in extended
    assert "The column `<env> (training-env validation)`" in with_column


def test_expect_seeds_names_missing_seeds_and_rejects_a_bad_count(tmp_path, capsys):
    assert report.main([str(FIXTURES / "runs"), "--out", str(tmp_path), "--expect-seeds", "10"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    data_rows = [line for line in rows if not line.startswith("| algorithm")]
    assert data_rows and all("missing" in line for line in data_rows)
    for bad in ("0", "-3", "ten"):
        with pytest.raises(SystemExit) as exit_info:
            report.main([str(FIXTURES / "runs"), "--expect-seeds", bad])
        assert exit_info.value.code == 2
        assert f"expected a positive whole number of seeds, got '{bad}'" in capsys.readouterr().err
