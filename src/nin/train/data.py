"""A run's data: both splits on the device with the fitted preprocessing, the checks that refuse a size or a
batch before any image is decoded, and the batch the data-dependent initialisation sees."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..data import DeviceLoader, dataset_info
from ..data.datasets import image_count
from ..data.packed import PackedImages, take_rows
from ..data.preprocess import make_preprocess, preprocess_from_state
from ..data.splits import select_images
from ..defaults import BATCH_SIZES, resolve_defaults
from ..distributed import World, local_batch_size
from ..errors import NinError
from ..hardware import free_memory, readable_bytes, require_memory
from ..models import default_cfg, training_step_bytes, variant_has_batch_norm
from .schedules import MIN_PROGRESSIVE_SIZE


def silent(*_) -> None:
    pass


@dataclass
class Data:
    config: TrainConfig  # the run's config, every default resolved (nin.defaults.resolve_defaults): config.json
    train: DeviceLoader
    test: DeviceLoader
    classes: list[str]
    preprocess: object  # a fitted preprocessing (nin.data.preprocess): uint8 batch -> float batch
    channels: int
    size: int


def prepare_data(config: TrainConfig, device: torch.device, world: World = World(),
                 preprocess_state: dict | None = None, log=silent) -> Data:
    """Both splits on the device, and the preprocessing: fitted on the training images, or (on resume)
    the checkpoint's, so that a resumed run applies exactly the same transform. The run's settings are
    resolved here, once the images are counted: ``Data.config``."""
    info = dataset_info(config.dataset)
    model_size = default_cfg(config.model).input_size
    size = config.image_size or info.size or model_size  # no size of its own: the model's
    channels = config.channels or info.channels
    flip = info.flip if config.flip == "auto" else config.flip in ("yes", "alternate")
    _check_sizes(config, size)
    if "flip" in config.tta and not flip:
        raise NinError(f"--tta {config.tta} mirrors the test images, but this run trains without flips (--flip "
                       f"{config.flip} on {info.title}): use --tta shift, or none")
    _require_step_memory(config, size, channels, device, world)  # before any image is decoded at this size
    # eval_split "val": the paper's validation images, held out of the training images, stand in for the test set
    train, test = select_images(config.dataset, config.root or None, config.train_split, config.eval_split,
                                image_size=size, channels=channels, log=log)
    train_images, train_labels = _subset(train.images, train.labels, config.train_subset)
    test_images, test_labels = _subset(test.images, test.labels, config.test_subset)
    plain = not variant_has_batch_norm(config.model)
    config = resolve_defaults(config, len(train_images), len(test_images), plain, log)
    if len(train_images) < config.batch_size:
        raise NinError(f"{len(train_images)} training images are fewer than one batch of {config.batch_size}; "
                       "lower --batch-size")
    preprocess = (preprocess_from_state(preprocess_state) if preprocess_state is not None
                  else make_preprocess(config.preprocess, train_images))  # fitted on the training images only
    common = dict(device=device, channels_last=config.channels_last, rank=world.rank, world_size=world.size)
    batch_size = local_batch_size(config.batch_size, world)  # each process takes its share of a global batch
    train_loader = DeviceLoader(train_images, train_labels, preprocess, batch_size=batch_size, train=True,
                                translate=config.translate, flip=flip, seed=config.seed,
                                alternate_flips=config.flip == "alternate", erase=config.erase, **common)
    test_loader = DeviceLoader(test_images, test_labels, preprocess, batch_size=config.eval_batch_size, **common)
    return Data(config, train_loader, test_loader, train.classes, preprocess, int(train_images.shape[1]),
                int(train_images.shape[2]))


def _check_sizes(config: TrainConfig, size: int) -> None:
    """The shifts and the progressive resizing's start fit images of ``size`` pixels."""
    if config.translate >= size:
        raise NinError(f"--translate {config.translate} shifts images of {size} pixels out of view: "
                       f"use less than {size}")
    if config.progressive_resize and not MIN_PROGRESSIVE_SIZE <= config.progressive_resize < size:
        sizes = (f"use {MIN_PROGRESSIVE_SIZE} to {size - 1}" if size - 1 > MIN_PROGRESSIVE_SIZE else
                 f"use {MIN_PROGRESSIVE_SIZE}" if size - 1 == MIN_PROGRESSIVE_SIZE else
                 f"it starts at {MIN_PROGRESSIVE_SIZE} pixels, so the images must be larger than that")
        raise NinError(f"--progressive-resize {config.progressive_resize} is not a smaller size for images of {size} "
                       f"pixels: {sizes}, or 0 for none")


def _require_step_memory(config: TrainConfig, size: int, channels: int, device: torch.device, world: World) -> None:
    """A training step's memory follows from the image shape and the batch: a size too large for it is refused
    before the images are decoded (or packed into the cache) at that size. The batch is the smallest the run
    can get, the classes two, no dropout: ``Run`` checks again with the real ones once the data is loaded."""
    batch = max(1, _smallest_batch(config) // world.size)
    kwargs = model_arguments(dataclasses.replace(config, dropout=0.0), 2, channels, size)
    require_memory(training_step_bytes(config.model, kwargs, batch, channels, size), device,
                   f"training {config.model} on batches of {batch} images of {size} pixels",
                   "lower --batch-size or --image-size")


def _smallest_batch(config: TrainConfig) -> int:
    """The batch asked for; else the smallest default one, or all the training images when they are fewer
    (counted without decoding them where they can be: an image folder's files, a pack's header)."""
    if config.batch_size:
        return config.batch_size
    counts = [image_count(config.dataset, config.root or None, split) for split in config.train_split.split("+")]
    count = BATCH_SIZES[-1] if None in counts else sum(counts)
    if config.eval_split == "val":  # the validation images, held out of the training ones: at most a fifth
        count -= count // 5
    return max(1, min(BATCH_SIZES[-1], count, config.train_subset or count))


def memory_plan(data: Data, step_bytes: int, batch: int, device: torch.device) -> str:
    """One line, before the model is made: the images held (or memory-mapped) and a training step's memory."""
    held = mapped = 0
    for images in (data.train.images, data.test.images):
        if isinstance(images, PackedImages):
            mapped += images.numel()
        else:
            held += images.numel() * images.element_size()
    free = free_memory(device)
    line = f"memory: {readable_bytes(held)} of images held"
    if mapped:
        line += f", {readable_bytes(mapped)} read from the pack through the page cache"
    line += f", about {readable_bytes(step_bytes)} for a training step of {batch} images"
    return line + (f"; {device.type} has {readable_bytes(free)} free" if free is not None else "")


def _subset(images: torch.Tensor, labels: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images spread over the whole split (a fixed draw, the same for every seed, kept in file
    order): the first N would be one or two classes of an image folder, which is sorted by class."""
    if not count or count >= len(labels):
        return images, labels
    rows = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:count].sort().values
    return take_rows(images, rows), labels[rows]


def init_batch(loader: DeviceLoader, seed: int, count: int = 256) -> torch.Tensor:
    """A fixed draw of training images (spread over the set, which may be sorted by class), preprocessed
    as training batches are, for the data-dependent initialisation."""
    rows = torch.randperm(len(loader.images), generator=torch.Generator().manual_seed(seed))[:count]
    images = loader.preprocess(loader.read(rows))
    return images.contiguous(memory_format=torch.channels_last) if loader.channels_last else images


def model_arguments(config: TrainConfig, num_classes: int, channels: int, size: int) -> dict:
    """The keyword arguments that rebuild the model exactly (stored in every checkpoint)."""
    kwargs = dict(num_classes=num_classes, in_channels=channels, dropout=config.dropout, init=config.init,
                  head=config.head, relu_before_gap=config.relu_before_gap, input_size=size)
    if config.pools:
        kwargs["pools"] = tuple(config.pools)
    if config.width != 1:
        kwargs["width"] = config.width
    return kwargs
