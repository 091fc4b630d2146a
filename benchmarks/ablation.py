"""The fast-training methods tried on NIN: what each adds to the `fashion-mnist` recipe (what `make run`
trains), taken out or added one at a time, and what each run costs.

    .venv/bin/python benchmarks/ablation.py --split val --seeds 3     # choose: validation split
    .venv/bin/python benchmarks/ablation.py --split test --seeds 3    # the table, looked at once
    .venv/bin/python benchmarks/ablation.py --quick                  # a smoke test of this script

The recipe holds the methods that paid (progressive resizing, a whitened first layer, lr 0.2 without
dropout); each row of ``TRAINING_METHODS`` takes one out or adds one of those that did not, and "the
recipe before" is the 5-epoch recipe they replaced. Every run keeps a moving average of its weights
(``--ema``), which does not change its training, so each run is read five ways: its last weights, their
average (EMA), each with test-time flips (TTA: the logits of each image and its mirror image averaged),
and the average with flips and one-pixel shifts (``--readings`` picks some: each is one or more evaluation
passes, which on a small training set cost more than the training). A run's cost is given in full-size
epochs (an epoch at S pixels counts (S/28)^2), which does not drift with the machine's load as its minutes
do. Runs and readings are kept under ``--out``: run again with the same ``--out`` to add seeds, methods or
readings without training again.

    .venv/bin/python benchmarks/ablation.py --split val --seeds 3 --train-subset 5000 --readings "last weights,EMA"
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from first_try import train_once  # noqa: E402

from nin.checkpoint import load_checkpoint  # noqa: E402
from nin.config import load_recipe  # noqa: E402
from nin.hardware import describe_hardware  # noqa: E402
from nin.inference import evaluate_trained, load  # noqa: E402
from nin.rundir import read_metrics  # noqa: E402
from nin.train import epoch_cost  # noqa: E402

FASHION_MNIST_SIZE = 28

TRAINING_METHODS = {
    "recipe": {},  # fashion-mnist as shipped
    "without progressive resizing": {"progressive_resize": 0, "epochs": 6},  # the recipe's cost: 6 full epochs
    "without the whitened first layer": {"whiten": False},
    "lr 0.1": {"lr": 0.1},
    "dropout 0.3": {"dropout": 0.3},
    "alternating flips": {"flip": "alternate"},
    "no label smoothing": {"label_smoothing": 0.0},
    "batch 256 at lr 0.4": {"batch_size": 256, "lr": 0.4},
    "frozen BN scales + BN biases at 4x lr": {"freeze_bn_scales": True, "bn_bias_lr": 4.0},
    "random erasing 0.5": {"erase": 0.5},
    "identity init": {"identity_init": True},
    "Lookahead every 5 steps": {"lookahead": 5},
    "the recipe before": {"epochs": 5, "lr": 0.1, "dropout": 0.3, "whiten": False, "progressive_resize": 0},
}
READINGS = (("last weights", False, ""), ("+ flip TTA", False, "flip"), ("EMA", True, ""),
            ("EMA + flip TTA", True, "flip"), ("EMA + flip-shift TTA", True, "flip-shift"))


def readings(run: Path, split: str, labels: list[str]) -> dict[str, float]:
    """The run's accuracy (%) read each way of READINGS named in ``labels``: last weights or their
    average, with or without test-time augmentation (flips; flips and one-pixel shifts). Kept in the
    run's folder, so a table printed again reads each run once."""
    kept_file = run / f"readings-{split}.json"
    kept = json.loads(kept_file.read_text()) if kept_file.is_file() else {}
    missing = [(label, average, tta) for label, average, tta in READINGS if label in labels and label not in kept]
    if missing:
        trained = load(run)  # the average, when the run kept one
        average = {name: tensor.clone() for name, tensor in trained.state_dict().items()}
        last = load_checkpoint(run)["model"]
        for label, use_average, tta in missing:
            trained.load_state_dict(average if use_average else last)
            kept[label] = 100 * evaluate_trained(trained, split=split, tta=tta)["accuracy"]
        kept_file.write_text(json.dumps(kept, indent=1) + "\n")
    return {label: kept[label] for label in labels}


def full_size_epochs(run: Path) -> float:
    """The run's compute in epochs at full size: an epoch at S pixels costs (S / full)^2 of one. Unlike its
    minutes, this does not change with what else the machine runs."""
    config = json.loads((run / "config.json").read_text())
    return sum(epoch_cost(epoch, config["epochs"], config.get("progressive_resize", 0), FASHION_MNIST_SIZE)
               for epoch in range(config["epochs"]))


def training_minutes(run: Path) -> float:
    return sum(row["seconds"] for row in read_metrics(run)[1]) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(TRAINING_METHODS),
                        help=f"comma-separated, of: {'; '.join(TRAINING_METHODS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=0,
                        help="every run's length (default: the recipe's, or the method's own)")
    parser.add_argument("--train-subset", type=int, default=0, help="train on N images (0: all 60,000)")
    parser.add_argument("--ema", type=float, default=0.99, help="the moving average's decay in every run")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--root", default="", help="Fashion-MNIST's folder (default: Debian's)")
    parser.add_argument("--readings", default=",".join(label for label, _, _ in READINGS),
                        help=f"comma-separated, of: {'; '.join(label for label, _, _ in READINGS)} "
                             "(each is an evaluation pass; flip TTA two, flip-shift TTA six)")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 512 images, 1 seed: checks the script")
    parser.add_argument("--out", default=f"runs/ablation-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.train_subset = 1, 1, 512
    methods = [name.strip() for name in args.methods.split(",")]
    unknown = sorted(set(methods) - set(TRAINING_METHODS))
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}: expected some of: {'; '.join(TRAINING_METHODS)}")
    args.readings = [label.strip() for label in args.readings.split(",")]
    unknown = sorted(set(args.readings) - {label for label, _, _ in READINGS})
    if unknown:
        parser.error(f"unknown reading {unknown[0]!r}: expected some of: "
                     f"{'; '.join(label for label, _, _ in READINGS)}")

    recipe = {k: v for k, v in dataclasses.asdict(load_recipe("fashion-mnist")).items() if k != "recipe"}
    common = {"train_subset": args.train_subset, "ema": args.ema, "root": args.root, "recipe": "fashion-mnist",
              "tta": ""}  # test-time views are readings of every row (READINGS), not a method of one
    table = []
    for method in methods:
        change = {**TRAINING_METHODS[method], **({"epochs": args.epochs} if args.epochs else {})}
        runs = []
        for seed in range(args.seeds):
            out = Path(args.out) / method.replace(" ", "-").replace(",", "") / f"seed{seed}"
            train_once(method, {**recipe, **common}, recipe["model"], seed, args.split, out, **change)
            runs.append((readings(out, args.split, args.readings), training_minutes(out), full_size_epochs(out)))
        table.append((method, change, runs))
        _print_table(table, args)


def _print_table(table: list, args) -> None:
    length = f"{args.epochs} epoch(s)" if args.epochs else "the recipe's epochs"
    training = args.train_subset or (50_000 if args.split == "val" else 60_000)
    print(f"\n### Methods on the fashion-mnist recipe: {length}, {training} training images, "
          f"{args.seeds} seed(s), {args.split} split, EMA decay {args.ema}\n")
    print("| method | " + " | ".join(args.readings) + " | full-size epochs | training minutes | flags |")
    print("|---|" + "---:|" * (len(args.readings) + 2) + "---|")
    for method, change, runs in table:
        cells = []
        for label in args.readings:
            values = [reading[label] for reading, _, _ in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {spread:.2f}%")
        minutes = statistics.mean(m for _, m, _ in runs)
        cost = statistics.mean(c for _, _, c in runs)
        print(f"| {method} | " + " | ".join(cells) + f" | {cost:.1f} | {minutes:.1f} | "
              f"`{_flags(change) or '(the recipe)'}` |")
    print(f"\ncommand: .venv/bin/python benchmarks/ablation.py {' '.join(sys.argv[1:])}")
    print(f"hardware: {describe_hardware('cpu')}", flush=True)


def _flags(change: dict) -> str:
    """The nin train flags of a change (booleans as --name / --no-name)."""
    def flag(name: str, value) -> str:
        name = name.replace("_", "-")
        return (f"--{name}" if value else f"--no-{name}") if isinstance(value, bool) else f"--{name} {value}"
    return " ".join(flag(name, value) for name, value in change.items())


if __name__ == "__main__":
    main()
