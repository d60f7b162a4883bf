"""Meta-IRM inner loop: MAML-style adaptation, meta-loss pairs and the Eq. 5 std.

Pure functions (no Lightning). Notation follows Bae et al., "Meta-Learned Invariant
Risk Minimization", Sec. 3.3 / Algorithm 1:

* ``adapt``            θ'_i = θ − α ∇R^{e_i}(θ), repeated ``inner_steps`` times (Eq. 3).
* ``meta_pairs``       which (inner env i, meta env j) risks R^{e_j}(θ'_i) enter Eq. 4.
* ``population_std``   σ of all meta-losses of a step (Eq. 5, divide by N).
* ``meta_objective``   the meta-losses, their sum and σ; the caller forms Eq. 6
                       ``meta_loss_sum + λ·meta_loss_std`` and back-propagates it.

Parameters are handled functionally (``torch.func.functional_call``): the module's own
parameters are never modified and no ``.grad`` is written by the inner loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metairm_pl.errors import ConfigError

RiskFn = Callable[[Tensor, Tensor], Tensor]
META_ENV_MODES = ("others", "same")


# --------------------------------------------------------------------------- validation


def check_inner_lr(inner_lr: float, name: str = "inner_lr") -> None:
    if not (isinstance(inner_lr, (int, float)) and math.isfinite(inner_lr) and inner_lr >= 0):
        raise ConfigError(f"{name}={inner_lr!r} is invalid: it must be a finite number >= 0.")


def check_inner_steps(inner_steps: int, name: str = "inner_steps") -> None:
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
        raise ConfigError(f"{name}={inner_steps!r} is invalid: it must be an integer >= 1.")


def check_dropgrad_rate(rate: float, name: str = "dropgrad_rate") -> None:
    if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
        raise ConfigError(f"{name}={rate!r} is invalid: it must lie in [0, 1).")


# --------------------------------------------------------------------------- DropGrad


def gaussian_dropgrad(grad: Tensor, rate: float, generator: torch.Generator | None) -> Tensor:
    """Gaussian DropGrad (Tseng et al. 2020): ``grad * ε`` with ε ~ N(1, rate / (1 − rate)).

    ``rate == 0`` returns ``grad`` itself and draws no random numbers. The noise is drawn
    on the generator's device (or ``grad``'s when ``generator`` is None) and is a constant
    for autograd.
    """
    check_dropgrad_rate(rate)
    if rate == 0:
        return grad
    noise_std = math.sqrt(rate / (1.0 - rate))
    draw_device = generator.device if generator is not None else grad.device
    standard_normal = torch.randn(grad.shape, generator=generator, device=draw_device, dtype=grad.dtype).to(grad.device)
    return grad * (1.0 + noise_std * standard_normal)


# --------------------------------------------------------------------------- inner loop


def _sgd_step(
    params: dict[str, Tensor],
    grads: dict[str, Tensor],
    inner_lr: float,
    dropgrad_rate: float,
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """One plain-SGD step on the names in ``grads``; other entries pass through."""
    stepped = dict(params)
    for name, grad in grads.items():
        stepped[name] = params[name] - inner_lr * gaussian_dropgrad(grad, dropgrad_rate, generator)
    return stepped


def _inner_gradients(
    model: nn.Module,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    risk_fn: RiskFn,
    create_graph: bool,
) -> dict[str, Tensor]:
    """∇R(params) for every parameter that requires grad (one forward pass).

    Parameters the risk does not depend on get no entry (they are not updated).
    """
    trainable_names = [name for name, value in params.items() if value.requires_grad]
    with torch.enable_grad():
        risk = risk_fn(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(
            risk,
            [params[name] for name in trainable_names],
            create_graph=create_graph,
            allow_unused=True,
        )
    return {name: grad for name, grad in zip(trainable_names, grads) if grad is not None}


def adapt(
    model: nn.Module,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    risk_fn: RiskFn,
    inner_lr: float,
    inner_steps: int = 1,
    first_order: bool = False,
    dropgrad_rate: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Inner adaptation θ' = θ − α ∇R(θ), ``inner_steps`` times (Eq. 3); returns θ'.

    Second order by default: the inner gradients stay in the graph (``create_graph``), so
    a loss of θ' back-propagates through the updates to ``params``. With ``first_order``
    the inner gradients are constants and dθ'/dθ is the identity. Exactly one forward pass
    per step. Neither ``params`` nor the module's parameters are modified.
    """
    check_inner_lr(inner_lr)
    check_inner_steps(inner_steps)
    check_dropgrad_rate(dropgrad_rate)
    adapted = dict(params)
    for _ in range(inner_steps):
        grads = _inner_gradients(model, adapted, x, y, risk_fn, create_graph=not first_order)
        adapted = _sgd_step(adapted, grads, inner_lr, dropgrad_rate, generator)
    return adapted


# --------------------------------------------------------------------------- meta pairs


def _sample_others(i: int, n_envs: int, n_meta_envs: int, generator: torch.Generator | None) -> list[int]:
    """``n_meta_envs`` distinct envs j != i, drawn without replacement, sorted."""
    others = [j for j in range(n_envs) if j != i]
    if n_meta_envs == len(others):
        return others
    draw_device = generator.device if generator is not None else "cpu"
    order = torch.randperm(len(others), generator=generator, device=draw_device)[:n_meta_envs]
    return sorted(others[k] for k in order.tolist())


def meta_pairs(
    n_envs: int,
    meta_envs: str,
    n_meta_envs: int | None,
    generator: torch.Generator | None,
) -> list[tuple[int, int]]:
    """(inner env i, meta env j) pairs of one meta step, grouped by i in ascending order.

    ``"others"``: every j != i (``n_meta_envs=None``), or a random sample of
    ``n_meta_envs`` distinct j != i per i (no draws when it equals ``n_envs − 1``).
    ``"same"`` (ablation): only (i, i); ``n_meta_envs`` is ignored.
    """
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ConfigError(f"n_envs={n_envs!r} is invalid: at least 1 environment is needed.")
    if meta_envs not in META_ENV_MODES:
        raise ConfigError(f"meta_envs={meta_envs!r} is invalid: allowed values are {META_ENV_MODES}.")
    if meta_envs == "same":
        return [(i, i) for i in range(n_envs)]
    if n_envs < 2:
        raise ConfigError(
            f"meta_envs='others' needs at least 2 training environments, got n_envs={n_envs}; "
            "use meta_envs='same' for a single environment."
        )
    if n_meta_envs is None:
        n_meta_envs = n_envs - 1
    is_int = isinstance(n_meta_envs, int) and not isinstance(n_meta_envs, bool)
    if not (is_int and 1 <= n_meta_envs <= n_envs - 1):
        raise ConfigError(
            f"n_meta_envs={n_meta_envs!r} is invalid: with {n_envs} environments it must be "
            f"None or an integer in [1, {n_envs - 1}]."
        )
    return [(i, j) for i in range(n_envs) for j in _sample_others(i, n_envs, n_meta_envs, generator)]


# --------------------------------------------------------------------------- objective


def population_std(values: Tensor) -> Tensor:
    """sqrt(mean((v − mean(v))²)) — Eq. 5 (divide by N), with a finite gradient everywhere.

    ``torch.std(unbiased=False)`` has a NaN gradient when all values are equal (0 · ∞ from
    d sqrt/dx at 0). Instead of adding an eps (which would bias the value), the sqrt is
    taken through ``torch.where``: the value is exact, and at zero variance the gradient is
    0 (the subgradient at the minimum). For any variance > 0 the gradient is the exact one,
    (v_k − mean) / (N σ), which is bounded by 1 in magnitude.
    """
    if values.numel() == 0:
        raise ValueError("population_std needs at least one value, got an empty tensor.")
    variance = (values - values.mean()).square().mean()
    positive = variance > 0
    safe_variance = torch.where(positive, variance, torch.ones_like(variance))
    return torch.where(positive, safe_variance.sqrt(), torch.zeros_like(variance))


@dataclass
class MetaObjective:
    """Meta-losses R^{e_j}(θ'_i) of one step and the two terms of Eq. 6."""

    meta_losses: Tensor  # shape [N], in pair order
    pairs: list[tuple[int, int]]
    meta_loss_sum: Tensor  # Σ meta_losses (Eq. 4)
    meta_loss_std: Tensor  # population std σ (Eq. 5)


def meta_objective(
    model: nn.Module,
    params: dict[str, Tensor],
    env_batches: list[tuple[Tensor, Tensor]],
    risk_fn: RiskFn,
    inner_lr: float,
    inner_steps: int = 1,
    meta_envs: str = "others",
    n_meta_envs: int | None = None,
    first_order: bool = False,
    dropgrad_rate: float = 0.0,
    generator: torch.Generator | None = None,
) -> MetaObjective:
    """Adapt once per inner env i, evaluate R^{e_j}(θ'_i) for each pair, return the terms.

    Forward passes: ``inner_steps`` per inner env plus one per pair. The generator drives
    both the pair sampling (drawn first) and DropGrad.
    """
    check_inner_lr(inner_lr)
    check_inner_steps(inner_steps)
    check_dropgrad_rate(dropgrad_rate)
    pairs = meta_pairs(len(env_batches), meta_envs, n_meta_envs, generator)
    adapted_by_env: dict[int, dict[str, Tensor]] = {}
    losses = []
    for i, j in pairs:
        if i not in adapted_by_env:
            x_i, y_i = env_batches[i]
            adapted_by_env[i] = adapt(
                model,
                params,
                x_i,
                y_i,
                risk_fn,
                inner_lr,
                inner_steps,
                first_order,
                dropgrad_rate,
                generator,
            )
        x_j, y_j = env_batches[j]
        losses.append(risk_fn(functional_call(model, adapted_by_env[i], (x_j,)), y_j))
    meta_losses = torch.stack(losses)
    return MetaObjective(
        meta_losses=meta_losses,
        pairs=pairs,
        meta_loss_sum=meta_losses.sum(),
        meta_loss_std=population_std(meta_losses),
    )
