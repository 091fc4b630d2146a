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
        raise NinError(f"{path} is not a readable CIFAR pickle ({type(error).__name__}: {error}); "
                       "delete it and download again") from None
    if not isinstance(content, dict):
        raise NinError(f"{path} is not a CIFAR batch: expected a dict, found {type(content).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in content.items()}


def cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) from one CIFAR python batch file."""
    batch = read_pickle(path)
    for key in ("data", label_key):
        if key not in batch:
            raise NinError(f"{path} is not a CIFAR batch: it has no {key!r} entry")
    try:
        data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
    except (ValueError, TypeError) as error:  # ragged or mixed lists
        raise NinError(f"{path} is not a CIFAR batch: its entries are not arrays ({error})") from None
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

    raw = path.read_bytes()
    problem = mat5_problem(raw)  # scipy can crash the process (SIGSEGV) on some damaged files
    if problem:
        raise NinError(f"{path} is not a readable .mat file ({problem}); delete it and download again")
    try:
        mat = loadmat(io.BytesIO(raw), variable_names=["X", "y"])
    except Exception as error:  # scipy raises many types (ValueError, TypeError, MatReadError...)
        raise NinError(f"{path} is not a readable .mat file ({type(error).__name__}: {error})") from None
    if "X" not in mat or "y" not in mat:
        raise NinError(f"{path} is not an SVHN file: expected the variables 'X' and 'y', "
                       f"found {sorted(k for k in mat if not k.startswith('__'))}")
    images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != labels.shape[0]:
        raise NinError(f"{path}: expected X as (32, 32, 3, N) and y as (N, 1), "
                       f"found {images.shape} and {mat['y'].shape}")
    if labels.dtype.kind not in "uif" or images.dtype != np.uint8 or labels.size and (
            labels.min() < 1 or labels.max() > 10):
        raise NinError(f"{path}: expected uint8 images and labels 1..10")
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), (labels % 10).astype(np.int64)


# --- MAT-file level 5 structure check (before scipy reads it) ----------------------------------------

_MAT_TYPES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8,  # numeric: item size
              14: 0, 15: 0, 16: 1, 17: 2, 18: 4}  # matrix, compressed, utf8/16/32
_MAT_MATRIX, _MAT_COMPRESSED = 14, 15
_NUMERIC_CLASSES = range(6, 16)  # mxDOUBLE_CLASS .. mxUINT64_CLASS


def mat5_problem(raw: bytes) -> str | None:
    """What is wrong with a MAT-file (level 5) at the level of its element tags, or None. Checks every
    element's type and size against the file, recursing into matrices and compressed elements."""
    if len(raw) < 128 or raw[126:128] not in (b"IM", b"MI"):
        return "no MAT-file version 5 header"
    order = "<" if raw[126:128] == b"IM" else ">"
    try:
        return _elements_problem(raw[128:], order, depth=0)
    except (struct.error, zlib.error, ValueError) as error:
        return f"damaged element ({error})"


def _elements_problem(data: bytes, order: str, depth: int, in_matrix: bool = False) -> str | None:
    offset, parts = 0, []
    while offset < len(data):
        if len(data) - offset < 8:
            return "a truncated element tag"
        first, second = struct.unpack_from(order + "II", data, offset)
        small = first >> 16
        kind, size, start = (first & 0xFFFF, small, offset + 4) if small else (first, second, offset + 8)
        if kind not in _MAT_TYPES or (small and size > 4) or start + size > len(data):
            return f"an element of type {kind} and {size} bytes at offset {offset}"
        body = data[start:start + size]
        if kind == _MAT_COMPRESSED and depth < 2:
            problem = _elements_problem(zlib.decompress(body), order, depth + 1)
        elif kind == _MAT_MATRIX and depth < 4:
            problem = _elements_problem(body, order, depth + 1, in_matrix=True)
        else:
            problem = None
        if problem:
            return problem
        parts.append((kind, body))
        offset = offset + 8 if small else start + (size if kind == _MAT_COMPRESSED else -(-size // 8) * 8)
    return _matrix_problem(parts, order) if in_matrix else None


def _matrix_problem(parts: list[tuple[int, bytes]], order: str) -> str | None:
    """A numeric matrix: flags, dimensions, name, then data whose size matches the dimensions."""
    if len(parts) < 3 or parts[0][0] != 6 or len(parts[0][1]) < 4 or parts[1][0] != 5:
        return "a matrix without its flags and dimensions"
    matrix_class = struct.unpack_from(order + "I", parts[0][1])[0] & 0xFF
    dims = struct.unpack(order + f"{len(parts[1][1]) // 4}i", parts[1][1][:len(parts[1][1]) // 4 * 4])
    if any(d < 0 for d in dims):
        return f"negative dimensions {dims}"
    if matrix_class in _NUMERIC_CLASSES:
        count = int(np.prod(dims, dtype=np.int64))
        for kind, body in parts[3:]:
            if _MAT_TYPES[kind] == 0 or len(body) != count * _MAT_TYPES[kind]:
                return f"matrix data of {len(body)} bytes for dimensions {dims}"
    return None
