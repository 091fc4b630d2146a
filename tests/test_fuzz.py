"""Every on-disk reader, fed random bytes and damaged valid files, gives a result or a NinError: never
another exception, never a crash, never a hang.

Valid files are written here in each real format (a CIFAR pickle, IDX plain and gzipped, an SVHN .mat,
images in several formats and modes, a nin checkpoint), then damaged by bit flips, truncation,
overwritten and inserted bytes. The readers run in a child process, so that a reader which crashes
the interpreter (a segmentation fault in a C extension) or hangs fails one test instead of the whole
session. Hypothesis runs derandomized, so every run tries the same inputs.
"""
from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.io import savemat

from nin.checkpoint import FORMAT, VERSION, load_checkpoint
from nin.data import readers
from nin.data.images import load_image

MAX_BYTES = 64 * 1024
SECONDS_PER_FILE = 30  # any reader taking longer on a file this small counts as a hang (generous: busy CI)

# no shrinking: after a crash every attempt would restart the child process
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from nin.errors import NinError
from test_fuzz import FORMATS
for line in sys.stdin:
    name, path = line.rstrip("\\n").split("\\t")
    try:
        FORMATS[name][2](Path(path))
        reply = "result"
    except NinError:
        reply = "NinError"
    except Exception as error:
        reply = f"{type(error).__module__}.{type(error).__qualname__}: {error}"
    print(reply.replace("\\n", " "), flush=True)
"""


class ReaderProcess:
    """Reads files with nin's readers in a child process and answers "result", "NinError", the other
    exception raised, "crash: ..." or "hang: ..."; restarts the child after a crash or a hang."""

    def __init__(self):
        self.process = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-c", CHILD, str(Path(__file__).parent)], text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def read(self, name: str, path: Path) -> str:
        starting = self.process is None or self.process.poll() is not None
        if starting:
            self.start()
        self.process.stdin.write(f"{name}\t{path}\n")
        self.process.stdin.flush()
        timeout = SECONDS_PER_FILE + (60 if starting else 0)  # a fresh child first imports torch
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return f"hang: no answer after {SECONDS_PER_FILE} s"
        answer = self.process.stdout.readline().strip()
        if not answer:
            code = self.process.wait(timeout=30)
            self.process = None
            return f"crash: the reader died with {signal.Signals(-code).name if code < 0 else f'exit code {code}'}"
        return answer

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.communicate()
            self.process = None


@pytest.fixture(scope="module")
def reader():
    process = ReaderProcess()
    yield process
    process.stop()


# --- valid files in each format -------------------------------------------------------------------------

def cifar_pickle() -> bytes:
    rng = np.random.default_rng(0)
    batch = {b"batch_label": b"test batch", b"labels": [3, 1], b"data": rng.integers(0, 256, (2, 3072), np.uint8),
             b"filenames": [b"a.png", b"b.png"]}
    return pickle.dumps(batch, protocol=2)


def cifar_meta() -> bytes:
    return pickle.dumps({b"label_names": [b"airplane", b"automobile", b"bird"], b"num_vis": 3072}, protocol=2)


def idx_images() -> bytes:
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28), np.uint8)
    return bytes([0, 0, 8, 3]) + struct.pack(">3I", *images.shape) + images.tobytes()


def svhn_mat() -> bytes:
    stream = io.BytesIO()
    X = np.random.default_rng(2).integers(0, 256, (32, 32, 3, 2), np.uint8)
    savemat(stream, {"X": X, "y": np.array([[10.0], [3.0]])})
    return stream.getvalue()


def image_bytes(image: Image.Image, format: str, **options) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format=format, **options)
    return stream.getvalue()


def picture(mode: str = "RGB", size=(24, 20)) -> Image.Image:
    pixels = np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3), np.uint8)
    return Image.fromarray(pixels).convert(mode)


def checkpoint() -> bytes:
    stream = io.BytesIO()
    weight = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    torch.save({"format": FORMAT, "version": VERSION, "model_name": "nin_mnist", "epoch": 1, "step": 4,
                "model": {"weight": weight, "bias": torch.zeros(4)}, "classes": ["a", "b"],
                "model_kwargs": {"num_classes": 2}, "optimizer": {}, "state": {}, "rng": {}, "config": {},
                "input": {"size": 28, "channels": 1, "dataset": "folder"},
                "normalization": {"mean": [0.5], "std": [0.25]}}, stream)
    return stream.getvalue()


# name: (file name, bytes of a valid file, reader)
FORMATS = {
    "cifar-batch": ("data_batch_1", cifar_pickle, lambda p: readers.cifar_batch(p, "labels")),
    "cifar-meta": ("batches.meta", cifar_meta, lambda p: readers.cifar_meta(p, "label_names")),
    "idx": ("train-images-idx3-ubyte", idx_images, lambda p: readers.read_idx(p, 3)),
    "idx-gz": ("train-images-idx3-ubyte.gz", lambda: gzip.compress(idx_images()), lambda p: readers.read_idx(p, 3)),
    "svhn-mat": ("train_32x32.mat", svhn_mat, readers.read_svhn_mat),
    "png": ("image.png", lambda: image_bytes(picture(), "PNG"), lambda p: load_image(p, 16, 3)),
    "png-rgba": ("image.png", lambda: image_bytes(picture("RGBA"), "PNG"), lambda p: load_image(p, 16, 3)),
    "png-palette": ("image.png", lambda: image_bytes(picture("P"), "PNG"), lambda p: load_image(p, 16, 1)),
    "png-16-bit": ("image.png", lambda: image_bytes(Image.fromarray(
        (np.arange(400, dtype=np.uint16) * 160).reshape(20, 20)), "PNG"), lambda p: load_image(p, 16, 1)),
    "jpeg": ("image.jpg", lambda: image_bytes(picture(), "JPEG", quality=80), lambda p: load_image(p, 16, 3)),
    "gif": ("image.gif", lambda: image_bytes(picture("P"), "GIF"), lambda p: load_image(p, 16, 3)),
    "bmp": ("image.bmp", lambda: image_bytes(picture(), "BMP"), lambda p: load_image(p, 16, 3)),
    "tiff": ("image.tiff", lambda: image_bytes(picture(), "TIFF"), lambda p: load_image(p, 16, 3)),
    "webp": ("image.webp", lambda: image_bytes(picture(), "WEBP"), lambda p: load_image(p, 16, 3)),
    "checkpoint": ("checkpoint.pt", checkpoint, load_checkpoint),
}


@functools.cache
def valid_file(name: str) -> bytes:
    content = FORMATS[name][1]()
    assert len(content) < MAX_BYTES
    return content


def write(folder: Path, name: str, content: bytes) -> Path:
    path = folder / FORMATS[name][0]
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("name", FORMATS)
def test_the_valid_files_are_read(tmp_path, reader, name):
    assert reader.read(name, write(tmp_path, name, valid_file(name))) == "result"


# --- damage -------------------------------------------------------------------------------------------------

damage = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, MAX_BYTES * 8), st.just(b"")),
    st.tuples(st.just("truncate"), st.integers(0, MAX_BYTES), st.just(b"")),
    st.tuples(st.just("overwrite"), st.integers(0, MAX_BYTES), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.integers(0, MAX_BYTES), st.binary(min_size=1, max_size=256)),
), min_size=1, max_size=4)


def damaged(content: bytes, edits) -> bytes:
    data = bytearray(content)
    for kind, position, payload in edits:
        if not data:
            break
        if kind == "flip":
            bit = position % (8 * len(data))
            data[bit // 8] ^= 1 << (bit % 8)
        elif kind == "truncate":
            data = data[: position % len(data)]
        elif kind == "overwrite":
            start = position % len(data)
            data[start:start + len(payload)] = payload[: len(data) - start]
        else:
            start = position % (len(data) + 1)
            data[start:start] = payload
    return bytes(data[:MAX_BYTES])


SVHN_CRASH = [("flip", 1485, b"")]  # the type of X's data element becomes 0x2002: scipy's loadmat crashes
TIFF_TYPE_ERROR = [("flip", 576, b"")]  # StripOffsets becomes a RATIONAL: PIL raises TypeError


@pytest.mark.parametrize("name", FORMATS)
@FUZZ
@given(edits=damage)
@example(edits=SVHN_CRASH)
@example(edits=TIFF_TYPE_ERROR)
def test_a_damaged_file_gives_a_result_or_a_nin_error(tmp_path, reader, name, edits):
    answer = reader.read(name, write(tmp_path, name, damaged(valid_file(name), edits)))
    assert answer in ("result", "NinError")


@pytest.mark.parametrize("name", FORMATS)
@settings(FUZZ, max_examples=25)
@given(content=st.binary(max_size=4096))
def test_random_bytes_give_a_nin_error(tmp_path, reader, name, content):
    if name == "idx-gz":
        content = gzip.compress(content)  # random bytes inside a valid gzip stream
    assert reader.read(name, write(tmp_path, name, content)) == "NinError"


# --- well-formed containers holding the wrong things -----------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12)


@FUZZ
@given(data=values, labels=values)
@example(data=np.zeros((2, 3072), np.uint8), labels=[[1], [2, 3]])  # ragged labels
@example(data=[[1, 2], [3]], labels=[1, 2])  # ragged data
def test_a_cifar_pickle_with_odd_contents_gives_a_result_or_a_nin_error(tmp_path, reader, data, labels):
    content = pickle.dumps({b"data": data, b"labels": labels}, protocol=2)
    assert reader.read("cifar-batch", write(tmp_path, "cifar-batch", content)) in ("result", "NinError")


@FUZZ
@given(version=values, format=st.sampled_from([FORMAT, "other", None]))
@example(version="1", format=FORMAT)
@example(version=None, format=FORMAT)
def test_a_checkpoint_with_odd_header_values_gives_a_result_or_a_nin_error(tmp_path, reader, version, format):
    stream = io.BytesIO()
    torch.save({"format": format, "version": version, "model": {}}, stream)
    assert reader.read("checkpoint", write(tmp_path, "checkpoint", stream.getvalue())) in ("result", "NinError")


svhn_labels = st.sampled_from([
    np.array([[1.0], [10.0]]), np.array([[0], [11]], np.uint8), np.array([[1.5], [np.nan]]),
    np.array([["a"], ["b"]]), np.array([[1 + 2j], [3]]), np.array([[True], [False]]),
    np.array(["ab", "cd"]), np.zeros((2, 0)), np.array([[1e300], [-1e300]]),
])


@FUZZ
@given(labels=svhn_labels, count=st.integers(0, 3))
@example(labels=np.array([["a"], ["b"]]), count=2)  # a MATLAB char array
@example(labels=np.array([[1 + 2j], [3]]), count=2)  # complex labels
def test_an_svhn_file_with_odd_labels_gives_a_result_or_a_nin_error(tmp_path, reader, labels, count):
    stream = io.BytesIO()
    savemat(stream, {"X": np.zeros((32, 32, 3, count), np.uint8), "y": labels})
    assert reader.read("svhn-mat", write(tmp_path, "svhn-mat", stream.getvalue())) in ("result", "NinError")
