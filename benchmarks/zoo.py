"""A zoo of real image sets built from what this machine has, to judge the defaults on data no recipe was
tuned for: Fashion-MNIST at several sizes, in its own IDX format and as folders of PNG files, resized to
32 and 64 pixels, recoloured to three channels, a 3-class version, and scikit-learn's 8x8 handwritten
digits (a real image set shipped inside a package: `pip install scikit-learn`).

Each set is a dict of ``nin train`` settings (``ZOO[name]``); ``build(name, root)`` writes the folder
sets under ``root`` (the IDX sets need nothing written). Folder sets take their training images from
Fashion-MNIST's training split and their test images from its test split, so validation (the last fifth
of each training class, ``--eval-split val``) and test never share an image. A ``-heldout`` set is for
choosing: its test folder holds other images of Fashion-MNIST's training split.

``cifar10-jpeg`` is CIFAR-10 itself, from the JPEG copy beside the project on its build machines
(``../shared/data/cifar10-jpeg.tar.gz``, read in place): the largest set, asked for by name only
(``--sets cifar10-jpeg``), since its sweep takes hours on a CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nin.data import load_dataset

TEST_IMAGES = 1000  # test images of every folder set (Fashion-MNIST's test split, a fixed spread draw)
THREE_CLASSES = ("T-shirt/top", "Pullover", "Shirt")  # the three that Fashion-MNIST confuses most
SHARED_CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

ZOO: dict[str, dict] = {
    "fmnist-500": dict(dataset="fashion-mnist", train_subset=500),
    "fmnist-2k": dict(dataset="fashion-mnist", train_subset=2_000),
    "fmnist-10k": dict(dataset="fashion-mnist", train_subset=10_000),
    "fmnist-60k": dict(dataset="fashion-mnist"),
    "png-2k": dict(dataset="folder", channels=1, image_size=28, build=dict(train=2_000, size=28)),
    "colour32-2k": dict(dataset="folder", channels=3, image_size=32, build=dict(train=2_000, size=32, colour=True)),
    "grey64-1k": dict(dataset="folder", channels=1, image_size=64, build=dict(train=1_000, size=64)),
    "3class-1500": dict(dataset="folder", channels=1, image_size=28,
                        build=dict(train=1_500, size=28, classes=THREE_CLASSES)),
    "digits": dict(dataset="folder", channels=1, image_size=28, build=dict(digits=True)),
    # for choosing, not for the table: grey64-1k's training images, tested on 2,000 other images of Fashion-MNIST's
    # training split (a validation set ten times the size of grey64-1k's --eval-split val, which holds 200)
    "grey64-1k-heldout": dict(dataset="folder", channels=1, image_size=64,
                              build=dict(train=1_000, size=64, held_out=2_000)),
    # CIFAR-10's 60,000 images, no settings but the data: what `nin train --dataset folder --root C10` gets
    "cifar10-jpeg": dict(dataset="folder", root=str(SHARED_CIFAR10)),
}
BY_NAME_ONLY = ("cifar10-jpeg",)  # not in the default --sets: hours of CPU


def parse_changes(items: list[str]) -> dict:
    """``--change FIELD=VALUE`` items as TrainConfig fields: a value is JSON where it parses (0.1, false,
    null), else the word itself (amp=off)."""
    changes = {}
    for item in items:
        field, text = item.split("=", 1)
        try:
            changes[field] = json.loads(text)
        except json.JSONDecodeError:
            changes[field] = text
    return changes


def settings(name: str, root: Path) -> dict:
    """The ``nin train`` settings of a zoo set (writing its folder first when it is one)."""
    spec = dict(ZOO[name])
    if name in BY_NAME_ONLY and not Path(spec["root"]).is_file():
        raise SystemExit(f"zoo: {name} needs {spec['root']}, which is absent (the shared data of the build machines)")
    recipe = spec.pop("build", None)
    if recipe is not None:
        spec["root"] = str(build(name, root, **recipe))
    return spec


def build(name: str, root: Path, *, train: int = 0, size: int = 28, colour: bool = False,
          classes: tuple[str, ...] = (), digits: bool = False, held_out: int = 0) -> Path:
    """A folder set: ``train`` images of Fashion-MNIST's training split, tested on TEST_IMAGES of its test
    split, or, with ``held_out``, on that many more of its training split (a validation set)."""
    folder = Path(root) / name
    if (folder / "done").exists():
        return folder
    if digits:
        splits = _digits()
    else:
        splits = {"train": _fashion("train", train, size, colour, classes),
                  "test": (_fashion("train", held_out, size, colour, classes, skip=train) if held_out
                           else _fashion("test", TEST_IMAGES, size, colour, classes))}
    for split, (images, labels, names) in splits.items():
        _write_pngs(folder / split, images, labels, names)
    (folder / "done").write_text("complete\n")
    return folder


def _spread(count: int, total: int, seed: int, skip: int = 0) -> torch.Tensor:
    """``count`` rows of ``total`` drawn at random, after the first ``skip`` of the same draw."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[skip:skip + count].sort().values


def _fashion(split: str, count: int, size: int, colour: bool, classes: tuple[str, ...], skip: int = 0):
    images, labels, names = load_dataset("fashion-mnist", None, split)
    if classes:
        keep = [names.index(c) for c in classes]
        rows = torch.isin(labels, torch.tensor(keep)).nonzero().flatten()
        images, labels = images[rows], torch.tensor([keep.index(int(y)) for y in labels[rows]])
        names = list(classes)
    rows = _spread(min(count, len(labels) - skip), len(labels), seed=1 if split == "train" else 2, skip=skip)
    images, labels = images[rows], labels[rows]
    if size != images.shape[-1]:
        resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    if colour:
        images = _recolour(images, seed=3 if split == "train" else 4)
    return images, labels, names


def _recolour(grey: torch.Tensor, seed: int) -> torch.Tensor:
    """Each image in its own colours: a random ink colour on a random dark background."""
    generator = torch.Generator().manual_seed(seed)
    ink = torch.rand(len(grey), 3, 1, 1, generator=generator) * 0.6 + 0.4
    paper = torch.rand(len(grey), 3, 1, 1, generator=generator) * 0.3
    alpha = grey.float() / 255
    return ((alpha * ink + (1 - alpha) * paper) * 255).round().to(torch.uint8)


def _digits():
    """scikit-learn's 1,797 8x8 digits (0..16 grey levels); every fifth image of each class for testing."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("zoo: the digits set comes from scikit-learn, which is not installed: "
                         "pip install scikit-learn (or leave digits out of --sets)") from None

    digits = load_digits()
    images = torch.from_numpy((digits.images * (255 / 16)).round().astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    test = torch.arange(len(labels)) % 5 == 4
    names = [str(d) for d in range(10)]
    return {"train": (images[~test], labels[~test], names), "test": (images[test], labels[test], names)}


def _write_pngs(folder: Path, images: torch.Tensor, labels: torch.Tensor, names: list[str]) -> None:
    for index, (image, label) in enumerate(zip(images, labels)):
        target = folder / names[int(label)].replace("/", "-")
        target.mkdir(parents=True, exist_ok=True)
        pixels = image.permute(1, 2, 0).numpy()
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(target / f"{index:05d}.png")
