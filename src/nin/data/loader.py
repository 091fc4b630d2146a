"""A batched loader over a whole uint8 data set held on the training device (airbench style).

No per-image Python work: each batch is one gather, one random-translation gather, one flip and (with
random erasing) one mask, done as tensor operations on the device. The order and the augmentation of an epoch depend only on
(seed, epoch), so a resumed run sees exactly the batches it would have seen.

A packed data set (``pack.py``) stays memory-mapped on the host: each batch's images are read from it
(the next batch in a thread while the model works on this one) and moved to the device; the rest is the same.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .packed import PackedImages, prefetched


class DeviceLoader:
    """Yields (preprocessed float images, labels) batches; shuffles and augments when ``train``.
    ``preprocess``: a fitted preprocessing of ``nin.data.preprocess`` (uint8 batch -> float batch)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor],
                 *,
                 batch_size: int, train: bool = False, translate: int = 0, flip: bool = False,
                 seed: int = 0, device: str | torch.device = "cpu", channels_last: bool = False,
                 rank: int = 0, world_size: int = 1, alternate_flips: bool = False, erase: float = 0.0):
        self.device = torch.device(device)
        self.images = images.to(self.device)  # a pack stays where it is
        self.labels = labels.to(self.device)
        self.preprocess = preprocess
        self.batch_size, self.train = batch_size, train
        self.translate, self.flip = translate if train else 0, flip and train
        self.alternate_flips = alternate_flips  # each image flipped on every other epoch, not by a coin each time
        self.erase = erase if train else 0.0  # the share of training images with a rectangle erased
        self.seed, self.epoch = seed, 0
        self.image_size = 0  # batches resized to this side (progressive resizing, set per epoch); 0: as stored
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int, image_size: int = 0) -> None:
        """The epoch whose order and augmentation ``batches`` yields; ``image_size``: its images' side
        (0: as stored)."""
        self.epoch, self.image_size = epoch, image_size

    def __len__(self) -> int:
        count = self._shard_size()
        return count // self.batch_size if self.train else -(-count // self.batch_size)

    def _shard_size(self) -> int:
        # training drops the remainder so every rank runs the same number of equal steps
        if self.train:
            return len(self.images) // self.world_size
        return len(range(self.rank, len(self.images), self.world_size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(start=0)

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from number ``start`` on (used to resume in the middle of an epoch)."""
        order, shifts, flips, boxes = self._epoch_plan()
        numbers = list(range(start, len(self)))
        for index, batch in zip(numbers, self._read_batches(order, numbers)):
            rows = order[index * self.batch_size:(index + 1) * self.batch_size]
            positions = rows_slice(index, self.batch_size, len(rows))
            if self.translate:
                batch = _translate(batch, shifts[positions], self.translate)
            if self.flip:
                batch = torch.where(flips[positions].view(-1, 1, 1, 1), batch.flip(3), batch)
            batch = self.preprocess(batch)
            if self.erase:  # after preprocessing, so that the rectangle holds the data's mean (0)
                batch = batch.masked_fill(_box_masks(boxes[positions], *batch.shape[-2:]), 0.0)
            if self.image_size and self.image_size != batch.shape[-1]:
                batch = F.interpolate(batch, size=(self.image_size, self.image_size), mode="bilinear",
                                      antialias=True, align_corners=False)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            yield batch, self.labels[rows]

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        """The uint8 images of ``rows`` on the device."""
        if isinstance(self.images, PackedImages):
            return self.images[rows.cpu()].to(self.device, non_blocking=True)
        return self.images[rows.to(self.device)]

    def _read_batches(self, order: torch.Tensor, numbers: list[int]) -> Iterator[torch.Tensor]:
        def read(index: int) -> torch.Tensor:
            return self.read(order[index * self.batch_size:(index + 1) * self.batch_size])
        if isinstance(self.images, PackedImages):
            return prefetched(read, numbers)  # the disk (or page cache) works while the model does
        return map(read, numbers)

    def _epoch_plan(self):
        """This rank's image order and per-position augmentation draws, from (seed, epoch) alone."""
        device = self.device
        if not self.train:
            order = torch.arange(self.rank, len(self.images), self.world_size, device=device)
            return order, None, None, None
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        count = len(self.images)
        order = torch.randperm(count, generator=generator)
        shifts = torch.randint(-self.translate, self.translate + 1, (count, 2), generator=generator)
        flips = torch.rand(count, generator=generator) < 0.5
        if self.alternate_flips:  # airbench: the first epoch's coin per image, then every other epoch the opposite
            first = torch.rand(count, generator=torch.Generator().manual_seed(self.seed)) < 0.5
            flips = (first ^ bool(self.epoch % 2))[order]
        boxes = None
        if self.erase:  # its own generator: the other draws stay what they were without erasing
            eraser = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + ERASE_STREAM)
            boxes = erase_boxes(count, self.erase, *self.images.shape[-2:], eraser)
        take = slice(self.rank, self._shard_size() * self.world_size, self.world_size)
        return (order[take].to(device), shifts[take].to(device), flips[take].to(device),
                boxes[take].to(device) if boxes is not None else None)


ERASE_STREAM = 7_919_000_000  # offsets the erasing generator's seed from the order's
ERASE_AREA = (0.02, 0.4)  # random erasing's rectangle: this share of the image (Zhong et al., 2017; timm)
ERASE_ASPECT = (0.3, 1 / 0.3)  # and its height / width


def erase_boxes(count: int, probability: float, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Random erasing's rectangles (Zhong et al., 2017): (count, 4) rows of (top, left, height, width),
    height 0 for the images left whole (each erased with ``probability``). A rectangle covers 2-40%
    of the image with a log-uniform aspect ratio of 0.3-3.3, clipped to the image, at a uniform position."""
    erased = torch.rand(count, generator=generator) < probability
    area = torch.empty(count).uniform_(*ERASE_AREA, generator=generator) * height * width
    log_aspect = torch.empty(count).uniform_(*map(math.log, ERASE_ASPECT), generator=generator)
    box_height = (area * log_aspect.exp()).sqrt().round().clamp(1, height)
    box_width = (area / log_aspect.exp()).sqrt().round().clamp(1, width)
    top = (torch.rand(count, generator=generator) * (height - box_height + 1)).floor()
    left = (torch.rand(count, generator=generator) * (width - box_width + 1)).floor()
    return torch.stack([top, left, box_height * erased, box_width], dim=1).long()


def _box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 1, height, width) masks, True inside each row's rectangle (batches are erased at their stored size,
    before progressive resizing scales them)."""
    rows = torch.arange(height, device=boxes.device).view(1, height)
    cols = torch.arange(width, device=boxes.device).view(1, width)
    top, left, box_height, box_width = (boxes[:, i:i + 1] for i in range(4))
    inside_rows = (rows >= top) & (rows < top + box_height)
    inside_cols = (cols >= left) & (cols < left + box_width)
    return (inside_rows.unsqueeze(2) & inside_cols.unsqueeze(1)).unsqueeze(1)


def rows_slice(index: int, batch_size: int, length: int) -> slice:
    return slice(index * batch_size, index * batch_size + length)


def _translate(batch: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image by its own (dy, dx) in [-pad, pad], filling with zeros: pad, then gather."""
    n, c, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad))
    rows = (torch.arange(h, device=batch.device) + pad).view(1, h) - shifts[:, :1]  # (N, H)
    cols = (torch.arange(w, device=batch.device) + pad).view(1, w) - shifts[:, 1:]  # (N, W)
    n_index = torch.arange(n, device=batch.device).view(n, 1, 1, 1)
    c_index = torch.arange(c, device=batch.device).view(1, c, 1, 1)
    return padded[n_index, c_index, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
