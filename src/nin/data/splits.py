"""Which images a run trains on and is evaluated on (``select_images``: the one place train, eval and
reproduce decide it), and the paper's validation splits, carved out of the training images (the test
set is never touched):

- CIFAR-10/100: the last 10,000 training images (the paper tunes on them, then retrains on all 50,000).
- SVHN: 400 images per class from ``train`` and 200 per class from ``extra`` (Goodfellow et al.'s split,
  which the paper follows); the rest of train + extra (about 598,000 images) is for training. We take
  the first images of each class in file order, so the split is the same on every machine.
- MNIST and Fashion-MNIST: the last 10,000 training images, as for CIFAR.
- An image folder: the last fifth of each class (sorted by file name).

A small set (the test fixtures, a subset) keeps the same rule scaled down: never more than a fifth of
the images (or of a class) goes to validation, so training always keeps the larger part.
"""
from __future__ import annotations

import torch

from ..errors import NinError
from .datasets import Split, load_dataset

LAST_N = {"cifar10": 10_000, "cifar100": 10_000, "mnist": 10_000, "fashion-mnist": 10_000}
SVHN_PER_CLASS = {"train": 400, "extra": 200}


def select_images(dataset: str, root, train_split: str = "train", eval_split: str = "test", *,
                  image_size: int | None = None, channels: int | None = None,
                  need_train: bool = True) -> tuple[Split | None, Split]:
    """(the training images, the evaluated images) of ``dataset``: ``train_split`` names the training
    split(s) ("train+extra" joins SVHN's two); ``eval_split`` is a split of the data set, or "val", the
    paper's validation images held out of those training splits. Without ``need_train`` the training
    images are only loaded when "val" needs them, and None is returned for them."""
    def load(split: str) -> Split:
        return load_dataset(dataset, root, split, image_size=image_size, channels=channels)

    parts = {part: load(part) for part in train_split.split("+")} if need_train or eval_split == "val" else {}
    if eval_split == "val":
        train, evaluated = paper_validation(dataset, parts)
    else:
        train, evaluated = (_join(list(parts.values())) if parts else None), load(eval_split)
    if need_train and evaluated.classes != train.classes:
        raise NinError(f"the {eval_split} split's classes {evaluated.classes} differ from the training split's "
                       f"{train.classes}")
    return (train if need_train else None), evaluated


def _join(parts: list[Split]) -> Split:
    """Several training splits ("train+extra") as one."""
    if len(parts) == 1:
        return parts[0]
    return Split(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), parts[0].classes)


def paper_validation(dataset: str, parts: dict[str, Split]) -> tuple[Split, Split]:
    """Split the training part(s) ``{split name: Split}`` into (training, validation)."""
    names = list(parts)
    classes = parts[names[0]].classes
    train_masks, val_masks = [], []
    for name in names:
        labels = parts[name].labels
        held_out = _held_out(dataset, name, labels, len(classes))
        train_masks.append(~held_out)
        val_masks.append(held_out)
    if not any(bool(mask.any()) for mask in val_masks):
        raise NinError(f"{sum(len(p.labels) for p in parts.values())} training images are too few to hold out "
                       "a validation split: use the test set (--eval-split test)")
    return _select(parts, train_masks, classes), _select(parts, val_masks, classes)


def _held_out(dataset: str, split: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A boolean mask of the images of one split that go to validation."""
    if dataset == "svhn":
        return _first_per_class(labels, num_classes, SVHN_PER_CLASS.get(split, 0))
    if dataset in LAST_N:
        mask = torch.zeros(len(labels), dtype=torch.bool)
        count = min(LAST_N[dataset], len(labels) // 5)
        if count:
            mask[len(labels) - count:] = True
        return mask
    return _last_fifth_per_class(labels, num_classes)


def _first_per_class(labels: torch.Tensor, num_classes: int, per_class: int) -> torch.Tensor:
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for cls in range(num_classes):
        rows = (labels == cls).nonzero().flatten()
        mask[rows[:min(per_class, len(rows) // 5)]] = True
    return mask


def _last_fifth_per_class(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for cls in range(num_classes):
        rows = (labels == cls).nonzero().flatten()
        count = len(rows) // 5
        if count:
            mask[rows[len(rows) - count:]] = True
    return mask


def _select(parts: dict[str, Split], masks: list[torch.Tensor], classes: list[str]) -> Split:
    """The masked images of every part, joined in order (train + extra are never joined whole first)."""
    chosen = [(part, mask) for part, mask in zip(parts.values(), masks) if mask.any()]
    images = torch.cat([part.images[mask] for part, mask in chosen])
    labels = torch.cat([part.labels[mask] for part, mask in chosen])
    return Split(images, labels, classes)
