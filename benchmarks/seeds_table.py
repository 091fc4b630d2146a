"""A table of finished (or cut-off) training runs, one row each, and their mean: what a set of seeds scored.

    .venv/bin/python benchmarks/seeds_table.py runs/a runs/b runs/c

Each run folder's metrics.csv gives its last evaluated accuracy (test, or validation for a run with
``--eval-split val``), the epochs it finished against those configured, and its training minutes; a
finished run's final.json gives its result instead (the last evaluation with ``--tta``'s test-time views,
named in the TTA column). The mean and standard deviation are over the runs that finished every epoch.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from nin.errors import NinError
from nin.rundir import read_metrics


def summary(run: Path) -> dict:
    """{run, split, epochs, of, accuracy (%, the last evaluated epoch's; None before any), minutes}."""
    config = json.loads((run / "config.json").read_text())
    try:
        rows = read_metrics(run)[1]
    except NinError:  # cut off before its first epoch ended
        rows = []
    evaluated = [row["test_acc"] for row in rows if not math.isnan(row["test_acc"])]
    final = json.loads((run / "final.json").read_text()) if (run / "final.json").is_file() else {}
    accuracy = final.get("accuracy", evaluated[-1] if evaluated else None)
    return {"run": run.name, "split": config.get("eval_split", "test"), "epochs": len(rows), "of": config["epochs"],
            "accuracy": None if accuracy is None else 100 * accuracy, "tta": final.get("tta", "-"),
            "minutes": sum(row["seconds"] for row in rows) / 60}


def table(runs: list[Path]) -> str:
    lines = ["| run | split | epochs | accuracy | TTA | training minutes |", "|---|---|---:|---:|---|---:|"]
    summaries = [summary(run) for run in runs if (run / "config.json").is_file()]
    for s in summaries:
        accuracy = f"{s['accuracy']:.2f}%" if s["accuracy"] is not None else "-"
        lines.append(f"| {s['run']} | {s['split']} | {s['epochs']}/{s['of']} | {accuracy} | {s['tta']} | "
                     f"{s['minutes']:.1f} |")
    finished = [s["accuracy"] for s in summaries if s["epochs"] == s["of"] and s["accuracy"] is not None]
    if finished:
        spread = statistics.stdev(finished) if len(finished) > 1 else 0.0
        lines.append(f"\nmean of {len(finished)} finished run(s): {statistics.mean(finished):.2f} ± {spread:.2f}%")
    missing = [str(run) for run in runs if not (run / "config.json").is_file()]
    if missing:
        lines.append(f"no run in: {', '.join(missing)}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    print(table(parser.parse_args().runs))
