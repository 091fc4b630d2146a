"""Data sets as tensors: ``load_dataset(name, root, split)`` -> uint8 images (N, C, H, W), int64
labels (N,), class names.

Files are found where torchvision keeps them, so an existing torchvision ``root`` works as it is;
torchvision's own classes download (and checksum) a missing set when ``download=True``. Parsing
is ours (``readers.py``) because torchvision's CIFAR reader unpickles without restriction.
Parsed tensors are cached (``NIN_CACHE_DIR``, default ``~/.cache/nin``) so a second load is fast.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import NinError
from ..hardware import require_memory
from . import readers

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class Split(NamedTuple):
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]


class Info(NamedTuple):
    name: str
    title: str
    splits: tuple[str, ...]
    channels: int
    size: int
    flip: bool  # horizontal flips preserve the class (never for digits)
    get: str  # how to obtain it


DATASETS: dict[str, Info] = {
    "cifar10": Info("cifar10", "CIFAR-10", ("train", "test"), 3, 32, True,
                    "nin data cifar10 --root DIR --download"),
    "cifar100": Info("cifar100", "CIFAR-100", ("train", "test"), 3, 32, True,
                     "nin data cifar100 --root DIR --download"),
    "svhn": Info("svhn", "SVHN", ("train", "test", "extra"), 3, 32, False,
                 "nin data svhn --root DIR --download"),
    "mnist": Info("mnist", "MNIST", ("train", "test"), 1, 28, False,
                  "nin data mnist --root DIR --download"),
    "fashion-mnist": Info("fashion-mnist", "Fashion-MNIST", ("train", "test"), 1, 28, True,
                          "apt-get install dataset-fashion-mnist, or nin data fashion-mnist --root DIR --download"),
    "folder": Info("folder", "image folder", ("train", "test"), 3, 32, True,
                   "make ROOT/train/CLASS/*.png and ROOT/test/CLASS/*.png"),
}
MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def dataset_info(name: str) -> Info:
    if name not in DATASETS:
        raise NinError(f"unknown data set {name!r}: expected one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, root: str | os.PathLike | None, split: str, *, download: bool = False,
                 image_size: int | None = None, channels: int | None = None, cache: bool = True) -> Split:
    """Load one split of a data set as tensors, resized to ``image_size`` and converted to ``channels``
    when they are given and differ from the data set's own."""
    info = dataset_info(name)
    if split not in info.splits:
        raise NinError(f"{info.title} has no split {split!r}: expected one of {', '.join(info.splits)}")
    if name == "folder":
        return _load_folder(root, split, image_size or info.size, channels or info.channels, cache)
    root_path = _resolve_root(name, root)
    if download:
        _download(name, root_path, split)
    files = _source_files(name, root_path, split)
    return _reshape(_cached(files, (name, split), lambda: _parse(name, files), cache), image_size, channels)


def _reshape(split: Split, size: int | None, channels: int | None) -> Split:
    """Images at another size (bilinear, antialiased, as PIL resizes folder images) or channel count
    (grey -> RGB repeats the channel; RGB -> grey weighs it as PIL's "L" does)."""
    images = split.images
    if size and size != images.shape[-1]:
        _require_pixels(len(images), channels or images.shape[1], size)
    if channels and channels != images.shape[1]:
        if channels == 3:
            images = images.expand(-1, 3, -1, -1)
        else:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
    if size and size != images.shape[-1]:
        images = torch.cat([F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True)
                            .round().clamp(0, 255).to(torch.uint8) for chunk in images.split(4096)])
    return Split(images.contiguous(), split.labels, split.classes) if images is not split.images else split


def _resolve_root(name: str, root) -> Path:
    if root is not None:
        return Path(root).expanduser()
    if name == "fashion-mnist" and FASHION_MNIST_SYSTEM_DIR.is_dir():
        return FASHION_MNIST_SYSTEM_DIR
    return Path(os.environ.get("NIN_DATA", "data")).expanduser()


def _source_files(name: str, root: Path, split: str) -> list[Path]:
    """The files one split is read from, in order; a clear error when any is missing."""
    if name in ("cifar10", "cifar100"):
        folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
        if name == "cifar10":
            names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
            names.append("batches.meta")
        else:
            names = [split, "meta"]
        return _require(name, root, [folder / n for n in names])
    if name == "svhn":
        return _require(name, root, [root / f"{split}_32x32.mat"])
    prefix = "train" if split == "train" else "t10k"
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    sub = "MNIST" if name == "mnist" else "FashionMNIST"
    # torchvision's layout first (ROOT/MNIST/raw), then the files directly in ROOT (Debian's layout)
    for folder in (root / sub / "raw", root):
        found = [_first_existing(folder, stem) for stem in stems]
        if all(found):
            return found
    return _require(name, root, [root / sub / "raw" / stem for stem in stems])


def _first_existing(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _require(name: str, root: Path, files: list[Path]) -> list[Path]:
    missing = [f for f in files if not f.is_file()]
    if missing:
        info = DATASETS[name]
        raise NinError(f"{info.title} not found under {root}: missing {missing[0]}"
                       f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; get it with: {info.get}")
    return files


def _parse(name: str, files: list[Path]) -> Split:
    if name in ("cifar10", "cifar100"):
        label_key = "labels" if name == "cifar10" else "fine_labels"
        names_key = "label_names" if name == "cifar10" else "fine_label_names"
        parts = [readers.cifar_batch(f, label_key) for f in files[:-1]]
        classes = readers.cifar_meta(files[-1], names_key)
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    elif name == "svhn":
        images, labels = readers.read_svhn_mat(files[0])
        classes = MNIST_CLASSES
    else:
        images = readers.read_idx(files[0], ndim=3)[:, None]
        labels = readers.read_idx(files[1], ndim=1).astype(np.int64)
        classes = MNIST_CLASSES if name == "mnist" else FASHION_CLASSES
        if len(labels) != len(images):
            raise NinError(f"{files[1]} holds {len(labels)} labels for {len(images)} images in {files[0]}")
    label_file = files[1] if name in ("mnist", "fashion-mnist") else files[0]  # IDX keeps labels apart
    _check_labels(label_file, labels, len(classes))
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), classes)


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise NinError(f"{path}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")


def _download(name: str, root: Path, split: str) -> None:
    """torchvision's classes fetch the files into the layout read above and verify their checksums."""
    from torchvision import datasets as tv

    root.mkdir(parents=True, exist_ok=True)
    try:
        if name == "svhn":
            tv.SVHN(str(root), split=split, download=True)
        else:
            cls = {"cifar10": tv.CIFAR10, "cifar100": tv.CIFAR100, "mnist": tv.MNIST,
                   "fashion-mnist": tv.FashionMNIST}[name]
            cls(str(root), train=split == "train", download=True)
    except (OSError, RuntimeError) as error:
        raise NinError(f"could not download {DATASETS[name].title} into {root}: {error}") from None


HELD_BYTES_PER_PIXEL = 5  # the uint8 images, and a float32 copy while the preprocessing is fitted to them


def _require_pixels(count: int, channels: int, size: int) -> None:
    require_memory(count * channels * size * size * HELD_BYTES_PER_PIXEL, torch.device("cpu"),
                   f"{count:,} images of {channels}x{size}x{size} pixels", "lower --image-size")


# --- image folders --------------------------------------------------------------------------------

def _load_folder(root, split: str, size: int, channels: int, cache: bool) -> Split:
    if root is None:
        raise NinError("the folder data set needs --root DIR holding train/CLASS/*.png and test/CLASS/*.png")
    split_dir = Path(root).expanduser() / split
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir()) if split_dir.is_dir() else []
    if not classes:
        raise NinError(f"no class folders in {split_dir}: expected {split_dir}/CLASS_NAME/IMAGE.png")
    samples = [(path, index) for index, cls in enumerate(classes)
               for path in sorted((split_dir / cls).rglob("*")) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not samples:
        raise NinError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {split_dir}")
    if split == "train" and len({label for _, label in samples}) < 2:
        raise NinError(f"{split_dir} holds images of one class only ({classes[0]}): a classifier needs two or more")
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if split == "train" and empty:
        raise NinError(f"the class folder {split_dir / empty[0]} holds no images: a class needs training images "
                       "(add some, or move the folder out)")
    _require_pixels(len(samples), channels, size)
    files = [path for path, _ in samples]
    key = ("folder", split, size, channels, tuple(classes))
    return _cached(files, key, lambda: _decode_folder(samples, classes, size, channels), cache)


def _decode_folder(samples, classes, size: int, channels: int) -> Split:
    from .images import load_image  # PIL-based; also used by ``nin predict``

    images = torch.empty(len(samples), channels, size, size, dtype=torch.uint8)
    for row, (path, _) in enumerate(samples):
        images[row] = load_image(path, size, channels)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return Split(images, labels, classes)


# --- cache ------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("NIN_CACHE_DIR", Path.home() / ".cache" / "nin")).expanduser()


def _cached(files: list[Path], key: tuple, parse, enabled: bool) -> Split:
    """Parse once; later loads read a tensor file keyed by the sources' paths, sizes and times."""
    if not enabled:
        return parse()
    digest = hashlib.sha256(repr(key).encode())
    for f in files:
        stat = f.stat()
        digest.update(f"{f.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    path = cache_dir() / f"{key[0]}-{key[1]}-{digest.hexdigest()[:16]}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            return Split(stored["images"], stored["labels"], list(stored["classes"]))
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    split = parse()
    try:
        from ..checkpoint import atomic_save

        atomic_save(split._asdict(), path)
    except OSError:
        pass  # a read-only or full cache only costs speed
    return split
