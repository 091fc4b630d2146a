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
import torch.nn.functional as F
from torch import nn

from .errors import NinError

POOLS = ("max", "avg", "none")
HEADS = ("gap", "fc", "fc_dropout")
INITS = ("kaiming", "gaussian", "torch")


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
        _initialise(self, init)

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


class LocallyConnected2d(nn.Module):
    """A convolution without weight sharing (stride 1): every output position has its own filter.
    Built from ``unfold``; the input size is fixed at construction. Shapes: (N, C, H, W) ->
    unfold (N, C*k*k, L=H'*W') -> per-position matmul with weight (L, out, C*k*k) -> (N, out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, size: int, kernel: int, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel, self.padding = in_channels, out_channels, kernel, padding
        self.size, self.out_size = size, size + 2 * padding - kernel + 1
        positions, fan_in = self.out_size ** 2, in_channels * kernel * kernel
        self.weight = nn.Parameter(torch.empty(positions, out_channels, fan_in))
        self.bias = nn.Parameter(torch.zeros(out_channels, self.out_size, self.out_size)) if bias else None
        nn.init.uniform_(self.weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))  # PyTorch's conv default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise NinError(f"the locally connected layer was built for {self.size}x{self.size} maps, got "
                           f"{x.shape[-2]}x{x.shape[-1]}: build the model with input_size = your images' size")
        patches = F.unfold(x, self.kernel, padding=self.padding)  # (N, C*k*k, L)
        out = torch.einsum("ncl,loc->nol", patches, self.weight)
        out = out.reshape(x.shape[0], self.out_channels, self.out_size, self.out_size)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, size={self.size}, kernel_size={self.kernel}, "
                f"padding={self.padding}")


def _initialise(model: NIN, init: str) -> None:
    """kaiming: He-normal (fan-out) weights, zero biases; the class-map layer gets a small std and a
    small positive bias so that its ReLU starts alive (dead maps before GAP = loss stuck at ln C).
    gaussian: the authors' N(0, 0.05) weights, zero biases. torch: PyTorch's defaults (the seed)."""
    if init == "torch":
        return
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, LocallyConnected2d))]
    for module in convs:
        if init == "gaussian":
            nn.init.normal_(module.weight, std=0.05)
        elif isinstance(module, LocallyConnected2d):  # He-normal over its fan-out, as for convolutions
            nn.init.normal_(module.weight, std=math.sqrt(2.0 / (module.out_channels * module.kernel ** 2)))
        else:
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    if init == "kaiming":
        last = convs[-1]
        nn.init.normal_(last.weight, std=0.01)
        if last.bias is not None:
            nn.init.constant_(last.bias, 0.1 if model.head == "gap" else 0.0)


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


class _StopForward(Exception):
    pass


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, LocallyConnected2d))]


@torch.no_grad()
def _layer_output(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The output of ``layer`` (before its ReLU) when ``images`` go through ``model``."""
    captured = []

    def hook(_module, _inputs, output):
        captured.append(output)
        raise _StopForward

    handle = layer.register_forward_hook(hook)
    try:
        model(images)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


@torch.no_grad()
def fit_init_to_data(model: nn.Module, images: torch.Tensor, *, target_std: float = 1.0, center: bool = True,
                     iterations: int = 3) -> None:
    """Data-dependent initialisation in the spirit of LSUV (Mishkin & Matas, ICLR 2016): layer by layer,
    in the order the data meets them, set the biases so that each output channel has mean zero on a batch
    of real images (``center``: half of its ReLUs alive, the class maps before global average pooling
    included), then scale weights and biases so that the layer's outputs have std ``target_std``.

    One pass per layer already hits the targets (a layer's output is linear in its weight and bias); the
    later ``iterations`` only polish it. The layers are walked in order on the outputs of those already
    fitted, so each is computed once per iteration (not a forward pass from the input per layer). They are kept because the README's measured runs used them and a
    plain network's first steps amplify even tiny differences.

    Its first gradients are large: ``nin train`` uses it together with gradient-norm clipping (alone, it
    killed the class maps of nin_mnist in benchmarks/first_steps.py --ablation). The weights keep their
    directions (the ``init`` drawn before), the network keeps its layers; only the scales change."""
    training = model.training
    model.eval()  # no dropout: the statistics of the function the network computes
    try:
        inputs = images
        for module in _in_forward_order(model):  # each layer fitted on the outputs of the layers already fitted
            if isinstance(module, (nn.Conv2d, nn.Linear, LocallyConnected2d)):
                for _ in range(iterations):
                    _fit_layer(module, module(inputs).float(), target_std, center)
            inputs = module(inputs)
    finally:
        model.train(training)


WHITENING_PATCHES = 200_000  # enough image patches for a stable covariance (at most a few hundred dimensions)


@torch.no_grad()
def whiten_first_layer(model: nn.Module, images: torch.Tensor, eps: float = 5e-4) -> int:
    """A patch-whitening start for the first convolution (airbench, after hlb-CIFAR10): its filters become
    the eigenvectors of the covariance of the image patches it sees, each divided by the square root of
    its eigenvalue (plus ``eps``), in +/- pairs so that a ReLU keeps both signs, the strongest directions
    first. Its outputs on such patches are then uncorrelated with unit variance. With more filters than
    two per direction the rest keep their random start; with fewer, only the strongest directions are
    used. The filters stay trainable. Returns how many filters were set."""
    conv = _weight_layers(model)[0]
    if not isinstance(conv, nn.Conv2d):
        raise NinError(f"whitening needs a convolution first, not {type(conv).__name__}")
    per_image = _output_positions(conv, images.shape[-1])
    images = images[:max(1, WHITENING_PATCHES // per_image)].float()
    patches = F.unfold(images, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # (N, C*k*k, L)
    patches = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    filters = (eigenvectors / (eigenvalues.clamp(min=0) + eps).sqrt()).T.flip(0)  # strongest first, one a row
    count = min(conv.out_channels // 2, len(filters))
    paired = torch.cat([filters[:count], -filters[:count]]).view(2 * count, *conv.weight.shape[1:])
    conv.weight[:2 * count] = paired.to(conv.weight.dtype)
    if conv.bias is not None:
        conv.bias[:2 * count] = 0
    return 2 * count


@torch.no_grad()
def identity_init(model: nn.Module) -> int:
    """airbench's identity (dirac) start: in every convolution but the first (the image's) and the last (the
    class maps), the first min(in, out) filters pass their own input channel through (1 at the kernel's
    centre, 0 elsewhere), so that at the start a deeper layer refines rather than scrambles what it gets;
    its other filters keep their random start. Returns how many convolutions were set."""
    convs = [layer for layer in _weight_layers(model) if isinstance(layer, nn.Conv2d)][1:-1]
    for conv in convs:
        nn.init.dirac_(conv.weight[:min(conv.in_channels, conv.out_channels)])
    return len(convs)


def _output_positions(conv: nn.Conv2d, size: int) -> int:
    side = (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    return max(1, side) ** 2


def _in_forward_order(model: NIN) -> list[nn.Module]:
    """The modules a NIN's forward pass runs, in order, as one chain (its stages, then an FC head's layers;
    global average pooling has no weights)."""
    stages = [getattr(model, f"features{index}") for index in range(1, model.num_stages + 1)]
    head = list(model.fc) if model.head != "gap" else []
    return [module for stage in stages for module in stage] + head


def _fit_layer(layer: nn.Module, out: torch.Tensor, target_std: float, center: bool) -> None:
    """Shift the layer's bias so that each output channel of ``out`` (its output now) has mean zero, then
    scale weight and bias so that the output's std is ``target_std``."""
    if center and layer.bias is not None:
        mean = out.mean(dim=[d for d in range(out.dim()) if d != 1])
        layer.bias.sub_(mean.view(-1, *[1] * (layer.bias.dim() - 1)))
        out = out - mean.view(1, -1, *[1] * (out.dim() - 2))
    std = float(out.std())
    if std > 0:
        layer.weight.mul_(target_std / std)
        if layer.bias is not None:
            layer.bias.mul_(target_std / std)
