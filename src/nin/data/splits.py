"""Which images a run trains on and is evaluated on (``select_images``: the one place train, eval and
reproduce decide it), and the paper's validation splits, carved out of the training images (the test
set is never touched). Each data set's entry in ``datasets.DATASETS`` names its rule, and why: the last
10,000 training images of CIFAR-10/100 and (Fashion-)MNIST, the first 400 images per class of SVHN's
``train`` and 200 of its ``extra``, the last fifth of each class of an image folder; a small set keeps
its rule scaled down, never more than a fifth of the images (or of a class).
"""
from __future__ import annotations

import torch

from ..errors import NinError
from .datasets import DoesNotFit, Split, dataset_info, load_dataset
from .pack import auto_pack
from .packed import PackedImages, take_rows


def select_images(dataset: str, root, train_split: str = "train", eval_split: str = "test", *,
                  image_size: int | None = None, channels: int | None = None,
                  need_train: bool = True, log=print) -> tuple[Split | None, Split]:
    """(the training images, the evaluated images) of ``dataset``: ``train_split`` names the training
    split(s) ("train+extra" joins SVHN's two); ``eval_split`` is a split of the data set, or "val", the
    paper's validation images held out of those training splits. Without ``need_train`` the training
    images are only loaded when "val" needs them, and None is returned for them."""
    def load(split: str) -> Split:
        try:
            return load_dataset(dataset, root, split, image_size=image_size, channels=channels)
        except DoesNotFit:  # decoded, it would not fit in memory: packed once, then read through a memory map
            pack = auto_pack(dataset, root, split, image_size, channels, log)
            return load_dataset(dataset, pack, split, image_size=image_size, channels=channels)

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
    if any(isinstance(p.images, PackedImages) for p in parts):
        raise NinError("a pack trains on one split at a time: train on --train-split train, or pack a folder "
                       "that holds both")
    return Split(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), parts[0].classes)


def paper_validation(dataset: str, parts: dict[str, Split]) -> tuple[Split, Split]:
    """Split the training part(s) ``{split name: Split}`` into (training, validation)."""
    held_out_of = dataset_info(dataset).validation  # (split name, labels, number of classes) -> mask
    classes = next(iter(parts.values())).classes
    train_masks, val_masks = [], []
    for name, part in parts.items():
        held_out = held_out_of(name, part.labels, len(classes))
        train_masks.append(~held_out)
        val_masks.append(held_out)
    if not any(bool(mask.any()) for mask in val_masks):
        raise NinError(f"{sum(len(p.labels) for p in parts.values())} training images are too few to hold out "
                       "a validation split: use the test set (--eval-split test)")
    return _select(parts, train_masks, classes), _select(parts, val_masks, classes)


def _select(parts: dict[str, Split], masks: list[torch.Tensor], classes: list[str]) -> Split:
    """The masked images of every part, joined in order (train + extra are never joined whole first)."""
    chosen = [(part, mask) for part, mask in zip(parts.values(), masks) if mask.any()]
    if len(chosen) == 1:  # a pack's selection stays on the disk
        part, mask = chosen[0]
        return Split(take_rows(part.images, mask), part.labels[mask], classes)
    images = torch.cat([part.images[mask] for part, mask in chosen])
    labels = torch.cat([part.labels[mask] for part, mask in chosen])
    return Split(images, labels, classes)
