"""Parsers for the on-disk formats, each turning bytes into uint8 arrays or a clear ``NinError``.

The CIFAR files are pickles: they are read with an unpickler that admits only the types the format
uses, so a tampered file cannot run code. IDX (MNIST) files are checked for their magic number and
size; SVHN .mat files for their keys and shapes.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import NinError

# (module, name) pairs a CIFAR pickle may reference: numpy arrays and their dtypes, nothing else.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2; it only encodes a string
}
_IDX_UINT8 = 0x08


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):  # numpy 2 moved numpy.core to numpy._core
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    """A CIFAR batch file as a dict with str keys."""
    try:
        with open(path, "rb") as handle:
            content = _RestrictedUnpickler(handle, encoding="latin1").load()
    except Exception as error:  # the unpickler builds numpy objects only: any error means a bad file
        raise NinError(f"{path} is not a readable CIFAR pickle ({error}); delete it and download again") from None
    if not isinstance(content, dict):
        raise NinError(f"{path} is not a CIFAR batch: expected a dict, found {type(content).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in content.items()}


def cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) from one CIFAR python batch file."""
    batch = read_pickle(path)
    for key in ("data", label_key):
        if key not in batch:
            raise NinError(f"{path} is not a CIFAR batch: it has no {key!r} entry")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise NinError(f"{path}: expected 'data' as uint8 (N, 3072), found {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise NinError(f"{path}: expected {data.shape[0]} integer labels, found {labels.dtype} {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def cifar_meta(path: Path, names_key: str) -> list[str]:
    meta = read_pickle(path)
    names = meta.get(names_key)
    if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
        raise NinError(f"{path}: expected a list of class names under {names_key!r}")
    return [n.decode() if isinstance(n, bytes) else n for n in names]


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (MNIST's format, plain or .gz) holding uint8 data with ``ndim`` dimensions."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise NinError(f"{path} cannot be read ({error}); delete it and download again") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:3] != bytes([0, 0, _IDX_UINT8]) or raw[3] != ndim:
        found = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise NinError(f"{path} is not an IDX file of {ndim}-d uint8 data: "
                       f"expected magic 00 00 08 {ndim:02x}, found {found}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise NinError(f"{path} is truncated or padded: header says {dims} = {expected} bytes, "
                       f"file holds {len(raw) - header}; delete it and download again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()  # writable


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels 0..9 from an SVHN *_32x32.mat file (label 10 means digit 0)."""
    from scipy.io import loadmat  # imported here: only SVHN needs scipy

    try:
        mat = loadmat(io.BytesIO(path.read_bytes()), variable_names=["X", "y"])
    except Exception as error:  # scipy raises many types (ValueError, TypeError, MatReadError...)
        raise NinError(f"{path} is not a readable .mat file ({type(error).__name__}: {error})") from None
    if "X" not in mat or "y" not in mat:
        raise NinError(f"{path} is not an SVHN file: expected the variables 'X' and 'y', "
                       f"found {sorted(k for k in mat if not k.startswith('__'))}")
    images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != labels.shape[0]:
        raise NinError(f"{path}: expected X as (32, 32, 3, N) and y as (N, 1), "
                       f"found {images.shape} and {mat['y'].shape}")
    if images.dtype != np.uint8 or labels.size and (labels.min() < 1 or labels.max() > 10):
        raise NinError(f"{path}: expected uint8 images and labels 1..10")
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), (labels % 10).astype(np.int64)
