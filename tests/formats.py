"""Writers for the real on-disk formats of every data set (tiny files, for the tests)."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_NAMES = [f"class{i:02d}" for i in range(100)]


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote the CIFAR files: a bytes object (a Python 2 str) is a
    BINSTRING, not Python 3's ``_codecs.encode(...)`` call."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    # the real files were written with numpy 1.x, whose arrays live in numpy.core
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(py2_pickle(obj))


def cifar_arrays(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, num_classes, n)]


def write_cifar10(root: Path, n: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    """ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; returns each batch's arrays."""
    folder = root / "cifar-10-batches-py"
    batches = {}
    for seed, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_arrays(n, 10, seed)
        write_pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                     b"filenames": [b"image.png"] * n})
        batches[name] = (data, labels)
    # Python 2 str names: written as bytes by the Python 2 style pickler, read back as str
    write_pickle(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_NAMES],
                                           b"num_cases_per_batch": n, b"num_vis": 3072})
    return batches


def write_cifar100(root: Path, n: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-100-python"
    splits = {}
    for seed, name in enumerate(["train", "test"]):
        data, fine = cifar_arrays(n, 100, seed)
        write_pickle(folder / name, {b"filenames": [b"image.png"] * n, b"batch_label": name.encode(),
                                     b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine], b"data": data})
        splits[name] = (data, fine)
    write_pickle(folder / "meta", {b"fine_label_names": [c.encode() for c in CIFAR100_NAMES],
                                   b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    return splits


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """MNIST's IDX format: magic 00 00 08 NDIM, NDIM big-endian uint32 sizes, then the uint8 data."""
    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_mnist(folder: Path, gz: bool = False, n: int = 5, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four IDX files of MNIST / Fashion-MNIST in ``folder``; returns {prefix: (images, labels)}."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    arrays = {}
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        arrays[prefix] = (images, labels)
    return arrays


def write_svhn(root: Path, split: str = "train", n: int = 4, y_dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """ROOT/SPLIT_32x32.mat with X (32, 32, 3, N) uint8 and y (N, 1) in 1..10, 10 meaning the digit 0."""
    X = np.random.default_rng(0).integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) + 9) % 10 + 1  # 10, 1, 2, ...
    root.mkdir(parents=True, exist_ok=True)
    savemat(root / f"{split}_32x32.mat", {"X": X, "y": y.reshape(n, 1).astype(y_dtype)})
    return X, y


def write_image(path: Path, image: Image.Image, **save_args) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_args)


def palette_image(size, index: int, colour) -> Image.Image:
    image = Image.new("P", size, index)
    image.putpalette([0, 0, 0] * index + list(colour))
    return image


def bump_mtime(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
