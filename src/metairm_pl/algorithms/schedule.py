"""The penalty anneal/rescale schedule shared by IRMv1, V-REx, MM-REx and Meta-IRM."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from metairm_pl.errors import ConfigError


@dataclass(frozen=True)
class PenaltySchedule:
    """Penalty weight ``warmup_weight`` before ``anneal_steps``, ``weight`` from then on.

    As in the IRM Colored MNIST code, when the current weight exceeds 1 the *whole* loss
    (risk, L2 and weighted penalty) is divided by it, keeping gradients in range
    (``rescale=True``).  The schedule is a pure function of the step, so resuming a run
    needs nothing but the step.
    """

    weight: float = 0.0  # the default is no penalty; the config schema takes these defaults
    anneal_steps: int = 0
    warmup_weight: float = 1.0
    rescale: bool = True

    def __post_init__(self) -> None:
        if (
            not (math.isfinite(self.weight) and math.isfinite(self.warmup_weight))
            or min(self.weight, self.warmup_weight) < 0
        ):
            raise ConfigError(
                f"algorithm.penalty.weight={self.weight}, warmup_weight={self.warmup_weight}: "
                "penalty weights must be finite numbers >= 0."
            )
        if self.anneal_steps < 0:
            raise ConfigError(f"anneal_steps={self.anneal_steps} is not allowed: use an integer >= 0.")

    def weight_at(self, step: int) -> float:
        return float(self.weight if step >= self.anneal_steps else self.warmup_weight)

    def combine(self, risk: Tensor, penalty: Tensor, regularizer: Tensor, step: int) -> Tensor:
        """``(risk + regularizer + w * penalty) / max(w, 1)`` (no division when ``rescale`` is off)."""
        weight = self.weight_at(step)
        loss = risk + regularizer + weight * penalty
        if self.rescale and weight > 1.0:
            loss = loss / weight
        return loss
