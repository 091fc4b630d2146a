"""Evaluation: loss, accuracy, error and per-class accuracy over a loader, without host syncs per batch."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (this project's CPUs lack fast bf16)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, classes: list[str], *, amp: bool = False) -> dict:
    """Accuracy, error, mean loss, image count and per-class accuracy (class name -> 0..1)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    num_classes = len(classes)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for images, labels in loader:
        with autocast(device, amp):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        predictions = logits.argmax(dim=1)
        confusion += torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2)
    model.train(was_training)
    return summarize(confusion.view(num_classes, num_classes).cpu(), float(loss_sum), classes)


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


def format_report(metrics: dict) -> str:
    lines = [f"test accuracy {100 * metrics['accuracy']:.2f}% (error {100 * metrics['error']:.2f}%, "
             f"{metrics['correct']}/{metrics['n']} images)"]
    width = max(len(name) for name in metrics["per_class"])
    for name, accuracy in metrics["per_class"].items():
        lines.append(f"  {name:<{width}}  {100 * accuracy:6.2f}%")
    return "\n".join(lines)
