"""Evaluation reports (``nin eval RUN --report DIR``): what the model confuses, in files.

DIR gets ``confusion.csv`` and ``confusion.png`` (rows: true class, columns: predicted class; the
picture is row-normalised), ``per_class.csv`` and ``per_class.png`` (accuracy per class and the class
it is most often mistaken for), ``confused_pairs.csv`` (every off-diagonal pair, most frequent first)
and ``metrics.json`` (what ``nin eval --json`` prints). Pictures need matplotlib (the ``report``
extra), imported only here and only when a report is asked for; it draws with the Agg backend
without touching pyplot's global state.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import torch

from .errors import NinError
from .evaluate import metrics_json, tta_note
from .plotting import new_figure, require_matplotlib

FILES = ("confusion.csv", "confusion.png", "per_class.csv", "per_class.png", "confused_pairs.csv", "metrics.json")


def _matrix(confusion) -> torch.Tensor:
    matrix = torch.as_tensor(confusion, dtype=torch.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {tuple(matrix.shape)}")
    return matrix


def confused_pairs(confusion, classes: list[str], limit: int | None = None) -> list[dict]:
    """Off-diagonal (true, predicted) pairs with a count, most frequent first (ties: larger share of the
    true class first, then class order). ``share``: the fraction of the true class's images."""
    matrix = _matrix(confusion)
    totals = matrix.sum(dim=1)
    off = matrix.clone()
    off.fill_diagonal_(0)
    true, predicted = torch.nonzero(off, as_tuple=True)
    counts, totals = off[true, predicted].tolist(), totals[true].tolist()
    rows = [{"true": classes[t], "predicted": classes[p], "count": count, "share": count / total}
            for t, p, count, total in zip(true.tolist(), predicted.tolist(), counts, totals)]
    rows.sort(key=lambda row: (-row["count"], -row["share"]))  # stable: class order breaks the rest
    return rows[:limit] if limit is not None else rows


def per_class(confusion, classes: list[str]) -> list[dict]:
    """Per class: images, correct, accuracy (NaN without images), and its most frequent wrong prediction."""
    matrix = _matrix(confusion)
    rows = []
    for index, name in enumerate(classes):
        total, correct = int(matrix[index].sum()), int(matrix[index, index])
        wrong = matrix[index].clone()
        wrong[index] = -1
        other = int(wrong.argmax()) if len(classes) > 1 else index
        count = int(matrix[index, other]) if other != index else 0
        rows.append({"class": name, "images": total, "correct": correct,
                     "accuracy": correct / total if total else float("nan"),
                     "most_confused_with": classes[other] if count else "", "confused_count": count})
    return rows


def format_pairs(pairs: list[dict], limit: int = 3) -> str:
    if not pairs:
        return "no confusions"
    return "most confused: " + "; ".join(
        f"{p['true']} -> {p['predicted']} {p['count']} ({100 * p['share']:.1f}% of {p['true']})" for p in pairs[:limit])


def write_report(metrics: dict, classes: list[str], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the report files into ``out_dir``; returns {file name: path}."""
    require_matplotlib("--report")
    folder = Path(out_dir).expanduser()
    matrix = _matrix(metrics["confusion"])
    if matrix.shape[0] != len(classes):
        raise ValueError(f"{len(classes)} classes for a {matrix.shape[0]}x{matrix.shape[0]} confusion matrix")
    paths = {name: folder / name for name in FILES}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_csv(paths["confusion.csv"], ["true \\ predicted", *classes],
                   ([name, *row] for name, row in zip(classes, matrix.tolist())))
        rows = per_class(matrix, classes)
        _write_csv(paths["per_class.csv"], list(rows[0]), (list(row.values()) for row in rows))
        pairs = confused_pairs(matrix, classes)
        _write_csv(paths["confused_pairs.csv"], ["rank", "true", "predicted", "count", "share"],
                   ([rank, *pair.values()] for rank, pair in enumerate(pairs, start=1)))
        paths["metrics.json"].write_text(metrics_json(metrics, indent=2) + "\n")
        plot_confusion(matrix, classes, paths["confusion.png"], _title(metrics))
        plot_per_class(rows, paths["per_class.png"], _title(metrics))
    except OSError as error:
        raise NinError(f"cannot write the report to {folder}: {error.strerror or error}") from None
    return paths


def _title(metrics: dict) -> str:
    title = f"accuracy {100 * metrics['accuracy']:.2f}% on {metrics['n']} images"
    return title + tta_note(metrics)


def _write_csv(path: Path, header: list, rows) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")  # not csv's "\r\n": awk and cut read it
        writer.writerow(header)
        for row in rows:
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])


def plot_confusion(confusion, classes: list[str], path: str | os.PathLike, subtitle: str = "") -> None:
    """Row-normalised confusion matrix (colour: share of the true class), counts written in the cells
    when there are few classes, class names on the axes when they fit."""
    matrix = _matrix(confusion)
    n = len(classes)
    totals = matrix.sum(dim=1, keepdim=True).clamp_min(1)
    shares = (matrix.double() / totals).numpy()
    side = min(max(3.0 + 0.5 * n, 5.0), 24.0)
    figure = new_figure(side + 1.5, side)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    if n <= 60:
        axes.set_xticks(range(n), classes, rotation=45 if max(map(len, classes)) > 3 else 0, ha="right")
        axes.set_yticks(range(n), classes)
    if n <= 30:
        counts = matrix.tolist()
        for row in range(n):
            for column in range(n):
                if counts[row][column]:
                    axes.text(column, row, str(counts[row][column]), ha="center", va="center", fontsize=8,
                              color="white" if shares[row, column] > 0.5 else "black")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"Confusion matrix ({subtitle})" if subtitle else "Confusion matrix")
    figure.savefig(path)


def plot_per_class(rows: list[dict], path: str | os.PathLike, subtitle: str = "") -> None:
    """Accuracy per class: bars in class order (up to 100 classes), else the sorted accuracies as a curve."""
    accuracies = [0.0 if math.isnan(row["accuracy"]) else 100 * row["accuracy"] for row in rows]
    n = len(rows)
    if n <= 100:
        figure = new_figure(7.0, min(max(1.5 + 0.3 * n, 3.0), 32.0))
        axes = figure.add_subplot()
        axes.barh(range(n), accuracies, color="tab:blue")
        axes.set_yticks(range(n), [row["class"] for row in rows])
        axes.invert_yaxis()
        axes.set_xlim(0, 100)
        axes.set_xlabel("accuracy (%)")
    else:
        figure = new_figure(7.0, 4.0)
        axes = figure.add_subplot()
        axes.plot(sorted(accuracies))
        axes.set_ylim(0, 100)
        axes.set_xlabel("classes, sorted by accuracy")
        axes.set_ylabel("accuracy (%)")
    axes.set_title(f"Per-class accuracy ({subtitle})" if subtitle else "Per-class accuracy")
    figure.savefig(path)
