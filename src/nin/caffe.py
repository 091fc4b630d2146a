"""Reading Caffe's files without Caffe: a ``.caffemodel`` (a NetParameter protobuf) as a list of layers
with their weights, and a mean ``.binaryproto`` (a BlobProto), from the protobuf wire format; a
``.prototxt`` (the same NetParameter in protobuf's text format, without weights) from its text.

Caffe's schema (caffe.proto) has three generations of layers, all read here:
- ``layer`` (field 100, LayerParameter: name 1, type 2 as text, blobs 7), Caffe from 2015 on;
- ``layers`` (field 2, V1LayerParameter: name 4, type 5 as an enum, blobs 6), the 2014 files, the
  authors' NIN releases among them;
- V0, nested in a V1 entry (field 1, V0LayerParameter: name 1, type 2 as text, pool 11, blobs 50).
A BlobProto gives its shape as ``shape`` (field 7, BlobShape: dim 1) or the legacy num/channels/height/
width (fields 1-4), its values as ``data`` (5, float32) or ``double_data`` (8). Pooling parameters
(PoolingParameter: pool 1, 0 = MAX, 1 = AVE; global_pooling 12) say which pooling each layer does.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NinError

V1_TYPES = {4: "Convolution", 6: "Dropout", 14: "InnerProduct", 17: "Pooling", 18: "ReLU", 20: "Softmax",
            21: "SoftmaxWithLoss", 5: "Data", 1: "Accuracy", 15: "LRN", 12: "ImageData"}
POOL_KINDS = {0: "max", 1: "avg", 2: "stochastic"}
# where each generation keeps a layer's name, type, blobs and pooling parameters
LAYER_FIELDS = {"layer": (1, 2, 7, 121), "v1": (4, 5, 6, 19), "v0": (1, 2, 50, None)}
V0_POOL_FIELD = 11  # V0 keeps its pooling kind in the layer itself (an enum: MAX = 0, AVE = 1)
MAX_DIMS = 8  # a blob's dimensions: Caffe's own limit is 32, NIN's blobs have 4
MAX_DEPTH = 64  # messages nested in a prototxt: a network definition has 4 levels; Python's stack has ~1000


@dataclass
class Layer:
    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)  # float32, in the blob's own shape
    pool: str | None = None  # pooling layers: max | avg
    global_pool: bool = False


class WireError(ValueError):
    pass


def read_caffemodel(path: str | os.PathLike) -> list[Layer]:
    """The layers of a .caffemodel in file order (every generation of Caffe's format)."""
    data = _read(path)
    layers = []
    try:
        for number, wire, value in _fields(data):
            if number == 100 and wire == 2:
                layers.append(_layer(value, "layer"))
            elif number == 2 and wire == 2:
                layers.append(_v1_layer(value))
    except (WireError, UnicodeDecodeError) as error:
        raise NinError(f"{path} is not a readable Caffe model ({error})") from None
    if not layers:
        raise NinError(f"{path} holds no Caffe layers: expected a .caffemodel (a NetParameter protobuf)")
    return layers


def read_mean(path: str | os.PathLike) -> np.ndarray:
    """A mean ``.binaryproto`` (a BlobProto, e.g. Caffe's ilsvrc_2012_mean) as a float32 array (C, H, W)."""
    try:
        blob = _blob(_read(path))
    except WireError as error:
        raise NinError(f"{path} is not a readable Caffe mean file ({error})") from None
    if blob.ndim < 3 or blob.size == 0 or math.prod(blob.shape[:-3]) != 1:
        raise NinError(f"{path} holds a blob of shape {blob.shape}, not a mean image (channels, height, width)")
    return blob.reshape(blob.shape[-3:])


def _read(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise NinError(f"no file at {path}") from None
    except OSError as error:
        raise NinError(f"cannot read {path} ({error.strerror or error})") from None


def _v1_layer(data: bytes) -> Layer:
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:  # a V0 layer inside: the V0 fields hold everything
            return _layer(value, "v0")
    return _layer(data, "v1")


def _layer(data: bytes, generation: str) -> Layer:
    name_field, type_field, blobs_field, pooling_field = LAYER_FIELDS[generation]
    layer = Layer(name="", type="")
    for number, wire, value in _fields(data):
        if number == name_field and wire == 2:
            layer.name = bytes(value).decode()
        elif number == type_field and wire in (0, 2):  # an enum (V1) or a text (V0, later)
            layer.type = V1_TYPES.get(value, f"V1 type {value}") if wire == 0 else bytes(value).decode()
        elif number in (name_field, type_field):
            raise WireError(f"field {number} of a layer has wire type {wire}, not a name's or a type's")
        elif number == blobs_field and wire == 2:
            layer.blobs.append(_blob(value))
        elif number == pooling_field and wire == 2:
            layer.pool, layer.global_pool = _pooling(value)
        elif generation == "v0" and number == V0_POOL_FIELD and wire == 0:
            layer.pool = POOL_KINDS.get(value, f"kind {value}")
    if layer_kind(layer.type) in ("pooling", "pool") and layer.pool is None:
        layer.pool = "max"  # the default of every generation, which Caffe does not write
    return layer


def _pooling(data: bytes) -> tuple[str, bool]:
    kind, global_pool = "max", False
    for number, wire, value in _fields(data):
        if number == 1 and wire == 0:
            kind = POOL_KINDS.get(value, f"kind {value}")
        elif number == 12 and wire == 0:
            global_pool = bool(value)
    return kind, global_pool


def _blob(data: bytes) -> np.ndarray:
    legacy, shape = {}, []
    raw = {"<f4": bytearray(), "<f8": bytearray()}  # the values' bytes: a number each field would be an array each
    for number, wire, value in _fields(data):
        if number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = value
        elif number == 7 and wire == 2:
            shape = _shape(value)
        elif number in (5, 8):
            raw["<f4" if number == 5 else "<f8"] += _float_bytes(wire, value, 4 if number == 5 else 8)
    array = np.concatenate([np.frombuffer(bytes(raw[dtype]), dtype=dtype).astype(np.float32) for dtype in raw])
    if not shape and legacy:
        shape = [legacy.get(n, 1) for n in (1, 2, 3, 4)]
    if not shape:
        shape = [array.size]
    # Python's integers: a product of huge dimensions does not wrap around; numpy's dimensions are below 2^31 here
    if math.prod(shape) != array.size or max(shape) >= 2 ** 31:
        raise WireError(f"a blob of shape {tuple(shape)} holds {array.size} values")
    return array.reshape(shape)


def _shape(data) -> list[int]:
    """A BlobShape's dimensions (field 1, packed or not), at most MAX_DIMS of them."""
    dims = []
    for number, wire, value in _fields(data):
        if number == 1:
            dims += _ints(wire, value)
        if len(dims) > MAX_DIMS:  # before a hostile file's millions of them are held as Python integers
            raise WireError(f"a blob's shape has more than {MAX_DIMS} dimensions")
    return dims


def _float_bytes(wire: int, value, size: int) -> bytes:
    """The bytes of packed (wire 2) float32 or float64 values, or of one (wire 5: float32, wire 1: float64)."""
    if wire == 2 and len(value) % size == 0:
        return bytes(value)
    if wire == {4: 5, 8: 1}[size]:
        return value.to_bytes(size, "little")
    what = f"{len(value)} bytes" if wire == 2 else f"wire type {wire}"
    raise WireError(f"a blob's {'float' if size == 4 else 'double'} values come as {what}, not {size}-byte numbers")


def _ints(wire: int, value) -> list[int]:
    if wire == 0:
        return [value]
    if wire != 2:
        raise WireError(f"a blob's shape comes as wire type {wire}, not as integers")
    numbers, position = [], 0
    while position < len(value) and len(numbers) <= MAX_DIMS:  # _shape refuses more
        number, position = _varint(value, position)
        numbers.append(number)
    return numbers


def _fields(data):
    """(field number, wire type, value) of each field of a protobuf message: an int for varints and
    fixed-width numbers, a memoryview for length-delimited fields."""
    data, position = memoryview(data), 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise WireError(f"field {number} runs past the end: the file is truncated")
            value, position = data[position:position + length], position + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if position + size > len(data):
                raise WireError("the file is truncated")
            value, position = int.from_bytes(data[position:position + size], "little"), position + size
        else:
            raise WireError(f"wire type {wire} of field {number} is not protobuf's")
        yield number, wire, value


def _varint(data, position: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if position >= len(data):
            raise WireError("the file is truncated")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise WireError("a varint is longer than 10 bytes")


# --- the text format: a .prototxt (the network's definition, without weights) ---

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}:\[\],;]|[^\s{}:\[\],;#"\']+')
WEIGHTED_TYPES = {"convolution", "conv", "innerproduct"}  # lower case, no underscores: every generation's name


def read_prototxt(path: str | os.PathLike) -> tuple[list[Layer], dict]:
    """A .prototxt's layers in file order (names, types and pooling; no blobs) and its data layer's
    ``transform_param`` (mean_value, scale, crop_size), every generation of Caffe's format."""
    try:
        text = _read(path).decode()
        net = _message(_tokens(text), top=True)
        entries = net.get("layer", []) + net.get("layers", [])
        if not all(isinstance(entry, dict) for entry in entries):
            raise WireError("a layer is a value, not a { ... } block")
        layers = [_text_layer(entry) for entry in entries]
    except (WireError, UnicodeDecodeError) as error:
        raise NinError(f"{path} is not a readable Caffe prototxt ({error})") from None
    if not layers:
        raise NinError(f"{path} holds no Caffe layers: expected a network definition (layer {{ ... }} entries)")
    transforms = [entry["transform_param"][0] for entry in entries
                  if isinstance(entry.get("transform_param", [None])[0], dict)]
    return layers, transforms[0] if transforms else {}


def _tokens(text: str):
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise WireError(f"unreadable text at character {position}")
        position = match.end()
        token = match.group()
        if not token.isspace() and not token.startswith("#"):
            yield token


def _message(tokens, top: bool = False, depth: int = 0) -> dict:
    """``name: value`` and ``name { ... }`` fields up to the closing brace (or the end, at the top) as
    {name: [values]}; strings lose their quotes, numbers become floats, enum names stay text."""
    if depth > MAX_DEPTH:
        raise WireError(f"messages nested more than {MAX_DEPTH} deep: not a network definition")
    fields: dict[str, list] = {}
    for token in tokens:
        if token == "}" and not top:
            return fields
        if token in ",;":
            continue
        if token in "{}:[]":
            raise WireError(f"a field name was expected, not {token!r}")
        following = next(tokens, None)
        if following == ":":
            following = next(tokens, None)
        if following == "{":
            fields.setdefault(token, []).append(_message(tokens, depth=depth + 1))
        elif following == "[":  # a repeated field's values at once: mean_value: [104, 117, 123]
            fields.setdefault(token, []).extend(_scalar(t) for t in _until_bracket(tokens) if t != ",")
        elif following is None or following in "}:[]":
            raise WireError(f"field {token!r} has no value")
        else:
            fields.setdefault(token, []).append(_scalar(following))
    if not top:
        raise WireError("a message has no closing brace: the file is truncated")
    return fields


def _until_bracket(tokens):
    for token in tokens:
        if token == "]":
            return
        yield token
    raise WireError("a list has no closing bracket: the file is truncated")


def _scalar(token: str):
    if token[0] in "\"'":
        return token[1:-1]
    try:
        return float(token)
    except ValueError:
        return token  # an enum's name (MAX, CONVOLUTION) or true/false


def _text_layer(entry: dict) -> Layer:
    if isinstance(entry.get("layer", [None])[0], dict):  # a V0 layer inside a V1 entry
        entry = entry["layer"][0]
    layer = Layer(name=str(entry.get("name", [""])[0]), type=str(entry.get("type", [""])[0]))
    pooling = entry.get("pooling_param", [entry])[0]  # V0 keeps pool: at the layer's level
    if not isinstance(pooling, dict):
        raise WireError(f"layer {layer.name!r}: pooling_param is a value, not a {{ ... }} block")
    if layer_kind(layer.type) in ("pooling", "pool"):
        kind = str(pooling.get("pool", ["MAX"])[0])
        layer.pool = {"MAX": "max", "AVE": "avg"}.get(kind, kind.lower())
        layer.global_pool = str(pooling.get("global_pooling", ["false"])[0]).lower() == "true"
    return layer


def layer_kind(layer_type: str) -> str:
    """A layer's type as one name across generations: Convolution, CONVOLUTION -> convolution; V0's conv stays."""
    return layer_type.lower().replace("_", "")
