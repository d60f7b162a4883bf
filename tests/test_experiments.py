"""Paper experiments (``conf/experiment/*.yaml``): each composes with the settings of its
table or figure, its ``hydra.sweeper.params`` expand to the paper's algorithms x knobs x 10
seeds, every job gets its own directory and a tag that keeps the report's rows apart, and
(``slow``) the first job of each trains a few steps on tiny data.

How a sweep runs: ``python train.py -m experiment=NAME`` composes the primary config with the
experiment; Hydra's basic sweeper turns each ``hydra.sweeper.params`` entry into an override
``key=values`` (command-line overrides of the same key replace it) and launches the Cartesian
product, each job composed with its overrides -- so a swept config group (``algorithm``,
``data``) selects the group option, and swept values name the job's directory (``metairm_pl.run_identity``)
unless excluded (``conf/hydra/default.yaml``).
"""

from __future__ import annotations

import itertools
import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

import metairm_pl.config_schema  # noqa: F401  (registers schemas)
from metairm_pl import precision
from metairm_pl.files import read_jsonl
from metairm_pl.resolvers import register_resolvers
from metairm_pl.run_identity import NAMED_IN_PATH, names_run

CONF = Path(__file__).resolve().parents[1] / "conf"
# The paper's tables and figures (experiment=unit_tests, the second benchmark, has its own tests:
# tests/data/test_linear_unit_tests.py).
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem.startswith(("table", "fig")))
SEEDS = list(range(10))
P_ENVS = ["p0.1", "p0.2", "p0.9"]
PE_SWEEP = [f"p0.{i}" for i in range(1, 10)]
SIZES = [25000, 12500, 6250]
GROUP_KEYS = ("data", "algorithm")  # swept config groups: their option names are in the run path


@dataclass(frozen=True)
class Spec:
    """What an experiment must sweep and how its runs are labelled."""

    algorithms: list[str]
    data: dict[str, str]  # data option -> data.name of its first knob value
    test_envs: list[str]
    knobs: dict[str, list[Any]] = field(default_factory=dict)  # swept value keys -> values
    tag: str = ""  # the tag; "{}" is filled with the first knob's value
    extra: dict[str, Any] = field(default_factory=dict)  # other settings, dotted key -> value

    @property
    def jobs(self) -> int:
        return math.prod([len(self.algorithms), len(self.data), len(SEEDS)] + [len(v) for v in self.knobs.values()])


SPECS = {
    "table1": Spec(
        [
            "erm",
            "irm",
            "vrex",
            "mmrex",
            "meta_irm",
            "grayscale",
            "group_dro",
            "ib_irm",
            "fishr",
            "eqrm",
            "mldg",
            "irmx",
            "pair",
        ],
        {"cmnist": "cmnist"},
        P_ENVS,
        tag="table1",
    ),
    "table2": Spec(
        ["erm", "irm", "meta_irm", "grayscale"], {"cmnist5": "cmnist5", "cmnist10": "cmnist10"}, ["p0.9"], tag="table2"
    ),
    "table3": Spec(
        ["irm", "vrex", "meta_irm"],
        {"cmnist": "cmnist"},
        P_ENVS,
        knobs={"data.train_env_size": SIZES},
        tag="table3_n{}",
    ),
    "table4": Spec(["irm", "vrex", "meta_irm"], {"cmnist_patch": "cmnist_patch"}, P_ENVS, tag="table4"),
    "table5": Spec(
        ["meta_irm", "meta_irm_no_std", "meta_irm_first_order", "meta_irm_same_env"]
        + ["meta_irm_no_std_own", "meta_irm_first_order_own", "meta_irm_same_env_own"],
        {"cmnist": "cmnist"},
        ["p0.1", "p0.9"],
        tag="table5",
    ),
    "table6": Spec(
        ["erm", "irm", "meta_irm"],
        {"psst2": "psst2_glove50d_eta0.25", "psst2_grayscale": "psst2_grayscale_glove50d_eta0.25"},
        ["p0.9"],
        knobs={"data.p_label_noise": [0.25, 0.0]},
        tag="table6",
        extra={"model._target_": "metairm_pl.models.bow.BagOfWordsMLP", "model.hidden_dim": None},
    ),
    "fig3": Spec(
        ["erm", "irm", "vrex", "mmrex", "meta_irm", "grayscale"],
        {"cmnist_pe_sweep": "cmnist_pe_sweep"},
        PE_SWEEP,
        tag="fig3",
    ),
    "fig4": Spec(
        ["irm", "meta_irm"],
        {"cmnist": "cmnist"},
        ["p0.9"],
        knobs={"data.label_noise_gap": [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]},
        tag="fig4_gap{}",
    ),
    "fig5": Spec(
        ["irm", "vrex", "meta_irm"],
        {"cmnist_pe_sweep": "cmnist_pe_sweep"},
        PE_SWEEP,
        knobs={"data.train_env_size": SIZES},
        tag="fig5_n{}",
    ),
    "fig6": Spec(
        ["irm"],
        {"cmnist": "cmnist"},
        ["p0.9"],
        knobs={"data.train_env_size": SIZES},
        tag="fig6_n{}",
        extra={"trainer.val_check_interval": 10},
    ),
}
JOBS = {"table1": 130, "table2": 80, "table3": 90, "table4": 30, "table5": 70, "table6": 120,
        "fig3": 60, "fig4": 120, "fig5": 90, "fig6": 30}  # fmt: skip


def experiment_override(name: str) -> str:
    """``experiment=NAME`` when config.yaml's defaults list has an ``experiment`` entry,
    otherwise ``+experiment=NAME`` (appended after config.yaml's own values either way)."""
    defaults = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    listed = any(isinstance(d, dict) and any(k.split()[-1] == "experiment" for k in d) for d in defaults)
    return f"{'' if listed else '+'}experiment={name}"


def compose_with_hydra(overrides: list[str], output_root: Path) -> DictConfig:
    """The composed config with its ``hydra`` node (sweeper params, run/sweep dirs)."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides + [f"paths.output_root={output_root}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def sweep_params(name: str) -> dict[str, str]:
    """``hydra.sweeper.params`` of an experiment file, as written."""
    text = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    return text["hydra"]["sweeper"]["params"]


def parse_sweep(params: dict[str, str]) -> dict[str, list[str]]:
    """key -> swept values (strings), parsed the way the basic sweeper parses them."""
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    parsed = {}
    for override in overrides:
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        parsed[override.get_key_element()] = [str(v) for v in values]
    return parsed


def sweep_jobs(params: dict[str, str], command_line: tuple[str, ...] = ()) -> list[list[str]]:
    """The job override lists the basic sweeper launches (file params, then the command line)."""
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + list(command_line))
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def fill_tag(spec: Spec, knob_value: Any) -> str:
    return spec.tag.format(knob_value) if "{}" in spec.tag else spec.tag


def test_every_experiment_file_has_a_spec():
    assert sorted(SPECS) == EXPERIMENTS == sorted(JOBS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_file_is_a_global_patch_with_the_paper_result(name):
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.splitlines()[0] == "# @package _global_"
    assert "Paper" in text  # the paper's numbers (or, for figures, what it shows) as a comment


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_sweep_expands_to_algorithms_knobs_and_ten_seeds(name):
    spec = SPECS[name]
    parsed = parse_sweep(sweep_params(name))
    assert parsed["algorithm"] == spec.algorithms
    assert parsed["seed"] == [str(s) for s in SEEDS]
    assert parsed.get("data", [next(iter(spec.data))]) == list(spec.data)
    knobs = {k: v for k, v in parsed.items() if k not in GROUP_KEYS + ("seed",)}
    assert knobs == {k: [str(v) for v in values] for k, values in spec.knobs.items()}
    jobs = sweep_jobs(sweep_params(name))
    assert len(jobs) == math.prod(len(v) for v in parsed.values()) == spec.jobs == JOBS[name]
    assert len({tuple(sorted(job)) for job in jobs}) == len(jobs)


def pairs_without_tuned_values(name: str, command_line: tuple[str, ...] = ()) -> list[str]:
    """The (algorithm, data) pairs ``python train.py -m experiment=NAME *command_line`` launches that
    have no conf/tuned/<algorithm>/<data>.yaml."""
    default_data = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())["defaults"][0]["override /data"]
    jobs = sweep_jobs(sweep_params(name), command_line)
    assert jobs
    pairs = set()
    for job in jobs:
        choice = dict(override.split("=", 1) for override in job)
        pairs.add(f"{choice['algorithm']}/{choice.get('data', default_data)}")
    return sorted(pair for pair in pairs if not (CONF / "tuned" / f"{pair}.yaml").is_file())


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_job_has_tuned_values(name):
    """A paper experiment never runs a pair on the neutral defaults by accident: every
    (algorithm, data) pair it launches has conf/tuned/<algorithm>/<data>.yaml."""
    assert pairs_without_tuned_values(name) == []


def documented_sweeps(doc: Path) -> list[tuple[str, ...]]:
    """The arguments of each ``python train.py -m experiment=<paper table or figure> ...`` command in a
    markdown file (shell-split, comments dropped)."""
    commands = []
    for line in doc.read_text().splitlines():
        if "python train.py -m experiment=" in line:
            words = tuple(shlex.split(line.split("python train.py -m ", 1)[1].split("`")[0], comments=True))
            if words[0].split("=", 1)[1] in EXPERIMENTS:
                commands.append(words)
    return commands


@pytest.mark.parametrize("words", documented_sweeps(CONF.parent / "docs" / "results.md"), ids=" ".join)
def test_every_documented_sweep_job_has_tuned_values(words):
    """The commands docs/results.md gives (e.g. the modern methods on cmnist_patch3 and PunctuatedSST-2,
    algorithms and data typed on the command line) launch no pair without conf/tuned/<algorithm>/<data>.yaml."""
    assert pairs_without_tuned_values(words[0].split("=", 1)[1], words[1:]) == []


def test_command_line_values_replace_the_files_sweep_values():
    jobs = sweep_jobs(sweep_params("table3"), ("seed=0", "algorithm=irm,vrex"))
    assert len(jobs) == 3 * 2
    assert {tuple(sorted(job)) for job in jobs} == {
        tuple(sorted([f"data.train_env_size={size}", f"algorithm={alg}", "seed=0"]))
        for size, alg in itertools.product(SIZES, ["irm", "vrex"])
    }


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_first_job_composes_with_the_experiments_settings(name, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda accelerator: False)  # 32-true: no precision in names
    spec = SPECS[name]
    first_job = sweep_jobs(sweep_params(name))[0]
    cfg = compose_with_hydra([experiment_override(name)] + first_job, tmp_path)
    knob_value = next(iter(spec.knobs.values()))[0] if spec.knobs else None
    assert cfg.algorithm.name == spec.algorithms[0]
    assert cfg.data.name == next(iter(spec.data.values()))
    assert [env.name for env in cfg.data.test_envs] == spec.test_envs
    assert [env.name for env in cfg.data.train_envs] in (["p0.2", "p0.1"], ["p0.1", "p0.2"], ["c0.1_p0.2", "c0.2_p0.1"])
    for key, value in spec.knobs.items():
        assert OmegaConf.select(cfg, key) == value[0]
    for key, value in spec.extra.items():
        assert OmegaConf.select(cfg, key) == value
    assert cfg.tag == fill_tag(spec, knob_value)
    # conf/tuned's step budgets: 501 as the paper's baselines; Meta-IRM's searched budget is 401;
    # ERM on k-class Colored MNIST (table2's first job) trains Choe et al.'s 5001 steps
    expected_steps = 5001 if name == "table2" else 401 if spec.algorithms[0].startswith("meta_irm") else 501
    assert cfg.seed == 0 and cfg.trainer.max_steps == expected_steps
    # the sweeper sees the file's params (nothing composed after the experiment replaces them)
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == {k: str(v) for k, v in sweep_params(name).items()}
    # Sweep jobs go to outputs/sweeps/NAME/<data>/<algorithm>/<swept knobs>/seed=<seed>; a
    # single run of the experiment (no -m) to the same directory as the matching sweep job.
    sweep_dir = Path(cfg.hydra.sweep.dir)
    assert sweep_dir == tmp_path / "sweeps" / name
    knobs = ",".join(sorted(f"{k}={v}" for k, v in (o.split("=", 1) for o in first_job) if k in spec.knobs))
    expected = f"{cfg.data.name}/{spec.algorithms[0]}/{knobs or 'default'}/seed=0"
    assert cfg.hydra.sweep.subdir == expected
    assert Path(cfg.hydra.run.dir) == sweep_dir / expected


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if SPECS[n].knobs])
def test_every_swept_knob_reaches_the_directory_and_the_report_rows(name, tmp_path):
    """A swept value must change the job's directory (an override that names the run) and
    the report's row key (data name, algorithm, tag): the tag or the data name carries it."""
    spec = SPECS[name]
    cfg = compose_with_hydra([experiment_override(name)], tmp_path)
    for key, values in spec.knobs.items():
        assert names_run(key) or key in NAMED_IN_PATH
        labels = set()
        for value in values:
            OmegaConf.update(cfg, key, value)
            labels.add((cfg.data.name, cfg.tag))
            assert cfg.tag == fill_tag(spec, value)
        assert len(labels) == len(values), f"{name}: {key} values share a report row"


def test_multirun_launches_each_job_with_its_directory_and_tag(tmp_path, monkeypatch):
    """The real thing, with a no-op task: Hydra's basic sweeper and launcher on
    ``-m experiment=table3 algorithm=irm seed=0`` run the three sizes in three directories."""
    launched = []
    monkeypatch.setattr(precision, "native_bf16", lambda accelerator: True)  # IRMv1's default is then bf16

    @hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
    def task(cfg: DictConfig) -> None:
        launched.append((HydraConfig.get().runtime.output_dir, cfg.tag, cfg.data.train_env_size, cfg.algorithm.name))

    register_resolvers()
    GlobalHydra.instance().clear()
    argv = [
        "train.py",
        "-m",
        experiment_override("table3"),
        "algorithm=irm",
        "seed=0",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)  # the default output root: ./outputs
    try:
        task()
    finally:
        GlobalHydra.instance().clear()
    root = tmp_path / "outputs" / "sweeps" / "table3" / "cmnist" / "irm"
    assert sorted(launched) == sorted(
        (str(root / f"data.train_env_size={n},trainer.precision=bf16-mixed" / "seed=0"), f"table3_n{n}", n, "irm")
        for n in SIZES
    )
    assert (tmp_path / "outputs" / "sweeps" / "table3" / "multirun.yaml").exists()


# -- slow: each experiment's first job, 2 steps on tiny data ---------------------------------
SHORT = {"trainer.max_steps": 2, "trainer.val_check_interval": 1, "model.hidden_dim": 16}
TINY_CMNIST = {"data.train_pool_size": 200, "data.train_env_size": 100}  # 100 digits per training env


def with_overrides(job: list[str], replacements: dict[str, Any]) -> list[str]:
    kept = [o for o in job if o.split("=", 1)[0] not in replacements]
    return kept + [f"{k}={v}" for k, v in replacements.items()]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_first_job_of_every_experiment_trains(name, make_config, fake_mnist):
    spec = SPECS[name]
    first_job = sweep_jobs(sweep_params(name))[0]
    psst2 = next(iter(spec.data)).startswith("psst2")
    cfg = make_config([experiment_override(name)] + with_overrides(first_job, SHORT if psst2 else SHORT | TINY_CMNIST))
    if psst2 and not os.path.isdir(cfg.data.data_dir):
        pytest.skip(f"no PunctuatedSST-2 data in {cfg.data.data_dir} (set METAIRM_PSST2_DIR)")
    from metairm_pl.run import train

    final = train(cfg)
    records = read_jsonl(Path(cfg.paths.output_dir) / "results.jsonl")
    assert final["status"] == "done" and final["step"] == 2
    assert [r["step"] for r in records] == [1, 2]
    knob_key = next(iter(spec.knobs), None)  # tiny data: data.train_env_size is 100 here
    expected_tag = fill_tag(spec, OmegaConf.select(cfg, knob_key) if knob_key else None)
    assert final["tag"] == records[-1]["tag"] == expected_tag
    assert final["algorithm"] == spec.algorithms[0] and final["data"] == next(iter(spec.data.values()))
    assert set(final["summary"]) == {"train_acc"} | {f"test/{env}/acc" for env in spec.test_envs}
