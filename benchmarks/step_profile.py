"""Where a training step's time goes: one NIN training step (forward, loss, backward, SGD) profiled by
operator, grouped into kinds (convolutions, BatchNorm, ReLU, pooling, the optimizer, the rest).

    .venv/bin/python benchmarks/step_profile.py                          # nin_mnist_bn, batch 128, 28 px
    .venv/bin/python benchmarks/step_profile.py --model nin_cifar10 --size 32 --channels 3 --amp bf16

The step runs on one fixed batch of random images (no data loading), so it measures the model's work
alone. Prints the mean step time over ``--steps`` steps after a warm-up, and a table of the kinds' shares of
the profiled CPU time (self time of the operators, so nothing is counted twice).
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

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


def kind_of(operator: str) -> str:
    name = operator.lower()
    return next((kind for kind, words in KINDS if any(word in name for word in words)), "other")


def make_step(model: torch.nn.Module, optimizer, images, labels, bf16: bool):
    def step() -> None:
        with autocast(images.device, bf16):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


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
    by_kind: dict[str, float] = defaultdict(float)
    by_operator: dict[str, float] = defaultdict(float)
    for event in profile.key_averages():
        by_kind[kind_of(event.key)] += event.self_cpu_time_total
        by_operator[event.key] += event.self_cpu_time_total
    total = sum(by_kind.values())

    print(f"\n{args.model}, batch {args.batch_size}, {args.channels}x{args.size}x{args.size}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}: {1000 * seconds:.1f} ms a step "
          f"({args.batch_size / seconds:.0f} images/s), mean of {args.steps} steps\n")
    print("| kind | share of the profiled time |")
    print("|---|---:|")
    for kind, micros in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {100 * micros / total:.0f}% |")
    print("\n| operator (top 12) | share |")
    print("|---|---:|")
    for operator, micros in sorted(by_operator.items(), key=lambda item: -item[1])[:12]:
        print(f"| {operator} | {100 * micros / total:.1f}% |")
    print(f"\nhardware: {describe_hardware('cpu')}")


if __name__ == "__main__":
    main()
