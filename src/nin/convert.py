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
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Original:
    """What a released network needs besides its weights to compute what it computed."""
    kwargs: dict  # the variant options that give the original function
    classes: object  # a list, or a function giving it
    channel_order: str  # the order its first layer reads: bgr (Caffe via OpenCV) or rgb
    mean_bgr: tuple[float, ...] | None  # subtracted from 0..255 pixels; None: the user must give it
    source: dict = field(default_factory=dict)


CAFFE_ORIGINALS = {
    "nin_cifar10": Original(
        dict(pools=("max", "avg"), pool_ceil=True), CIFAR10_CLASSES, "rgb", None,
        {"released_by": "Min Lin et al. (the paper's authors), Caffe model of NIN for CIFAR-10",
         "reported_test_accuracy": 89.6,
         "expects": "CIFAR-10 after GCN and ZCA whitening (pylearn2), which the .caffemodel does not hold: "
                    "give --mean or fit it with --fit-preprocess"}),
    "nin_imagenet": Original(
        dict(pool_ceil=True), _imagenet_classes, "bgr", ILSVRC_MEAN_BGR,
        {"released_by": "Min Lin et al. (the paper's authors), Caffe model zoo, NIN for ImageNet",
         "reported_top1_accuracy": 59.36,
         "expects": "BGR pixels 0..255 minus the ILSVRC-2012 mean image; Caffe evaluates a 224x224 centre crop "
                    "of the image resized to 256 (nin predict resizes to 224 without cropping)"}),
}


def convert_caffe(path: str | os.PathLike, model_name: str, out: str | os.PathLike, *, file_format: str = "safetensors",
                  mean: tuple[float, ...] | None = None, mean_file: str | None = None,
                  fit_preprocess: str | None = None, root: str | None = None) -> dict:
    """Convert a .caffemodel of ``model_name`` (nin_cifar10 or nin_imagenet); returns what ``export_model``
    returns. ``mean`` (R, G, B on 0..255) or ``mean_file`` (a .binaryproto) replace the original's mean;
    ``fit_preprocess`` names a data set whose training images fit a gcn_zca preprocessing instead."""
    from .export import check_format, export_model

    check_format(file_format)
    original = _original(model_name)
    layers = caffe.read_caffemodel(path)
    kwargs = {**original.kwargs, **_poolings(layers, model_name)}
    model = create_model(model_name, **kwargs)
    _copy_blobs([layer for layer in layers if layer.blobs], model, path, model_name)
    if original.channel_order == "bgr":
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        first.weight.data = first.weight.data.flip(1).contiguous()  # now it reads RGB, as every nin model
    info = _model_info(model_name, kwargs, original, mean, mean_file, fit_preprocess, root, path)
    return export_model(model, info, file_format, out)


def _original(model_name: str) -> Original:
    if model_name not in CAFFE_ORIGINALS:
        raise NinError(f"no Caffe original is known for {model_name!r}: expected one of {', '.join(CAFFE_ORIGINALS)}")
    return CAFFE_ORIGINALS[model_name]


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


def _copy_blobs(weighted: list[caffe.Layer], model: nn.Module, path, model_name: str) -> None:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if len(weighted) != len(convs):
        names = ", ".join(layer.name for layer in weighted[:4])
        raise NinError(f"{path} has {len(weighted)} layers with weights ({names}...), {model_name} has "
                       f"{len(convs)} convolutions: not a {model_name} model")
    for layer, conv in zip(weighted, convs):
        targets = [conv.weight, conv.bias]
        if len(layer.blobs) != 2:
            raise NinError(f"{path}: layer {layer.name!r} has {len(layer.blobs)} blobs, expected a weight and a bias")
        for blob, target in zip(layer.blobs, targets):
            target.data = torch.from_numpy(_fit_shape(blob, tuple(target.shape), layer.name, path)).clone()


def _fit_shape(blob: np.ndarray, shape: tuple[int, ...], name: str, path) -> np.ndarray:
    """The blob in ``shape``: as it is, or without the leading ones of Caffe's legacy 4-d shapes."""
    squeezed = blob.shape
    while len(squeezed) > len(shape) and squeezed[0] == 1:
        squeezed = squeezed[1:]
    if squeezed != shape:
        raise NinError(f"{path}: layer {name!r} has a blob of shape {blob.shape}, the model expects {shape}")
    return blob.reshape(shape)


def _model_info(model_name, kwargs, original: Original, mean, mean_file, fit_preprocess, root, path) -> ModelInfo:
    arch = default_cfg(model_name)
    classes = original.classes() if callable(original.classes) else list(original.classes)
    source = {**original.source, "converted_from": os.path.basename(str(path))}
    common = dict(name=model_name, kwargs=dict(kwargs), classes=classes, size=arch.input_size,
                  channels=arch.in_channels, source=source)
    if fit_preprocess:
        return ModelInfo(**common, dataset=fit_preprocess, preprocess=_fitted(fit_preprocess, root))
    rgb = _mean_rgb(original, mean, mean_file)
    return ModelInfo(**common, mean=[m / 255 for m in rgb], std=[1 / 255] * len(rgb))


def _mean_rgb(original: Original, mean, mean_file) -> list[float]:
    if mean is not None:
        return [float(m) for m in mean]
    if mean_file is not None:
        return [float(m) for m in caffe.read_mean(mean_file).mean(axis=(1, 2))[::-1]]  # per channel, BGR -> RGB
    if original.mean_bgr is None:
        raise NinError("this network's preprocessing is not in its .caffemodel: give --mean R,G,B (0..255), "
                       "--mean-file MEAN.binaryproto, or --fit-preprocess DATASET")
    return list(original.mean_bgr[::-1])


def _fitted(dataset: str, root: str | None) -> dict:
    """gcn_zca fitted on the training images of ``dataset``, as the authors' pylearn2 preprocessing was."""
    from .data import load_dataset
    from .data.preprocess import make_preprocess

    train = load_dataset(dataset, root, "train")
    return make_preprocess("gcn_zca", train.images).state_dict()

