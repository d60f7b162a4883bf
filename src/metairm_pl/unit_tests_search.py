"""The linear unit-tests reference's hyperparameter configurations, its "model seeds".

facebookresearch/InvarianceUnitTests (``scripts/models.py``) runs each method with model seed
``k`` in 0..19: ``k = 0`` is the default configuration, ``k >= 1`` draws one from Python's
``random`` seeded ``k + 1000``, in the order its methods declare them: the learning rate
10^U(-4, -2), Adam's weight decay 10^U(-6, -2), then IRMv1's lambda 1 - 10^U(-3, -0.3). Here
``seed`` is that ``k + 1000`` (``experiment=unit_tests`` runs seed 1000; ``experiment=unit_tests_search``
seeds 1000..1019), so the initial weights and the configuration are the reference's both.

In our terms (:func:`hyperparameter`), for IRMv1 whose objective the reference scales by
``1 - lambda``: penalty weight ``n_envs * lambda / (1 - lambda)`` on the mean over envs, and
Adam's weight decay ``wd / (1 - lambda)`` (equal to the reference up to Adam's epsilon).
"""

from __future__ import annotations

import random

from metairm_pl.errors import ConfigError

MODEL_SEED_OFFSET = 1000  # the reference seeds a model seed k with k + 1000
DEFAULTS = {"lr": 1e-3, "wd": 0.0, "irm_lambda": 0.9}
DEFAULT_IRM_ODDS = 9.0  # 0.9 / (1 - 0.9), exactly: the default weight is n_envs * 9
NAMES = ("lr", "weight_decay", "irm_weight", "irm_weight_decay")


def reference_configuration(model_seed: int) -> dict[str, float]:
    """The reference's ``{"lr", "wd", "irm_lambda"}`` of ``model_seed`` (0: its defaults)."""
    if model_seed == 0:
        return dict(DEFAULTS)
    draw = random.Random(model_seed + MODEL_SEED_OFFSET)
    lr = 10 ** draw.uniform(-4, -2)
    wd = 10 ** draw.uniform(-6, -2)
    irm_lambda = 1 - 10 ** draw.uniform(-3, -0.3)
    return {"lr": lr, "wd": wd, "irm_lambda": irm_lambda}


def hyperparameter(name: str, seed: int, n_envs: int = 0) -> float:
    """``name`` (one of :data:`NAMES`) of the configuration of ``seed`` = model seed + 1000, in our
    terms; ``irm_weight`` needs the number of training envs."""
    if name not in NAMES:
        raise ConfigError(f"unit_tests_hparam: unknown name {name!r}; allowed: {', '.join(NAMES)}.")
    model_seed = int(seed) - MODEL_SEED_OFFSET
    if model_seed < 0:
        raise ConfigError(
            f"unit_tests_hparam: seed={seed} is not a reference model seed + {MODEL_SEED_OFFSET}; "
            f"use seed >= {MODEL_SEED_OFFSET} (seed {MODEL_SEED_OFFSET}: its default configuration)."
        )
    config = reference_configuration(model_seed)
    odds = DEFAULT_IRM_ODDS if model_seed == 0 else config["irm_lambda"] / (1 - config["irm_lambda"])
    if name == "lr":
        return config["lr"]
    if name == "weight_decay":
        return config["wd"]
    if name == "irm_weight_decay":
        return config["wd"] / (1 - config["irm_lambda"])
    if int(n_envs) < 1:
        raise ConfigError(f"unit_tests_hparam: irm_weight needs the number of envs (>= 1), got {n_envs}.")
    return int(n_envs) * odds
