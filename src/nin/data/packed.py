"""Reading packed data sets (written by ``pack.py``, ``nin data pack``): the images stay in their file,
memory-mapped, and are read a batch at a time; the labels (8 bytes an image) are loaded. ``load_packed``
checks the pack against what is asked for; ``PackedImages`` stands in for the image tensor.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import NinError

FORMAT = "nin-pack"
VERSION = 1
HEADER = "pack.json"


class PackedImages:
    """uint8 images (N, C, H, W) in a memory-mapped file, or a selection of its rows. Indexing reads
    (``images[rows]`` is a tensor, as for a tensor); ``take(rows)`` selects without reading."""

    ndim = 4
    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, storage: torch.Tensor, rows: torch.Tensor | None = None):
        self.storage = storage  # the whole file, mapped: pages are read when a batch touches them
        self.rows = rows  # None: every row of the file, in order

    def __len__(self) -> int:
        return len(self.storage) if self.rows is None else len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.storage.shape[1:]))

    def numel(self) -> int:
        return self.shape.numel()

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, int):
            return self[torch.tensor([key])][0]
        if isinstance(key, slice) and self.rows is None:
            return self.storage[key].clone()
        index = self._file_rows(key)
        order = index.argsort()  # read in file order (the page cache reads ahead), return in the asked order
        batch = torch.empty((len(index), *self.storage.shape[1:]), dtype=torch.uint8)
        batch[order] = self.storage[index[order]]
        return batch

    def take(self, key) -> "PackedImages":
        return PackedImages(self.storage, self._file_rows(key))

    def to(self, device) -> "PackedImages":
        return self  # stays mapped on the host; the loader moves each batch

    def _file_rows(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            key = torch.arange(len(self))[key]
        key = torch.as_tensor(key).cpu()
        if key.dtype == torch.bool:
            key = key.nonzero().flatten()
        return key if self.rows is None else self.rows[key]


def take_rows(images, rows) -> torch.Tensor | PackedImages:
    """``images[rows]``, except that a pack's selection stays on the disk."""
    return images.take(rows) if isinstance(images, PackedImages) else images[rows]


def prefetched(read: Callable[[object], object], keys: list) -> Iterator:
    """``read(key)`` for each key, the next one read in a thread while the caller works on this one."""
    if not keys:
        return
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, keys[0])
        for key in keys[1:]:
            ready, pending = pending.result(), reader.submit(read, key)
            yield ready
        yield pending.result()

def is_pack(root) -> bool:
    return root is not None and (Path(root).expanduser() / HEADER).is_file()


def read_header(folder: Path) -> dict:
    try:
        header = json.loads((folder / HEADER).read_text())
    except (OSError, ValueError) as error:
        raise NinError(f"{folder / HEADER} is not a readable pack header ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise NinError(f"{folder / HEADER} is not a nin pack header (no \"format\": \"{FORMAT}\")")
    if header.get("version") != VERSION:
        raise NinError(f"{folder} is a pack of version {header.get('version')}; this nin reads version {VERSION}: "
                       "pack the data set again")
    splits = header.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(entry, dict) and isinstance(entry.get("count"), int)
                                               and isinstance(entry.get("sha256"), str) for entry in splits.values()):
        raise NinError(f"{folder / HEADER} does not record its splits as nin data pack writes them (a count and a "
                       "SHA-256 each): the pack is damaged; pack it again")
    return header


def load_packed(root, dataset: str, split: str, image_size: int | None,
                channels: int | None) -> tuple[PackedImages, torch.Tensor, list[str]]:
    """(images, labels, classes) of one split of the pack in ``root``, the images memory-mapped; refused in
    one line when the pack holds another data set, lacks the split, has other images than asked for, or its
    files are not the size its header says."""
    folder = Path(root).expanduser()
    header = read_header(folder)
    if header["dataset"] != dataset:
        raise NinError(f"{folder} is a pack of {header['dataset']}, not {dataset}: use --dataset {header['dataset']}")
    if split not in header["splits"]:
        raise NinError(f"{folder} holds no {split} split ({', '.join(header['splits']) or 'none'} packed): "
                       f"run nin data pack {dataset} again with --out {folder}")
    shape = (header["splits"][split]["count"], *header["shape"])
    for asked, held, what in ((channels, shape[1], "channels"), (image_size, shape[2], "pixels a side")):
        if asked and asked != held:
            raise NinError(f"{folder} holds images of {held} {what}, not {asked}: pack again with "
                           f"--{'channels' if what == 'channels' else 'image-size'} {asked} (another --out)")
    images_file, labels_file = split_files(folder, split)
    for path, expected in ((images_file, int(np.prod(shape))), (labels_file, 8 * shape[0])):
        size = path.stat().st_size if path.is_file() else None
        if size != expected:
            raise NinError(f"{path} is {'missing' if size is None else f'{size:,} bytes'}, expected {expected:,}: "
                           "the pack is damaged; pack it again")
    storage = torch.from_numpy(np.memmap(images_file, dtype=np.uint8, mode="c", shape=shape))  # copy-on-write
    labels = torch.from_numpy(np.fromfile(labels_file, dtype="<i8").astype(np.int64))
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(header["classes"])):
        raise NinError(f"{labels_file}: labels must lie in 0..{len(header['classes']) - 1}; the pack is damaged")
    return PackedImages(storage), labels, list(header["classes"])


def split_files(folder: Path, split: str, suffix: str = "") -> tuple[Path, Path]:
    return folder / f"{split}.images{suffix}", folder / f"{split}.labels{suffix}"
