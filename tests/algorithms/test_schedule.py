import pytest
import torch

from metairm_pl.algorithms.schedule import PenaltySchedule
from metairm_pl.errors import ConfigError


def test_weight_switches_at_anneal_step():
    schedule = PenaltySchedule(weight=1000.0, anneal_steps=3, warmup_weight=1.0)
    assert [schedule.weight_at(step) for step in range(6)] == [1.0, 1.0, 1.0, 1000.0, 1000.0, 1000.0]


def test_combine_rescales_whole_loss_only_when_weight_exceeds_one():
    schedule = PenaltySchedule(weight=10.0, anneal_steps=2, warmup_weight=1.0)
    risk, penalty, l2 = torch.tensor(0.5), torch.tensor(0.2), torch.tensor(0.1)
    # before annealing: weight 1 -> no division
    assert schedule.combine(risk, penalty, l2, step=1).item() == pytest.approx(0.5 + 0.1 + 0.2)
    # after: (risk + l2 + 10 * penalty) / 10, L2 divided too (as the IRM code)
    assert schedule.combine(risk, penalty, l2, step=2).item() == pytest.approx((0.5 + 0.1 + 2.0) / 10)


def test_combine_without_rescale_and_small_weight():
    risk, penalty, l2 = torch.tensor(0.5), torch.tensor(0.2), torch.tensor(0.1)
    no_rescale = PenaltySchedule(weight=10.0, anneal_steps=0, rescale=False)
    assert no_rescale.combine(risk, penalty, l2, step=0).item() == pytest.approx(0.5 + 0.1 + 2.0)
    small = PenaltySchedule(weight=0.5, anneal_steps=0)
    assert small.combine(risk, penalty, l2, step=0).item() == pytest.approx(0.5 + 0.1 + 0.1)


@pytest.mark.parametrize("kwargs", [{"weight": -1.0}, {"warmup_weight": -0.5}, {"anneal_steps": -1}])
def test_invalid_schedule_is_rejected(kwargs):
    with pytest.raises(ConfigError, match="weight|anneal_steps"):
        PenaltySchedule(**kwargs)
