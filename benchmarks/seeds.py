"""Seed benchmark: train each default recipe that fits this machine with several seeds; does every seed converge?

    .venv/bin/python benchmarks/seeds.py                      # 5 seeds x 2 set-ups, the recipe's epochs
    .venv/bin/python benchmarks/seeds.py --seeds 3 --epochs 2
    .venv/bin/python benchmarks/seeds.py --quick              # a smoke test of this script: 1 epoch on subsets

Two set-ups of the `fashion-mnist` recipe (NIN with BatchNorm):

- ``fashion-mnist``: the recipe as shipped, on the Fashion-MNIST IDX files;
- ``folder``: the image-folder path. 2,000 training and 500 test images of Fashion-MNIST's *test* split
  are written as 28x28 PNG files into ROOT/{train,test}/CLASS/ (a temporary folder unless
  ``--folder-root``), then trained with ``--dataset folder --root ROOT --channels 1 --image-size 28``.

A seed *converged* when its test accuracy exceeds 3x chance and its final training loss lies well below
ln(classes) (under half of it; the loss a network stuck at chance keeps). Prints a Markdown table (set-up,
seed, test accuracy, final training loss, converged, wall time), mean ± std per set-up and the hardware.
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from nin.config import from_dict, load_recipe
from nin.data import load_dataset
from nin.hardware import describe_hardware
from nin.train import fit

RECIPE = "fashion-mnist"
SETUPS = ("fashion-mnist", "folder")
FOLDER_TRAIN, FOLDER_TEST = 2000, 500


def write_fashion_folder(root: Path, train: int = FOLDER_TRAIN, test: int = FOLDER_TEST) -> Path:
    """Fashion-MNIST test images as PNG files: the first ``train`` for training, the next ``test`` for testing."""
    images, labels, classes = load_dataset("fashion-mnist", None, "test")
    folders = [name.replace("/", "-") for name in classes]  # "T-shirt/top" is not a folder name
    for split, rows in (("train", range(train)), ("test", range(train, train + test))):
        for row in rows:
            folder = root / split / folders[int(labels[row])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[row, 0].numpy(), mode="L").save(folder / f"{row:05d}.png")
    return root


def final_train_loss(run_dir: str) -> float:
    with open(Path(run_dir) / "metrics.csv", newline="") as stream:
        return float(list(csv.DictReader(stream))[-1]["train_loss"])


def converged(accuracy: float, loss: float, classes: int) -> bool:
    return accuracy > 3 / classes and loss < 0.5 * math.log(classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per set-up (default 5)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--quick", action="store_true",
                        help="check this script in a minute: 1 epoch on 1,024 training and 512 test images "
                             "(the numbers mean nothing)")
    parser.add_argument("--train-subset", type=int, default=0,
                        help="train on N images: N of Fashion-MNIST's, and N PNG files in the folder")
    parser.add_argument("--test-subset", type=int, default=0,
                        help="test on N images: N of Fashion-MNIST's, and N PNG files in the folder")
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of {', '.join(SETUPS)}")
    parser.add_argument("--folder-root", help="where to write the PNG folder (default: a temporary folder)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", help="auto (bf16 on CUDA and on CPUs with AMX or AVX512-BF16) | bf16 | off")
    parser.add_argument("--out", default=f"runs/seeds-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    setups = [s for s in args.setups.split(",") if s]
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown or args.seeds < 1:
        parser.error(f"unknown set-up {unknown[0]!r}" if unknown else "--seeds must be 1 or more")

    changes = {"device": args.device, "amp": args.amp, "progress": False, "tensorboard": False}
    subsets = {"train_subset": args.train_subset or (1024 if args.quick else 0),
               "test_subset": args.test_subset or (512 if args.quick else 0)}
    if args.quick:
        changes["epochs"] = 1
    if args.epochs:
        changes["epochs"] = args.epochs
    # the folder set is written at the size wanted, rather than written whole and subset
    folder_sizes = (min(FOLDER_TRAIN, subsets["train_subset"] or FOLDER_TRAIN),
                    min(FOLDER_TEST, subsets["test_subset"] or FOLDER_TEST))
    recipe = load_recipe(RECIPE)

    with tempfile.TemporaryDirectory(prefix="nin-seeds-") as scratch:
        folder_root = Path(args.folder_root or scratch)
        if "folder" in setups:
            write_fashion_folder(folder_root, *folder_sizes)
            print(f"wrote {folder_sizes[0]} + {folder_sizes[1]} Fashion-MNIST PNG files into {folder_root}",
                  flush=True)
        rows = []
        for setup in setups:
            data = {**subsets} if setup == "fashion-mnist" else {"dataset": "folder", "root": str(folder_root),
                                                                   "channels": 1, "image_size": 28}
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                out = Path(args.out) / setup / f"seed{seed}"
                config = from_dict({**changes, **data, "seed": seed, "out": str(out)}, base=recipe)
                started = time.perf_counter()
                result = fit(config, log=lambda line: print(f"[{setup} seed {seed}] {line}", flush=True))
                classes = len(result["per_class"])
                loss = final_train_loss(result["run_dir"])
                rows.append((setup, seed, result["accuracy"], loss, converged(result["accuracy"], loss, classes),
                             config.epochs, time.perf_counter() - started))

    print(f"\n### Recipe `{RECIPE}` ({recipe.model}, amp {args.amp}), {args.seeds} seed(s) per set-up\n")
    print("| set-up | seed | epochs | test accuracy | final train loss | converged | wall time |")
    print("|---|---:|---:|---:|---:|:---:|---:|")
    for setup, seed, accuracy, loss, ok, epochs, seconds in rows:
        print(f"| {setup} | {seed} | {epochs} | {100 * accuracy:.2f}% | {loss:.4f} | {'yes' if ok else 'no'} | "
              f"{seconds / 60:.1f} min |")
    print()
    for setup in setups:
        accuracies = [100 * r[2] for r in rows if r[0] == setup]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        converged_count = sum(r[4] for r in rows if r[0] == setup)
        print(f"- **{setup}**: test accuracy {statistics.mean(accuracies):.2f} ± {spread:.2f}% (mean ± std over "
              f"{len(accuracies)} seed(s)); converged {converged_count}/{len(accuracies)}")
    print("\nconverged: test accuracy > 3x chance and final training loss < ln(classes) / 2")
    print(f"hardware: {describe_hardware(args.device)}")


if __name__ == "__main__":
    main()
