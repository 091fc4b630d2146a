"""Layers of our own, beside torch's: the locally connected layer (a convolution without weight sharing,
the paper's Table 5 comparison)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import NinError


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


WEIGHT_LAYERS = (nn.Conv2d, nn.Linear, LocallyConnected2d)  # the layers whose weights an initialisation sets
