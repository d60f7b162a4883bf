"""Numerical precision of training: ``trainer.precision``.

* ``32-true``: everything in float32 (bit-identical to the official IRM loop on CPU).
* ``bf16-mixed``: Lightning's autocast runs the network's matmuls (``nn.Linear``, and
  ``torch.func.functional_call`` of the same layers in Meta-IRM's inner loop) in bfloat16;
  parameters, gradients, optimizer state, losses, penalties, the IRMv1 dummy-scale
  gradient, Meta-IRM's inner updates, meta-losses and σ, and L2 stay float32 (the algorithms
  cast logits to float32 before any loss, see :mod:`metairm_pl.algorithms.base`).
  Evaluation always runs in float32, whatever the training precision. The MLP casts a
  recurring full-batch input to bf16 once, not at every step (same numbers, 15-19% faster:
  :mod:`metairm_pl.models.input_cast`).

bf16 is fast only where the hardware multiplies bf16 natively (x86 CPUs with the
``avx512_bf16`` or ``amx_bf16`` flag, Arm CPUs with ``bf16``, CUDA GPUs from Ampere on);
elsewhere it is emulated, and :func:`check_precision` warns once.

**The default follows the evidence** (:func:`default_precision`, the config's
``${default_precision:...}``): ``bf16-mixed`` for a method whose row in the committed parity
table (``metairm_pl/evidence/precision_parity.md``, regenerated from the records in
``results/`` by ``bench/precision_parity.py``; read by
:func:`metairm_pl.algorithms.registry.bf16_parity`) shows 10 paired seeds (0-9), bf16-mixed
vs 32-true, within 1 point of p0.9 accuracy on average, on data of that row's family
(``cmnist``: every Colored MNIST variant, the same MLP on the same digit images; not
PunctuatedSST-2's bag-of-words model), on hardware with native bf16; ``32-true`` otherwise.
``trainer.precision=32-true`` is the exact-reproduction switch.
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import torch

from metairm_pl.algorithms.registry import bf16_parity, parity_rows
from metairm_pl.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("32-true", "bf16-mixed")
FP32, BF16 = PRECISIONS

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (AVX-512 BF16, AMX), Arm (FEAT_BF16)


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def native_bf16(accelerator: str) -> bool | None:
    """Whether ``accelerator`` (``cpu`` or ``gpu``/``cuda``) multiplies bf16 natively;
    None when this cannot be told (no /proc/cpuinfo, e.g. macOS; ``accelerator=auto``)."""
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            return False
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no including_emulation: bf16 is native from Ampere (8.0) on
            return torch.cuda.get_device_capability()[0] >= 8
    if accelerator != "cpu":  # "auto" and the like: which device Lightning picks is not known here
        return None
    flags = cpu_flags()
    if not flags:
        return None
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def default_precision(algorithm: str, data: str, accelerator: str = "cpu") -> str:
    """``trainer.precision`` when the command line names none: ``bf16-mixed`` if
    ``algorithm`` has shown parity on data of ``data``'s family (:func:`bf16_parity`) and
    ``accelerator`` multiplies bf16 natively; else ``32-true``."""
    shown = bf16_parity(algorithm, data) is not None
    return BF16 if shown and native_bf16(accelerator) is True else FP32


def describe_precision(precision: str, algorithm: str, data: str, accelerator: str = "cpu") -> str:
    """One line saying which precision a run uses and why (the console's ``precision:``)."""
    default = default_precision(algorithm, data, accelerator)
    if precision != default:
        return f"precision: {precision} (set explicitly; the default here is {default})"
    row = parity_rows().get(algorithm)
    if precision == BF16:
        return (
            f"precision: {BF16} (default: {algorithm} has bf16 parity on {row.data}, "
            f"{row.describe()}, and this {accelerator} has native bf16; "
            f"trainer.precision={FP32} reproduces the float32 runs exactly)"
        )
    if row is None:
        why = f"{algorithm} has no bf16 parity evidence yet"
    elif not row.holds:
        why = f"{algorithm}'s paired bf16/fp32 runs do not show parity ({row.describe()})"
    elif bf16_parity(algorithm, data) is None:
        why = f"{algorithm}'s bf16 parity was shown on {row.data}, not on {data}"
    elif native_bf16(accelerator) is None:
        why = f"whether this {accelerator} has native bf16 cannot be told"
    else:
        why = f"this {accelerator} has no native bf16"
    return f"precision: {FP32} (default: {why})"


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def check_precision(precision: object, accelerator: str = "cpu") -> str:
    """Validate ``trainer.precision`` and return it; warn once when ``bf16-mixed`` would
    run on hardware without native bf16 (slower than float32 there)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not supported: allowed values are {list(PRECISIONS)}.")
    if precision == "bf16-mixed" and native_bf16(accelerator) is False:
        where = "this GPU" if accelerator in ("gpu", "cuda") else f"this CPU ({platform.processor() or 'no bf16 flag'})"
        _warn_once(
            f"trainer.precision=bf16-mixed: {where} has no native bf16 matmul (no avx512_bf16/amx_bf16/bf16 "
            "flag, or a GPU before Ampere), so bf16 is emulated and slower than trainer.precision=32-true."
        )
    return str(precision)
