"""The paper's input preprocessing, as drop-in replacements for ``nin.data.Normalize``.

NIN (section 4) preprocesses as Goodfellow et al.'s maxout paper did, with pylearn2:
CIFAR-10 and CIFAR-100 with global contrast normalisation then ZCA whitening (``GcnZca``), SVHN with
local contrast normalisation (``Lcn``). ``Standardize`` is the toolkit's per-channel standardisation
(``Normalize``) under the same interface.

Every preprocessor has what ``Normalize`` has, so it drops into ``DeviceLoader`` and the trainer:

- ``Kind.fit(images_uint8 (N, C, H, W)) -> instance`` (a classmethod; fitted on training images only),
- ``instance(uint8 batch on any device) -> float32 batch`` on the batch's device, same shape,
- ``instance.state_dict() -> dict`` of plain lists, floats, strings and CPU tensors (what
  ``torch.load(weights_only=True)`` reads back), always with a ``"kind"`` key,

plus ``Kind.from_state(state)`` (the exact inverse: the same outputs, bit for bit), ``kind`` (its name)
and ``to_module()`` (an ``nn.Module`` computing the same function with its tensors as buffers, for
exports that put the preprocessing inside the model). ``make_preprocess(kind, images)`` and
``preprocess_from_state(state)`` are the factories; the latter also reads the ``{"mean", "std"}``
state of a plain ``Normalize`` (every checkpoint written so far).

This module is the one home of preprocessing, and "preprocess" its name inside the package. Two public
names keep the spelling they were released with, so that code and files written for them keep working:
a trained model's ``ModelInfo.normalize()`` (its fitted preprocessing, ``ModelInfo.preprocess``), and the
``"normalization"`` key of checkpoints and of standardize exports' JSON.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch
from torch import nn

from ..kinds import PREPROCESS_KINDS as KINDS
from ..errors import NinError

# The ZCA matrix is (D, D) and its covariance is accumulated in float64: D = 12,288 (3x64x64) is already a
# 1.2 GB covariance and a minutes-long eigendecomposition; beyond that whitening the whole image is not sensible.
MAX_ZCA_DIM = 12_288


def _check_images(images: torch.Tensor, what: str) -> None:
    if not hasattr(images, "shape") or getattr(images, "ndim", None) != 4:  # a tensor, or a pack's images
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise NinError(f"{what} takes a batch of images (N, C, H, W), got {shape}")


# --- standardisation (the toolkit's default) --------------------------------------------------------

FIT_CHUNK_BYTES = 64 * 2 ** 20  # a fit's float64 copy of the images, a chunk at a time


def rows_per_chunk(images: torch.Tensor) -> int:
    """Images a fit converts to float64 at once: a fixed count would not do (8,192 images of 3x64x64 are
    0.8 GB, of 3x224x224 10 GB, with as much again for their squares)."""
    return max(1, FIT_CHUNK_BYTES // (8 * max(1, math.prod(images.shape[1:]))))


class Normalize:
    """Per-channel (x - mean) / std with mean and std on the 0..1 scale; fitted on training images."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def fit(cls, images: torch.Tensor, chunk: int | None = None) -> "Normalize":
        channels = images.shape[1]
        total = torch.zeros(channels, dtype=torch.float64)
        squares = torch.zeros(channels, dtype=torch.float64)
        chunk = chunk or rows_per_chunk(images)
        for start in range(0, len(images), chunk):  # chunked: a float copy of SVHN would be 7 GB
            part = images[start:start + chunk].to(torch.float64).div_(255.0)
            total += part.sum(dim=(0, 2, 3))
            squares += part.square_().sum(dim=(0, 2, 3))  # in place: one float64 copy at a time
        count = images.numel() / channels
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
        return cls(mean.tolist(), std.tolist())

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        mean, scale = self._constants(images_uint8.device)
        return (images_uint8.float() - mean) * scale

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std) on the 0..255 scale, made once per device: no host-to-device copy per batch."""
        if device not in self._on_device:
            shape = (1, -1, 1, 1)
            mean = torch.tensor(self.mean, device=device).view(shape) * 255.0
            scale = 1.0 / (torch.tensor(self.std, device=device).view(shape) * 255.0)
            self._on_device[device] = (mean, scale)
        return self._on_device[device]

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}


class Standardize(Normalize):
    """Per-channel ``(pixels / 255 - mean) / std``, mean and std fitted on the training images: exactly
    ``nin.data.Normalize`` (a subclass, so code that reads ``.mean`` and ``.std`` keeps working), plus the
    preprocessing interface. Its state is Normalize's plus ``"kind"``."""

    kind = "standardize"

    def state_dict(self) -> dict:
        return {"kind": self.kind, **super().state_dict()}

    @classmethod
    def from_state(cls, state: dict) -> "Standardize":
        return cls(state["mean"], state["std"])

    def to_module(self) -> nn.Module:
        return _StandardizeModule(self.mean, self.std)


class _StandardizeModule(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(shape) * 255.0)
        self.register_buffer("scale", 1.0 / (torch.tensor([float(s) for s in std]).view(shape) * 255.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) * self.scale


# --- global contrast normalisation + ZCA whitening (CIFAR-10, CIFAR-100) ----------------------------

def global_contrast_normalize(x: torch.Tensor, scale: float = 55.0, min_divisor: float = 1e-8) -> torch.Tensor:
    """Per row of ``x`` (N, D): subtract the row's mean, then scale the row to Euclidean norm ``scale``.

    This is pylearn2's ``global_contrast_normalize(X, scale=55., subtract_mean=True, use_std=False,
    sqrt_bias=0., min_divisor=1e-8)``, the call of the maxout paper's CIFAR-10 script (``GlobalContrast
    Normalization(scale=55.)`` followed by ``ZCA()``, which NIN copied): ``x <- scale * (x - mean) /
    sqrt(sum((x - mean)^2))``; a row whose divisor ``norm / scale`` is below ``min_divisor`` (a flat
    image) is only centred, so it becomes zeros, never NaN. Note it is the norm, not the standard
    deviation: for CIFAR's D = 3072 the pixels end up with RMS 55 / sqrt(3072) = 0.99, i.e. unit scale,
    which is why Goodfellow et al. chose 55. The result does not depend on the pixels' scale (0..1 or
    0..255)."""
    x = x - x.mean(dim=1, keepdim=True)
    divisor = x.square().sum(dim=1, keepdim=True).sqrt() / scale
    divisor = torch.where(divisor < min_divisor, torch.ones_like(divisor), divisor)
    return x / divisor


def _gcn_zca(images: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor, shape: tuple[int, int, int],
             gcn: bool, scale: float, min_divisor: float) -> torch.Tensor:
    """The transform itself, shared by ``GcnZca.__call__`` and its module (so both give equal outputs)."""
    n = images.shape[0]
    x = images.reshape(n, -1).float()
    if gcn:
        x = global_contrast_normalize(x, scale, min_divisor)
    return torch.mm(x - mean, whiten).view(n, shape[0], shape[1], shape[2])


class GcnZca:
    """Global contrast normalisation of each image, then ZCA whitening fitted on the training images.

    **GCN** (``gcn=True``): each image, all channels together as one vector, is centred and scaled to
    Euclidean norm ``scale`` = 55 (see ``global_contrast_normalize``: pylearn2's settings in the maxout
    paper, use_std=False, sqrt_bias=0).

    **ZCA** (pylearn2's ``ZCA(filter_bias=0.1)``): on the GCN'd training vectors, the mean ``m`` and the
    (biased, 1/N) covariance ``S``; then ``W = E diag((l + b)^-1/2) E^T`` from ``S + b I = E diag(l + b) E^T``
    with the filter bias ``b``; an image ``x`` becomes ``(x - m) W``. With ``b = 0`` the training data's
    covariance becomes the identity (on the subspace the data spans: GCN removes every image's mean, so
    the constant direction has variance 0 and is dropped, not divided by 0); with ``b > 0`` each
    principal direction of variance ``l`` keeps variance ``l / (l + b)``, shrinking the noisy low-variance
    directions: the whitened covariance is ``S (S + b I)^-1``. ``b = 0.1`` is the maxout/NIN value for
    CIFAR (after GCN the average variance per dimension is about 1).

    Fitting: two passes over the uint8 images in chunks of ``chunk`` (the mean, then the covariance as
    a sum of ``X_chunk^T X_chunk`` in float64), so 50,000 CIFAR images never exist as one 50,000 x 3072
    float64 copy; then ``torch.linalg.eigh`` in float64. It runs where the images are (or on ``device``):
    about half a minute for CIFAR on two CPU cores, a second or two on a GPU. Applying: GCN and one
    (N, D) x (D, D) float32 matmul on the batch's device; the matrix is moved to a device once and kept.
    The state holds ``mean`` (D,) and ``whiten`` (D, D) as float32 tensors (37.7 MB for CIFAR).
    """

    kind = "gcn_zca"

    def __init__(self, mean: torch.Tensor, whiten: torch.Tensor, shape: Sequence[int], *, gcn: bool = True,
                 scale: float = 55.0, filter_bias: float = 0.1, min_divisor: float = 1e-8):
        self.shape = tuple(int(s) for s in shape)
        dim = math.prod(self.shape)
        self.mean = torch.as_tensor(mean).detach().to("cpu", torch.float32).reshape(dim).contiguous()
        self.whiten = torch.as_tensor(whiten).detach().to("cpu", torch.float32).reshape(dim, dim).contiguous()
        self.gcn, self.scale = bool(gcn), float(scale)
        self.filter_bias, self.min_divisor = float(filter_bias), float(min_divisor)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def fit(cls, images: torch.Tensor, chunk: int | None = None, *, gcn: bool = True, scale: float = 55.0,
            filter_bias: float = 0.1, min_divisor: float = 1e-8,
            device: str | torch.device | None = None) -> "GcnZca":
        _check_images(images, "GcnZca.fit")
        count, shape = int(images.shape[0]), tuple(int(s) for s in images.shape[1:])
        dim = math.prod(shape)
        if dim > MAX_ZCA_DIM:
            raise NinError(f"ZCA whitening of {shape[0]}x{shape[1]}x{shape[2]} images needs a {dim} x {dim} "
                           f"matrix; it is offered up to {MAX_ZCA_DIM} values per image (3x64x64): use "
                           "preprocessing lcn or standardize for larger images")
        if count < 2:
            raise NinError(f"ZCA whitening is fitted on the training images; got {count}")
        if filter_bias < 0:
            raise NinError(f"the ZCA filter bias must be 0 or more, got {filter_bias}")
        device = torch.device(device) if device is not None else images.device

        chunk = chunk or rows_per_chunk(images)

        def vectors():  # GCN'd float64 rows, one chunk at a time
            for start in range(0, count, chunk):
                part = images[start:start + chunk].to(device).reshape(-1, dim).to(torch.float64)
                yield global_contrast_normalize(part, scale, min_divisor) if gcn else part

        total = torch.zeros(dim, dtype=torch.float64, device=device)
        for part in vectors():
            total += part.sum(dim=0)
        mean = total / count
        covariance = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        for part in vectors():
            centred = part - mean
            covariance.addmm_(centred.T, centred)
        covariance /= count
        covariance.diagonal().add_(filter_bias)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        # Directions the data does not span (GCN's constant direction, or fewer images than dimensions)
        # have eigenvalue ~0 when the bias is 0: drop them instead of multiplying rounding noise by 1e8.
        floor = eigenvalues.max().clamp_min(0) * dim * torch.finfo(torch.float64).eps * 16
        inverse_sqrt = torch.where(eigenvalues > floor, eigenvalues.clamp_min(floor).rsqrt(),
                                   torch.zeros_like(eigenvalues))
        whiten = (eigenvectors * inverse_sqrt) @ eigenvectors.T
        return cls(mean, whiten, shape, gcn=gcn, scale=scale, filter_bias=filter_bias, min_divisor=min_divisor)

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.mean.to(device), self.whiten.to(device))
        return self._on_device[device]

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        _check_images(images_uint8, "GcnZca")
        if tuple(images_uint8.shape[1:]) != self.shape:
            raise NinError(f"this ZCA whitening was fitted on {self._shape_text()} images, got "
                           f"{'x'.join(map(str, images_uint8.shape[1:]))}")
        mean, whiten = self._tensors(images_uint8.device)
        return _gcn_zca(images_uint8, mean, whiten, self.shape, self.gcn, self.scale, self.min_divisor)

    def _shape_text(self) -> str:
        return "x".join(map(str, self.shape))

    def state_dict(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "gcn": self.gcn, "scale": self.scale,
                "filter_bias": self.filter_bias, "min_divisor": self.min_divisor,
                "mean": self.mean.clone(), "whiten": self.whiten.clone()}

    @classmethod
    def from_state(cls, state: dict) -> "GcnZca":
        return cls(state["mean"], state["whiten"], state["shape"], gcn=state["gcn"], scale=state["scale"],
                   filter_bias=state["filter_bias"], min_divisor=state["min_divisor"])

    def to_module(self) -> nn.Module:
        return _GcnZcaModule(self)

    def __repr__(self) -> str:
        return (f"GcnZca({self._shape_text()}, gcn={self.gcn}, scale={self.scale:g}, "
                f"filter_bias={self.filter_bias:g})")


class _GcnZcaModule(nn.Module):
    def __init__(self, pre: GcnZca):
        super().__init__()
        self.shape, self.gcn, self.scale, self.min_divisor = pre.shape, pre.gcn, pre.scale, pre.min_divisor
        self.register_buffer("mean", pre.mean.clone())
        self.register_buffer("whiten", pre.whiten.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _gcn_zca(images, self.mean, self.whiten, self.shape, self.gcn, self.scale, self.min_divisor)


# --- local contrast normalisation (SVHN) -------------------------------------------------------------

def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """(size, size) Gaussian weights summing to 1, centred on the middle pixel (pylearn2's gaussian_filter)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size // 2)
    weights = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma * sigma))
    return (weights / weights.sum()).to(torch.float32)


def _lcn(images: torch.Tensor, kernel: torch.Tensor, gcn: bool, threshold: float,
         min_divisor: float) -> torch.Tensor:
    """The transform itself, shared by ``Lcn.__call__`` and its module. ``kernel``: (1, 1, k, k)."""
    n, c, h, w = images.shape
    x = images.float()
    if gcn:
        x = global_contrast_normalize(x.reshape(n, -1), 1.0, min_divisor).view(n, c, h, w)
    weights = kernel.expand(c, 1, -1, -1)
    pad = kernel.shape[-1] // 2
    local_mean = nn.functional.conv2d(x, weights, padding=pad, groups=c)
    centred = x - local_mean
    local_std = nn.functional.conv2d(centred.square(), weights, padding=pad, groups=c).clamp_min(0).sqrt()
    image_mean_std = local_std.mean(dim=(2, 3), keepdim=True)
    divisor = torch.maximum(local_std, image_mean_std).clamp_min(threshold)
    return centred / divisor


class Lcn:
    """Local contrast normalisation (Jarrett et al. 2009, as pylearn2's ``LeCunLCN`` used for SVHN by the
    maxout paper and NIN): per image and **per channel**,

    1. (``gcn=True``) first global contrast normalisation of the whole image (scale 1: norm 1, pylearn2's
       SVHN pipeline ``GlobalContrastNormalization`` then ``LeCunLCN``): centring the image makes the zero
       padding at the borders equal to its mean, so the borders are not distorted;
    2. subtractive: ``v = x - G * x`` with ``G`` a ``kernel_size`` x ``kernel_size`` Gaussian (sigma 2,
       weights summing to 1; 7x7 as pylearn2's LeCunLCN default), zero padding;
    3. divisive: ``y = v / max(c, s)`` with the local standard deviation ``s = sqrt(G * v^2)`` and ``c``
       the mean of ``s`` over the image (so only regions of more than average contrast are scaled
       down, and flat images are not blown up), and at least ``threshold`` = 1e-4.

    Per channel, because that is what LeCunLCN does by default (``channels=None``: every channel,
    separately); the local variance is of the centred ``v`` (Jarrett et al.'s definition). A flat or
    linear region (beyond the kernel's reach from anything else) becomes 0. Nothing is fitted: ``fit``
    only exists for the interface; the state is the four settings.
    """

    kind = "lcn"

    def __init__(self, kernel_size: int = 7, sigma: float = 2.0, threshold: float = 1e-4, gcn: bool = True,
                 min_divisor: float = 1e-8):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise NinError(f"the LCN kernel size must be odd and positive, got {kernel_size}")
        if sigma <= 0:
            raise NinError(f"the LCN Gaussian's sigma must be positive, got {sigma}")
        self.kernel_size, self.sigma = int(kernel_size), float(sigma)
        self.threshold, self.gcn, self.min_divisor = float(threshold), bool(gcn), float(min_divisor)
        self.kernel = gaussian_kernel(self.kernel_size, self.sigma).view(1, 1, self.kernel_size, self.kernel_size)
        self._on_device: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def fit(cls, images: torch.Tensor | None = None, **settings) -> "Lcn":
        if images is not None:
            _check_images(images, "Lcn.fit")
        return cls(**settings)

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        _check_images(images_uint8, "Lcn")
        device = images_uint8.device
        if device not in self._on_device:
            self._on_device[device] = self.kernel.to(device)
        return _lcn(images_uint8, self._on_device[device], self.gcn, self.threshold, self.min_divisor)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "kernel_size": self.kernel_size, "sigma": self.sigma,
                "threshold": self.threshold, "gcn": self.gcn, "min_divisor": self.min_divisor}

    @classmethod
    def from_state(cls, state: dict) -> "Lcn":
        return cls(state["kernel_size"], state["sigma"], state["threshold"], state["gcn"], state["min_divisor"])

    def to_module(self) -> nn.Module:
        return _LcnModule(self)

    def __repr__(self) -> str:
        return f"Lcn(kernel_size={self.kernel_size}, sigma={self.sigma:g}, gcn={self.gcn})"


class _LcnModule(nn.Module):
    def __init__(self, pre: Lcn):
        super().__init__()
        self.gcn, self.threshold, self.min_divisor = pre.gcn, pre.threshold, pre.min_divisor
        self.register_buffer("kernel", pre.kernel.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _lcn(images, self.kernel, self.gcn, self.threshold, self.min_divisor)


# --- factories ----------------------------------------------------------------------------------------

_CLASSES = {"standardize": Standardize, "gcn_zca": GcnZca, "lcn": Lcn}


def check_kind(kind) -> type:
    if kind not in _CLASSES:
        raise NinError(f"unknown preprocessing {kind!r}: expected one of {', '.join(KINDS)}")
    return _CLASSES[kind]


def make_preprocess(kind: str, images: torch.Tensor, **settings):
    """Fit the preprocessing ``kind`` (standardize | gcn_zca | lcn) on the training images (uint8 N,C,H,W);
    ``settings`` go to its ``fit`` (e.g. ``filter_bias=0.1``, ``chunk=``, ``device=`` for gcn_zca).

    A ZCA fit (a D x D covariance and its eigendecomposition, D = 3072 for CIFAR) is remembered for the
    process, by the images' bytes and the settings: `nin reproduce` trains many rows on the same
    training images, and each would fit the same matrix again. The state round trip is exact."""
    if kind != "gcn_zca":
        return check_kind(kind).fit(images, **settings)
    key = (_fingerprint(images), tuple(sorted((k, str(v)) for k, v in settings.items())))
    if key not in _FITTED_ZCA:
        if len(_FITTED_ZCA) >= 2:  # a D x D matrix each: keep the last two
            _FITTED_ZCA.pop(next(iter(_FITTED_ZCA)))
        _FITTED_ZCA[key] = GcnZca.fit(images, **settings).state_dict()
    return GcnZca.from_state(_FITTED_ZCA[key])


_FITTED_ZCA: dict[tuple, dict] = {}


def _fingerprint(images: torch.Tensor) -> tuple:
    """The images' shape and a hash of their bytes (read in place, no copy)."""
    array = images.detach().cpu().contiguous().numpy()
    return tuple(array.shape), str(array.dtype), hashlib.sha1(array.data).hexdigest()


def preprocess_from_state(state: dict):
    """The preprocessing a ``state_dict()`` describes. A state without ``"kind"`` is a plain ``Normalize``'s
    ``{"mean", "std"}`` (checkpoints and exports written before the other kinds existed)."""
    if not isinstance(state, dict):
        raise NinError(f"a preprocessing state is a dict, got {type(state).__name__}")
    kind = state.get("kind", "standardize")
    try:
        return check_kind(kind).from_state(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise NinError(f"incomplete {kind} preprocessing state ({type(error).__name__}: {error})") from None
