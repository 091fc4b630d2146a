"""Pictures of a trained model and of a run: category confidence maps (the paper's figure 4) and learning
curves.

``nin visualize CHECKPOINT IMAGE...``: with global average pooling the last mlpconv layer emits one map
per class and each logit *is* the mean of its map, so the maps show where in the image the network
finds evidence for each class. One PNG per image: the image as the model sees it (resized to its input
size) beside the maps of the classes (the 10 most probable when there are more), bilinearly upsampled
to the image's size, all on one colour scale; each titled with its class, softmax probability and mean
(= logit); the predicted class framed, and the true class when it is known.

``nin plot RUN_DIR``: loss, accuracy and learning rate per epoch from the run's ``metrics.csv``.

matplotlib (the ``report`` extra) is imported only here and only when a picture is drawn; it draws
with the Agg backend without touching pyplot's global state.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import load_image
from .errors import NinError
from .plotting import new_figure, require_matplotlib
from .rundir import read_metrics

MAX_MAPS = 10
PREDICTED_COLOUR, TRUE_COLOUR, CORRECT_COLOUR = "#d62728", "#1f77b4", "#2ca02c"  # red, blue, green


# --- category confidence maps -------------------------------------------------------------------------

def _check_gap(model) -> None:
    head = getattr(model, "head", "gap")
    if head != "gap":
        raise NinError(f"this model has a fully connected head (head={head!r}): its last mlpconv layer's "
                       "maps are features for that layer, not one map per class, so it has no category "
                       "confidence maps; they exist only with global average pooling (head 'gap', the paper's)")


@torch.inference_mode()
def confidence_maps(model, image_uint8: torch.Tensor, *, upsample: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The category confidence maps of one image and the class probabilities.

    ``model``: a trained model from ``nin.load`` (GAP head); ``image_uint8``: (C, H, W) or (1, C, H, W)
    pixels of the model's size and channels (``nin.data.load_image`` makes them), preprocessed here
    with the training run's normalisation. Returns ``maps`` (classes, H, W), the last mlpconv layer's
    output upsampled bilinearly to the image's size (``upsample=False``: as the network computes them,
    (classes, h, w), whose means are exactly the logits), and ``probabilities`` (classes,), the
    softmax of the logits. Both float32 on the CPU."""
    _check_gap(model)
    image = image_uint8.unsqueeze(0) if image_uint8.ndim == 3 else image_uint8
    if image.ndim != 4 or image.shape[0] != 1:
        raise NinError(f"confidence_maps takes one image (C, H, W), got shape {tuple(image_uint8.shape)}")
    if image.shape[1] != model.info.channels:
        raise NinError(f"the model takes {model.info.channels}-channel images, got {image.shape[1]} channels")
    was_training = model.training
    model.eval()
    try:
        inputs = model.info.normalize()(image.to(next(model.parameters()).device))
        maps = model.forward_features(inputs)
        probabilities = model.forward_head(maps).float().softmax(dim=1)[0]
    finally:
        model.train(was_training)
    maps = maps.float()
    if upsample:
        maps = F.interpolate(maps, size=tuple(image.shape[2:]), mode="bilinear", align_corners=False)
    return maps[0].cpu(), probabilities.cpu()


@dataclass
class Visualized:
    image: str
    path: Path
    predicted: str
    probability: float
    label: str | None
    shown: list[str]


def true_label(path: str | os.PathLike, classes: list[str], label: str | None = None) -> str | None:
    """The image's true class: ``label`` when given, else its folder's name when that is a class name
    (an image-folder data set, ``ROOT/test/CLASS/x.png``), else unknown (None)."""
    if label is not None:
        if label not in classes:
            shown = ", ".join(classes[:12]) + (f", ... ({len(classes)} classes)" if len(classes) > 12 else "")
            raise NinError(f"--label {label!r} is not one of the model's classes: {shown}")
        return label
    parent = Path(path).parent.name
    return parent if parent in classes else None


def _output_names(paths: list[str]) -> list[str]:
    """A PNG name per image: its stem; images with the same stem (x/0.png, y/0.png) get their folder's
    name in front, and a number if that still collides."""
    stems = [Path(p).stem for p in paths]
    names, used = [], set()
    for path, stem in zip(paths, stems):
        name = stem if stems.count(stem) == 1 else f"{Path(path).parent.name or 'image'}_{stem}"
        base, number = name, 2
        while name in used:
            name, number = f"{base}_{number}", number + 1
        used.add(name)
        names.append(name)
    return [f"{name}.png" for name in names]


def visualize_files(model, paths: list[str], out_dir: str | os.PathLike = "visualizations", *,
                    label: str | None = None, max_maps: int = MAX_MAPS) -> list[Visualized]:
    """One figure-4 PNG per image file in ``out_dir``; returns what each shows."""
    require_matplotlib("nin visualize")
    _check_gap(model)
    info = model.info
    if max_maps < 1:
        raise NinError(f"--max-maps must be 1 or more, got {max_maps}")
    labels = [true_label(path, info.classes, label) for path in paths]  # a bad --label fails first
    images = [load_image(path, info.size, info.channels) for path in paths]
    folder = Path(out_dir).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NinError(f"cannot create {folder}: {error.strerror or error}") from None
    results = []
    for path, image, truth, name in zip(paths, images, labels, _output_names(paths)):
        raw, probabilities = confidence_maps(model, image, upsample=False)
        maps = F.interpolate(raw.unsqueeze(0), size=tuple(image.shape[1:]), mode="bilinear",
                             align_corners=False)[0]  # exactly what confidence_maps(upsample=True) returns
        target = folder / name
        shown = plot_confidence_maps(image, maps, probabilities, info.classes, target,
                                     logits=raw.mean(dim=(1, 2)), title=_display_name(path), label=truth,
                                     max_maps=max_maps)
        best = int(probabilities.argmax())
        results.append(Visualized(str(path), target, info.classes[best], float(probabilities[best]),
                                  truth, shown))
    return results


def _display_name(path) -> str:
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _shown_classes(probabilities: torch.Tensor, max_maps: int) -> list[int]:
    """Every class in class order when they fit, else the ``max_maps`` most probable, most probable first."""
    count = len(probabilities)
    if count <= max_maps:
        return list(range(count))
    return probabilities.topk(max_maps).indices.tolist()


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[:width - 1] + "\u2026"


def _percent(p: float) -> str:
    return f"{100 * p:.1f}%" if p >= 0.001 else f"{100 * p:.2g}%"


def plot_confidence_maps(image: torch.Tensor, maps: torch.Tensor, probabilities: torch.Tensor,
                         classes: list[str], path: str | os.PathLike, *, logits: torch.Tensor | None = None,
                         title: str = "", label: str | None = None, max_maps: int = MAX_MAPS) -> list[str]:
    """Draw one figure-4 panel set: ``image`` (C, H, W) uint8 beside ``maps`` (classes, H, W) on one
    colour scale; ``logits`` (the means of the maps before upsampling) go into the titles when given.
    Returns the names of the classes shown, in the order drawn."""
    shown = _shown_classes(probabilities, max_maps)
    count = len(classes)
    predicted = int(probabilities.argmax())
    truth = classes.index(label) if label is not None else None
    columns = min(len(shown), 5)
    rows = math.ceil(len(shown) / columns)
    panel = 2.0
    figure = new_figure(panel * (columns + 1.6) + 0.9, panel * 1.05 * rows + 1.45)
    grid = figure.add_gridspec(rows, columns + 2, width_ratios=[1.4, 0.15] + [1] * columns)
    values = maps[shown]
    vmin, vmax = float(values.min()), float(values.max())
    if vmax <= vmin:
        vmax = vmin + 1e-6

    axes = figure.add_subplot(grid[:, 0])
    pixels = image.permute(1, 2, 0).numpy()
    if pixels.shape[2] == 1:
        axes.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        axes.imshow(pixels, interpolation="nearest")
    size = f"{image.shape[2]}x{image.shape[1]}"
    axes.set_title(f"input ({size})", fontsize=10)
    _no_ticks(axes)

    drawn = None
    for position, index in enumerate(shown):
        axes = figure.add_subplot(grid[position // columns, 2 + position % columns])
        drawn = axes.imshow(maps[index].numpy(), cmap="viridis", vmin=vmin, vmax=vmax, interpolation="bilinear")
        subtitle = _percent(float(probabilities[index]))
        if logits is not None:
            subtitle += f"  (logit {float(logits[index]):.2f})"
        axes.set_title(f"{_short(classes[index])}\n{subtitle}", fontsize=9)
        _no_ticks(axes)
        tags = []
        if index == predicted:
            tags.append("predicted")
        if index == truth:
            tags.append("true")
        if tags:
            colour = (CORRECT_COLOUR if len(tags) == 2 else PREDICTED_COLOUR if tags == ["predicted"]
                      else TRUE_COLOUR)
            for spine in axes.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
            axes.set_xlabel(" = ".join(tags), color=colour, fontsize=10, fontweight="bold", labelpad=2)
    figure.colorbar(drawn, ax=figure.axes[1:], shrink=0.9, pad=0.02, label="map value (one scale for all maps)")

    heading = f"{title}: " if title else ""
    heading += f"predicted {classes[predicted]} ({_percent(float(probabilities[predicted]))})"
    if truth is not None:
        verdict = "correct" if truth == predicted else "wrong"
        heading += f", true {classes[truth]} ({verdict})"
        if truth not in shown:
            heading += f"; the true class has {_percent(float(probabilities[truth]))}, not among the maps shown"
    lines = [heading, "category confidence maps of the last mlpconv layer, upsampled to the input; "
             "global average pooling makes each class's logit the mean of its map"]
    if len(shown) < count:
        lines.append(f"the {len(shown)} most probable of {count} classes")
    figure.suptitle("\n".join(lines), fontsize=10)
    try:
        figure.savefig(path)
    except OSError as error:
        raise NinError(f"cannot write {path}: {error.strerror or error}") from None
    return [classes[i] for i in shown]


def _no_ticks(axes) -> None:
    axes.set_xticks([])
    axes.set_yticks([])


# --- learning curves ------------------------------------------------------------------------------------

def _evaluated(rows: list[dict], column: str) -> tuple[list[float], list[float]]:
    """The epochs that were evaluated (``--eval-every``) and their values of ``column``."""
    kept = [r for r in rows if not math.isnan(r[column])]
    return [r["epoch"] for r in kept], [r[column] for r in kept]


def plot_curves(run: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Loss (train, test), accuracy (train, test) and learning rate against the epoch, from a run's
    ``metrics.csv``; written to ``out`` (default: ``curves.png`` beside the CSV). Returns the path."""
    require_matplotlib("nin plot")
    path, rows = read_metrics(run)
    target = _plot_path(Path(out).expanduser() if out else path.parent / "curves.png")
    config = _run_config(path.parent)
    epochs = [r["epoch"] for r in rows]
    marker = "o" if len(rows) <= 40 else None

    figure = new_figure(13.0, 4.3)
    loss, accuracy, rate = figure.subplots(1, 3)
    smoothing = float(config.get("label_smoothing") or 0)
    train_note = "train" + (f" (label smoothing {smoothing:g})" if smoothing else "")
    loss.plot(epochs, [r["train_loss"] for r in rows], marker=marker, label=train_note, color="tab:blue")
    loss.plot(*_evaluated(rows, "test_loss"), marker=marker, label="test", color="tab:orange")
    loss.set_title("loss (cross-entropy)")
    loss.set_ylim(bottom=0)
    accuracy.plot(epochs, [100 * r["train_acc"] for r in rows], marker=marker, label="train", color="tab:blue")
    tested_epochs, test_acc = _evaluated(rows, "test_acc")
    accuracy.plot(tested_epochs, [100 * a for a in test_acc], marker=marker, label="test", color="tab:orange")
    accuracy.set_title("accuracy (%)")
    best = max(range(len(rows)), key=lambda i: -math.inf if math.isnan(rows[i]["test_acc"]) else rows[i]["test_acc"])
    if not math.isnan(rows[best]["test_acc"]):
        value = 100 * rows[best]["test_acc"]
        accuracy.plot([rows[best]["epoch"]], [value], linestyle="none", marker="*", markersize=14, color="tab:red",
                      zorder=3, label=f"best test {value:.2f}% (epoch {rows[best]['epoch']:g})")
    rate.plot(epochs, [r["lr"] for r in rows], marker=marker, color="tab:green")
    rate.set_title("learning rate (at the epoch's end)")
    rate.set_ylim(bottom=0)
    rate.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for axes in (loss, accuracy, rate):
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        if len(rows) <= 12:
            axes.set_xticks(epochs)
    loss.legend(fontsize=9)
    accuracy.legend(fontsize=9, loc="lower right")

    name = path.parent.name or str(path.parent)
    what = ", ".join(str(config[k]) for k in ("model", "dataset") if config.get(k))
    heading = f"{name}" + (f" ({what})" if what else "") + f": {len(rows)} epoch{'s' if len(rows) != 1 else ''}"
    if not math.isnan(rows[-1]["test_acc"]):
        heading += f", final test accuracy {100 * rows[-1]['test_acc']:.2f}%"
    if not math.isnan(rows[best]["test_acc"]):
        heading += f", best {100 * rows[best]['test_acc']:.2f}% (epoch {rows[best]['epoch']:g})"
    minutes = sum(r["seconds"] for r in rows if not math.isnan(r["seconds"])) / 60
    heading += f", {minutes:.1f} min"
    figure.suptitle(heading + "\ntrain: averaged over the epoch's batches, with dropout and augmentation; "
                    "test: after the epoch", fontsize=10)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target)
    except OSError as error:
        raise NinError(f"cannot write {target}: {error.strerror or error}") from None
    return target


PLOT_FORMATS = (".png", ".pdf", ".svg")


def _plot_path(target: Path) -> Path:
    """``target`` with .png added when it has no suffix; another format than PLOT_FORMATS is refused."""
    if not target.suffix:
        return target.with_name(target.name + ".png")
    if target.suffix.lower() not in PLOT_FORMATS:
        raise NinError(f"cannot write a plot as {target.suffix}: use {', '.join(PLOT_FORMATS)} (or no suffix: .png)")
    return target


def _run_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}
