"""The README's commands as a user types them.

Each test takes a command from the README verbatim (and fails if the README stops showing
it), runs it in a fresh temporary working directory with no ``paths.*`` override and no
environment variable of ours, and adds only what keeps it small: ``data=synthetic``, a few
steps, fewer seeds or trials.  The only other change is ``train.py``'s absolute path, since
the working directory is not the repository.  So the defaults a user meets (output and data
locations, launchers, sweepers, the report's input) are the ones under test; the in-process
tests elsewhere set ``paths.*`` through the ``make_config`` fixture and cannot see them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SMALL = ["data=synthetic", "trainer.max_steps=12", "trainer.val_check_interval=4"]
TIMEOUT_S = 300
OUR_ENV = ("METAIRM_LAUNCH_DIR", "METAIRM_DATA_DIR", "METAIRM_PSST2_DIR", "HYDRA_FULL_ERROR")


def typed(command: str, cwd: Path, *shrink: str) -> subprocess.CompletedProcess:
    """Run README ``command`` in ``cwd`` as typed, followed by the ``shrink`` overrides."""
    assert command in README, f"the README no longer shows {command!r}"
    argv = shlex.split(command)
    assert argv[0] == "python"
    argv[0] = sys.executable
    if argv[1] == "train.py":
        argv[1] = str(ROOT / "train.py")
    env = {key: value for key, value in os.environ.items() if key not in OUR_ENV}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        argv + list(shrink), cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def succeeded(result: subprocess.CompletedProcess) -> bool:
    assert result.returncode == 0, f"exit {result.returncode}:\n{(result.stdout + result.stderr)[-4000:]}"
    return True


def finished_runs(root: Path) -> set[tuple[str, ...]]:
    """(data, algorithm, seed dir) of every run under ``root`` with a ``done`` marker."""
    return {(d.parts[-4], d.parts[-3], d.parts[-1]) for d in (m.parent for m in root.rglob("done"))}


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's sweep, once for the tests below that read what it wrote."""
    cwd = tmp_path_factory.mktemp("user")
    return cwd, typed("python train.py -m algorithm=erm,irm seed=0,1,2", cwd, *SMALL)


NOISE = ("litlogger", "LeafSpec", "Epoch 0/-2", "TPU available", "Traceback")


def test_single_run(tmp_path):
    result = typed("python train.py", tmp_path, *SMALL)
    assert succeeded(result)
    assert finished_runs(tmp_path / "outputs" / "runs") == {("synthetic", "irm", "seed=0")}
    output = result.stdout + result.stderr
    assert not [noise for noise in NOISE if noise in output], output[-3000:]
    assert "irm on synthetic (seed 0), step 12:" in output
    assert "settings: no conf/tuned/irm/synthetic.yaml: the method's arguments with the defaults of" in output
    assert "precision: 32-true (default: irm's bf16 parity was shown on cmnist, not on synthetic)" in output


def test_the_precision_default_and_the_exact_float32_switch(tmp_path):
    """``python train.py`` on its real data (composed, not trained) takes the precision the
    evidence gives this machine; the README's ``trainer.precision=32-true`` always wins."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None  # read here, not by the code under test
    default = typed("python train.py", tmp_path, "--cfg", "job", "--resolve")
    exact = typed("python train.py trainer.precision=32-true", tmp_path, "--cfg", "job", "--resolve")
    assert succeeded(default) and succeeded(exact)
    assert yaml.safe_load(default.stdout)["trainer"]["precision"] == ("bf16-mixed" if native else "32-true")
    assert yaml.safe_load(exact.stdout)["trainer"]["precision"] == "32-true"


def test_the_design_cards_command_uses_its_tuned_settings(tmp_path):
    """``algorithm=meta_irm data=cmnist_patch`` composes with conf/tuned/meta_irm/cmnist_patch.yaml
    (composed with ``--cfg job``, not trained: synthetic data would change the pair)."""
    command = "python train.py algorithm=meta_irm data=cmnist_patch"
    if command not in README:
        pytest.fail(f"the README no longer shows {command!r}")
    result = typed(command, tmp_path, "trainer.max_steps=2", "trainer.val_check_interval=2", "--cfg", "job")
    assert succeeded(result)
    composed = yaml.safe_load(result.stdout)
    assert composed["model"]["hidden_dim"] == 128 and composed["trainer"]["max_steps"] == 2
    assert composed["callbacks"]["std_early_stopping"]["min_steps"] == 250


def test_multirun_with_the_basic_launcher(basic_sweep):
    cwd, result = basic_sweep
    assert succeeded(result)
    sweep_dir = cwd / "outputs" / "sweeps" / "sweep"
    expected = {("synthetic", algorithm, f"seed={seed}") for algorithm in ("erm", "irm") for seed in range(3)}
    assert finished_runs(sweep_dir) == expected
    assert (sweep_dir / "multirun.yaml").is_file()
    output = result.stdout + result.stderr
    done_lines = [line for line in output.splitlines() if ") done: " in line]  # one line per finished job
    assert len(done_lines) == 6 and all(re.search(r"job #\d \(.*\) done: .* step 12: train_acc", x) for x in done_lines)
    assert not [noise for noise in NOISE if noise in output], output[-3000:]


def test_multirun_with_the_joblib_launcher(tmp_path):
    result = typed("python train.py -m hydra/launcher=local algorithm=erm,irm seed=0,1", tmp_path, *SMALL)
    assert succeeded(result)
    expected = {("synthetic", algorithm, f"seed={seed}") for algorithm in ("erm", "irm") for seed in range(2)}
    assert finished_runs(tmp_path / "outputs" / "sweeps" / "sweep") == expected


def test_experiment_multirun(tmp_path):
    result = typed("python train.py -m experiment=table1", tmp_path, *SMALL, "algorithm=erm,irm", "seed=0")
    assert succeeded(result)
    sweep_dir = tmp_path / "outputs" / "sweeps" / "table1"
    assert finished_runs(sweep_dir) == {("synthetic", "erm", "seed=0"), ("synthetic", "irm", "seed=0")}
    records = [json.loads((m.parent / "final.json").read_text()) for m in sweep_dir.rglob("done")]
    assert {r["tag"] for r in records} == {"table1"}
    assert all(set(r["summary"]) == {"train_acc", "test/p0.1/acc", "test/p0.2/acc", "test/p0.9/acc"} for r in records)


def test_hyperparameter_search_with_two_trials(tmp_path):
    result = typed("python train.py -m hparams_search=meta_irm_cmnist", tmp_path, *SMALL, "hydra.sweeper.n_trials=2")
    assert succeeded(result)
    sweep_dir = tmp_path / "outputs" / "sweeps" / "hparams_meta_irm_cmnist"
    assert 1 <= len(finished_runs(sweep_dir)) <= 2  # TPE may propose one point twice
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(best) >= {"best_params", "best_value"}


def test_report_over_what_the_sweep_wrote(basic_sweep):
    cwd, result = basic_sweep
    assert succeeded(result)
    report = typed("python -m metairm_pl.reporting outputs --plots", cwd)
    assert succeeded(report)
    rows = [line for line in report.stdout.splitlines() if line.startswith(("| erm ", "| irm "))]
    assert len(rows) == 2, report.stdout
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]  # algorithm, p0.9, train, n, notes
        assert cells[-2] == "3" and "—" not in row, report.stdout
    assert any(cwd.rglob("*.png")), "--plots drew nothing"


@pytest.mark.parametrize("launcher", ["hydra/launcher=basic", "hydra/launcher=local"])
def test_a_failed_job_is_one_line_and_the_others_finish(tmp_path, launcher):
    """One bad point (a validation fraction of 2) in a two-job sweep: it is reported in one
    line naming the job and the reason, the other job finishes, and the exit status is 1."""
    result = typed("python train.py -m algorithm=erm,irm seed=0,1,2", tmp_path, *SMALL, launcher,
                   "algorithm=erm", "seed=0", "data.val_fraction=2,0.2")  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "Traceback" not in output
    reason = "data.val_fraction=2.0 is not a probability"
    (job_line,) = [line for line in output.splitlines() if f"failed: {reason}" in line]
    assert re.search(r"job #\d+ \(.*data\.val_fraction=2[ )]", job_line)  # names the job by its overrides
    summary = output[output.index("1 job(s) of this multirun failed") :]
    assert reason in summary and re.search(r"data\.val_fraction=2[ )]", summary)
    sweep_dir = tmp_path / "outputs" / "sweeps" / "sweep"
    (done,) = [m.parent for m in sweep_dir.rglob("done")]
    (failed,) = [m.parent for m in sweep_dir.rglob("failed")]
    assert "data.val_fraction=0.2" in done.parts[-2] and "data.val_fraction=2," in failed.parts[-2]
    assert (failed / "failed").read_text().startswith("data.val_fraction=2.0 is not a probability")


def test_a_failed_trial_does_not_end_a_search(tmp_path):
    """The search with a second, invalid learning rate: the (seeded) sampler proposes it once
    in four trials; that trial fails in one line, the others complete, the best trial is
    written and the exit status is 1.  (hydra-optuna-sweeper 1.3 itself crashes when every
    trial fails, or when the last point of a grid search fails: see docs/runs.md.)"""
    result = typed("python train.py -m hparams_search=meta_irm_cmnist", tmp_path, *SMALL,
                   "hydra.sweeper.n_trials=4", "algorithm.optimizer.lr=choice(-0.001,0.001)")  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "Traceback" not in output
    (job_line,) = [line for line in output.splitlines() if "failed: algorithm.optimizer.lr=-0.001" in line]
    assert "1 job(s) of this multirun failed" in output
    sweep_dir = tmp_path / "outputs" / "sweeps" / "hparams_meta_irm_cmnist"
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_params"]["algorithm.optimizer.lr"] == 0.001
    assert len(finished_runs(sweep_dir)) >= 1 and len(list(sweep_dir.rglob("failed"))) == 1


def test_a_linear_unit_test(tmp_path):
    command = "python train.py data=linear_unit_tests data.problem=Example2 algorithm=fishr"
    result = typed(command, tmp_path, "data.num_samples=200", "trainer.max_steps=20", "trainer.val_check_interval=10")
    assert succeeded(result)
    assert finished_runs(tmp_path / "outputs" / "runs") == {("Example2", "fishr", "seed=0")}
    assert "fishr on Example2 (seed 0), step 20:" in result.stdout + result.stderr


def test_the_unit_tests_experiment_and_its_report(tmp_path):
    result = typed("python train.py -m experiment=unit_tests", tmp_path, "algorithm=erm,irm", "data.problem=Example1",
                   "data_seed=0,1", "data.num_samples=100", "trainer.max_steps=10", "trainer.val_check_interval=10")  # fmt: skip
    assert succeeded(result)
    sweep_dir = tmp_path / "outputs" / "sweeps" / "unit_tests"
    assert len(finished_runs(sweep_dir)) == 2 and len(list(sweep_dir.rglob("done"))) == 4
    report = subprocess.run([sys.executable, "-m", "metairm_pl.reporting.unit_tests", str(sweep_dir)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert "| ERM |" in report.stdout and "| IRMv1 |" in report.stdout and "(n=2)" in report.stdout
