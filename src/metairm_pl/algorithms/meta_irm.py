"""Meta-IRM (Bae, Choi, Lee): IRM as a MAML-style bilevel problem (Algorithm 1, Eq. 3-6).

Per step, for each training env e_i the network is adapted by ``inner_steps`` plain-SGD
steps (``inner_lr``) to θ'_i; the meta-losses R^{e_j}(θ'_i) are taken on the other
training envs (``meta_envs="others"``: all of them, or ``n_meta_envs`` sampled ones; the
ablation ``"same"`` uses e_i itself).  The outer loss is
``Σ_ij R^{e_j}(θ'_i) + λ·σ + L2`` where σ is the population std of the step's meta-losses
and λ follows the shared :class:`PenaltySchedule` (``penalty.weight``).  Gaussian DropGrad
(rate ``dropgrad``) perturbs the inner gradients.  Prediction always uses θ.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from torch import nn

from metairm_pl.algorithms.base import EnvBatch, MultiEnvAlgorithm, Objective
from metairm_pl.algorithms.inner_loop import (
    check_dropgrad_rate,
    check_inner_lr,
    check_inner_steps,
    meta_objective,
    meta_pairs,
)
from metairm_pl.algorithms.schedule import PenaltySchedule


class MetaIRM(MultiEnvAlgorithm):
    """Meta-IRM with second-order meta-gradients (``first_order=True`` for the ablation)."""

    name, label, table_order = "meta_irm", "Meta-IRM", 100
    min_train_envs = 2
    pwcca_layer = "last_hidden"  # the paper's Fig. 10 compares the classifier's input for Meta-IRM
    # Table 5's ablations (conf/algorithm/<name>.yaml), under the full method's settings and
    # under their own search's ("_own"); sorted by name after the full method.
    presets = {
        "meta_irm_no_std": {"label": "Meta-IRM (no std loss)", "table_order": 101},
        "meta_irm_first_order": {"label": "Meta-IRM (first order)", "table_order": 101},
        "meta_irm_same_env": {"label": "Meta-IRM (same env)", "table_order": 101},
        "meta_irm_no_std_own": {"label": "Meta-IRM (no std loss, own search)", "table_order": 101},
        "meta_irm_first_order_own": {"label": "Meta-IRM (first order, own search)", "table_order": 101},
        "meta_irm_same_env_own": {"label": "Meta-IRM (same env, own search)", "table_order": 101},
    }

    def __init__(
        self,
        network: nn.Module,
        optimizer: Callable,
        num_classes: int = 2,
        l2_weight: float = 0.0,
        penalty: Optional[Mapping | PenaltySchedule] = None,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        meta_envs: str = "others",
        n_meta_envs: Optional[int] = None,
        first_order: bool = False,
        dropgrad: float = 0.0,
        eval_chunk_size: int = 65536,
        num_outputs: Optional[int] = None,
    ) -> None:
        super().__init__(network, optimizer, num_classes, l2_weight, penalty, eval_chunk_size, num_outputs)
        check_inner_lr(inner_lr, "algorithm.inner_lr")
        check_inner_steps(inner_steps, "algorithm.inner_steps")
        check_dropgrad_rate(dropgrad, "algorithm.dropgrad")
        meta_pairs(max(2, (n_meta_envs or 1) + 1), meta_envs, n_meta_envs, None)  # validates the mode
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.meta_envs = meta_envs
        self.n_meta_envs = n_meta_envs
        self.first_order = first_order
        self.dropgrad = float(dropgrad)
        # Drives meta-env sampling and DropGrad; seeded from the (seeded) global RNG. A
        # resumed run replaces this state with the checkpointed one (random_generators).
        self.generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))

    def random_generators(self) -> dict[str, torch.Generator]:
        return {"generator": self.generator}

    def check_environments(self, n_train_envs: int) -> None:
        super().check_environments(n_train_envs)
        meta_pairs(n_train_envs, self.meta_envs, self.n_meta_envs, None)

    def objective(self, batch: EnvBatch) -> Objective:
        result = meta_objective(
            self.network,
            dict(self.network.named_parameters()),
            list(batch.values()),
            self.risk_fn,
            inner_lr=self.inner_lr,
            inner_steps=self.inner_steps,
            meta_envs=self.meta_envs,
            n_meta_envs=self.n_meta_envs,
            first_order=self.first_order,
            dropgrad_rate=self.dropgrad,
            generator=self.generator,
        )
        return Objective(
            risk=result.meta_loss_sum,
            penalty=result.meta_loss_std,
            logs={"meta_loss_mean": result.meta_losses.mean(), "meta_loss_std": result.meta_loss_std},
        )
