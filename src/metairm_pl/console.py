"""What a run shows on the console: a progress bar that counts steps, no third-party noise."""

from __future__ import annotations

import logging
import warnings

from pytorch_lightning.callbacks import RichProgressBar

LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, labelled with the step budget.

    Training here is step-based (the full-batch loader never ends an epoch, ``max_epochs``
    is -1), so Lightning's own label reads ``Epoch 0/-2``.  Overrides a private hook of
    Lightning 2.6 (``_get_train_description``); pyproject.toml bounds the version.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        return f"step (of {self.trainer.max_steps})"


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


_quieted = False


def quiet_third_party() -> None:
    """Hide what does not concern this project's users: Lightning's advertisement for its
    cloud logger, its TPU line and its "`Trainer.fit` stopped: `max_steps` reached" (the run
    prints its own summary), and the ``LeafSpec`` deprecation warning its pytree helper
    raises under torch 2.14, and its advice to use ``srun`` on a machine that merely has SLURM."""
    global _quieted
    if _quieted:
        return
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # On a machine with SLURM's client tools but outside a job (a login node, tests/slurm/cluster.sh):
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system but is not used.*")
    logging.getLogger(LIGHTNING_INFO_LOGGER).addFilter(
        _DropMessages("litlogger", "TPU available", "`Trainer.fit` stopped: `max_steps=")
    )
    _quieted = True


def describe_tuned_settings(choices: dict[str, str | None], tuned_exists: bool) -> str:
    """Which ``conf/tuned/<algorithm>/<data>.yaml`` a run uses, from Hydra's group choices.

    The pair's file sets the model width, the step budget and callback values tuned for it; a
    pair without one (Hydra records the choice of an ``optional`` default even when no file
    matched) runs on the method's arguments and the groups' defaults."""
    tuned = choices.get("tuned")
    if tuned and tuned_exists:
        return f"settings: conf/tuned/{tuned}.yaml"
    return (
        f"settings: no conf/tuned/{tuned}.yaml: the method's arguments with the defaults of "
        f"model={choices.get('model')}, trainer={choices.get('trainer')}, callbacks={choices.get('callbacks')}"
    )


def tuned_config_exists(choice: str | None) -> bool:
    """Whether the running Hydra app's config search path has ``tuned/<choice>``."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    if not choice or "/" not in choice:
        return False
    group, name = choice.rsplit("/", 1)
    options = GlobalHydra.instance().config_loader().get_group_options(f"tuned/{group}", ObjectType.CONFIG)
    return name in options
