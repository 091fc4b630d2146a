"""First try: `nin train` with nothing but the defaults on every set of the zoo (benchmarks/zoo.py), for the
default model and the paper's plain network, against the best of a small sweep on the same set.

    .venv/bin/python benchmarks/first_try.py --split val            # choose settings: validation splits only
    .venv/bin/python benchmarks/first_try.py --split test           # the final table, looked at once
    .venv/bin/python benchmarks/first_try.py --sets png-2k,digits --seeds 2 --sweep lr
    .venv/bin/python benchmarks/first_try.py --sets png-2k --sweep none --change dropout_warmup=false --out OTHER

For each set and model: the defaults with ``--seeds`` seeds (accuracy mean ± std, training time per run, and
whether a seed sat at chance: its last training loss above 90% of ln(classes)); then the sweep (seed 0, or
seeds 0 to N-1 with ``--sweep-seeds N``): the learning rate halved and doubled (``lr``) and the run's length
halved and doubled (``length``). The sweep's best is the best mean over those seeds, the defaults' counted
too; the gap is that best minus the defaults' mean over all ``--seeds``.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from zoo import BY_NAME_ONLY, ZOO, parse_changes, settings  # noqa: E402

from nin.config import from_dict  # noqa: E402
from nin.hardware import describe_hardware  # noqa: E402
from nin.rundir import read_metrics  # noqa: E402
from nin.train import fit, resume_config  # noqa: E402

MODELS = ("nin_mnist_bn", "nin_mnist")  # the default model and the paper's network (MNIST widths, no BN)
ONLY_AFTER_THE_LAST = 10**6  # eval_every: the table needs the last epoch's accuracy only (training is the same)
SWEEPS = {"lr": [("lr", 0.5), ("lr", 2.0)], "length": [("epochs", 0.5), ("epochs", 2.0)]}


def train_once(name: str, spec: dict, model: str, seed: int, split: str, out: Path, **changes) -> dict:
    """One run's result; kept in OUT/result.json, so that the benchmark run again with the same --out
    skips the runs it has and resumes one it was stopped in (the table can grow over several sessions)."""
    done = out / "result.json"
    if done.is_file():
        summary = json.loads(done.read_text())
        return {**summary, "seconds": training_seconds(out, summary["epochs"])}
    prefix = f"[{name} {model} {out.name}]"  # seed0, seed1..., or the sweep point (lr=0.2)
    if (out / "checkpoint.pt").is_file():
        result = fit(resume_config(str(out), {}), resume=str(out), log=lambda line: print(prefix, line, flush=True))
    else:
        config = from_dict({**spec, "model": model, "seed": seed, "eval_split": split, "progress": False,
                            "tensorboard": False, "out": str(out), "eval_every": ONLY_AFTER_THE_LAST, **changes})
        result = fit(config, log=lambda line: print(prefix, line, flush=True))
    rows = read_metrics(out)[1]
    chance_loss = math.log(len(result["per_class"]))
    summary = {"accuracy": 100 * result["accuracy"], "at_chance": rows[-1]["train_loss"] > 0.9 * chance_loss,
               "epochs": int(rows[-1]["epoch"]), "hardware": describe_hardware()}
    done.write_text(json.dumps(summary) + "\n")
    return {**summary, "seconds": training_seconds(out, summary["epochs"])}


def training_seconds(out: Path, epochs: int) -> float:
    """The training time of all the run's epochs, from its metrics.csv (the wall time of train_once misses
    what came before a resume). Before rundir kept them, a resume dropped the rows of epochs that were not
    evaluated: such a run's time is its kept rows' mean per epoch times its epochs."""
    rows = read_metrics(out)[1]
    return sum(row["seconds"] for row in rows) * epochs / len(rows)


def mean_accuracy(runs: list) -> float:
    return statistics.mean(run["accuracy"] for run in runs)


def swept(knob: str, factor: float, default_run: Path) -> dict:
    """One sweep point: the lr or the length of the defaults' run (its config.json) times ``factor``."""
    resolved = json.loads((default_run / "config.json").read_text())
    if knob == "lr":
        return {"lr": round(resolved["lr"] * factor, 4)}
    return {"epochs": max(1, round(resolved["epochs"] * factor))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # a held-out set is for choosing only; a set by name only costs hours
    table_sets = [name for name in ZOO if not name.endswith("-heldout") and name not in BY_NAME_ONLY]
    parser.add_argument("--sets", default=",".join(table_sets), help=f"comma-separated, of {', '.join(ZOO)} "
                        "(default: all but the -heldout ones and cifar10-jpeg)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sweep", default="lr,length", help="comma-separated, of lr, length (default: both); "
                        "none: no sweep")
    parser.add_argument("--sweep-models", default=MODELS[0], help="the models swept (default: the default one)")
    parser.add_argument("--sweep-seeds", type=int, default=1,
                        help="seeds per sweep point (default 1: seed 0); each point's mean is compared with the "
                             "defaults' mean over the same seeds")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="val: the validation split of each set's training images (for choosing); test: once")
    parser.add_argument("--change", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainConfig field changed for every run, e.g. dropout_warmup=false (repeatable)")
    parser.add_argument("--zoo-root", default="runs/zoo", help="where the folder sets are written")
    parser.add_argument("--out", default=f"runs/first-try-{time.strftime('%Y%m%d-%H%M%S')}",
                        help="the runs' folders; run again with the same --out to skip finished runs and resume "
                             "a stopped one")
    args = parser.parse_args()
    sets, models = args.sets.split(","), args.models.split(",")
    unknown = sorted(set(sets) - set(ZOO))
    if unknown:
        parser.error(f"unknown set {unknown[0]!r}: expected some of {', '.join(ZOO)}")
    knobs = [] if args.sweep == "none" else args.sweep.split(",")
    if set(knobs) - set(SWEEPS):
        parser.error(f"unknown sweep {sorted(set(knobs) - set(SWEEPS))[0]!r}: expected lr, length or none")
    if not 1 <= args.sweep_seeds <= args.seeds:
        parser.error(f"--sweep-seeds must be 1 to --seeds ({args.seeds}), got {args.sweep_seeds}")
    sweeps = [point for name in knobs for point in SWEEPS[name]]
    changed = parse_changes(args.change)

    specs = {name: settings(name, Path(args.zoo_root)) for name in sets}  # every set written before any training
    table = []
    for name, spec in specs.items():
        for model in models:
            runs = [train_once(name, spec, model, seed, args.split, Path(args.out) / name / model / f"seed{seed}",
                               **changed) for seed in range(args.seeds)]
            points = {}  # sweep setting -> its mean accuracy over --sweep-seeds seeds
            if model in args.sweep_models.split(","):
                for knob, factor in sweeps:
                    change = swept(knob, factor, Path(args.out) / name / model / "seed0")
                    label = ",".join(f"{k}={v:g}" for k, v in change.items())
                    points[label] = mean_accuracy([
                        train_once(name, spec, model, seed, args.split,
                                   Path(args.out) / name / model / (label + (f"-seed{seed}" if seed else "")),
                                   **{**changed, **change}) for seed in range(args.sweep_seeds)])
            table.append((name, model, runs, points))
            _print_table(table, args)


def _print_table(table: list, args) -> None:
    print(f"\n### First try: the defaults on the zoo ({args.split} split, {args.seeds} seed(s); "
          f"sweep points: mean of {args.sweep_seeds} seed(s))\n")
    print("| set | model | epochs | defaults: seeds | mean ± std | at chance | sweep points | sweep best | gap "
          "| training minutes a run |")
    print("|---|---|---:|---:|---:|:---:|---:|---:|---:|---:|")
    for name, model, runs, points in table:
        accuracies = [r["accuracy"] for r in runs]
        mean = statistics.mean(accuracies)
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        stuck = sum(r["at_chance"] for r in runs)
        minutes = statistics.mean(r["seconds"] for r in runs) / 60
        # the defaults count in the sweep's best, over the same seeds as its points
        candidates = {"defaults": mean_accuracy(runs[:args.sweep_seeds]), **points}
        best_setting = max(candidates, key=candidates.get)
        seeds = " / ".join(f"{a:.2f}" for a in accuracies)
        swept_text = " / ".join(f"{label}: {accuracy:.2f}" for label, accuracy in points.items()) or "-"
        print(f"| {name} | {model} | {runs[0]['epochs']} | {seeds}% | {mean:.2f} ± {spread:.2f}% | "
              f"{stuck}/{len(runs)} | {swept_text} | {candidates[best_setting]:.2f}% ({best_setting}) | "
              f"{candidates[best_setting] - mean:+.2f} | {minutes:.1f} |")
    print(f"\nhardware: {_hardware_of([run for row in table for run in row[2]])}", flush=True)


def _hardware_of(runs: list) -> str:
    """Where the runs trained, each machine with its number of runs (a table grown over several sessions,
    with the same --out, may span machines; result.json keeps each run's)."""
    machines = collections.Counter(run.get("hardware", "not recorded") for run in runs)
    return "; ".join(f"{machine} ({count} run{'s' * (count > 1)})" for machine, count in machines.items())


if __name__ == "__main__":
    main()
