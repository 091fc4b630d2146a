"""Training and inference throughput: the seed-style PyTorch loop (a) against the toolkit's path (b).

    .venv/bin/python benchmarks/throughput.py [--rounds 3] [--steps 10] [--device cpu]

(a) the seed's model class, torchvision's CIFAR10 read from files in the real on-disk format
    (random pixels), per-image RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize,
    a DataLoader with workers, fp32, NCHW, batch 128.
(b) nin's path: nin_cifar10, the data as one uint8 tensor on the device, batched augmentation,
    channels_last (and bf16 autocast on CUDA), the trainer's own step; on a CPU fp32, like (a), whatever
    ``--amp auto`` would pick there: ``--cpu-bf16`` adds the bf16 path as (c).
Both run in the same process, alternating over several rounds; the table reports medians, the ratios
(b)/(a) and the share of this machine's measured fp32 matmul peak that (b) reaches.
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nin.config import TrainConfig
from nin.hardware import autocast, resolve_device
from nin.hardware import describe_hardware
from nin.models import create_model
from nin.distributed import World
from nin.rundir import RunFolder
from nin.train import Run
from seed_model import SeedNIN

BATCH = 128


def write_cifar10(root: Path, per_batch: int) -> None:
    """CIFAR-10's python format: five training pickles, a test pickle and the meta file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def seed_loader(root: Path, train: bool, workers: int):
    from torchvision import datasets, transforms

    class CIFAR10Files(datasets.CIFAR10):  # our files carry random pixels, so not the official MD5s
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:  # the same as torchvision's, less its MD5 check
            with open(root / self.base_folder / self.meta["filename"], "rb") as stream:
                self.classes = pickle.load(stream, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: index for index, name in enumerate(self.classes)}

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    steps += [transforms.ToTensor(), transforms.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))]
    dataset = CIFAR10Files(str(root), train=train, transform=transforms.Compose(steps))
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH if train else 1024, shuffle=train,
                                       num_workers=workers, drop_last=train, persistent_workers=workers > 0)


def time_seed_training(model, optimizer, batches, steps: int, device) -> float:
    model.train()
    iterator = iter(batches)
    started, seen = None, 0
    for index in range(steps + 1):  # the first step warms up (and starts the workers); not timed
        if index == 1:
            _sync(device)
            started = time.perf_counter()
        images, labels = next(iterator)
        images, labels = images.to(device), labels.to(device)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(labels) if index else 0
    _sync(device)
    return seen / (time.perf_counter() - started)


def time_toolkit_training(run: Run, steps: int) -> float:
    run.model.train()
    batches = run.data.train.batches()
    for index in range(steps + 1):
        if index == 1:
            _sync(run.device)
            started = time.perf_counter()
        images, labels = next(batches)
        run.set_schedule()
        run.step(images, labels)
    _sync(run.device)
    return steps * BATCH / (time.perf_counter() - started)


@torch.inference_mode()
def time_inference(model, batches, device, limit: int, to_device=True, amp: bool = False) -> float:
    """Images/s over up to ``limit`` batches, data loading included, after one warm-up batch."""
    model.eval()
    device = torch.device(device)
    images, _ = next(iter(batches))
    with autocast(device, amp):
        model(images.to(device) if to_device else images)  # warm-up: allocations, kernel choices
        _sync(device)
        started, seen = time.perf_counter(), 0
        for index, (images, _) in enumerate(batches):
            model(images.to(device) if to_device else images)
            seen += len(images)
            if index + 1 >= limit:
                break
        _sync(device)
    return seen / (time.perf_counter() - started)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def conv_flops_per_image(model: nn.Module, size: int = 32) -> float:
    """Forward FLOPs (2 x multiply-adds) of the convolutions and linear layers for one image."""
    total = 0
    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += 2 * output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features
    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return float(total)


def matmul_peak_gflops(device, dtype: torch.dtype = torch.float32, sizes=(1024, 2048, 4096), rounds: int = 5,
                       seconds_per_round: float = 0.25) -> float:
    """The machine's matmul peak in ``dtype``: the best rate of square products over several sizes and
    rounds. One size timed once reads too low (a neighbour on a shared machine, a clock dip, a size the
    library handles badly), and a path then appears to run above 100% of the peak."""
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        a @ b  # the library's first call (packing, kernel choice) is not timed
        one = _timed(lambda: a @ b, device)
        repeats = max(1, round(seconds_per_round / one))
        for _ in range(rounds):
            best = max(best, 2 * size ** 3 * repeats / _timed(lambda: [a @ b for _ in range(repeats)], device) / 1e9)
        if one > 2 * seconds_per_round:  # a slow precision on this machine (bf16 without hardware support)
            break
    return best


def _timed(work, device) -> float:
    _sync(device)
    started = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per round and path")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the seed-style loop")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=10_000, help="images per CIFAR file written")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="also time (b) with bf16 autocast on the CPU (pays only on CPUs with AMX/AVX512-BF16)")
    args = parser.parse_args()
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_cifar10(root, args.images // 5)
        seed_model = SeedNIN().to(device)
        seed_optimizer = torch.optim.SGD(seed_model.parameters(), lr=0.01, momentum=0.9)
        seed_train, seed_test = seed_loader(root, True, args.workers), seed_loader(root, False, args.workers)
        config = TrainConfig(model="nin_cifar10", dataset="cifar10", root=str(root), batch_size=BATCH,
                             epochs=1, lr=0.01, device=str(device), amp="auto" if device.type == "cuda" else "off",
                             dropout_warmup=False,  # the seed loop's dropout from its first step
                             progress=False, tensorboard=False,
                             out=str(root / "run"))
        run = Run(config, None, lambda *_: None, World(), RunFolder.claim(config.out, "", None))
        variants = {"b": run.amp}  # on CUDA (b) runs under bf16 autocast, as `nin train` does there
        if args.cpu_bf16 and device.type == "cpu":
            variants["c"] = True
        results = {f"{key}_{kind}": [] for kind in ("train", "infer") for key in ("a", *variants)}
        for round_index in range(args.rounds):  # alternate (a) and (b): the machine's noise hits both
            results["a_train"].append(time_seed_training(seed_model, seed_optimizer, seed_train, args.steps, device))
            for key, amp in variants.items():
                run.amp = amp
                results[f"{key}_train"].append(time_toolkit_training(run, args.steps))
            results["a_infer"].append(time_inference(seed_model, seed_test, device, limit=4))
            for key, amp in variants.items():
                results[f"{key}_infer"].append(time_inference(run.model, run.data.test, device, limit=4,
                                                              to_device=False, amp=amp))
            print(f"round {round_index + 1}: " + "  ".join(f"{k} {v[-1]:.1f}/s" for k, v in results.items()),
                  flush=True)
    peaks = {"fp32": matmul_peak_gflops(device)}
    if any(variants.values()):
        peaks["bf16"] = matmul_peak_gflops(device, torch.bfloat16)
    precisions = {key: "bf16" if amp else "fp32" for key, amp in variants.items()}
    report(results, device, conv_flops_per_image(create_model("nin_cifar10")), peaks, precisions)


def report(results: dict, device, flops: float, peaks: dict[str, float], precisions: dict[str, str]) -> None:
    """The table; each of nin's paths gets its share of the measured matmul peak of its own precision."""
    median = {key: statistics.median(values) for key, values in results.items()}
    print("\n| path | training images/s | inference images/s |")
    print("|---|---:|---:|")
    print(f"| (a) seed-style loop | {median['a_train']:.1f} | {median['a_infer']:.1f} |")
    print(f"| (b) nin | {median['b_train']:.1f} | {median['b_infer']:.1f} |")
    print(f"| ratio (b)/(a) | **{median['b_train'] / median['a_train']:.2f}x** | "
          f"**{median['b_infer'] / median['a_infer']:.2f}x** |")
    if "c_train" in median:
        print(f"| (b) nin, bf16 autocast on the CPU | {median['c_train']:.1f} | {median['c_infer']:.1f} |")
        print(f"| ratio (b, bf16)/(a) | {median['c_train'] / median['a_train']:.2f}x | "
              f"{median['c_infer'] / median['a_infer']:.2f}x |")
    print(f"\nNIN-CIFAR forward: {flops / 1e9:.3f} GFLOP/image; training ~3x that (forward + backward)")
    for key, precision in precisions.items():
        train_gflops = 3 * flops * median[f"{key}_train"] / 1e9
        print(f"({key}) trains at {train_gflops:.1f} GFLOP/s = {100 * train_gflops / peaks[precision]:.0f}% of this "
              f"machine's {precision} matmul peak ({peaks[precision]:.1f} GFLOP/s: the best of square matmuls of "
              "1024-4096, 5 rounds each)")
    print(f"medians of {len(results['a_train'])} alternating rounds; hardware: {describe_hardware(str(device))}")


if __name__ == "__main__":
    main()
