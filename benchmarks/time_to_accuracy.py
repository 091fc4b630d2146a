"""Time to accuracy: the toolkit's recipe against the seed's own training script, on Fashion-MNIST or an
image folder (or archive) such as CIFAR-10.

    .venv/bin/python benchmarks/time_to_accuracy.py                      # target 93%, the default recipe (make run)
    .venv/bin/python benchmarks/time_to_accuracy.py --target 0.94 --recipe fashion-mnist-long --device cuda
    .venv/bin/python benchmarks/time_to_accuracy.py --recipe cifar10-fast --dataset folder --root cifar10.tar.gz \
        --target 0.90
    .venv/bin/python benchmarks/time_to_accuracy.py --quick              # a smoke test of this script

(1) nin: the recipe (NIN with BatchNorm; by default `fashion-mnist`, what `make run` trains), evaluated on the test
    set after every epoch. Its clock runs
    from the call to ``fit`` (data loading included) to the end of the first epoch whose test accuracy
    reaches the target; when no epoch does, to the end of the run.
(2) the seed's script: its model class (images zero-padded to 32x32, because its fixed 8x8 average pooling
    needs 32x32 inputs), torchvision's FashionMNIST (an image folder: torchvision's ImageFolder, an archive
    extracted for it) with Pad + ToTensor + Normalize (the training images' per-channel mean and std), a
    shuffled DataLoader of batch 16, cross-entropy, SGD lr 1e-3 momentum 0.9, no augmentation. It trains
    for the wall time of (1), then its test accuracy is measured (the evaluation is not counted).
Both print their accuracy over time; the last table puts the two side by side.
"""
from __future__ import annotations

import argparse
import csv
import struct
import tarfile
import tempfile
import zipfile
import time
from pathlib import Path

import torch
from torch import nn

from nin.config import from_dict, load_recipe
from nin.data import load_dataset
from nin.data.archive import is_archive
from nin.data.datasets import dataset_info
from nin.hardware import describe_hardware
from nin.hardware import resolve_device
from nin.train import fit
from seed_model import SeedNIN

SEED_BATCH, SEED_LR, SEED_MOMENTUM = 16, 1e-3, 0.9
MEAN, STD = 0.286, 0.353  # Fashion-MNIST's pixel mean and std (the seed script's Normalize)


def toolkit_run(recipe: str, changes: dict, out: Path) -> list[tuple[float, float, str]]:
    """Train the recipe; return (seconds since the start, test accuracy, what it is) at the end of every
    epoch, and for a recipe with test-time views (``tta``) the run's result, read with them, at its end."""
    config = from_dict({**changes, "out": str(out), "progress": False, "tensorboard": False}, base=load_recipe(recipe))
    started, epoch_ends = time.perf_counter(), []

    def log(line: str) -> None:
        if line.startswith("epoch "):  # the trainer's line after each epoch's evaluation and checkpoint
            epoch_ends.append(time.perf_counter() - started)
        print(f"[nin] {line}", flush=True)

    result = fit(config, log=log)
    finished = time.perf_counter() - started
    with open(out / "metrics.csv", newline="") as stream:
        accuracies = [float(row["test_acc"] or "nan") for row in csv.DictReader(stream)]  # nan: not evaluated
    points = [(seconds, accuracy, "end of an epoch") for seconds, accuracy in zip(epoch_ends, accuracies)]
    if result.get("tta"):
        points.append((finished, result["accuracy"], f"the result ({result['tta']} TTA)"))
    return points


def write_torchvision_files(root: Path, subsets: dict) -> Path:
    """Fashion-MNIST as torchvision's FashionMNIST class reads it: ROOT/FashionMNIST/raw/*-ubyte (IDX)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, prefix, limit in (("train", "train", subsets["train_subset"]), ("test", "t10k", subsets["test_subset"])):
        data = load_dataset("fashion-mnist", None, split)
        images, labels = data.images[:limit or None, 0], data.labels[:limit or None]
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">4I", 0x803, *images.shape) + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">2I", 0x801, len(labels)) + labels.to(torch.uint8).numpy().tobytes())
    return root


def spread(data, count: int):
    """``count`` items drawn evenly over ``data`` (all of it for 0), as --quick's subsets."""
    return torch.utils.data.Subset(data, torch.linspace(0, len(data) - 1, count).long().tolist()) if count else data


def seed_loaders(dataset: str, root: Path, workers: int, subsets: dict):
    """The seed script's loaders: Fashion-MNIST through torchvision's class, an image folder through ImageFolder."""
    from torchvision import datasets, transforms

    if dataset == "fashion-mnist":
        transform = transforms.Compose([transforms.Pad(2), transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
        train = datasets.FashionMNIST(str(root), train=True, transform=transform)
        test = datasets.FashionMNIST(str(root), train=False, transform=transform)
    else:
        pixels = load_dataset(dataset, root, "train").images.float() / 255  # the training images' statistics
        mean, std = pixels.mean((0, 2, 3)).tolist(), pixels.std((0, 2, 3)).tolist()
        transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(),
                                        transforms.Normalize(mean, std)])
        train = spread(datasets.ImageFolder(str(root / "train"), transform=transform), subsets["train_subset"])
        test = spread(datasets.ImageFolder(str(root / "test"), transform=transform), subsets["test_subset"])
    return (torch.utils.data.DataLoader(train, batch_size=SEED_BATCH, shuffle=True, num_workers=workers),
            torch.utils.data.DataLoader(test, batch_size=256, num_workers=workers))


def seed_data(dataset: str, root: str | None, subsets: dict, folder: Path) -> Path:
    """Where the seed's loaders read the data: torchvision's Fashion-MNIST files written into ``folder``; an
    image folder as it is; an archive extracted into ``folder`` (ImageFolder reads files only)."""
    if dataset == "fashion-mnist":
        return write_torchvision_files(folder, subsets)
    if not is_archive(root):
        return Path(root)
    if str(root).endswith(".zip"):
        with zipfile.ZipFile(root) as archive:
            archive.extractall(folder)
    else:
        with tarfile.open(root) as archive:
            archive.extractall(folder, filter="data")
    tops = [p for p in folder.iterdir() if p.is_dir()]
    return folder if (folder / "train").is_dir() else tops[0]


def seed_run(dataset: str, root: Path, subsets: dict, budget: float, device, workers: int,
             checkpoints: int = 4) -> list[tuple[float, float]]:
    """The seed's loop for ``budget`` seconds (data loading included); its test accuracy at a few points
    on the way, measured while the clock is stopped."""
    torch.manual_seed(0)
    train, test = seed_loaders(dataset, root, workers, subsets)
    channels = next(iter(test))[0].shape[1]
    classes = getattr(test.dataset, "dataset", test.dataset).classes  # under a Subset (--quick) or not
    model = SeedNIN(in_channels=channels, out_channels=len(classes)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=SEED_LR, momentum=SEED_MOMENTUM)
    marks = [budget * (k + 1) / checkpoints for k in range(checkpoints)]
    spent, resumed, points, epoch = 0.0, time.perf_counter(), [], 0
    while marks:
        epoch += 1
        for images, labels in train:
            model.train()
            loss = nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if spent + time.perf_counter() - resumed >= marks[0]:
                spent += time.perf_counter() - resumed
                points.append((spent, test_accuracy(model, test, device)))
                print(f"[seed] epoch {epoch}, {spent / 60:.1f} min of training: test {100 * points[-1][1]:.2f}%",
                      flush=True)
                marks.pop(0)
                resumed = time.perf_counter()
                if not marks:
                    break
    return points


@torch.inference_mode()
def test_accuracy(model, loader, device) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += int((model(images.to(device)).argmax(1).cpu() == labels).sum())
        total += len(labels)
    return correct / total


def report(target: float, recipe: str, title: str, nin_points, seed_points, device) -> None:
    reached = next(((t, acc) for t, acc, _ in nin_points if acc >= target), None)
    print(f"\n### Time to {100 * target:.0f}% test accuracy on {title}\n")
    print("| | minutes | test accuracy |")
    print("|---|---:|---:|")
    for t, acc, what in nin_points:
        print(f"| nin ({recipe}), {what} | {t / 60:.1f} | {100 * acc:.2f}% |")
    for t, acc in seed_points:
        print(f"| seed script (batch 16, lr 1e-3) | {t / 60:.1f} | {100 * acc:.2f}% |")
    if reached:
        print(f"\nnin reached {100 * reached[1]:.2f}% after {reached[0] / 60:.1f} min; in the same time the seed's "
              f"script reached {100 * seed_points[-1][1]:.2f}%")
    else:
        print(f"\nnin did not reach {100 * target:.0f}% (best {100 * max(a for _, a, _ in nin_points):.2f}%); "
              f"in its {nin_points[-1][0] / 60:.1f} min the seed's script reached {100 * seed_points[-1][1]:.2f}%")
    print(f"hardware: {describe_hardware(str(device))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.93, help="test accuracy to reach (default 0.93)")
    parser.add_argument("--recipe", default="fashion-mnist", help="default: fashion-mnist, the recipe make run trains")
    parser.add_argument("--epochs", type=int, default=0, help="the schedule's length (default: the recipe's)")
    parser.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | folder (with --root)")
    parser.add_argument("--root", default=None, help="the image folder, or an archive of one (.tar, .tar.gz)")
    parser.add_argument("--title", default="", help="the data set's name in the table (default: its kind's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto",
                        help="nin's autocast: auto (bf16 on CUDA and on CPUs with AMX or AVX512-BF16) | bf16 | off")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the seed's script")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 2,048 + 1,024 images: checks the script")
    parser.add_argument("--out", default=f"runs/time-to-accuracy-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    if args.dataset not in ("fashion-mnist", "folder") or (args.dataset == "folder") != bool(args.root):
        parser.error("--dataset fashion-mnist, or --dataset folder with --root")
    device = resolve_device(args.device)
    subsets = {"train_subset": 2048 if args.quick else 0, "test_subset": 1024 if args.quick else 0}
    epochs = 1 if args.quick else args.epochs or load_recipe(args.recipe).epochs

    changes = {"epochs": epochs, "device": str(device), "amp": args.amp, "dataset": args.dataset, **subsets,
               **({"root": args.root} if args.root else {})}
    nin_points = toolkit_run(args.recipe, changes, Path(args.out))
    reached = next((t for t, acc, _ in nin_points if acc >= args.target), nin_points[-1][0])
    with tempfile.TemporaryDirectory(prefix="nin-tta-") as folder:
        root = seed_data(args.dataset, args.root, subsets, Path(folder))
        seed_points = seed_run(args.dataset, root, subsets, reached, device, args.workers)
    title = args.title or dataset_info(args.dataset).title
    report(args.target, f"{args.recipe}, {epochs} epochs, amp {args.amp}", title, nin_points, seed_points, device)


if __name__ == "__main__":
    main()
