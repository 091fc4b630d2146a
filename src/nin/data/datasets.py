"""Data sets as tensors: ``load_dataset(name, root, split)`` -> uint8 images (N, C, H, W), int64
labels (N,), class names.

Each data set is one ``DataSet`` entry of ``DATASETS`` (at the end of this file): its files, parser,
download, validation split, classes, size, channels, title and how to get it. Adding a data set is
adding one entry; no function here or in ``splits.py`` tells data sets apart by name.

Files are found where torchvision keeps them, so an existing torchvision ``root`` works as it is;
torchvision's own classes download (and checksum) a missing set when ``download=True``. Parsing
is ours (``readers.py``) because torchvision's CIFAR reader unpickles without restriction.
Parsed tensors are cached (``NIN_CACHE_DIR``, default ``~/.cache/nin``) so a second load is fast.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import NinError
from .. import hardware
from . import readers
from .archive import Member, is_archive, open_archive
from .packed import is_pack, load_packed, read_header

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FOLDER_SIZE = 32  # an image folder's size when none is asked for (nin data folder): CIFAR's
DIGITS = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class Split(NamedTuple):
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]


@dataclass(frozen=True)
class DataSet:
    """One data set: what it is, where its files are and how they are read, and which of its training
    images the paper's validation split holds out (``splits.paper_validation`` applies the rule)."""
    name: str
    title: str
    splits: tuple[str, ...]
    channels: int
    size: int | None  # pixels per side; None: any size, decoded at the size asked for (a run: its model's input)
    flip: bool  # horizontal flips preserve the class (never for digits)
    get: str  # how to obtain it, told when it is missing
    validation: Callable[[str, torch.Tensor, int], torch.Tensor]  # (split, labels, classes) -> held-out mask
    files: Callable[[Path, str], list[Path]] | None = None  # (root, split) -> the files read, in order
    parse: Callable[[list[Path]], Split] | None = None  # those files -> the split
    download: Callable[[Path, str], object] | None = None  # (root, split) -> the files fetched into root
    system_root: Path | None = None  # where a system package installs it: the root when none is given
    load: Callable[..., Split] | None = None  # its own loader in place of files, parse and download
    samples: Callable[[object, str], tuple[list[str], list[tuple[Path, int]]]] | None = None  # one file an
    # image: (root, split) -> (class names, [(file, label)]), so that ``nin data pack`` decodes it in chunks


def dataset_info(name: str) -> DataSet:
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
    if is_pack(root):  # the data set packed by nin data pack: read through a memory map, not loaded
        return Split(*load_packed(root, name, split, image_size, channels))
    if info.load is not None:  # decoded at the asked size and channels, so it is cached per size
        return info.load(root, split, image_size, channels or info.channels, cache)
    root_path = _resolve_root(info, root)
    if download:
        _download(info, root_path, split)
    files = _require(info, root_path, info.files(root_path, split))
    return reshape(_cached(files, (name, split), lambda: info.parse(files), cache), image_size, channels)


def source_files(name: str, root, split: str) -> list[Path] | None:
    """The files a split of a data set held in files of its own format is read from, checked to exist (one
    line names the first missing one and how to get the data set); None for a data set of one file an image."""
    info = dataset_info(name)
    if info.files is None:
        return None
    root_path = _resolve_root(info, root)
    return _require(info, root_path, info.files(root_path, split))


def image_count(name: str, root, split: str) -> int | None:
    """The number of images of a split when it is known without decoding any (a pack's header, an image
    folder's files); None otherwise."""
    if is_pack(root):
        entry = read_header(Path(root).expanduser())["splits"].get(split)
        return entry["count"] if entry else None
    info = dataset_info(name)
    return len(info.samples(root, split)[1]) if info.samples is not None else None


def _resolve_root(info: DataSet, root) -> Path:
    if root is not None:
        return Path(root).expanduser()
    if info.system_root is not None and info.system_root.is_dir():
        return info.system_root
    return Path(os.environ.get("NIN_DATA", "data")).expanduser()


def _require(info: DataSet, root: Path, files: list[Path]) -> list[Path]:
    """The files, or a clear error naming the first missing one and how to get the data set."""
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise NinError(f"{info.title} not found under {root}: missing {missing[0]}"
                       f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; get it with: {info.get}")
    return files


def _download(info: DataSet, root: Path, split: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    try:
        info.download(root, split)
    except (OSError, RuntimeError) as error:
        raise NinError(f"could not download {info.title} into {root}: {error}") from None


def reshape(split: Split, size: int | None, channels: int | None) -> Split:
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


HELD_BYTES_PER_PIXEL = 5  # the uint8 images, with room for the float32 copies a resize or channel change makes


class DoesNotFit(NinError):
    """A split that would not fit in memory once decoded (``select_images`` packs it instead)."""


def _require_pixels(count: int, channels: int, size: int) -> None:
    hardware.require_memory(count * channels * size * size * HELD_BYTES_PER_PIXEL, torch.device("cpu"),
                            f"{count:,} images of {channels}x{size}x{size} pixels",
                            "lower --image-size, or pack the data set (nin data pack DATASET --root DIR --out PACK) "
                            "and train from the pack (--root PACK)", error=DoesNotFit)


# --- file formats: where a split's files are, and how they are parsed --------------------------------

def _cifar_files(folder: str, batches: dict[str, list[str]], meta: str, root: Path, split: str) -> list[Path]:
    """The split's pickled batches, then the file of class names last."""
    return [root / folder / name for name in (*batches[split], meta)]


def _parse_cifar(label_key: str, names_key: str, files: list[Path]) -> Split:
    """CIFAR-10 and -100 share the format; they differ in the keys of labels and class names."""
    parts = [readers.cifar_batch(f, label_key) for f in files[:-1]]
    classes = readers.cifar_meta(files[-1], names_key)
    images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return _checked(files[0], images, labels, classes)


def _svhn_files(root: Path, split: str) -> list[Path]:
    return [root / f"{split}_32x32.mat"]


def _parse_svhn(files: list[Path]) -> Split:
    images, labels = readers.read_svhn_mat(files[0])
    return _checked(files[0], images, labels, DIGITS)


def _idx_files(folder: str, root: Path, split: str) -> list[Path]:
    """torchvision's layout first (ROOT/MNIST/raw), then the files directly in ROOT (Debian's layout),
    each plain or gzipped; torchvision's paths when neither holds them, for the error to name."""
    prefix = "train" if split == "train" else "t10k"
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    for place in (root / folder / "raw", root):
        found = [_first_existing(place, stem) for stem in stems]
        if all(found):
            return found
    return [root / folder / "raw" / stem for stem in stems]


def _first_existing(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _parse_idx(classes: list[str], files: list[Path]) -> Split:
    """MNIST and Fashion-MNIST share the IDX format (images and labels in two files); they differ in
    their class names."""
    images = readers.read_idx(files[0], ndim=3)[:, None]
    labels = readers.read_idx(files[1], ndim=1).astype(np.int64)
    if len(labels) != len(images):
        raise NinError(f"{files[1]} holds {len(labels)} labels for {len(images)} images in {files[0]}")
    return _checked(files[1], images, labels, classes)


def _checked(label_file: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> Split:
    """The split, once its labels are known to name its classes (the error names the file holding them)."""
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise NinError(f"{label_file}: labels must lie in 0..{len(classes) - 1}, "
                       f"found {labels.min()}..{labels.max()}")
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), classes)


def _torchvision(class_name: str, by_split_name: bool = False) -> Callable[[Path, str], object]:
    """A download by torchvision's class, which fetches the files into the layout read above and verifies
    their checksums. SVHN's class takes the split's name, the others train=True or False."""
    def download(root: Path, split: str):
        from torchvision import datasets as tv

        which = {"split": split} if by_split_name else {"train": split == "train"}
        return getattr(tv, class_name)(str(root), download=True, **which)
    return download


# --- the paper's validation splits: (split, labels, number of classes) -> the images held out ----------
# A small set (the test fixtures, a subset) keeps its rule scaled down: never more than a fifth of the
# images (or of a class) goes to validation, so training always keeps the larger part.

def _last_images(count: int, split: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The last ``count`` images (CIFAR: the paper tunes on the last 10,000, then retrains on all 50,000)."""
    mask = torch.zeros(len(labels), dtype=torch.bool)
    count = min(count, len(labels) // 5)
    if count:
        mask[len(labels) - count:] = True
    return mask


def _first_per_class(per_split: dict[str, int], split: str, labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """The first ``per_split[split]`` images of each class, in file order, so that the split is the same
    on every machine (SVHN: Goodfellow et al.'s 400 per class of train and 200 of extra)."""
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for cls in range(num_classes):
        rows = (labels == cls).nonzero().flatten()
        mask[rows[:min(per_split.get(split, 0), len(rows) // 5)]] = True
    return mask


def _last_fifth_per_class(split: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The last fifth of each class (an image folder: the last by file name)."""
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for cls in range(num_classes):
        rows = (labels == cls).nonzero().flatten()
        count = len(rows) // 5
        if count:
            mask[rows[len(rows) - count:]] = True
    return mask


# --- image folders ----------------------------------------------------------------------------------

def _load_folder(root, split: str, size: int | None, channels: int, cache: bool) -> Split:
    size = size or FOLDER_SIZE
    classes, samples = _folder_samples(root, split)
    _require_pixels(len(samples), channels, size)
    files = [path for path, _ in samples]
    key = ("folder", split, size, channels, tuple(classes))
    return _cached(files, key, lambda: _decode_folder(samples, classes, size, channels), cache)


def _folder_samples(root, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image file, label)]) of a folder split, checked, without decoding an image."""
    if root is None:
        raise NinError("the folder data set needs --root DIR holding train/CLASS/*.png and test/CLASS/*.png "
                       "(or an archive of that layout: --root IMAGES.tar.gz)")
    if is_archive(root):
        split_dir, classes, samples = _archive_samples(root, split)
    else:
        split_dir, classes, samples = _directory_samples(root, split)
    if not samples:
        raise NinError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {split_dir}")
    if split == "train" and len({label for _, label in samples}) < 2:
        raise NinError(f"{split_dir} holds images of one class only ({classes[0]}): a classifier needs two or more")
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if split == "train" and empty:
        raise NinError(f"the class folder {split_dir / empty[0]} holds no images: a class needs training images "
                       "(add some, or move the folder out)")
    return classes, samples


def _directory_samples(root, split: str) -> tuple[Path, list[str], list[tuple[Path, int]]]:
    split_dir = Path(root).expanduser() / split
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir()) if split_dir.is_dir() else []
    if not classes:
        raise NinError(f"no class folders in {split_dir}: expected {split_dir}/CLASS_NAME/IMAGE.png")
    samples = [(path, index) for index, cls in enumerate(classes)
               for path in sorted((split_dir / cls).rglob("*")) if path.suffix.lower() in IMAGE_SUFFIXES]
    return split_dir, classes, samples


def _archive_samples(root, split: str) -> tuple[str, list[str], list[tuple[Member, int]]]:
    """A split's images in an archive (``split/CLASS/.../IMAGE``), in the order a folder's would be."""
    archive = open_archive(root)
    below_class = [name.split("/", 2) for name in archive.names(split) if name.count("/") >= 2]
    classes = sorted({cls for _, cls, _ in below_class})
    where = f"{archive.path}:{split}"
    if not classes:
        raise NinError(f"no class folders in {where}: expected {split}/CLASS_NAME/IMAGE.png inside the archive")
    index = {cls: i for i, cls in enumerate(classes)}
    samples = sorted(((Member(archive, f"{split}/{cls}/{rest}"), index[cls]) for _, cls, rest in below_class
                      if PurePosixPath(rest).suffix.lower() in IMAGE_SUFFIXES), key=lambda s: (s[1], s[0].name))
    return where, classes, samples


def source_identity(source) -> str:
    """What changes when an image file (or archive member) may have: the key of the caches built from it."""
    if isinstance(source, Member):
        return source.fingerprint()
    try:
        stat = source.stat()
    except OSError:  # a dangling link, a file gone since it was listed: decoding it says so in one line
        return f"{source.absolute()}|unreadable"
    return f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


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
        digest.update(source_identity(f).encode())
    path = cache_dir() / f"{key[0]}-{key[1]}-{digest.hexdigest()[:16]}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            return Split(stored["images"], stored["labels"], list(stored["classes"]))
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    split = parse()
    try:
        from ..files import atomic_write

        # streamed to the file: a copy in memory first would double what loading holds (it is the pixels)
        atomic_write(lambda stream: torch.save(split._asdict(), stream), path)
    except (OSError, RuntimeError):  # torch's zip writer may report a failed write as a RuntimeError
        pass  # a read-only or full cache only costs speed
    return split


# --- the registry: one entry per data set ------------------------------------------------------------

def _download_cmd(name: str) -> str:
    return f"nin data {name} --root DIR --download"


DATASETS: dict[str, DataSet] = {entry.name: entry for entry in [
    DataSet("cifar10", "CIFAR-10", ("train", "test"), 3, 32, True, _download_cmd("cifar10"),
            validation=partial(_last_images, 10_000),
            files=partial(_cifar_files, "cifar-10-batches-py",
                          {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, "batches.meta"),
            parse=partial(_parse_cifar, "labels", "label_names"), download=_torchvision("CIFAR10")),
    DataSet("cifar100", "CIFAR-100", ("train", "test"), 3, 32, True, _download_cmd("cifar100"),
            validation=partial(_last_images, 10_000),
            files=partial(_cifar_files, "cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta"),
            parse=partial(_parse_cifar, "fine_labels", "fine_label_names"), download=_torchvision("CIFAR100")),
    DataSet("svhn", "SVHN", ("train", "test", "extra"), 3, 32, False, _download_cmd("svhn"),
            # the rest of train + extra (about 598,000 images) is for training
            validation=partial(_first_per_class, {"train": 400, "extra": 200}),
            files=_svhn_files, parse=_parse_svhn, download=_torchvision("SVHN", by_split_name=True)),
    DataSet("mnist", "MNIST", ("train", "test"), 1, 28, False, _download_cmd("mnist"),
            validation=partial(_last_images, 10_000),  # as for CIFAR
            files=partial(_idx_files, "MNIST"), parse=partial(_parse_idx, DIGITS), download=_torchvision("MNIST")),
    DataSet("fashion-mnist", "Fashion-MNIST", ("train", "test"), 1, 28, True,
            f"apt-get install dataset-fashion-mnist, or {_download_cmd('fashion-mnist')}",
            validation=partial(_last_images, 10_000),
            files=partial(_idx_files, "FashionMNIST"), parse=partial(_parse_idx, FASHION_CLASSES),
            download=_torchvision("FashionMNIST"), system_root=FASHION_MNIST_SYSTEM_DIR),
    DataSet("folder", "image folder", ("train", "test"), 3, None, True,
            "make ROOT/train/CLASS/*.png and ROOT/test/CLASS/*.png",
            validation=_last_fifth_per_class, load=_load_folder, samples=_folder_samples),
]}
