"""Weights trained elsewhere as nin exports: ``nin convert caffe`` reads the authors' released Caffe
models (``nin.caffe``), fits them layer by layer onto our variants, checks every shape, and writes
safetensors + JSON (or ONNX, TorchScript) exactly as ``nin export`` does, so ``nin.load``, ``nin eval``,
``nin predict`` and ``nin visualize`` work on the result.

The JSON records where the weights came from and what their authors report, and the preprocessing the
original expects, folded into ours: Caffe feeds ``pixels (0..255) - mean`` in BGR order, which is our
per-channel standardisation with ``mean / 255`` and ``std = 1 / 255`` once the first layer's input
channels are put in RGB order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from . import caffe
from .card import ModelInfo
from .errors import NinError
from .models import create_model, default_cfg

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ILSVRC_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)  # Caffe's ilsvrc_2012_mean, averaged per channel


def _imagenet_classes() -> list[str]:
    from torchvision.models import ResNet18_Weights  # the ILSVRC-2012 classes in Caffe's (synset) order

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


CAFFE_STD = (1 / 255,) * 3  # Caffe feeds pixels on the 0..255 scale: std 1/255 on ours
PYTORCHCV_MEAN, PYTORCHCV_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # imgclsmob's CIFAR/SVHN input


@dataclass(frozen=True)
class Original:
    """What a released network needs besides its weights to compute what it computed."""
    model: str  # the nin variant with its layers
    kwargs: dict  # the variant options that give the original function
    classes: object  # a list, or a function giving it
    channel_order: str  # the order its first layer reads: bgr (Caffe via OpenCV) or rgb
    mean: tuple[float, ...] | None  # RGB, on the 0..1 scale; None: the user must give it
    std: tuple[float, ...]
    source: dict = field(default_factory=dict)


_CAFFE_IMAGENET = dict(model="nin_imagenet", kwargs=dict(pool_ceil=True), classes=_imagenet_classes,
                       channel_order="bgr", mean=tuple(m / 255 for m in ILSVRC_MEAN_BGR[::-1]), std=CAFFE_STD)
CAFFE_ORIGINALS = {
    "nin_cifar10": Original(
        "nin_cifar10", dict(pools=("max", "avg"), pool_ceil=True), CIFAR10_CLASSES, "rgb", None, CAFFE_STD,
        {"released_by": "Min Lin et al. (the paper's authors), Caffe model of NIN for CIFAR-10",
         "reported_test_accuracy": 89.6,
         "expects": "CIFAR-10 after GCN and ZCA whitening (pylearn2), which the .caffemodel does not hold: "
                    "give --mean or fit it with --fit-preprocess"}),
    "nin_imagenet": Original(**_CAFFE_IMAGENET, source={
        "released_by": "Min Lin et al. (the paper's authors), Caffe model zoo, NIN for ImageNet",
        "reported_top1_accuracy": 59.36,
        "expects": "BGR pixels 0..255 minus the ILSVRC-2012 mean image; Caffe evaluates a 224x224 centre crop "
                   "of the image resized to 256 (nin predict resizes to 224 without cropping)"}),
}
_PYTORCHCV = dict(kwargs=dict(pools=("max", "avg")), channel_order="rgb", mean=PYTORCHCV_MEAN, std=PYTORCHCV_STD)
TORCH_ORIGINALS = {
    "pytorchcv:nin_cifar10": Original("nin_cifar10", classes=CIFAR10_CLASSES, **_PYTORCHCV, source={
        "released_by": "osmr/imgclsmob (pytorchcv nin_cifar10)", "reported_test_error": 7.43}),
    "pytorchcv:nin_cifar100": Original("nin_cifar100", classes=[str(c) for c in range(100)], **_PYTORCHCV, source={
        "released_by": "osmr/imgclsmob (pytorchcv nin_cifar100)", "reported_test_error": 28.39,
        "classes": "CIFAR-100's fine labels by index"}),
    "pytorchcv:nin_svhn": Original("nin_cifar10", classes=[str(d) for d in range(10)], **_PYTORCHCV, source={
        "released_by": "osmr/imgclsmob (pytorchcv nin_svhn: NIN-CIFAR's widths, not the paper's SVHN ones)",
        "reported_test_error": 3.76}),
    "neural-style:nin_imagenet": Original(**_CAFFE_IMAGENET, source={
        "released_by": "the authors' Caffe NIN for ImageNet as converted for neural-style-pt (nin_imagenet.pth)",
        "reported_top1_accuracy": 59.36}),
}


def convert_caffe(path: str | os.PathLike, model_name: str, out: str | os.PathLike, *, file_format: str = "safetensors",
                  mean: tuple[float, ...] | None = None, mean_file: str | None = None,
                  fit_preprocess: str | None = None, root: str | None = None, prototxt: str | None = None) -> dict:
    """Convert a .caffemodel of ``model_name`` (nin_cifar10 or nin_imagenet); returns what ``export_model``
    returns. ``prototxt`` (the network's definition) gives the pooling kinds and the data layer's mean and
    scale, and must name the same layers with weights. ``mean`` (R, G, B on 0..255) or ``mean_file`` (a
    .binaryproto) replace the original's mean; ``fit_preprocess`` names a data set whose training images
    fit a gcn_zca preprocessing instead."""
    original = _known(CAFFE_ORIGINALS, model_name, "Caffe original", "model")
    layers = described = caffe.read_caffemodel(path)
    if prototxt is not None:
        described, transform = caffe.read_prototxt(prototxt)
        _check_same_network(layers, described, path, prototxt)
        original = _with_transform(original, transform)
    kwargs = {**original.kwargs, **_poolings(described, model_name)}
    weighted = [(layer.name, layer.blobs) for layer in layers if layer.blobs]
    if mean_file is not None:
        mean = _rgb(original, caffe.read_mean(mean_file).mean(axis=(1, 2)))
    if mean is not None:
        original = replace(original, mean=tuple(float(m) / 255 for m in mean))
    if fit_preprocess:
        original = replace(original, mean=None)
    elif original.mean is None:
        raise NinError("this network's preprocessing is not in its .caffemodel: give --mean R,G,B (0..255), "
                       "--mean-file MEAN.binaryproto, or --fit-preprocess DATASET")
    arch = default_cfg(model_name)
    preprocess = _fitted(fit_preprocess, root, arch.input_size, arch.in_channels) if fit_preprocess else None
    return _write(weighted, replace(original, kwargs=kwargs), path, out, file_format, preprocess, fit_preprocess)


def convert_torch(path: str | os.PathLike, out: str | os.PathLike, *, original: str | None = None,
                  file_format: str = "safetensors") -> dict:
    """Convert a PyTorch state dict of a known NIN port (``TORCH_ORIGINALS``), recognised from its tensors'
    shapes unless ``original`` names it."""
    weighted = _conv_pairs(_state_dict(path), path)
    if original is not None:
        chosen = _known(TORCH_ORIGINALS, original, "PyTorch original", "original")
    else:
        chosen = _recognise(weighted, path)
    return _write(weighted, chosen, path, out, file_format)


def _check_same_network(layers: list[caffe.Layer], described: list[caffe.Layer], path, prototxt) -> None:
    """The prototxt's layers with weights are the caffemodel's, by name and order."""
    held = [layer.name for layer in layers if layer.blobs]
    named = [layer.name for layer in described if caffe.layer_kind(layer.type) in caffe.WEIGHTED_TYPES]
    if held != named:
        raise NinError(f"{prototxt} describes {len(named)} layers with weights ({', '.join(named[:4])}...), {path} "
                       f"holds {len(held)} ({', '.join(held[:4])}...): not the same network")


def _with_transform(original: Original, transform: dict) -> Original:
    """The data layer's ``mean_value`` (one, or one a channel, in the network's channel order, 0..255) and
    ``scale`` (Caffe multiplies the centred pixels by it) as the original's standardisation."""
    means, scale = transform.get("mean_value", []), transform.get("scale", [1.0])[0]
    if means:
        if len(means) not in (1, 3) or not all(isinstance(m, float) for m in means):
            raise NinError(f"the prototxt's mean_value {means} is neither one number nor one a channel")
        original = replace(original, mean=tuple(m / 255 for m in _rgb(original, means * (3 // len(means)))))
    if not isinstance(scale, float) or scale <= 0:
        raise NinError(f"the prototxt's scale {scale!r} is not a positive number")
    return replace(original, std=(1 / (255 * scale),) * 3)


def _rgb(original: Original, values) -> list[float]:
    """Per-channel values in the network's own channel order, put in RGB order."""
    values = [float(v) for v in values]
    return values[::-1] if original.channel_order == "bgr" else values


def _known(table: dict, name: str, what: str, flag: str) -> Original:
    if name not in table:
        raise NinError(f"no {what} is known for {name!r}: expected --{flag} {' or '.join(table)}")
    return table[name]


def _state_dict(path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickle code runs
    except FileNotFoundError:
        raise NinError(f"no file at {path}") from None
    except Exception as error:  # torch raises many types for a file that is not a state dict
        raise NinError(f"{path} is not a readable PyTorch state dict ({type(error).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NinError(f"{path} is not a PyTorch state dict (a mapping of names to tensors)")
    return state


MAX_VALUES = 10 ** 8  # values in one tensor: NIN-ImageNet's largest layer holds 3.5 million


def _conv_pairs(state: dict, path) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, [weight, bias]) in the file's order: every NIN layer is a convolution with a bias."""
    tensors = [(name, tensor) for name, tensor in state.items() if tensor.is_floating_point()]
    for name, tensor in tensors:
        _check_tensor(name, tensor, path)
    pairs = []
    for (name, weight), (_, bias) in zip(tensors[::2], tensors[1::2]):
        if weight.dim() != 4 or bias.dim() != 1:
            raise NinError(f"{path}: {name} has shape {tuple(weight.shape)}, a NIN layer is a convolution "
                           "(4-d weight, then its bias): not a known NIN port")
        pairs.append((name.rsplit(".", 1)[0], [weight.float().numpy(), bias.float().numpy()]))
    if len(tensors) % 2:
        raise NinError(f"{path}: {len(tensors)} tensors do not pair into convolution weights and biases")
    return pairs


def _check_tensor(name: str, tensor: torch.Tensor, path) -> None:
    """A tensor whose values are all there, in memory, as plain numbers (checked before any is copied)."""
    problem = None
    if tensor.is_meta:
        problem = "is a meta tensor: it has a shape but no values"
    elif tensor.layout != torch.strided:
        problem = f"is a {str(tensor.layout).replace('torch.', '')} tensor; weights are dense"
    elif tensor.numel() > MAX_VALUES:
        problem = f"has shape {tuple(tensor.shape)}, {tensor.numel():.3g} values: far more than a NIN layer holds"
    elif not bool(torch.isfinite(tensor).all()):
        problem = "holds NaN or infinite values"
    if problem:
        raise NinError(f"{path}: {name} {problem}: not the weights of a NIN port")


def _recognise(weighted: list, path) -> Original:
    shapes = [tuple(arrays[0].shape) for _, arrays in weighted]
    matches = [name for name, original in TORCH_ORIGINALS.items() if _conv_shapes(original) == shapes]
    if len(matches) == 1:
        return TORCH_ORIGINALS[matches[0]]
    if not matches:
        raise NinError(f"{path}: {len(shapes)} convolutions from {shapes[0] if shapes else 'none'} match no known "
                       f"NIN port ({', '.join(TORCH_ORIGINALS)})")
    raise NinError(f"{path} has the layers of {' and '.join(matches)}: say which with --original")


def _conv_shapes(original: Original) -> list[tuple[int, ...]]:
    with torch.device("meta"):
        model = create_model(original.model, **original.kwargs)
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d)]


def _write(weighted: list, original: Original, path, out, file_format: str, preprocess: dict | None = None,
           dataset: str | None = None) -> dict:
    from .export import check_format, export_model

    check_format(file_format)
    model = create_model(original.model, **original.kwargs)
    _copy_blobs(weighted, model, path, original.model)
    if original.channel_order == "bgr":
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        first.weight.data = first.weight.data.flip(1).contiguous()  # now it reads RGB, as every nin model
    arch = default_cfg(original.model)
    classes = original.classes() if callable(original.classes) else list(original.classes)
    source = {**original.source, "converted_from": os.path.basename(str(path))}
    info = ModelInfo(original.model, dict(original.kwargs), classes, arch.input_size, arch.in_channels,
                     mean=None if preprocess else list(original.mean), std=None if preprocess else list(original.std),
                     dataset=dataset or "", preprocess=preprocess, source=source)
    return export_model(model, info, file_format, out)


def _poolings(layers: list[caffe.Layer], model_name: str) -> dict:
    """The pooling kinds the file's own layer parameters give (all but the last, global one), when it has them."""
    kinds = [layer.pool for layer in layers if layer.pool is not None and not layer.global_pool]
    stages = len(default_cfg(model_name).stages)
    if len(kinds) == stages:  # the last stage's average pooling given as a plain 6x6 or 8x8 one
        kinds = kinds[:-1]
    if len(kinds) != stages - 1:
        return {}
    unknown = [kind for kind in kinds if kind not in ("max", "avg")]
    if unknown:
        raise NinError(f"the Caffe model pools by {unknown[0]}: nin models pool by max or avg")
    return {"pools": tuple(kinds)}


def _copy_blobs(weighted: list[tuple[str, list[np.ndarray]]], model: nn.Module, path, model_name: str) -> None:
    """Each (layer name, [weight, bias]) into the model's convolutions in order, every shape checked."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if len(weighted) != len(convs):
        names = ", ".join(name for name, _ in weighted[:4])
        raise NinError(f"{path} has {len(weighted)} layers with weights ({names}...), {model_name} has "
                       f"{len(convs)} convolutions: not a {model_name} model")
    for (name, blobs), conv in zip(weighted, convs):
        if len(blobs) != 2:
            raise NinError(f"{path}: layer {name!r} has {len(blobs)} blobs, expected a weight and a bias")
        if not all(np.isfinite(blob).all() for blob in blobs):
            raise NinError(f"{path}: layer {name!r} holds NaN or infinite weights: a model with them predicts "
                           "nothing")
        for blob, target in zip(blobs, (conv.weight, conv.bias)):
            target.data = torch.from_numpy(_fit_shape(blob, tuple(target.shape), name, path)).clone()


def _fit_shape(blob: np.ndarray, shape: tuple[int, ...], name: str, path) -> np.ndarray:
    """The blob in ``shape``: as it is, or without the leading ones of Caffe's legacy 4-d shapes."""
    squeezed = blob.shape
    while len(squeezed) > len(shape) and squeezed[0] == 1:
        squeezed = squeezed[1:]
    if squeezed != shape:
        raise NinError(f"{path}: layer {name!r} has a blob of shape {blob.shape}, the model expects {shape}")
    return blob.reshape(shape)


def _fitted(dataset: str, root: str | None, size: int, channels: int) -> dict:
    """gcn_zca fitted on the training images of ``dataset`` (at the network's input size and channels), as
    the authors' pylearn2 preprocessing was."""
    from .data import load_dataset
    from .data.preprocess import make_preprocess

    train = load_dataset(dataset, root, "train", image_size=size, channels=channels)
    return make_preprocess("gcn_zca", train.images).state_dict()

