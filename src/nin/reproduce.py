"""``nin reproduce TARGET``: run the recipes of the paper's rows and write ``results.md``.

A row is a recipe whose ``[paper]`` table names a row (``table1-dropout``, ``table5-gap``, ``sec4.6-fc``...); a
target is a row, a group (``table1`` ... ``table5``, ``sec4.6``, ``fig3``) or ``all``. Every data set
the rows need is checked before any training starts.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import statistics
from pathlib import Path

from .checkpoint import CHECKPOINT_NAME
from .config import REPRODUCE_FIELDS, Recipe, TrainConfig, from_dict, list_recipes, read_recipe, validate
from .data import dataset_info
from .data.splits import select_images
from .errors import NinError
from .hardware import describe_hardware


GROUPS = ("table1", "table2", "table3", "table4", "table5", "sec4.6", "fig3")  # the paper's order
# The paper's comparisons (``nin reproduce claims``): each claim's rows from the lowest error to the
# highest, as the paper found them; a claim holds when our errors fall in the same order.
CLAIMS = (
    ("Table 5: global average pooling beats a fully connected head with dropout, which beats one without",
     ("table5-gap", "table5-fc-dropout", "table5-fc")),
    ("Section 4.6: on a conventional CNN, global average pooling beats a plain fully connected head and comes "
     "near one with dropout", ("sec4.6-fc-dropout", "sec4.6-gap", "sec4.6-fc")),
    # NIN with dropout is Table 5's GAP row: the same recipe as table1-dropout, so it is trained once
    ("Figure 3: dropout between the mlpconv layers cuts the error", ("table5-gap", "fig3-no-dropout")),
)


MAX_SEEDS = 100  # runs per row: more is a typo (the runs are planned, and their folders named, up front)


def paper_rows() -> dict[str, Recipe]:
    """Every recipe that reproduces a row of the paper, by name, in the paper's order."""
    return dict(_shipped_rows()[0])


def best_rows() -> dict[str, Recipe]:
    """The best-known recipes (a ``target_error`` to beat: the best public NIN number), by name."""
    return dict(_shipped_rows()[1])


def all_rows() -> dict[str, Recipe]:
    return {**paper_rows(), **best_rows()}


@functools.lru_cache(maxsize=1)
def _shipped_rows() -> tuple[tuple[tuple[str, Recipe], ...], tuple[tuple[str, Recipe], ...]]:
    """The shipped recipes are read once per process (configs are never mutated: from_dict copies)."""
    recipes = {name: read_recipe(name) for name in list_recipes()}
    paper = sorted(((name, r) for name, r in recipes.items() if r.paper),
                   key=lambda item: (GROUPS.index(_group(item[0])), item[0]))
    best = sorted((name, r) for name, r in recipes.items() if r.target_error)
    return tuple(paper), tuple(best)


def _group(row: str) -> str:
    return row.split("-", 1)[0]


def select_rows(target: str) -> list[str]:
    """``all`` (the paper's rows), ``best`` (the best-known recipes), ``claims`` (the rows of the paper's
    comparisons), a group or one row."""
    rows = paper_rows()
    if target == "all":
        return list(rows)
    if target == "claims":
        return list(dict.fromkeys(row for _, claim_rows in CLAIMS for row in claim_rows))
    if target == "best":
        return list(best_rows())
    if target in all_rows():
        return [target]
    chosen = [name for name in rows if _group(name) == target]
    if not chosen:
        groups = [group for group in GROUPS if any(_group(name) == group for name in rows)]
        raise NinError(f"unknown target {target!r}: expected all, best, claims, a group ({', '.join(groups)}) or a row "
                       f"(nin reproduce --list)")
    return chosen


def reference(recipe: Recipe) -> tuple[str, float]:
    """What a row is compared with: the paper's setting and error, or the best public NIN error."""
    if recipe.paper:
        return recipe.paper, recipe.paper_error
    return "best-known recipe: the error to beat", recipe.target_error


def format_list() -> str:
    lines = [f"{'row':22s} {'error to match':>14s}  {'data set':14s} setting"]
    for name, recipe in all_rows().items():
        setting, error = reference(recipe)
        lines.append(f"{name:22s} {error:13.2f}%  {recipe.dataset:14s} {setting}")
    return "\n".join(lines)


def row_config(row: str, seed: int, out: Path, overrides: dict) -> TrainConfig:
    recipe = all_rows()[row]
    changes = {**overrides, "seed": seed, "out": str(out / row / f"seed{seed}"), "progress": False}
    if overrides.get("dataset", recipe.dataset) != recipe.dataset:
        changes["train_split"] = "train"  # another data set's own training split (no SVHN extra)
    return from_dict(changes, base=recipe.config, source=f"reproduce {row}")


def check_data(configs: list[TrainConfig]) -> None:
    """Stop before any training when a data set is missing (the error names it and how to get it)."""
    for dataset, root, split, evaluated in sorted({(c.dataset, c.root, c.train_split, c.eval_split) for c in configs}):
        if dataset_info(dataset).size is not None:  # a folder is decoded at the run's size: its run checks it
            select_images(dataset, root or None, split, evaluated)


def reproduce(target: str, *, seeds: int = 1, out: str | Path = "reproduce", overrides: dict | None = None,
              log=print) -> Path:
    """Train every row of ``target`` with ``seeds`` seeds; returns the path of ``results.md``. Run again
    with the same ``out``, it reuses the runs there: finished ones are read, a stopped one continues."""
    if not 1 <= seeds <= MAX_SEEDS:
        raise NinError(f"--seeds must be 1 to {MAX_SEEDS}, got {seeds}")
    out, overrides = Path(out), dict(overrides or {})
    rows = select_rows(target)
    plans = {row: [validate(row_config(row, seed, out, overrides)) for seed in range(seeds)] for row in rows}
    _check_tables_are_ours(out, target)
    check_data([config for configs in plans.values() for config in configs])
    results, said = [], _command(target, seeds, out, overrides)
    for row, configs in plans.items():
        runs = [_run_once(config, lambda line, row=row, seed=config.seed: log(f"[{row} seed {seed}] {line}"))
                for config in configs]
        results.append((row, configs[0], runs))
        _write_results(out / "results.md", results, overrides, said)  # after every row: a partial table survives
        if target == "claims":
            _write_claims(out / "paper-claims.md", results, overrides, said)
    log(f"results: {out / 'results.md'}" + (f" and {out / 'paper-claims.md'}" if target == "claims" else ""))
    return out / "results.md"


TITLES = {"results.md": "# nin reproduce", "paper-claims.md": "# The paper's claims, checked"}


def _check_tables_are_ours(out: Path, target: str) -> None:
    """The tables are rewritten after every row: a file of that name that an earlier ``nin reproduce``
    did not write is the user's, and is not replaced."""
    names = ["results.md", "paper-claims.md"] if target == "claims" else ["results.md"]
    for name in names:
        path = out / name
        if path.is_dir() or path.exists() and not _starts_with(path, TITLES[name]):
            raise NinError(f"{path} exists and was not written by nin reproduce; pick another --out")


def _starts_with(path: Path, title: str) -> bool:
    try:
        with open(path, "rb") as stream:
            return stream.readline().decode("utf-8", "replace").rstrip("\r\n") == title
    except OSError:
        return False


def _run_once(config: TrainConfig, log) -> tuple[float, float, str]:
    """(error, training seconds, run folder) of one seed of a row. A folder that holds a run of an earlier
    ``nin reproduce`` with the same --out is continued (a stopped run) or read (a finished one: evaluated
    again), so that a reproduction of many hours can be stopped and run again."""
    from .train import fit, resume_config

    folder = Path(config.out)
    if (folder / CHECKPOINT_NAME).is_file():
        saved = resume_config(str(folder), {"progress": False})
        _check_same_settings(saved, config)
        metrics = fit(saved, resume=str(folder), log=log)
    else:
        metrics = fit(config, log=log)
    with open(folder / "metrics.csv", newline="") as rows:
        seconds = sum(float(epoch["seconds"]) for epoch in csv.DictReader(rows))
    return metrics["error"], seconds, metrics["run_dir"]


def _check_same_settings(saved: TrainConfig, planned: TrainConfig) -> None:
    """A run found in the row's folder is reused only when it was started with the settings asked for now
    (settings left to the run, None in ``planned``, are whatever it resolved them to)."""
    for field in dataclasses.fields(planned):
        asked, held = getattr(planned, field.name), getattr(saved, field.name)
        if asked is not None and asked != held:
            raise NinError(f"{planned.out} holds a run with {field.name} = {held!r}, not {asked!r}: run with "
                           "another --out, or with the settings of the run there")


def _command(target: str, seeds: int, out: Path, overrides: dict) -> str:
    """The ``nin reproduce`` command line that makes this table (the tables say it, so a reader can rerun it)."""
    flags = [f"--seeds {seeds}", f"--out {out}"]
    for field, value in overrides.items():
        flag = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags.append(f"{flag} {value}")
    return f"nin reproduce {target} {' '.join(flags)}"


def _write_results(path: Path, results: list, overrides: dict, command: str) -> None:
    lines = [TITLES["results.md"], "", f"hardware: {describe_hardware(overrides.get('device', 'auto'))}", "",
             f"command: `{command}`", "",
             *(["evaluated on the paper's validation split (held out of the training images), not the test "
                "set", ""] if overrides.get("eval_split") == "val" else []),
             "| row | setting | data set | error to match | ours (mean ± std) | seeds | epochs | training "
             "time per run | run folders |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for row, config, runs in results:
        errors = [100 * error for error, _, _ in runs]
        spread = statistics.stdev(errors) if len(errors) > 1 else 0.0
        recipe = all_rows()[row]
        note = "" if config.dataset == recipe.dataset else f" (recipe: {recipe.dataset})"
        setting, error = reference(recipe)
        lines.append(f"| {row} | {setting} | {dataset_info(config.dataset).title}{note} | "
                     f"{error:.2f}% | {statistics.mean(errors):.2f} ± {spread:.2f}% | {len(runs)} | "
                     f"{config.epochs} | {statistics.mean(t for _, t, _ in runs) / 60:.1f} min | "
                     f"{', '.join(run_dir for _, _, run_dir in runs)} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _write_claims(path: Path, results: list, overrides: dict, command: str) -> None:
    """The paper's comparisons: for each claim, the paper's errors and ours in the paper's order, and
    whether each step of the order holds, by how much against the seeds' spread."""
    errors = {row: [100 * error for error, _, _ in runs] for row, _, runs in results}
    lines = [TITLES["paper-claims.md"], "", f"hardware: {describe_hardware(overrides.get('device', 'auto'))}",
             f"settings changed from the recipes: {_said(overrides)}", "", f"command: `{command}`", "",
             "| claim | rows, best first (the paper's order) | paper: error | ours: error (mean ± std) | seeds | "
             "verdict |", "|---|---|---|---|---:|---|"]
    for claim, rows in CLAIMS:
        if not all(row in errors for row in rows):
            continue  # not run yet: the table grows as the rows finish
        ours = [_mean_std(errors[row]) for row in rows]
        lines.append(f"| {claim} | {' < '.join(rows)} | "
                     f"{' < '.join(f'{paper_rows()[row].paper_error:.2f}%' for row in rows)} | "
                     f"{', '.join(f'{m:.2f} ± {s:.2f}%' for m, s in ours)} | {len(errors[rows[0]])} | "
                     f"{_verdict(rows, ours, len(errors[rows[0]]))} |")
    path.write_text("\n".join(lines) + "\n")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _verdict(rows: tuple[str, ...], ours: list[tuple[float, float]], seeds: int) -> str:
    """Each step of the order: holds or reversed, by how many points, and whether the difference is
    more than twice the larger of the two rows' spreads across seeds (else: within the noise)."""
    steps = []
    for (better, (mean_a, std_a)), (worse, (mean_b, std_b)) in zip(zip(rows, ours), zip(rows[1:], ours[1:])):
        gap, noise = mean_b - mean_a, max(std_a, std_b)
        if round(gap, 2) == 0:  # "reversed by 0.00 points" would say more than the numbers do
            steps.append(f"{better} < {worse}: a tie (the errors differ by less than 0.01 points)")
            continue
        what = "holds" if gap > 0 else "reversed"
        if seeds == 1:
            sure = " (1 seed: no spread to compare with)"
        else:
            sure = " (within the noise)" if abs(gap) <= 2 * noise else f" (more than twice the seeds' std {noise:.2f})"
        steps.append(f"{better} < {worse}: {what} by {abs(gap):.2f} points{sure}")
    return "; ".join(steps)


def _said(overrides: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in overrides.items()) or "none"


def override_fields() -> tuple[str, ...]:
    """The recipe fields ``nin reproduce`` lets a user change (where and how long, not what)."""
    return REPRODUCE_FIELDS


def check_overrides(overrides: dict) -> dict:
    unknown = sorted(set(overrides) - set(override_fields()))
    if unknown:
        raise NinError(f"nin reproduce cannot change {unknown[0]}; it can change {', '.join(override_fields())}")
    return overrides
