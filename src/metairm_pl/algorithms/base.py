"""Shared LightningModule for every method: the network, per-env risks, evaluation, L2 and
the optimizer step under manual optimization.

A method implements one thing, :meth:`MultiEnvAlgorithm.objective`: from a multi-env
batch (env name -> ``(x, y)``) it returns the data term and the penalty term of its
training loss.  The base adds L2, applies the :class:`PenaltySchedule` (anneal + rescale),
checks the loss is finite and takes the optimizer step.

Checkpoints written by Lightning carry, besides network, optimizer and loop progress, every
random state a run draws from (:func:`collect_rng_states`): torch CPU/CUDA, numpy, python
``random`` and the module's own generators (:meth:`MultiEnvAlgorithm.random_generators`).
They are restored just before the first training step after a resume, so a resumed run
continues with exactly the random numbers an uninterrupted run would draw (in minibatch
mode the data order is restored by the training loaders' own state, see
:class:`metairm_pl.data.multienv.EnvBatchSampler`).

**Precision.** Under ``trainer.precision=bf16-mixed`` Lightning runs ``training_step`` in
``torch.autocast(dtype=torch.bfloat16)``: the network's matmuls (its ``nn.Linear`` layers,
also when Meta-IRM calls them through ``functional_call``) take bf16 inputs and give bf16
logits.  Everything else stays float32: :func:`risk_function` and :func:`irm_penalty` cast
the logits to float32 first, so risks, the dummy-scale gradient, penalties, Meta-IRM's
meta-losses and σ, L2, the parameters, their gradients and the optimizer state are float32.
Evaluation (:meth:`MultiEnvAlgorithm.evaluate`) turns autocast off: every recorded metric,
and the std of validation losses that the early stop reads, is computed in float32.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_accuracy, multiclass_accuracy

from metairm_pl.algorithms.schedule import PenaltySchedule
from metairm_pl.errors import ConfigError, DivergenceError

EnvBatch = Mapping[str, tuple[Tensor, Tensor]]
RNG_STATES_KEY = "rng_states"  # where checkpoints keep the random states


def collect_rng_states(generators: Optional[Mapping[str, torch.Generator]] = None) -> dict[str, Any]:
    """Every random state of the process plus ``generators``' states, as plain data.

    Only tensors, ints, floats, strings, lists and tuples, so a checkpoint holding them
    loads with ``torch.load(weights_only=True)`` (numpy's key array becomes a list).
    The CUDA states are included once CUDA is in use.
    """
    import numpy as np

    generators = generators or {}
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)),
        "python": random.getstate(),
        "generators": {name: generator.get_state() for name, generator in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any], generators: Optional[Mapping[str, torch.Generator]] = None) -> None:
    """Inverse of :func:`collect_rng_states`; a generator missing from ``states`` is an error."""
    import numpy as np

    generators = generators or {}
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    missing = sorted(set(generators) - set(states["generators"]))
    if missing:
        raise KeyError(f"checkpoint has no state for generator(s) {missing}")
    for name, generator in generators.items():
        generator.set_state(states["generators"][name])


class EnvFeatures(NamedTuple):
    """One env's risk, logits, labels and the classifier's input (:meth:`MultiEnvAlgorithm.env_features`)."""

    risk: Tensor
    logits: Tensor
    y: Tensor
    features: Tensor


@dataclass
class Objective:
    """What a method's training loss is made of for one step."""

    risk: Tensor
    penalty: Optional[Tensor] = None
    logs: dict[str, Tensor] = field(default_factory=dict)


def full_precision(tensor: Tensor) -> Tensor:
    """``tensor`` as float32 if it is a half-precision float (bf16 logits under autocast),
    else unchanged (float32 stays, and so does float64, e.g. in gradient checks)."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


REGRESSION = 1  # num_classes of a real-valued target: one output, the mean squared error


def risk_function(num_classes: int, num_outputs: Optional[int] = None) -> Callable[[Tensor, Tensor], Tensor]:
    """Mean negative log-likelihood: logistic for 2 classes on one logit (``num_outputs`` 1 or
    None), softmax cross-entropy otherwise (k classes, or 2 classes on two logits as the
    PunctuatedSST-2 reference code); for a real-valued target (``num_classes`` =
    :data:`REGRESSION`) the mean squared error (the Gaussian negative log-likelihood up to
    constants, as the linear unit-tests' reference).

    Computed in at least float32 (:func:`full_precision`), whatever the logits' dtype."""

    def squared_error(outputs: Tensor, y: Tensor) -> Tensor:
        outputs = full_precision(outputs).squeeze(-1)
        return F.mse_loss(outputs, y.to(outputs.dtype))

    def binary_risk(logits: Tensor, y: Tensor) -> Tensor:
        logits = full_precision(logits).squeeze(-1)
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))

    if num_classes == REGRESSION:
        return squared_error
    if num_classes == 2 and num_outputs in (None, 1):
        return binary_risk
    return lambda logits, y: F.cross_entropy(full_precision(logits), y)


def accuracy(logits: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """Accuracy of one logit (binary, threshold 0) or of the argmax of k logits."""
    if num_classes == 2 and (logits.dim() == 1 or logits.shape[-1] == 1):
        return binary_accuracy((logits.squeeze(-1) > 0).long(), y.long())
    return multiclass_accuracy(logits, y, num_classes=logits.shape[-1], average="micro")


def irm_penalty(
    logits: Tensor, y: Tensor, risk_fn: Callable[[Tensor, Tensor], Tensor], dummy_bias: bool = False
) -> Tensor:
    """IRMv1 penalty: squared norm of the gradient of the risk w.r.t. a dummy scale 1.0 on the logits.

    One logit (binary, or a regression output): a scalar scale, as the IRM code.  k logits: one
    scale per class, shape ``(1, k)``, as the k-class Colored MNIST code of Choe et al. 2020
    (kakaobrain/irm-empirical-study); the penalty is the sum of the k squared gradients.
    ``dummy_bias``: also the squared gradient w.r.t. an additive dummy 0.0 of the same shape, as
    the linear unit-tests' IRMv1 (facebookresearch/InvarianceUnitTests, for regression and
    classification alike). Differentiable w.r.t. ``logits`` (``create_graph=True``).
    """
    logits = full_precision(logits)  # a small gradient: float32 even under bf16 autocast
    scale_shape = () if logits.shape[-1] == 1 else (1, logits.shape[-1])
    scale = torch.ones(scale_shape, dtype=logits.dtype, device=logits.device, requires_grad=True)
    if not dummy_bias:
        (grad,) = torch.autograd.grad(risk_fn(logits * scale, y), [scale], create_graph=True)
        return grad.pow(2).sum()
    shift = torch.zeros(scale_shape, dtype=logits.dtype, device=logits.device, requires_grad=True)
    grad_scale, grad_shift = torch.autograd.grad(risk_fn(logits * scale + shift, y), [scale, shift], create_graph=True)
    return grad_scale.pow(2).sum() + grad_shift.pow(2).sum()


class MultiEnvAlgorithm(pl.LightningModule):
    """Base of all methods. Subclasses set ``name``/``min_train_envs`` and implement ``objective``.

    A method's facts are class attributes beside its code, read by
    :mod:`metairm_pl.algorithms.registry` (literal values only): ``name`` (its config and
    record name), ``label`` (how tables and figures call it), ``table_order`` (its rows'
    place), ``pwcca_layer`` (the representation Fig. 10 compares) and ``presets`` (other config
    names that run this class, e.g. ablations, each with its own ``label``/``table_order``).

    Args:
        network: maps inputs to logits (1 for binary, k for k classes).
        optimizer: a partial optimizer constructor (Hydra ``_partial_: true``), called with
            the parameters in :meth:`configure_optimizers`.
        num_classes: number of classes of the task; :data:`REGRESSION` (1) for a real-valued
            target (one output, mean squared error).
        num_outputs: logits of the network (1 for a binary task on one logit, the default; 2 for
            a binary task on two softmax logits; k for k classes).
        l2_weight: weight of the squared L2 norm of all parameters (biases included, as the
            IRM code), added to the loss.
        penalty: the penalty schedule (or its config mapping); ignored by methods without a
            penalty.
        eval_chunk_size: evaluate in chunks of this many examples (bounds memory).
    """

    name = "base"
    min_train_envs = 1
    label: Optional[str] = None  # None: the name
    table_order: float = 500  # tables and figures sort rows by (table_order, name)
    pwcca_layer: str = "output"  # the network output; "last_hidden": the classifier's input
    presets: Mapping[str, Mapping[str, Any]] = {}  # config name -> {"label": ..., "table_order": ...}

    def __init__(
        self,
        network: nn.Module,
        optimizer: Callable,
        num_classes: int = 2,
        l2_weight: float = 0.0,
        penalty: Optional[Mapping | PenaltySchedule] = None,
        eval_chunk_size: int = 65536,
        num_outputs: Optional[int] = None,
    ) -> None:
        super().__init__()
        if l2_weight < 0:
            raise ConfigError(f"algorithm.l2_weight={l2_weight} is not allowed: use a value >= 0.")
        learning_rate = getattr(optimizer, "keywords", {}).get("lr")
        if learning_rate is not None and not learning_rate >= 0:
            raise ConfigError(f"algorithm.optimizer.lr={learning_rate} is not allowed: use a learning rate >= 0.")
        self.automatic_optimization = False
        self.network = network
        self.optimizer_factory = optimizer
        self.num_classes = num_classes
        self.l2_weight = float(l2_weight)
        if penalty is None:
            penalty = PenaltySchedule()  # no penalty
        self.schedule = penalty if isinstance(penalty, PenaltySchedule) else PenaltySchedule(**dict(penalty))
        self.eval_chunk_size = eval_chunk_size
        self.risk_fn = risk_function(num_classes, num_outputs)
        self.eval_metrics: dict[str, float] = {}
        self._rng_states_to_restore: Optional[dict[str, Any]] = None

    # -- to implement -------------------------------------------------------------------
    def objective(self, batch: EnvBatch) -> Objective:
        raise NotImplementedError

    # -- building blocks ---------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def env_features(self, batch: EnvBatch) -> dict[str, EnvFeatures]:
        """One forward per env split at the classifier (the network's ``features`` and
        ``classifier``): ``{env: EnvFeatures(risk, logits, y, features)}``; the logits are
        bit-identical to :meth:`env_risks`'."""
        network = self.network
        if not (hasattr(network, "features") and isinstance(getattr(network, "classifier", None), nn.Linear)):
            raise ConfigError(
                f"{self.name} reads the classifier's input: the network ({type(network).__name__}) must have "
                "features(x) and a classifier nn.Linear (model=mlp and model=bow_mlp do)."
            )
        out = {}
        for env, (x, y) in batch.items():
            features = network.features(x)
            logits = network.classifier(features)
            out[env] = EnvFeatures(self.risk_fn(logits, y), logits, y, features)
        return out

    def env_risks(self, batch: EnvBatch) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """One forward per env: ``{env: (risk, logits, y)}``."""
        out = {}
        for env, (x, y) in batch.items():
            logits = self(x)
            out[env] = (self.risk_fn(logits, y), logits, y)
        return out

    def l2_term(self) -> Tensor:
        if self.l2_weight == 0.0:
            return torch.zeros((), device=self.device)
        return self.l2_weight * sum(p.pow(2).sum() for p in self.network.parameters())

    def setup_environments(self, train_env_names: Sequence[str]) -> None:
        """Called once, before training, with the data's training envs: check there are enough
        (a method may also size per-env state here, e.g. a buffer, so checkpoints hold it)."""
        self.check_environments(len(train_env_names))

    def check_environments(self, n_train_envs: int) -> None:
        if n_train_envs < self.min_train_envs:
            raise ConfigError(
                f"algorithm {self.name} needs at least {self.min_train_envs} training environments, "
                f"the data provides {n_train_envs}."
            )

    # -- training ----------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        env_batch = {env: (pair[0], pair[1]) for env, pair in batch.items()}
        step = self.global_step
        objective = self.objective(env_batch)
        penalty = objective.penalty if objective.penalty is not None else torch.zeros((), device=self.device)
        regularizer = self.l2_term()
        self._check_finite(step, {"risk": objective.risk, "penalty": penalty, "l2": regularizer})
        loss = self.schedule.combine(objective.risk, penalty, regularizer, step)

        optimizer = self.step_optimizer()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self._check_parameters_finite(step)

        if self._is_logging_step():
            self._log_step(loss, objective, penalty, step)
        return loss.detach()

    def _is_logging_step(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.logger is not None and self.global_step % trainer.log_every_n_steps == 0

    def _log_step(self, loss: Tensor, objective: Objective, penalty: Tensor, step: int) -> None:
        logs = {
            "step/loss": loss.detach(),
            "step/risk": objective.risk.detach(),
            "step/penalty": penalty.detach(),
            "step/penalty_weight": self.schedule.weight_at(step),
        }
        logs.update({f"step/{k}": v.detach() for k, v in objective.logs.items()})
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=1)

    def _check_finite(self, step: int, terms: Mapping[str, Tensor]) -> None:
        if bool(torch.stack([value.detach().float().sum() for value in terms.values()]).isfinite().all()):
            return  # one host sync per step in the common case
        bad = [name for name, value in terms.items() if not torch.isfinite(value).all()]
        if bad:
            values = ", ".join(f"{name}={terms[name].item()}" for name in bad)
            raise DivergenceError(
                f"{self.name} diverged: loss term(s) {bad} not finite at step {step} ({values}); "
                "try a smaller learning rate or penalty weight."
            )

    def _check_parameters_finite(self, step: int) -> None:
        params = [p.detach().sum() for p in self.network.parameters()]
        if bool(torch.stack(params).isfinite().all()):
            return
        for name, param in self.network.named_parameters():
            if not torch.isfinite(param).all():
                raise DivergenceError(
                    f"{self.name} diverged: parameter {name!r} became non-finite after step {step}; "
                    "try a smaller learning rate or penalty weight."
                )

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    def step_optimizer(self):
        """The optimizer that takes this step (a method with several picks one)."""
        return self.optimizers()

    def restart_optimizer(self, lr: Optional[float] = None) -> None:
        """Forget the optimizer's state (Adam's moments and step count), as a freshly made one,
        optionally at learning rate ``lr``; checkpoints after it hold the new state and rate."""
        optimizer = self.optimizers().optimizer
        optimizer.state.clear()
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr

    # -- checkpoints -------------------------------------------------------------------
    def random_generators(self) -> dict[str, torch.Generator]:
        """The module's own generators (name -> generator), checkpointed with the global RNGs."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_STATES_KEY] = collect_rng_states(self.random_generators())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied in on_train_batch_start: between loading and the first step Lightning
        # still draws from the global RNG (e.g. a DataLoader iterator's base seed).
        self._rng_states_to_restore = checkpoint.get(RNG_STATES_KEY)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._rng_states_to_restore is not None:
            restore_rng_states(self._rng_states_to_restore, self.random_generators())
            self._rng_states_to_restore = None

    # -- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(self, x: Tensor) -> Tensor:
        """Logits of the network with its own parameters θ (no adaptation), in chunks."""
        chunks = [self(x[i : i + self.eval_chunk_size]) for i in range(0, len(x), self.eval_chunk_size)]
        return torch.cat(chunks)

    def evaluate_env(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """``loss``, ``penalty`` (IRMv1's) and ``acc`` (classification) or ``error`` (regression:
        the mean squared error, the linear unit-tests' test error)."""
        logits = self.predict_logits(x).detach()
        with torch.enable_grad():
            penalty = irm_penalty(logits, y, self.risk_fn)
        loss = self.risk_fn(logits, y).item()
        if self.num_classes == REGRESSION:
            return {"loss": loss, "error": loss, "penalty": penalty.item()}
        return {"loss": loss, "acc": accuracy(logits, y, self.num_classes).item(), "penalty": penalty.item()}

    def evaluate(self, eval_batch: Mapping[str, EnvBatch]) -> dict[str, float]:
        """``{"<split>/<env>/<metric>": value}`` for every split, env and metric, in float32
        whatever the training precision (autocast off)."""
        metrics = {}
        with torch.autocast(device_type=self.device.type, enabled=False):
            for split, envs in eval_batch.items():
                for env, (x, y) in envs.items():
                    for metric, value in self.evaluate_env(x, y).items():
                        metrics[f"{split}/{env}/{metric}"] = value
        return metrics

    def validation_step(self, batch, batch_idx: int) -> None:
        self.eval_metrics = self.evaluate(batch)
        finite = {k: v for k, v in self.eval_metrics.items() if math.isfinite(v)}
        self.log_dict(finite, on_step=False, on_epoch=True, batch_size=1)

    def test_step(self, batch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)
