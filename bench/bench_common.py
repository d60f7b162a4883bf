"""Shared pieces of the benchmark scripts in ``bench/`` (not part of the package).

* synthetic Colored-MNIST-shaped environments (no download, fixed generator);
* a :class:`MultiEnvDataModule` subclass serving them in full-batch mode;
* a quiet ``pl.Trainer`` for timing (no logger, checkpointing, progress bar or validation);
* a step timer callback and the matching timer for plain loops;
* machine information, a compact table printer and JSON output.

Timing convention used by every script: a run of N steps records a timestamp after each
step; the per-step time of the run is ``(t[N-1] - t[0]) / (N - 1)``, i.e. the steady-state
cost of steps 2..N (the first step, which pays one-off costs such as Adam's state
allocation and the Trainer's first-batch hooks, is excluded).  On CUDA the device is
synchronised only at those two timestamps, so asynchronous execution inside the run is
kept.  The reported number is the median of the per-run values over the repeats.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from metairm_pl.provenance import cpu_model

REPO_ROOT = Path(__file__).resolve().parents[1]

# Colored MNIST (IRM protocol): two training environments of 25,000 images [2, 14, 14].
CMNIST_INPUT_SHAPE = (2, 14, 14)
CMNIST_ENV_SIZE = 25_000
CMNIST_ENVS = (("p0.2", 0.2), ("p0.1", 0.1))  # (name, colour flip rate)
LABEL_NOISE = 0.25


# --------------------------------------------------------------------------- setup


def quiet_lightning() -> None:
    """Silence Lightning's informational banner lines and known harmless warnings."""
    import pytorch_lightning  # noqa: F401  (its import sets its loggers' levels; override after)

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def configure_torch(threads: Optional[int], deterministic: bool) -> None:
    """Thread count and the deterministic-algorithms switch, for the whole process.

    The Trainer is built with the same ``deterministic`` value, so Lightning sets the same
    global flag and both code paths of a benchmark run under one setting.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False.")
    if name not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {name!r}.")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- data


def make_cmnist_like_envs(
    env_size: int = CMNIST_ENV_SIZE, seed: int = 0, num_classes: int = 2
) -> dict[str, tuple[Tensor, Tensor]]:
    """Two environments shaped like Colored MNIST: ``x`` float32 ``[n, k, 14, 14]``, ``y`` int64 in [0, k).

    k = ``num_classes`` (2: the IRM protocol; 5 and 10: Choe et al.'s, one channel per
    colour). Random "digit" intensities in [0, 1); 25% label noise and the colour (the
    channel holding the image, the others are zero) is the label "flipped" with the env's
    rate, a flip being label + 1 mod k, as in the Colored MNIST constructions.
    Deterministic in ``seed``; nothing is downloaded.
    """
    if env_size < 1:
        raise SystemExit(f"--env-size must be >= 1, got {env_size}.")
    generator = torch.Generator().manual_seed(seed)
    envs = {}
    for name, p_color in CMNIST_ENVS:
        pixels = torch.rand(env_size, *CMNIST_INPUT_SHAPE[1:], generator=generator)
        clean = torch.randint(0, num_classes, (env_size,), generator=generator)
        noisy = torch.rand(env_size, generator=generator) < LABEL_NOISE
        labels = torch.where(noisy, (clean + 1) % num_classes, clean)
        flipped = torch.rand(env_size, generator=generator) < p_color
        colour = torch.where(flipped, (labels + 1) % num_classes, labels)
        x = torch.zeros(env_size, num_classes, *CMNIST_INPUT_SHAPE[1:], dtype=torch.float32)
        x[torch.arange(env_size), colour] = pixels
        envs[name] = (x, labels.long())
    return envs


def make_datamodule(envs: dict[str, tuple[Tensor, Tensor]], num_classes: int = 2):
    """A full-batch :class:`MultiEnvDataModule` serving ``envs`` as the training environments.

    Everything but ``build_environments``/``num_classes`` (loader, device transfer and its
    cache) is the project's own base-class code, so the benchmark pays what a real run pays.
    """
    from metairm_pl.data.multienv import EnvironmentSplits, MultiEnvDataModule

    class BenchEnvDataModule(MultiEnvDataModule):
        name = "bench_synthetic_cmnist"

        def __init__(self, train_envs) -> None:
            super().__init__(full_batch=True)
            self._train_envs = train_envs

        @property
        def num_classes(self) -> int:
            return num_classes

        def build_environments(self) -> EnvironmentSplits:
            return EnvironmentSplits(train=dict(self._train_envs))

    return BenchEnvDataModule(envs)


def setup(args) -> tuple[torch.device, dict[str, tuple[Tensor, Tensor]], dict]:
    """The common start of a step benchmark: quiet Lightning, thread count and determinism
    (``args.threads``, ``args.deterministic``), the device (``args.device``), the synthetic
    environments (``args.env_size``, ``args.data_seed``) and the system information."""
    quiet_lightning()
    configure_torch(args.threads, args.deterministic)
    device = resolve_device(args.device)
    envs = make_cmnist_like_envs(args.env_size, seed=args.data_seed)
    return device, envs, system_info(device, args.deterministic)


# --------------------------------------------------------------------------- trainer + timing


class StepTimes:
    """Timestamps taken after each step of one run."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []
        self.n_steps = 0

    def mark(self, step_index: int, last_index: int) -> None:
        # Synchronise only at the first and the last step: the interval between them holds
        # exactly steps 2..N, with the device queue drained at both ends.
        if step_index == 0 or step_index == last_index:
            sync(self.device)
        self.stamps.append(time.perf_counter())

    def seconds_per_step(self) -> float:
        if len(self.stamps) < 2:
            raise RuntimeError("need at least 2 timed steps (use --steps >= 2)")
        return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)


def step_timer_callback(times: StepTimes, steps: int, losses: list):
    """Callback stamping the end of every training batch and keeping each step's loss tensor."""
    import pytorch_lightning as pl

    class _StepTimer(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, Tensor):
                losses.append(loss.detach())
            times.mark(len(times.stamps), steps - 1)

    return _StepTimer()


def make_trainer(steps: int, device: torch.device, deterministic: bool, callbacks: list, precision: str = "32-true"):
    """A Trainer running exactly ``steps`` optimizer steps and nothing else, at ``precision``."""
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,  # no validation at all
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=steps + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,  # as conf/trainer/default.yaml (the IRMv1 penalty uses autograd)
        deterministic=deterministic,
        callbacks=callbacks,
        precision=precision,
    )


def fit_and_time(
    module,
    envs,
    steps: int,
    device: torch.device,
    deterministic: bool,
    precision: str = "32-true",
    num_classes: int = 2,
) -> dict:
    """Fit ``module`` for ``steps`` steps on a fresh full-batch datamodule at ``precision``; time it.

    A fresh datamodule per run, so nothing it caches survives into the next run.
    """
    datamodule = make_datamodule(envs, num_classes)
    times, losses = StepTimes(device), []
    trainer = make_trainer(steps, device, deterministic, [step_timer_callback(times, steps, losses)], precision)
    sync(device)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    sync(device)
    fit_seconds = time.perf_counter() - start
    if trainer.global_step != steps:
        raise RuntimeError(f"the Trainer ran {trainer.global_step} optimizer steps, expected {steps}")
    return {
        "s_per_step": times.seconds_per_step(),
        "fit_seconds": fit_seconds,
        "losses": torch.stack(losses).cpu() if losses else None,
        "device_cache_entries": len(getattr(datamodule, "_device_copies", {})),
    }


def time_plain_loop(step_fn: Callable[[int], Tensor], steps: int, device: torch.device) -> dict:
    """Run ``step_fn(step)`` for ``steps`` steps with the same timestamps as the Trainer path."""
    times, losses = StepTimes(device), []
    sync(device)
    start = time.perf_counter()
    for step in range(steps):
        losses.append(step_fn(step))
        times.mark(step, steps - 1)
    sync(device)
    return {
        "s_per_step": times.seconds_per_step(),
        "fit_seconds": time.perf_counter() - start,
        "losses": torch.stack(losses).cpu(),
    }


# --------------------------------------------------------------------------- reporting


def system_info(device: torch.device, deterministic: bool) -> dict:
    import pytorch_lightning as pl

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),  # the run records' own reading (metairm_pl.provenance)
        "device": str(device),
        "deterministic": deterministic,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        info["load_average_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_system(info: dict) -> None:
    fields = ", ".join(f"{k}={v}" for k, v in info.items())
    print(f"system: {fields}")


def print_table(header: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def write_json(path: Optional[str], payload: dict) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(f"wrote {target}")


def write_step_timings(path: Optional[str], benchmark: str, info: dict, args, per_step: dict, **extra) -> None:
    """Write a step benchmark's JSON: system, options, per-run and median s/step, and ``extra``."""
    write_json(path, {
        "benchmark": benchmark,
        "system": info,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds_per_step": per_step,
        "median_seconds_per_step": {key: median(values) for key, values in per_step.items()},
        **extra,
    })  # fmt: skip


def load_composed(overrides: list[str]) -> Optional[dict]:
    """The ``algorithm`` and ``model`` nodes of the project's config composed with ``overrides``
    (e.g. ``["algorithm=irm", "data=cmnist"]``: conf/algorithm plus conf/tuned), as plain dicts."""
    try:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        import metairm_pl.config_schema  # noqa: F401  (registers the schemas)
        from metairm_pl.resolvers import register_resolvers

        register_resolvers()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        return {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("algorithm", "model")}
    except Exception:  # noqa: BLE001 - a config that no longer composes only disables the cross-check
        return None
