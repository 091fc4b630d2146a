"""Caffe files written the way Caffe writes them (protobuf wire format, caffe.proto's field numbers), with
random weights, and a reference forward pass of the networks they describe written from Caffe's layer
definitions with plain torch.nn.functional calls (Caffe's pooling rounds output sizes up: done here by
padding the right and bottom edges, not with PyTorch's ceil_mode)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# (name, kernel, stride, pad, output widths of the k x k conv and its two 1x1 convs, pooling after it)
NIN_CIFAR10 = [("conv1", 5, 1, 2, (192, 160, 96), ("max", 3, 2)), ("conv2", 5, 1, 2, (192, 192, 192), ("avg", 3, 2)),
               ("conv3", 3, 1, 1, (192, 192, 10), ("avg", 8, 1))]
NIN_IMAGENET = [("conv1", 11, 4, 0, (96, 96, 96), ("max", 3, 2)), ("conv2", 5, 1, 2, (256, 256, 256), ("max", 3, 2)),
                ("conv3", 3, 1, 1, (384, 384, 384), ("max", 3, 2)), ("conv4", 3, 1, 1, (1024, 1024, 1000), ("avg", 6, 1))]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload, wire: int = 2) -> bytes:
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def blob(array: np.ndarray, legacy: bool) -> bytes:
    """A BlobProto: the 2014 files give num/channels/height/width (biases as 1 x 1 x 1 x N), later ones shape."""
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        shape = b"".join(field(n, d, wire=0) for n, d in zip((1, 2, 3, 4), dims))
    else:
        shape = field(7, field(1, b"".join(varint(d) for d in array.shape)))
    return shape + field(5, array.astype("<f4").tobytes())


def random_blobs(spec, in_channels: int, seed: int = 0) -> list[tuple[str, list[np.ndarray]]]:
    """He-scaled random weights and small biases for every convolution of ``spec``, in order."""
    rng = np.random.default_rng(seed)
    layers, channels = [], in_channels
    for name, kernel, _, _, widths, _ in spec:
        for position, width in enumerate(widths):
            k = kernel if position == 0 else 1
            weight = rng.normal(0, math.sqrt(2 / (channels * k * k)), (width, channels, k, k)).astype(np.float32)
            layers.append((name if position == 0 else f"cccp{name[-1]}-{position}",
                           [weight, rng.normal(0, 0.1, width).astype(np.float32)]))
            channels = width
    return layers


def write_caffemodel(path, spec, blobs, generation: str = "v1", pooling_params: bool = True) -> None:
    """A NetParameter: data layer, then per stage conv/relu layers and a pooling layer; ``generation``
    v1 writes the 2014 ``layers`` (field 2, enum types), v0 the older layers nested in them, new writes
    ``layer`` (field 100, text types)."""
    messages, weighted = [], iter(blobs)
    messages.append(_layer("data", "Data", [], generation))
    for _, _, _, _, widths, (kind, kernel, stride) in spec:
        for _ in widths:
            name, arrays = next(weighted)
            messages.append(_layer(name, "Convolution", arrays, generation))
            messages.append(_layer(f"relu_{name}", "ReLU", [], generation))
        pooling = (kind, kernel, stride) if pooling_params else None
        messages.append(_layer(f"pool_{kind}", "Pooling", [], generation, pooling))
    messages.append(_layer("loss", "SoftmaxWithLoss", [], generation))
    number = 100 if generation == "new" else 2
    path.write_bytes(field(1, b"nin") + b"".join(field(number, m) for m in messages))


V1_ENUM = {"Data": 5, "Convolution": 4, "ReLU": 18, "Pooling": 17, "SoftmaxWithLoss": 21}
V0_TYPES = {"Convolution": "conv", "Pooling": "pool"}
POOL_ENUM = {"max": 0, "avg": 1}


def _layer(name: str, kind: str, arrays, generation: str, pool: tuple | None = None) -> bytes:
    if generation == "v0":  # a V1 entry holding a V0LayerParameter (field 1): name 1, type 2 as text, pool 11,
        inner = field(1, name.encode()) + field(2, V0_TYPES.get(kind, kind.lower()).encode())  # blobs 50
        if pool and pool[0] != "max":  # Caffe writes no default value
            inner += field(11, POOL_ENUM[pool[0]], wire=0)
        return field(1, inner + b"".join(field(50, blob(a, legacy=True)) for a in arrays))
    pooling = _pooling_param(*pool) if pool else None
    if generation == "v1":  # V1LayerParameter: name 4, type 5 (enum), blobs 6, pooling_param 19
        out = field(4, name.encode()) + field(5, V1_ENUM[kind], wire=0)
        out += b"".join(field(6, blob(a, legacy=True)) for a in arrays)
        return out + (field(19, pooling) if pooling else b"")
    out = field(1, name.encode()) + field(2, kind.encode())  # LayerParameter: name 1, type 2, blobs 7, pooling 121
    out += b"".join(field(7, blob(a, legacy=False)) for a in arrays)
    return out + (field(121, pooling) if pooling else b"")


def _pooling_param(kind: str, kernel: int, stride: int) -> bytes:
    """A PoolingParameter: pool 1, kernel_size 2, stride 3."""
    return field(1, POOL_ENUM[kind], wire=0) + field(2, kernel, wire=0) + field(3, stride, wire=0)


def write_prototxt(path, spec, generation: str = "v1", mean_value=None, scale=None) -> None:
    """The network's definition in protobuf's text format, as the authors' .prototxt files give it: a data
    layer (with ``mean_value`` and ``scale`` in its transform_param when given), then per stage the
    convolutions and a pooling layer; layer names as ``write_caffemodel`` writes them."""
    transform = "".join(f" mean_value: {m}" for m in mean_value or ()) + (f" scale: {scale}" if scale else "")
    assert not (transform and generation == "v0"), "V0 has no transform_param"
    lines = ['name: "nin"  # written by the tests', _text_layer("data", "Data", generation,
             f"transform_param {{{transform} }}" if transform else "")]
    for name, kernel, stride, pad, widths, (kind, pool_kernel, pool_stride) in spec:
        for position, width in enumerate(widths):
            conv = name if position == 0 else f"cccp{name[-1]}-{position}"
            size = kernel if position == 0 else 1
            lines.append(_text_layer(conv, "Convolution", generation, f"num_output: {width} kernel_size: {size}"))
        pool = f"pool: {kind.upper().replace('AVG', 'AVE')} kernel_size: {pool_kernel} stride: {pool_stride}"
        lines.append(_text_layer(f"pool{name[-1]}", "Pooling", generation, pool))
    path.write_text("\n".join(lines) + "\n")


def _text_layer(name: str, kind: str, generation: str, params: str) -> str:
    if generation == "v0":  # V0 keeps every parameter in the layer itself (kernelsize without the underscore)
        return f'layers {{ layer {{ name: "{name}" type: "{V0_TYPES.get(kind, kind.lower())}" ' \
               f'{params.replace("kernel_size", "kernelsize")} }} top: "{name}" }}'
    block = {"Convolution": "convolution_param", "Pooling": "pooling_param"}.get(kind)
    params = f"{block} {{ {params} }}" if block else params
    if generation == "v1":
        return f'layers {{\n  name: "{name}"\n  type: {kind.upper()}\n  {params}\n}}'
    return f'layer {{\n  name: "{name}"\n  type: "{kind}"\n  {params}\n}}'


def caffe_forward(spec, blobs, bgr_pixels: torch.Tensor, mean_bgr) -> torch.Tensor:
    """Caffe's forward pass on BGR 0..255 images minus the mean: logits (N, classes)."""
    x = bgr_pixels.double() - torch.tensor(mean_bgr, dtype=torch.float64).view(1, -1, 1, 1)
    weighted = iter(blobs)
    for _, kernel, stride, pad, widths, (kind, pool_kernel, pool_stride) in spec:
        for position, _ in enumerate(widths):
            _, (weight, bias) = next(weighted)
            x = F.conv2d(x, torch.from_numpy(weight).double(), torch.from_numpy(bias).double(),
                         stride=stride if position == 0 else 1, padding=pad if position == 0 else 0).relu()
        x = _caffe_pool(x, kind, pool_kernel, pool_stride)
    return x.flatten(1)


def _caffe_pool(x: torch.Tensor, kind: str, kernel: int, stride: int) -> torch.Tensor:
    """Caffe's pooling: out = ceil((size - kernel) / stride) + 1, windows clipped at the edge (the average
    divides by the window's part inside the image)."""
    size = x.shape[-1]
    out = math.ceil((size - kernel) / stride) + 1
    extra = (out - 1) * stride + kernel - size
    if kind == "max":
        return F.max_pool2d(F.pad(x, (0, extra, 0, extra), value=-math.inf), kernel, stride)
    sums = F.avg_pool2d(F.pad(x, (0, extra, 0, extra)), kernel, stride) * kernel * kernel
    counts = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), (0, extra, 0, extra)), kernel, stride) * kernel * kernel
    return sums / counts


def mean_binaryproto(mean_bgr, size: int = 4) -> bytes:
    """A BlobProto mean image (1, 3, size, size), as Caffe's compute_image_mean writes it."""
    image = np.stack([np.full((size, size), m, np.float32) for m in mean_bgr])[None]
    return blob(image, legacy=True)

