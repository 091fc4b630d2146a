"""Write a finished run as weights shipped inside the package (src/nin/weights/NAME.safetensors + .json),
with how it was trained and what it scores in the JSON's ``source`` block:

    .venv/bin/nin train --recipe fashion-mnist --seed 0 --out runs/ship-fmnist
    .venv/bin/python benchmarks/ship_weights.py runs/ship-fmnist --name nin_mnist_bn-fashion-mnist

The test accuracy recorded is that of the written file, evaluated as `nin eval --weights` evaluates it.
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from nin.checkpoint import load_checkpoint
from nin.export import export_model
from nin.hardware import describe_hardware
from nin.inference import evaluate_trained, load

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "src" / "nin" / "weights"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run folder")
    parser.add_argument("--name", required=True, help="the file's stem under src/nin/weights")
    args = parser.parse_args()
    trained = load(args.run)
    info, config = trained.info, load_checkpoint(args.run)["config"]
    source = {"released_by": "this toolkit (network-in-network)", "recipe": config.get("recipe"),
              "model": info.name, "seed": config.get("seed"), "epochs": config.get("epochs"),
              "dataset": info.dataset, "commit": commit(), "trained_on": describe_hardware("cpu")}
    info.source = source
    path = WEIGHTS_DIR / args.name
    export_model(trained, info, "safetensors", path)
    shipped = load(path.with_suffix(".safetensors"))
    # in fp32, as `nin eval --weights NAME --amp off` evaluates it on any CPU (bf16 rounds differently by machine)
    metrics = evaluate_trained(shipped, info.dataset, amp="off")
    info.source = {**source, "test_accuracy": metrics["accuracy"], "test_images": metrics["n"]}
    written = export_model(trained, info, "safetensors", path)
    print(f"wrote {written['model']} and {written['config']}: test accuracy {100 * metrics['accuracy']:.2f}% "
          f"on {metrics['n']:,} images")


if __name__ == "__main__":
    main()
