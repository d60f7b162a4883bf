"""MNIST's raw files in torchvision's layout (``<data_dir>/MNIST/raw``): names, official md5,
the IDX format, and checking and installing the four files (md5-verified, atomic)."""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from metairm_pl.errors import DataCorruptedError
from metairm_pl.files import atomic_write_bytes

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

IMAGE_SIDE = 28

_IDX_UBYTE_TYPE_CODE = 0x08
# (resolved path, size, mtime_ns) -> md5 hex, so repeated loads in one process hash once.
_MD5_CACHE: dict[tuple[str, int, int], str] = {}


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
class RawCheck:
    missing: tuple[str, ...]
    mismatched: tuple[str, ...]  # one sentence per file with a wrong md5

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched


def check_raw_files(raw_dir: Path, expected_md5: Mapping[str, str]) -> RawCheck:
    missing, mismatched = [], []
    for name in RAW_FILE_NAMES:
        path = raw_dir / name
        if not path.is_file():
            missing.append(name)
            continue
        actual = file_md5(path)
        if actual != expected_md5[name]:
            mismatched.append(f"{path} has md5 {actual} but expected {expected_md5[name]}, so it was not used")
    return RawCheck(tuple(missing), tuple(mismatched))


def describe_raw_check(raw_dir: Path, check: RawCheck) -> str:
    parts = []
    if check.missing:
        parts.append(f"missing in {raw_dir}: {', '.join(check.missing)}")
    parts.extend(check.mismatched)
    return "; ".join(parts)


def install_raw_files(raw_dir: Path, contents_by_name: Mapping[str, bytes], expected_md5: Mapping[str, str]) -> None:
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
