"""Ways to run the same training step, side by side in one run: the step `nin train` takes (eager, channels-last)
against a contiguous layout, torch.compile of the whole model, and torch.compile of each BatchNorm + ReLU
pair alone (the fusion the step profile asks for, with the convolutions left to oneDNN).

    .venv/bin/python benchmarks/step_variants.py                          # nin_cifar10_bn, batch 128, 32 px, bf16
    .venv/bin/python benchmarks/step_variants.py --model nin_mnist_bn --size 28 --channels 1

Every variant trains the same network on one fixed batch of random images (no data loading); the table gives
each one's mean step time after a warm-up (compilation included in the warm-up, said apart) and its speed
relative to the first row, measured in the same run, so that only the ratios are compared across machines.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nin.hardware import describe_hardware, use_bf16
from nin.models import create_model

sys.path.insert(0, str(Path(__file__).parent))
from step_profile import make_step  # noqa: E402  (the profiled step: the same one here)


class BatchNormReLU(nn.Module):
    """A BatchNorm and the ReLU after it as one module, so that torch.compile can fuse the two alone."""

    def __init__(self, norm: nn.BatchNorm2d):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(x))


def compile_norm_relu_pairs(model: nn.Module) -> nn.Module:
    """Each BatchNorm2d followed by a ReLU in a Sequential replaced by one compiled BatchNormReLU."""
    for name, child in model.named_children():
        if not isinstance(child, nn.Sequential):
            continue
        layers, fused = list(child), []
        while layers:
            layer = layers.pop(0)
            if isinstance(layer, nn.BatchNorm2d) and layers and isinstance(layers[0], nn.ReLU):
                layers.pop(0)
                fused.append(torch.compile(BatchNormReLU(layer), dynamic=False))
            else:
                fused.append(layer)
        setattr(model, name, nn.Sequential(*fused))
    return model


VARIANTS = {  # name -> (channels_last, how the model is wrapped)
    "eager, channels-last (nin train's step)": (True, lambda model: model),
    "eager, contiguous": (False, lambda model: model),
    "torch.compile, channels-last": (True, torch.compile),
    "torch.compile, contiguous": (False, torch.compile),
    "BatchNorm+ReLU pairs compiled, channels-last": (True, compile_norm_relu_pairs),
}


def time_variant(args, channels_last: bool, wrap, bf16: bool) -> tuple[float, float]:
    """(mean seconds a step, seconds of warm-up) of one variant."""
    torch.manual_seed(0)
    model = create_model(args.model, in_channels=args.channels, dropout=0.0)
    images = torch.randn(args.batch_size, args.channels, args.size, args.size)
    if channels_last:
        model, images = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, model.num_classes, (args.batch_size,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    step = make_step(wrap(model), optimizer, images, labels, bf16)
    started = time.perf_counter()
    for _ in range(3):
        step()
    warm_up = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    return (time.perf_counter() - started) / args.steps, warm_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nin_cifar10_bn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    bf16 = use_bf16(args.amp, torch.device("cpu"))

    print(f"\n{args.model}, batch {args.batch_size}, {args.channels}x{args.size}x{args.size}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, mean of {args.steps} steps after 3 of warm-up\n")
    print("| variant | ms a step | speed vs the first row | warm-up (s) |")
    print("|---|---:|---:|---:|")
    baseline = None
    for name, (channels_last, wrap) in VARIANTS.items():
        seconds, warm_up = time_variant(args, channels_last, wrap, bf16)
        baseline = baseline or seconds
        print(f"| {name} | {1000 * seconds:.0f} | {baseline / seconds:.2f}x | {warm_up:.1f} |", flush=True)
    print(f"\nhardware: {describe_hardware('cpu')}")


if __name__ == "__main__":
    main()
