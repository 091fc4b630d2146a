"""Evaluation: loss, accuracy, error and per-class accuracy over a loader, without host syncs per batch."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .distributed import all_reduce_sum
from .files import metrics_json  # noqa: F401 (nin.evaluate.metrics_json, as before)
from .hardware import autocast
from .kinds import TTA_MODES


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, classes: list[str], *, amp: bool = False,
             topk: Sequence[int] = (), tta: str | bool = "") -> dict:
    """Accuracy, error, mean loss, image count and per-class accuracy (class name -> 0..1).

    ``topk``: also the top-k accuracy for each k (capped at the class count), as ``metrics["topk"]``
    {"k": 0..1}. ``tta``: test-time augmentation, one of TTA_MODES (True: "flip"; flips only for data
    whose class a flip preserves: the caller checks), named in ``metrics["tta"]``."""
    tta = tta_mode(tta)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    num_classes = len(classes)
    ks = sorted({min(int(k), num_classes) for k in topk})
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    topk_correct = torch.zeros(len(ks), dtype=torch.int64, device=device)
    for images, labels in loader:
        with autocast(device, amp):
            logits = tta_logits(model, images, tta) if tta else model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        predictions = logits.argmax(dim=1)
        confusion += torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2)
        if ks:
            # a stable sort breaks ties (bf16 logits, ReLU'd class maps) as argmax does: top-1 is the accuracy
            ranked = logits.sort(dim=1, descending=True, stable=True).indices[:, :ks[-1]]
            hits = ranked == labels[:, None]  # (N, largest k)
            topk_correct += torch.stack([hits[:, :k].any(dim=1).sum() for k in ks])
    model.train(was_training)
    for total in (loss_sum, confusion, topk_correct):  # each process evaluated its own shard
        all_reduce_sum(total)
    metrics = summarize(confusion.view(num_classes, num_classes).cpu(), float(loss_sum), classes)
    if ks:
        n = metrics["n"]
        metrics["topk"] = {str(k): (int(c) / n if n else float("nan")) for k, c in zip(ks, topk_correct.tolist())}
    if tta:
        metrics["tta"] = tta
    return metrics


def tta_mode(tta: str | bool) -> str:
    """"" (none) or one of TTA_MODES; True is "flip" (the original meaning of ``tta=True``)."""
    mode = "flip" if tta is True else (tta or "")
    if mode and mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    return mode


def tta_logits(model: torch.nn.Module, images: torch.Tensor, mode: str) -> torch.Tensor:
    """The logits averaged over test-time views: ``flip``, each image and its mirror image; ``shift``,
    the image at half weight and moved one pixel diagonally each way (edges reflected) at a quarter each,
    airbench's test-time translation; ``flip-shift``, the shifts of both mirror images (6 passes)."""
    views = (images, images.flip(3)) if "flip" in mode else (images,)
    total = 0.0
    for view in views:
        logits = model(view).float()
        if "shift" in mode:
            padded = F.pad(view, (1, 1, 1, 1), mode="reflect")
            moved = model(padded[..., :-2, :-2]).float() + model(padded[..., 2:, 2:]).float()
            logits = 0.5 * logits + 0.25 * moved
        total = total + logits
    return total / len(views)


def summarize(confusion: torch.Tensor, loss_sum: float, classes: list[str]) -> dict:
    """Metrics from a confusion matrix (rows: true class, columns: predicted class)."""
    n = int(confusion.sum())
    correct = int(confusion.diag().sum())
    per_class_total = confusion.sum(dim=1)
    per_class = {name: (float(confusion[i, i] / per_class_total[i]) if per_class_total[i] else float("nan"))
                 for i, name in enumerate(classes)}
    accuracy = correct / n if n else float("nan")
    return {"accuracy": accuracy, "error": 1.0 - accuracy, "n": n, "correct": correct,
            "loss": loss_sum / n if n else float("nan"), "per_class": per_class,
            "confusion": confusion.tolist()}


def tta_note(metrics: dict) -> str:
    """", flip TTA" (or the mode used) when the metrics came with test-time augmentation."""
    mode = tta_mode(metrics.get("tta", ""))
    return f", {mode} TTA" if mode else ""


def format_report(metrics: dict, split: str = "test") -> str:
    """The accuracy on ``split`` (the split's name leads the line, so a validation run does not read as a
    test result), top-k and per-class accuracies."""
    lines = [f"{split} accuracy {100 * metrics['accuracy']:.2f}% (error {100 * metrics['error']:.2f}%, "
             f"{metrics['correct']}/{metrics['n']} images{tta_note(metrics)})"]
    for k, accuracy in metrics.get("topk", {}).items():
        if k != "1":
            lines.append(f"top-{k} accuracy {100 * accuracy:.2f}%")
    width = max(len(name) for name in metrics["per_class"])
    for name, accuracy in metrics["per_class"].items():
        lines.append(f"  {name:<{width}}  {100 * accuracy:6.2f}%")
    return "\n".join(lines)
