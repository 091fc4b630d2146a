"""The Caffe reader (nin.caffe) on hostile files: sizes that would overflow or allocate gigabytes, fields sent
with another wire type, nesting that would exhaust the stack. Any input gives a NinError (one line from the
command), never another exception and never a large allocation; hypothesis mutates real files and draws
random bytes to look for the cases not listed here."""
from __future__ import annotations

import functools
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caffe_files import field, mean_binaryproto, random_blobs, varint, write_caffemodel, write_prototxt
from nin.caffe import read_caffemodel, read_mean, read_prototxt
from nin.cli import main
from nin.errors import NinError

TINY = [("conv1", 3, 1, 1, (4, 3, 2), ("max", 3, 2))]  # one stage of three small convolutions
MAX_BYTES = 32 * 2 ** 20  # what reading a file of a few kilobytes may allocate at its peak


def raw(number: int, wire: int, payload: bytes) -> bytes:
    """A field with the wire type given and the payload as is (field() writes well-formed ones)."""
    return varint(number << 3 | wire) + payload


def layer_with_blob(blob: bytes) -> bytes:
    """A NetParameter holding one LayerParameter (field 100: name 1, type 2, blobs 7) with this blob."""
    return field(100, field(1, b"conv1") + field(2, b"Convolution") + field(7, blob))


def floats(count: int) -> bytes:
    return field(5, np.zeros(count, "<f4").tobytes())


HOSTILE_MODELS = {
    "dims-2^32-by-2^32": layer_with_blob(field(7, field(1, varint(2 ** 32) + varint(2 ** 32))) + floats(4)),
    "legacy-dims-2^31": layer_with_blob(b"".join(field(n, d, wire=0) for n, d in zip((1, 2, 3, 4), (2 ** 31, 1, 1, 2)))
                                        + floats(2)),
    "64-dims": layer_with_blob(field(7, field(1, varint(1) * 64)) + floats(1)),
    "packed-floats-of-5-bytes": layer_with_blob(field(5, b"\0" * 5)),
    "doubles-of-12-bytes": layer_with_blob(field(8, b"\0" * 12)),
    "name-as-fixed64": field(100, raw(1, 1, b"\xff" * 8)),
    "type-as-fixed32": field(100, field(1, b"conv1") + raw(2, 5, b"\xff" * 4)),
    "float-as-2^40-varint": layer_with_blob(field(5, 2 ** 40, wire=0)),
    "double-as-fixed32": layer_with_blob(raw(8, 5, b"\0" * 4)),
    "shape-as-fixed64": layer_with_blob(field(7, raw(1, 1, b"\xff" * 8)) + floats(1)),
    "length-past-the-end": field(100, b"")[:-1] + varint(2 ** 62),
    "group-wire-type": raw(100, 3, b""),
    "name-not-utf8": field(100, field(1, b"\xff\xfe")),
}


@pytest.mark.parametrize("content", HOSTILE_MODELS.values(), ids=HOSTILE_MODELS.keys())
def test_a_hostile_caffemodel_is_a_nin_error(content, tmp_path):
    path = tmp_path / "hostile.caffemodel"
    path.write_bytes(content)
    with pytest.raises(NinError, match="not a readable Caffe model|holds no Caffe layers"):
        within_memory(read_caffemodel, path)


def test_a_prototxt_nested_5000_deep_is_a_nin_error(tmp_path):
    path = tmp_path / "deep.prototxt"
    path.write_text("layer { " * 5000 + "}" * 5000)
    with pytest.raises(NinError, match="nested more than"):
        read_prototxt(path)


@pytest.mark.parametrize("content", [
    field(7, field(1, varint(2 ** 40) + varint(2 ** 40) + varint(3))) + floats(4),  # a huge shape
    mean_binaryproto((104, 117, 123))[:7],  # 7 bytes
    field(7, field(1, varint(2) + varint(3) + varint(1) + varint(1))) + floats(6),  # two mean images
], ids=["huge-shape", "7-bytes", "two-images"])
def test_a_hostile_mean_file_is_one_line(content, tmp_path, capsys):
    (tmp_path / "mean.binaryproto").write_bytes(content)
    model = tmp_path / "cifar10.caffemodel"
    write_caffemodel(model, TINY, random_blobs(TINY, 3))
    code = main(["convert", "caffe", str(model), "--model", "nin_cifar10", "--mean-file",
                 str(tmp_path / "mean.binaryproto"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("nin: error: ") and len(err.strip().splitlines()) == 1, err
    assert "mean" in err and not list(tmp_path.glob("out*"))


# --- fuzzing -----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def real_files() -> dict[str, bytes]:
    """A small caffemodel of every generation, a prototxt and a mean file, as Caffe writes them."""
    files = {}
    with tempfile.TemporaryDirectory() as folder:
        for generation in ("new", "v1", "v0"):
            path = Path(folder) / f"{generation}.caffemodel"
            write_caffemodel(path, TINY, random_blobs(TINY, 3), generation=generation)
            files[f"{generation}.caffemodel"] = path.read_bytes()
        write_prototxt(Path(folder) / "net.prototxt", TINY, mean_value=(104, 117, 123), scale=0.5)
        files["net.prototxt"] = (Path(folder) / "net.prototxt").read_bytes()
    files["mean.binaryproto"] = mean_binaryproto((104, 117, 123))
    return files


@st.composite
def mutated(draw, kinds: tuple[str, ...]) -> bytes:
    """A real file with a few bytes changed, cut, inserted or repeated; or random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    data = bytearray(real_files()[draw(st.sampled_from(kinds))])
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["set", "cut", "insert", "repeat"]))
        if action == "set" and where < len(data):
            data[where] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[where:where + draw(st.integers(1, 64))]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=12))
        else:
            data[where:where] = data[where:where + draw(st.integers(1, 64))] * draw(st.integers(2, 5))
    return bytes(data)


def within_memory(read, path):
    """``read(path)``, checking that it never held more than MAX_BYTES at once."""
    tracemalloc.start()
    try:
        return read(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MAX_BYTES, f"reading {path.stat().st_size} bytes allocated {peak} bytes"


FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.parametrize("read, kinds", [
    (read_caffemodel, ("new.caffemodel", "v1.caffemodel", "v0.caffemodel")),
    (read_prototxt, ("net.prototxt",)),
    (read_mean, ("mean.binaryproto",)),
], ids=["caffemodel", "prototxt", "mean"])
def test_any_mutated_or_random_file_reads_or_is_a_nin_error(read, kinds, tmp_path):
    path = tmp_path / "file"

    @FUZZ
    @given(content=mutated(kinds))
    def check(content):
        path.write_bytes(content)
        try:
            within_memory(read, path)
        except NinError as error:
            assert "\n" not in str(error)

    check()
