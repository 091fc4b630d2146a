"""Network In Network (Lin, Chen & Yan, ICLR 2014): the mlpconv block, the network, named variants.

A variant is an architecture (``Arch``: the mlpconv stages with their widths) plus defaults
(input size, channels, classes). ``nin_cifar10()`` with default arguments is the seed's network
layer for layer, with the same parameter names (``features1.0.weight`` ...), so its weights load.
"""
from __future__ import annotations

import math
import os
from importlib import resources
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from .errors import NinError
# the initialisation schemes live in init.py; their names stay importable from here
from .init import INITS, fit_init_to_data, identity_init, initialise, whiten_first_layer  # noqa: F401
from .init import _layer_output, _weight_layers  # noqa: F401 (tests/test_defaults.py reads them here)
from .layers import LocallyConnected2d

POOLS = ("max", "avg", "none")
HEADS = ("gap", "fc", "fc_dropout")


@dataclass(frozen=True)
class Stage:
    """One mlpconv layer: a k x k convolution then 1x1 convolutions, each followed by ReLU."""

    kernel: int
    widths: tuple[int, ...]  # widths[0]: the k x k conv; the rest: the 1x1 ("cccp") layers
    stride: int = 1
    padding: int | None = None  # None: kernel // 2 ("same" for stride 1)
    pool: str = "max"  # pooling after this stage: max | avg | none
    dropout: bool = True  # dropout after this stage (and its pooling)
    local: bool = False  # the k x k layer is locally connected (unshared weights): section 4.6's CNN


@dataclass(frozen=True)
class Arch:
    stages: tuple[Stage, ...]
    input_size: int  # the size the variant was designed for (square)
    in_channels: int
    num_classes: int
    pool_padding: int = 1  # 3x3/2 pooling; the seed pads by 1, Caffe's ImageNet model uses ceil mode
    pool_ceil: bool = False
    mean: tuple[float, ...] = ()  # default input normalisation, when known
    std: tuple[float, ...] = ()


def _stages(*specs, pools=("max", "max", "none"), dropouts=(True, True, False)):
    return tuple(
        Stage(kernel=k, widths=tuple(w), pool=p, dropout=d)
        for (k, w), p, d in zip(specs, pools, dropouts)
    )


ARCHS: dict[str, Arch] = {
    # widths from the authors' cuda-convnet configs (NIN-FACTS.md); the last width is num_classes
    "nin_cifar10": Arch(_stages((5, (192, 160, 96)), (5, (192, 192, 192)), (3, (192, 192, 10))),
                        input_size=32, in_channels=3, num_classes=10),
    "nin_cifar100": Arch(_stages((5, (192, 160, 96)), (5, (192, 192, 192)), (3, (192, 192, 100))),
                         input_size=32, in_channels=3, num_classes=100),
    "nin_svhn": Arch(_stages((5, (128, 96, 64)), (5, (320, 256, 128)), (3, (384, 256, 10))),
                     input_size=32, in_channels=3, num_classes=10),
    "nin_mnist": Arch(_stages((5, (96, 64, 48)), (5, (128, 96, 48)), (5, (128, 96, 10))),
                      input_size=28, in_channels=1, num_classes=10),
    # Section 4.6's conventional CNN: three convolutions and one locally connected layer whose maps go
    # to the head. The paper gives no widths; we use NIN-CIFAR's (192) and its pooling and dropout.
    "cnn_sec46": Arch(
        (Stage(5, (192,)), Stage(5, (192,)), Stage(3, (192,), pool="none", dropout=False),
         Stage(3, (10,), pool="none", dropout=False, local=True)),
        input_size=32, in_channels=3, num_classes=10),
    "nin_imagenet": Arch(
        (Stage(11, (96, 96, 96), stride=4, padding=0, pool="max", dropout=False),
         Stage(5, (256, 256, 256), pool="max", dropout=False),
         Stage(3, (384, 384, 384), pool="max", dropout=True),  # Caffe: dropout before the last stage
         Stage(3, (1024, 1024, 1000), pool="none", dropout=False)),
        input_size=224, in_channels=3, num_classes=1000, pool_padding=0, pool_ceil=True,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}


class NIN(nn.Module):
    """Stacked mlpconv layers, then a head: global average pooling (the paper) or fully connected.

    Shapes for nin_cifar10: (N,3,32,32) -> features1 (N,96,16,16) -> features2 (N,192,8,8)
    -> features3 (N,10,8,8) category confidence maps -> GAP (N,10) logits.

    ``pool_ceil``: None keeps the variant's 3x3/2 pooling; True is Caffe's (no padding, output sizes
    rounded up: the authors' released networks), False the seed's (padding 1, rounded down). On 32-pixel
    inputs both give 16x16 maps, from windows one pixel apart.
    """

    def __init__(self, arch: Arch, *, num_classes: int | None = None, in_channels: int | None = None,
                 dropout: float = 0.5, pools: tuple[str, ...] | None = None, head: str = "gap",
                 relu_before_gap: bool = True, batch_norm: bool = False, init: str = "kaiming",
                 fc_width: int | None = None, input_size: int | None = None, pool_ceil: bool | None = None,
                 width: float = 1.0):
        super().__init__()
        _check_choice("head", head, HEADS)
        _check_choice("init", init, INITS)
        self.num_classes = num_classes or arch.num_classes
        stages = _resolve_stages(_widened(arch, width), self.num_classes, pools, head, fc_width)
        channels = in_channels or arch.in_channels
        if pool_ceil is not None:  # Caffe's pooling (ceil mode, no padding) or the seed's (padding 1, floor)
            arch = replace(arch, pool_padding=0 if pool_ceil else 1, pool_ceil=pool_ceil)
        pool_args = dict(kernel_size=3, stride=2, padding=arch.pool_padding, ceil_mode=arch.pool_ceil)
        size = input_size or arch.input_size  # only locally connected layers and FC heads depend on it
        for index, stage in enumerate(stages, start=1):
            is_last = index == len(stages)
            final_relu = relu_before_gap or head != "gap" or not is_last
            layers = _mlpconv_layers(stage, channels, batch_norm, final_relu, size)
            size = _stage_output_size(size, stage, arch)
            if stage.pool != "none":
                pool_cls = nn.MaxPool2d if stage.pool == "max" else nn.AvgPool2d
                layers.append(pool_cls(**pool_args))
            if stage.dropout and dropout > 0:
                layers.append(nn.Dropout(dropout))
            self.add_module(f"features{index}", nn.Sequential(*layers))
            channels = stage.widths[-1]
        self.num_stages = len(stages)
        self.gap = nn.AdaptiveAvgPool2d(1)
        if head != "gap":  # the paper's Table 5 alternatives: flatten the maps into a linear layer
            fc = [nn.Flatten(), nn.Linear(channels * size * size, self.num_classes)]
            self.fc = nn.Sequential(nn.Dropout(dropout), *fc) if head == "fc_dropout" else nn.Sequential(*fc)
        self.head = head
        initialise(self, init)

    @property
    def takes_any_size(self) -> bool:
        """True when no layer is sized for the input (GAP head, no locally connected layer): such a network
        classifies images of any size (progressive resizing trains it on several)."""
        return self.head == "gap" and not any(isinstance(m, LocallyConnected2d) for m in self.modules())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last mlpconv layer's maps: with the GAP head, one category confidence map per class."""
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"features{index}")(x)
        return x

    def forward_head(self, maps: torch.Tensor) -> torch.Tensor:
        if self.head == "gap":
            return self.gap(maps).flatten(1)
        return self.fc(maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise NinError(f"unknown {what} {value!r}: expected one of {', '.join(choices)}")


def _widened(arch: Arch, width: float) -> Arch:
    """Every layer ``width`` times as wide, rounded (a width multiplier, as MobileNet's): the class maps
    that end a GAP network are set afterwards, so they stay one per class. Compute scales about as its square."""
    if not (isinstance(width, (int, float)) and 0 < width <= 16):
        raise NinError(f"width {width!r} is not a multiplier in (0, 16]: 1 is the variant's own widths")
    if width == 1:
        return arch
    stages = tuple(replace(s, widths=tuple(max(1, round(w * width)) for w in s.widths)) for s in arch.stages)
    return replace(arch, stages=stages)


def _resolve_stages(arch: Arch, num_classes: int, pools, head: str, fc_width) -> list[Stage]:
    stages = list(arch.stages)
    if pools is not None:
        if len(pools) != len(stages) - 1:
            raise NinError(f"pools needs {len(stages) - 1} entries (one per stage but the last), got {len(pools)}")
        for pool in pools:
            _check_choice("pooling", pool, POOLS)
        stages = [replace(s, pool=p) for s, p in zip(stages, pools)] + stages[-1:]
    last = stages[-1]
    # With GAP the last layer emits one map per class; with an FC head it emits features instead.
    features = last.widths[-2] if len(last.widths) > 1 else stages[-2].widths[-1]
    last_width = num_classes if head == "gap" else (fc_width or features)
    stages[-1] = replace(last, widths=last.widths[:-1] + (last_width,))
    return stages


def _mlpconv_layers(stage: Stage, in_channels: int, batch_norm: bool, final_relu: bool,
                    size: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    padding = stage.kernel // 2 if stage.padding is None else stage.padding
    for position, width in enumerate(stage.widths):
        kernel = stage.kernel if position == 0 else 1
        if position == 0 and stage.local:
            conv = LocallyConnected2d(in_channels, width, size, kernel, padding, bias=not batch_norm)
        else:
            conv = nn.Conv2d(in_channels, width, kernel, stride=stage.stride if position == 0 else 1,
                             padding=padding if position == 0 else 0, bias=not batch_norm)
        layers.append(conv)
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        if position < len(stage.widths) - 1 or final_relu:
            layers.append(nn.ReLU(inplace=True))
        in_channels = width
    return layers


def _stage_output_size(size: int, stage: Stage, arch: Arch) -> int:
    padding = stage.kernel // 2 if stage.padding is None else stage.padding
    size = (size + 2 * padding - stage.kernel) // stage.stride + 1
    if stage.pool != "none":
        span = size + 2 * arch.pool_padding - 3
        size = (math.ceil(span / 2) if arch.pool_ceil else span // 2) + 1
    return size


# --- registry -------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., NIN]] = {}


@dataclass(frozen=True)
class VariantInfo:
    name: str
    arch: str
    defaults: dict = field(default_factory=dict)


VARIANTS: dict[str, VariantInfo] = {}


def _register(name: str, arch: str, **defaults) -> None:
    VARIANTS[name] = VariantInfo(name, arch, defaults)

    def builder(**kwargs) -> NIN:
        return NIN(ARCHS[arch], **{**defaults, **kwargs})

    builder.__name__ = name
    builder.__doc__ = f"NIN variant {name!r} ({arch} widths{', ' + str(defaults) if defaults else ''})."
    _REGISTRY[name] = builder


# the FC heads of section 4.6 take 16 locally connected maps (192 would make a 22M-parameter layer)
_ARCH_DEFAULTS = {"cnn_sec46": {"fc_width": 16}}
for _arch in ARCHS:
    _register(_arch, _arch, **_ARCH_DEFAULTS.get(_arch, {}))
    _register(f"{_arch}_bn", _arch, batch_norm=True, **_ARCH_DEFAULTS.get(_arch, {}))  # BatchNorm after every conv


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def default_cfg(name: str) -> Arch:
    """The variant's design defaults: input size, channels, classes, normalisation."""
    return ARCHS[_variant(name).arch]


def _variant(name: str) -> VariantInfo:
    if name not in VARIANTS:
        raise NinError(f"unknown model {name!r}: expected one of {', '.join(list_models())}")
    return VARIANTS[name]


# Weights shipped inside the package (nin/weights/), torchvision style: create_model(model, weights=NAME).
# Each is a `nin export` safetensors file whose JSON says how it was trained and what it scored.
SHIPPED_WEIGHTS = {"fashion-mnist": ("nin_mnist_bn", "nin_mnist_bn-fashion-mnist.safetensors"),
                   "fashion-mnist-plain": ("nin_mnist", "nin_mnist-fashion-mnist.safetensors")}  # the paper's


def shipped_weights(name: str) -> tuple[str, Path]:
    """(the model, the file) of the shipped weights ``name``."""
    if name not in SHIPPED_WEIGHTS:
        raise NinError(f"no shipped weights named {name!r}: expected {', '.join(SHIPPED_WEIGHTS)} or a "
                       ".safetensors file from nin export")
    model, file = SHIPPED_WEIGHTS[name]
    return model, Path(str(resources.files("nin") / "weights" / file))


def create_model(name: str, *, weights: str | os.PathLike | None = None, **kwargs) -> NIN:
    """Build a named variant; keyword arguments override its defaults (see ``NIN``). ``weights``: the name
    of shipped weights (``SHIPPED_WEIGHTS``, e.g. "fashion-mnist"), or a ``.safetensors`` file from
    ``nin export``, loaded with the arguments in the JSON beside it."""
    _variant(name)
    if isinstance(weights, str) and weights in SHIPPED_WEIGHTS:
        model, weights = shipped_weights(weights)
        if model != name:
            own = [key for key, (owner, _) in SHIPPED_WEIGHTS.items() if owner == name]
            raise NinError(f"the shipped weights {weights.stem} are {model}'s, not {name}'s"
                           + (f"; {name}'s are {', '.join(own)}" if own else ""))
    if weights is not None:
        return _with_weights(name, weights, **kwargs)
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as error:
        raise NinError(f"bad argument for model {name!r}: {error}") from None


def _with_weights(name: str, weights: str | os.PathLike, **kwargs) -> NIN:
    """The variant built with the export's arguments (``kwargs`` override them), its weights loaded from
    the .safetensors file; ``model.info`` holds the card (class names, preprocessing, input size) when
    the file has one."""
    from .card import read_safetensors  # lazy: safetensors only when weights are asked for

    state, info = read_safetensors(weights)
    if info is not None and info.name != name:
        raise NinError(f"{weights} holds weights for {info.name!r}, not {name!r}")
    model = create_model(name, **{**(info.kwargs if info else {}), **kwargs})
    load_state(model, state, weights, name)
    model.info = info
    return model


def load_state(model: nn.Module, state: dict, where, name: str) -> None:
    """``model.load_state_dict(state)``, a mismatch said in one line naming ``where`` the weights came from."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise NinError(f"{where}: the weights do not fit model {name!r} ({detail})") from None


def variant_has_batch_norm(name: str) -> bool:
    return bool(_variant(name).defaults.get("batch_norm", False))


# What the first training step allocates whatever the model and batch (kernels' scratch space, caches):
# the part of the step's measured memory that does not grow with the batch (benchmarks/pack_scale.py
# measures the step against this estimate).
STEP_OVERHEAD_BYTES = 128 * 2 ** 20


def training_step_bytes(name: str, kwargs: dict, batch: int, channels: int, size: int) -> int:
    """About the memory one training step of ``batch`` images takes: what the forward pass keeps for the
    backward one, the gradient of the largest layer output on top of it during the backward pass, the
    weights four times (weights, gradients, momentum, a spare) and a fixed overhead. Found on the meta
    device: no memory is used to find out."""
    kept = []
    with torch.device("meta"):
        model = create_model(name, **kwargs)
        hooks = [m.register_forward_hook(lambda m, _i, out: kept.append(_kept_bytes(m, out.numel())))
                 for m in model.modules() if not list(m.children())]
        model(torch.empty(batch, channels, size, size))
        for hook in hooks:
            hook.remove()
    return sum(kept) + max(kept) + 4 * 4 * count_parameters(model) + STEP_OVERHEAD_BYTES


def _kept_bytes(layer: nn.Module, outputs: int) -> int:
    """The bytes a layer adds to memory until the backward pass: its float32 output, nothing when it works
    in place (the ReLUs), plus the int64 indices of max pooling and the one-byte mask of dropout."""
    if getattr(layer, "inplace", False):
        return 0
    extra = {nn.MaxPool2d: 8, nn.Dropout: 1}.get(type(layer), 0)
    return (4 + extra) * outputs


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# keyword-only public builders, torchvision style: nin_cifar10(*, num_classes=10, ...)
def nin_cifar10(**kwargs) -> NIN:
    return create_model("nin_cifar10", **kwargs)


def nin_cifar100(**kwargs) -> NIN:
    return create_model("nin_cifar100", **kwargs)


def nin_svhn(**kwargs) -> NIN:
    return create_model("nin_svhn", **kwargs)


def nin_mnist(**kwargs) -> NIN:
    return create_model("nin_mnist", **kwargs)


def nin_imagenet(**kwargs) -> NIN:
    return create_model("nin_imagenet", **kwargs)
