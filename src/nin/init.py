"""How a network's weights start: the schemes a model is built with (``init``: kaiming, gaussian, torch), and
the starts a run may add from its data (LSUV-like fitting, patch whitening) or from airbench (identity)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import NinError
from .layers import WEIGHT_LAYERS, LocallyConnected2d

INITS = ("kaiming", "gaussian", "torch")


def initialise(model: nn.Module, init: str) -> None:
    """kaiming: He-normal (fan-out) weights, zero biases; the class-map layer gets a small std and a
    small positive bias so that its ReLU starts alive (dead maps before GAP = loss stuck at ln C).
    gaussian: the authors' N(0, 0.05) weights, zero biases. torch: PyTorch's defaults (the seed)."""
    if init == "torch":
        return
    convs = [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
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


class _StopForward(Exception):
    pass


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]


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
    fitted, so each is computed once per iteration (not a forward pass from the input per layer). They are
    kept because the README's measured runs used them and a plain network's first steps amplify even tiny
    differences.

    Its first gradients are large: ``nin train`` uses it together with gradient-norm clipping (alone, it
    killed the class maps of nin_mnist in benchmarks/first_steps.py --ablation). The weights keep their
    directions (the ``init`` drawn before), the network keeps its layers; only the scales change."""
    training = model.training
    model.eval()  # no dropout: the statistics of the function the network computes
    try:
        inputs = images
        for module in _in_forward_order(model):  # each layer fitted on the outputs of the layers already fitted
            if isinstance(module, WEIGHT_LAYERS):
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


def _in_forward_order(model: nn.Module) -> list[nn.Module]:
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
