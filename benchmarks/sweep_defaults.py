"""The sweep behind nin/defaults.py's batch size, dropout and learning rate: short runs, where they matter most.

    .venv/bin/python benchmarks/sweep_defaults.py                 # the grid below, validation split
    .venv/bin/python benchmarks/sweep_defaults.py --images 2000 --epochs 5

Each point is ``nin train --dataset fashion-mnist --train-subset IMAGES --epochs EPOCHS --eval-split val``
with one setting changed from the defaults, for the default model (BatchNorm) and the paper's network
(no BatchNorm). Validation accuracy is measured on the last 10,000 training images, never on the test set.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from nin.config import from_dict
from nin.hardware import describe_hardware
from nin.train import fit

MODELS = ("nin_mnist_bn", "nin_mnist")
GRID = [  # (label, settings): the defaults decide whatever a point leaves out
    ("defaults", {}),
    ("batch 128", {"batch_size": 128}),
    ("batch 64", {"batch_size": 64}),
    ("batch 32", {"batch_size": 32}),
    ("batch 32, lr 0.05", {"batch_size": 32, "lr": 0.05}),
    ("batch 32, lr 0.2", {"batch_size": 32, "lr": 0.2}),
    ("batch 32, dropout 0.5", {"batch_size": 32, "dropout": 0.5}),
    ("batch 32, dropout 0.3", {"batch_size": 32, "dropout": 0.3}),
    ("batch 32, label smoothing 0.1", {"batch_size": 32, "label_smoothing": 0.1}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="training images (a fixed spread draw)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=f"runs/sweep-defaults-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    print(f"\n### {args.epochs} epoch(s) on {args.images:,} Fashion-MNIST images: validation accuracy\n")
    print("| setting | " + " | ".join(args.models.split(",")) + " |")
    print("|---|" + "---:|" * len(args.models.split(",")))
    for label, changes in GRID:
        cells = []
        for model in args.models.split(","):
            out = Path(args.out) / model / label.replace(" ", "-").replace(",", "")
            config = from_dict({"dataset": "fashion-mnist", "train_subset": args.images, "epochs": args.epochs,
                                "eval_split": "val", "model": model, "seed": args.seed, "progress": False,
                                "tensorboard": False, "out": str(out), **changes})
            result = fit(config, log=lambda *_: None)
            cells.append(f"{100 * result['accuracy']:.2f}%")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nhardware: {describe_hardware('cpu')}")


if __name__ == "__main__":
    main()
