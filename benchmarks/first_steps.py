"""First steps: does every network without BatchNorm leave chance within its first 100 steps, with the defaults?

    .venv/bin/python benchmarks/first_steps.py                    # every plain variant, 5 seeds
    .venv/bin/python benchmarks/first_steps.py --ablation --models nin_cifar10   # each start-up aid alone
    .venv/bin/python benchmarks/first_steps.py --models nin_cifar10 --seeds 1 --change warmup_epochs=8.34

Each run is a default ``nin train`` on a zoo set (benchmarks/zoo.py; the validation split of its training
images is evaluated), stopped after its first ``--steps`` optimizer steps (whole epochs: the stop comes at
the first epoch end at or past that step, with the schedule of the full default run). Reported: the mean
training loss of the last epoch before the stop (dropout on, as trained), against ln(classes), and the
validation accuracy there. A run *left chance* when that loss is below 90% of ln(classes).

``--ablation`` measures the three start-up aids of plain networks one at a time, for each of ``--models``
(default: nin_mnist): the data-dependent initialisation (``--data-init``), the gradient-norm clipping
(``--grad-clip``) and the dropout that rises during the warm-up (``--dropout-warmup``).
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from zoo import ZOO, parse_changes, settings  # noqa: E402

from nin.checkpoint import load_checkpoint  # noqa: E402
from nin.config import from_dict  # noqa: E402
from nin.errors import NinError  # noqa: E402
from nin.hardware import describe_hardware  # noqa: E402
from nin.train import fit  # noqa: E402

PLAIN = ("nin_mnist", "nin_cifar10", "nin_cifar100", "nin_svhn", "cnn_sec46")
NO_AID = dict(data_init=False, grad_clip=0.0, dropout_warmup=False)
ABLATION = {"none": NO_AID, "data init only": {**NO_AID, "data_init": True},
            "clipping only": {**NO_AID, "grad_clip": 1.0}, "dropout warm-up only": {**NO_AID, "dropout_warmup": True},
            "all three (the defaults)": {}}


class Stop(Exception):
    pass


def first_steps(spec: dict, model: str, seed: int, steps: int, out: Path, **changes) -> dict:
    config = from_dict({**spec, "model": model, "seed": seed, "eval_split": "val", "progress": False,
                        "tensorboard": False, "out": str(out), **changes})

    def log(line: str) -> None:
        if line.startswith("epoch ") and _last_step(out) >= steps:
            raise Stop

    started = time.perf_counter()
    try:
        fit(config, log=log)
    except Stop:
        pass
    except NinError as error:  # a run that diverged (non-finite loss) did not leave chance
        print(f"[{model} seed {seed}] {error}", flush=True)
        return {"loss": math.nan, "accuracy": math.nan, "step": _last_step(out), "seconds": math.nan,
                "classes": len(load_checkpoint(out)["classes"])}
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    return {"loss": float(rows[-1]["train_loss"]), "accuracy": 100 * float(rows[-1]["test_acc"]),
            "step": int(rows[-1]["step"]), "seconds": time.perf_counter() - started,
            "classes": len(load_checkpoint(out)["classes"])}


def _last_step(out: Path) -> int:
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    return int(rows[-1]["step"]) if rows else 0


def _mean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.mean(finite) if finite else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="default: every plain variant (--ablation: nin_mnist)")
    parser.add_argument("--set", default="colour32-2k", choices=sorted(ZOO))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--ablation", action="store_true", help="each start-up aid alone, and all of them")
    parser.add_argument("--change", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainConfig field changed for every run, e.g. warmup_epochs=8.34 (repeatable)")
    parser.add_argument("--zoo-root", default="runs/zoo")
    parser.add_argument("--out", default=f"runs/first-steps-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    spec = settings(args.set, Path(args.zoo_root))
    changed = parse_changes(args.change)
    models = (args.models or ("nin_mnist" if args.ablation else ",".join(PLAIN))).split(",")
    trials = ({f"{model} {name}": (model, name, {**change, **changed}) for model in models
               for name, change in ABLATION.items()} if args.ablation
              else {model: (model, ", ".join(args.change) or "defaults", changed) for model in models})
    print(f"\n### First {args.steps} steps on {args.set} ({args.seeds} seeds; chance: loss ln(classes))\n")
    print("| network | settings | last epoch's training loss, per seed | left chance | validation accuracy "
          "(mean of runs that did not diverge) | at step | seconds per run |")
    print("|---|---|---|:---:|---:|---:|---:|")
    for label, (model, settings_name, change) in trials.items():
        runs = [first_steps(spec, model, seed, args.steps, Path(args.out) / label.replace(" ", "-") / f"seed{seed}",
                            **change) for seed in range(args.seeds)]
        left = sum(r["loss"] < 0.9 * math.log(r["classes"]) for r in runs)  # NaN (diverged) compares False
        losses = " / ".join("diverged" if math.isnan(r["loss"]) else f"{r['loss']:.2f}" for r in runs)
        print(f"| {model} | {settings_name} | {losses} | {left}/{len(runs)} | "
              f"{_mean(r['accuracy'] for r in runs):.1f}% | {runs[0]['step']} | "
              f"{_mean(r['seconds'] for r in runs):.0f} |", flush=True)
    print(f"\nhardware: {describe_hardware('cpu')}")


if __name__ == "__main__":
    main()
