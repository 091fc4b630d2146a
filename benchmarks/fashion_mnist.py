"""Accuracy benchmark: train a Fashion-MNIST recipe with several seeds, print a Markdown table.

    .venv/bin/python benchmarks/fashion_mnist.py [--recipe fashion-mnist] [--seeds 3] [--out runs/bench]

Prints test accuracy per seed, mean ± std, epochs, wall time per run and the hardware.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from nin.config import from_dict, load_recipe
from nin.hardware import describe_hardware
from nin.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fashion-mnist-long")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    changes = {"device": args.device, "progress": False, **({"epochs": args.epochs} if args.epochs else {})}
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        config = from_dict({**changes, "seed": seed, "out": str(Path(args.out) / f"seed{seed}")}, base=recipe)
        started = time.perf_counter()
        result = fit(config, log=lambda line: print(f"[seed {seed}] {line}", flush=True))
        rows.append((seed, result["accuracy"], config.epochs, time.perf_counter() - started, result["run_dir"]))

    accuracies = [100 * accuracy for _, accuracy, *_ in rows]
    print(f"\n### {args.recipe}: {recipe.model} on {recipe.dataset}, {len(rows)} seeds\n")
    print("| seed | test accuracy | epochs | wall time | run folder |")
    print("|---:|---:|---:|---:|---|")
    for seed, accuracy, epochs, seconds, run_dir in rows:
        print(f"| {seed} | {100 * accuracy:.2f}% | {epochs} | {seconds / 60:.1f} min | {run_dir} |")
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(f"| **mean ± std** | **{statistics.mean(accuracies):.2f} ± {spread:.2f}%** | | "
          f"{statistics.mean(r[3] for r in rows) / 60:.1f} min | |")
    print(f"\nhardware: {describe_hardware(args.device)}")


if __name__ == "__main__":
    main()
