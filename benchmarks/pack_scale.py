"""Training from a pack against training from memory, at the shape of ImageNet-64 (1,281,167 images of
3x64x64, 1,000 classes: 15.7 GB of pixels), on one machine.

    .venv/bin/python benchmarks/pack_scale.py                           # the full shape (writes 15.7 GB)
    .venv/bin/python benchmarks/pack_scale.py --images 20000 --steps 3  # a quick look

1. Packs a synthetic data set of that shape (random pixels: the speed does not depend on them) with nin's
   own pack writer into --out, timed; a pack already there is reused (and a stopped one resumed).
2. Trains --model on batches of --batch for --steps steps (after one untimed step), alternating --rounds
   times between (a) the first --memory-images images held in memory as one tensor, as nin holds a data
   set that fits, and (b) the whole pack through its memory map, random batches over all of it: the same
   loader, augmentation (shifts, flips) and SGD step.
3. Prints images/s of each (medians), the ratio (b)/(a), and the process's peak resident memory, of which
   anonymous (held by the process) and file-backed (the page cache's mapped pages, given back on demand).
4. Checks `nin train`'s memory estimate of a training step (`training_step_bytes`) against the step's
   measured memory: the peak of the process's anonymous resident memory during the first round of (a)
   (sampled every few milliseconds), less what it held before that round.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

from nin.data import DeviceLoader, Normalize, load_dataset
from nin.data.pack import Source, write_sources
from nin.data.packed import FORMAT, VERSION
from nin.hardware import describe_hardware, readable_bytes
from nin.models import count_parameters, create_model, training_step_bytes

IMAGENET64 = 1_281_167


def synthetic_source(count: int, size: int, classes: int) -> Source:
    """Random images and labels, each chunk a function of its start alone (so a stopped pack resumes)."""
    def read(start: int, stop: int):
        rng = np.random.default_rng(start)
        images = torch.from_numpy(rng.integers(0, 256, (stop - start, 3, size, size), dtype=np.uint8))
        labels = torch.arange(start, stop) * 7919 % classes
        return images, labels, []
    return Source(count, [f"class{i:04d}" for i in range(classes)], (3, size, size), read)


def make_pack(out: Path, images: int, size: int, classes: int) -> float:
    settings = {"format": FORMAT, "version": VERSION, "dataset": "folder", "root": f"synthetic:{images}",
                "shape": [3, size, size]}
    started = time.perf_counter()
    write_sources(out, settings, {"train": lambda: synthetic_source(images, size, classes),
                                  "test": lambda: synthetic_source(1_000, size, classes)})
    return time.perf_counter() - started


def images_per_second(loader: DeviceLoader, model: torch.nn.Module, steps: int, epoch: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader.set_epoch(epoch)
    batches = loader.batches()
    started = None
    for step in range(steps + 1):  # the first step (allocations, page faults of the model) is not timed
        if step == 1:
            started = time.perf_counter()
        images, labels = next(batches)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    batches.close()
    return steps * loader.batch_size / (time.perf_counter() - started)


def memory() -> dict[str, float]:
    """This process's peak resident memory and its current anonymous and file-backed parts, in GB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 2 ** 20
    return fields


class AnonymousPeak:
    """The highest anonymous resident memory (in GB) seen while the block runs, sampled by a thread: the
    kernel keeps a peak only of all resident memory, which here includes the pack's mapped pages."""

    def __enter__(self):
        self.before = self.peak = memory()["RssAnon"]
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, memory()["RssAnon"])
            time.sleep(0.005)

    def __exit__(self, *_):
        self.running = False
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=IMAGENET64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--memory-images", type=int, default=50_000, help="(a): the first N images, in memory")
    parser.add_argument("--model", default="nin_cifar10", help="a nin variant (the CIFAR widths by default)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/pack-imagenet64")
    args = parser.parse_args()
    torch.manual_seed(0)

    pack = Path(args.out)
    seconds = make_pack(pack, args.images, args.image_size, args.classes)
    train = load_dataset("folder", pack, "train")
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    in_memory = train.images[:args.memory_images]  # read once into one tensor: the in-memory path
    loaders = {"(a) in memory": DeviceLoader(in_memory, train.labels[:args.memory_images], normalize,
                                             batch_size=args.batch, train=True, translate=4, flip=True),
               "(b) from the pack": DeviceLoader(train.images, train.labels, normalize, batch_size=args.batch,
                                                 train=True, translate=4, flip=True)}
    model = create_model(args.model, num_classes=args.classes, in_channels=3)
    rates = {name: [] for name in loaders}
    step_memory = AnonymousPeak()
    for round_ in range(args.rounds):
        for name, loader in loaders.items():
            first = round_ == 0 and name.startswith("(a)")  # the first steps: nothing allocated for them yet
            with step_memory if first else contextlib.nullcontext():
                rates[name].append(images_per_second(loader, model, args.steps, epoch=round_))
    used = memory()
    estimate = training_step_bytes(args.model, {"num_classes": args.classes, "in_channels": 3}, args.batch, 3,
                                   args.image_size)
    measured = (step_memory.peak - step_memory.before) * 2 ** 30

    pixels = train.images.numel() / 2 ** 30
    print(f"\n### Training from a pack: {len(train.labels):,} images of 3x{args.image_size}x{args.image_size} "
          f"({pixels:.1f} GB of pixels), {args.model} ({count_parameters(model):,} parameters), batch {args.batch}\n")
    print(f"pack ready in {seconds:.0f} s (written, or found complete by an earlier run); {args.rounds} rounds of "
          f"{args.steps} steps each\n")
    print("| data | images/s (median) | rounds |")
    print("|---|---:|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    ratio = statistics.median(rates["(b) from the pack"]) / statistics.median(rates["(a) in memory"])
    print(f"\n(b)/(a) = {ratio:.2f}; peak resident memory {used['VmHWM']:.1f} GB (now {used['RssAnon']:.1f} GB "
          f"anonymous, {used['RssFile']:.1f} GB mapped file pages) for {pixels:.1f} GB of pixels")
    print(f"training step's memory: estimated {readable_bytes(estimate)} (nin train's memory line), measured "
          f"{readable_bytes(measured)} (anonymous peak during the first steps, less before them): "
          f"estimate/measured = {estimate / measured:.2f}")
    print(f"hardware: {describe_hardware('cpu')}", flush=True)


if __name__ == "__main__":
    main()
