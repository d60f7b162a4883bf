"""The run asks callbacks through one protocol (RunCallback): record fields, a stop by design,
data requirements. Any callback can take part; the run names none of them."""

from __future__ import annotations

import pytest

from metairm_pl import run as run_module
from metairm_pl.callbacks.run_callback import RunCallback
from metairm_pl.errors import ConfigError
from metairm_pl.files import read_jsonl
from metairm_pl.run import train


class StopAtStep(RunCallback):
    """Stops training at ``step`` (an evaluation step) and says so in every record."""

    def __init__(self, step: int, needs_test_env: str = "") -> None:
        self.step, self.needs_test_env, self.stopped_at = step, needs_test_env, None

    def record_fields(self):
        return {"toy/stopped_at": self.stopped_at}

    def finished_by_design(self) -> bool:
        return self.stopped_at is not None

    def check_data(self, datamodule) -> None:
        if self.needs_test_env and self.needs_test_env not in datamodule.test_env_names:
            raise ConfigError(f"the toy stop needs test env {self.needs_test_env!r}")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.global_step >= self.step and self.stopped_at is None:
            self.stopped_at = trainer.global_step
            trainer.should_stop = True


@pytest.fixture
def with_callback(monkeypatch):
    def attach(callback):
        built = run_module.build_callbacks
        monkeypatch.setattr(run_module, "build_callbacks", lambda cfg: built(cfg) + [callback])

    return attach


SHORT = [
    "data=synthetic",
    "algorithm=erm",
    "model.hidden_dim=8",
    "trainer.max_steps=20",
    "trainer.val_check_interval=2",
]


def test_a_callback_stops_a_run_by_design_and_writes_its_fields(make_config, with_callback):
    with_callback(StopAtStep(6))
    cfg = make_config(SHORT)
    final = train(cfg)
    records = read_jsonl(f"{cfg.paths.output_dir}/results.jsonl")
    assert final["status"] == "done" and final["stopped_early"] is True and final["step"] == 6
    assert [r["toy/stopped_at"] for r in records] == [None, None, 6]


def test_a_callback_checks_its_data_before_training(make_config, with_callback):
    with_callback(StopAtStep(6, needs_test_env="p0.5"))
    cfg = make_config(SHORT)
    with pytest.raises(ConfigError, match="needs test env 'p0.5'"):
        train(cfg)
    assert not (run_module.Path(cfg.paths.output_dir) / "results.jsonl").exists()
