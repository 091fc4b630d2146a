"""Where a training step's time goes, and how far it is from the machine's limit: one NIN training step
(forward, loss, backward, SGD) profiled by operator, grouped into kinds (convolutions, BatchNorm, ReLU,
pooling, the optimizer, the rest) and directions (forward, backward).

    .venv/bin/python benchmarks/step_profile.py                          # nin_mnist_bn, batch 128, 28 px
    .venv/bin/python benchmarks/step_profile.py --model nin_cifar10 --size 32 --channels 3 --amp bf16
    .venv/bin/python benchmarks/step_profile.py --amp off         # fp32: its share of the fp32 peak

The step runs on one fixed batch of random images (no data loading), so it measures the model's work
alone. Prints the mean step time over ``--steps`` steps after a warm-up, and a table of the kinds' shares of
the profiled CPU time (self time of the operators, so nothing is counted twice), each kind's FLOPs as
``torch.utils.flop_counter`` counts them (convolutions and matrix products; elementwise work counts none),
and the share of the machine's matmul peak that the kind reaches: the peak is measured in the same run, a
large matrix product in the step's precision (fp32, or bf16 under autocast).
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from nin.hardware import autocast, describe_hardware, use_bf16
from nin.models import create_model

KINDS = (  # the first kind whose word the operator's name contains
    ("convolution", ("conv",)),
    ("BatchNorm", ("batch_norm",)),
    ("ReLU", ("relu", "threshold")),
    ("pooling", ("pool",)),
    ("optimizer", ("_foreach", "sgd")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss")),
)


FLOP_KINDS = {"convolution": "convolution", "convolution_backward": "convolution", "_convolution": "convolution",
              "mm": "other", "addmm": "other", "bmm": "other"}  # flop_counter's operator -> our kind
PEAK_SIZE = 2048  # the matmul that measures the peak: large enough to run at the kernels' best rate


def kind_of(operator: str) -> str:
    name = operator.lower()
    return next((kind for kind, words in KINDS if any(word in name for word in words)), "other")


def direction_of(operator: str) -> str:
    name = operator.lower()
    return "backward" if "backward" in name or name.startswith("autograd::") else "forward"


def matmul_peak(bf16: bool, repeats: int = 5) -> float:
    """FLOP/s of a PEAK_SIZE square matrix product in the step's precision (the best of ``repeats``)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * PEAK_SIZE**3 / best


def counted_flops(step) -> dict[tuple[str, str], float]:
    """FLOPs of one step by (kind, direction), as torch.utils.flop_counter counts them."""
    with FlopCounterMode(display=False) as counter:
        step()
    flops: dict[tuple[str, str], float] = defaultdict(float)
    for operator, count in counter.get_flop_counts().get("Global", {}).items():
        name = getattr(operator, "__name__", str(operator).split(".")[-1])  # aten.convolution -> convolution
        flops[(FLOP_KINDS.get(name, "other"), direction_of(name))] += count
    return flops


def make_step(model: torch.nn.Module, optimizer, images, labels, bf16: bool):
    def step() -> None:
        with autocast(images.device, bf16):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def print_kinds(by_kind, total: float, seconds: float, flops, peak: float) -> None:
    """One row per (kind, direction): its share of the time, its time per step, its counted FLOPs and the
    share of the matmul peak it runs at (FLOPs over its own time; - where nothing is counted)."""
    print("| kind | direction | share of the time | ms a step | GFLOP a step | share of the matmul peak |")
    print("|---|---|---:|---:|---:|---:|")
    for (kind, direction), micros in sorted(by_kind.items(), key=lambda item: -item[1]):
        ms = 1000 * seconds * micros / total  # the profiled share of the measured (unprofiled) step time
        count = flops.get((kind, direction), 0.0)
        counted = f"{count / 1e9:.2f} | {100 * count / (ms / 1000) / peak:.1f}%" if count and ms else "- | -"
        print(f"| {kind} | {direction} | {100 * micros / total:.0f}% | {ms:.1f} | {counted} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nin_mnist_bn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device("cpu")
    bf16 = use_bf16(args.amp, device)
    model = create_model(args.model, in_channels=args.channels, dropout=0.0).to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.randn(args.batch_size, args.channels, args.size, args.size).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(0, model.num_classes, (args.batch_size,))
    step = make_step(model, optimizer, images, labels, bf16)
    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - started) / args.steps

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(args.steps):
            step()
    by_kind: dict[tuple[str, str], float] = defaultdict(float)  # microseconds over the profiled steps
    by_operator: dict[str, float] = defaultdict(float)
    for event in profile.key_averages():
        kind = kind_of(event.key)
        by_kind[(kind, "update" if kind == "optimizer" else direction_of(event.key))] += event.self_cpu_time_total
        by_operator[event.key] += event.self_cpu_time_total
    total = sum(by_kind.values())
    flops, peak = counted_flops(step), matmul_peak(bf16)

    print(f"\n{args.model}, batch {args.batch_size}, {args.channels}x{args.size}x{args.size}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}: {1000 * seconds:.1f} ms a step "
          f"({args.batch_size / seconds:.0f} images/s), mean of {args.steps} steps\n")
    print(f"matmul peak in {'bf16' if bf16 else 'fp32'} ({PEAK_SIZE}x{PEAK_SIZE} product, same run): "
          f"{peak / 1e9:.0f} GFLOP/s; the step: {sum(flops.values()) / 1e9:.2f} GFLOP counted, "
          f"{sum(flops.values()) / seconds / 1e9:.0f} GFLOP/s = {100 * sum(flops.values()) / seconds / peak:.1f}% "
          "of the peak\n")
    print_kinds(by_kind, total, seconds, flops, peak)
    print("\n| operator (top 12) | share |")
    print("|---|---:|")
    for operator, micros in sorted(by_operator.items(), key=lambda item: -item[1])[:12]:
        print(f"| {operator} | {100 * micros / total:.1f}% |")
    print(f"\nhardware: {describe_hardware('cpu')}")


if __name__ == "__main__":
    main()
