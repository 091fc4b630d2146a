"""Training: ``fit(config)`` runs a recipe end to end and leaves a run folder.

Run folder: ``config.json`` (the resolved config), ``metrics.csv`` (one row per epoch) and
``checkpoint.pt`` (written atomically at the start, after every epoch and when a stop signal arrives;
see checkpoint.py for its contents). Resuming continues from the exact batch: the data order depends
only on (seed, epoch) and the checkpoint holds the RNG states, so the weights come out bit-identical.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint as ckpt
from .config import TrainConfig, from_dict, validate, without_retired_fields
from .data import DeviceLoader, dataset_info
from .data.datasets import image_count
from .data.packed import PackedImages, take_rows
from .data.splits import select_images
from .data.preprocess import make_preprocess, preprocess_from_state
from .errors import Interrupted, NinError
from .evaluate import evaluate, format_report
from .defaults import BATCH_SIZES, MAX_WARMUP_FRACTION, resolve_eval_every, resolve_for_data, resolve_for_model
from .hardware import (autocast, free_memory, precision_name, readable_bytes, require_memory, resolve_device,
                       use_bf16)
from .models import (create_model, default_cfg, fit_init_to_data, identity_init, training_step_bytes,
                     variant_has_batch_norm, whiten_first_layer)
from .distributed import (World, all_reduce_sum, any_process, broadcast_from_main, close_world, device_for,
                          init_world, local_batch_size, wrap)
from .rundir import RunFolder
from .tblog import TensorBoardLog


def _silent(*_) -> None:
    pass


@dataclass
class Data:
    config: TrainConfig  # the run's config with the settings that depend on the data resolved (nin.defaults)
    train: DeviceLoader
    test: DeviceLoader
    classes: list[str]
    preprocess: object  # a fitted preprocessing (nin.data.preprocess): uint8 batch -> float batch
    channels: int
    size: int


def prepare_data(config: TrainConfig, device: torch.device, world: World = World(),
                 preprocess_state: dict | None = None, log=_silent) -> Data:
    """Both splits on the device, and the preprocessing: fitted on the training images, or (on resume)
    the checkpoint's, so that a resumed run applies exactly the same transform."""
    info = dataset_info(config.dataset)
    model_cfg = default_cfg(config.model)
    size = config.image_size or info.size or model_cfg.input_size  # no size of its own: the model's
    channels = config.channels or info.channels
    if config.translate >= size:
        raise NinError(f"--translate {config.translate} shifts images of {size} pixels out of view: "
                       f"use less than {size}")
    if config.progressive_resize and not MIN_PROGRESSIVE_SIZE <= config.progressive_resize < size:
        sizes = (f"use {MIN_PROGRESSIVE_SIZE} to {size - 1}" if size - 1 > MIN_PROGRESSIVE_SIZE else
                 f"use {MIN_PROGRESSIVE_SIZE}" if size - 1 == MIN_PROGRESSIVE_SIZE else
                 f"it starts at {MIN_PROGRESSIVE_SIZE} pixels, so the images must be larger than that")
        raise NinError(f"--progressive-resize {config.progressive_resize} is not a smaller size for images of {size} "
                       f"pixels: {sizes}, or 0 for none")
    flip = info.flip if config.flip == "auto" else config.flip in ("yes", "alternate")
    if "flip" in config.tta and not flip:
        raise NinError(f"--tta {config.tta} mirrors the test images, but this run trains without flips (--flip "
                       f"{config.flip} on {info.title}): use --tta shift, or none")
    _require_step_memory(config, size, channels, device, world)  # before any image is decoded at this size
    root = config.root or None
    # eval_split "val": the paper's validation images, held out of the training images, stand in for the test set
    train, test = select_images(config.dataset, root, config.train_split, config.eval_split, image_size=size,
                                channels=channels, log=log)
    train_images, train_labels = _subset(train.images, train.labels, config.train_subset)
    test_images, test_labels = _subset(test.images, test.labels, config.test_subset)
    config = resolve_for_data(config, len(train_images), log)
    config = resolve_eval_every(config, len(train_images), len(test_images), log)
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


MIN_PROGRESSIVE_SIZE = 8  # three 3x3/2 poolings still leave a map to average
FULL_SIZE_FRACTION = 0.25  # progressive resizing: the last quarter of the epochs trains at full size


def image_size_at(epoch: int, epochs: int, start: int, full: int) -> int:
    """The training images' side in ``epoch`` (from 0) under progressive resizing from ``start`` pixels: rising
    linearly, epoch by epoch, to ``full``, which the last quarter of the epochs (at least the last) trains at;
    ``full`` throughout when ``start`` is 0."""
    full_from = epochs - max(1, round(FULL_SIZE_FRACTION * epochs))
    if not start or epoch >= full_from:
        return full
    return round(start + (full - start) * epoch / full_from)


def epoch_cost(epoch: int, epochs: int, start: int, full: int) -> float:
    """``epoch``'s compute as a share of an epoch at full size: (its image side / ``full``)^2 under
    progressive resizing from ``start`` pixels, 1 without."""
    return (image_size_at(epoch, epochs, start, full) / full) ** 2


def evaluates_after(epoch: int, config: TrainConfig) -> bool:
    """Whether epoch ``epoch`` (from 1) ends with an evaluation: every ``eval_every`` epochs and the last."""
    return epoch % (config.eval_every or 1) == 0 or epoch == config.epochs


def time_left(epochs_done: int, train_seconds: float, full_eval_seconds: float, config: TrainConfig,
              full: int) -> str:
    """"  about N min left" after an epoch: the last epoch's training time and an evaluation's time at full size
    (``full_eval_seconds``: the last one's, scaled; 0 before the first), scaled by each remaining epoch's cost
    (epoch_cost), an evaluation counted in the epochs that evaluate (every ``eval_every`` and the last); ""
    after the last epoch."""
    if epochs_done >= config.epochs:
        return ""
    costs = [epoch_cost(epoch, config.epochs, config.progressive_resize, full) for epoch in range(config.epochs)]
    seconds = sum(costs[epoch] * (train_seconds / costs[epochs_done - 1]
                                  + full_eval_seconds * evaluates_after(epoch + 1, config))
                  for epoch in range(epochs_done, config.epochs))
    return f"  about {seconds / 60:.0f} min left" if seconds >= 90 else f"  about {seconds:.0f}s left"


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


def ema_decay_at(step: int, decay: float) -> float:
    """The average's decay after ``step`` steps: (1 + step) / (10 + step) up to ``decay`` (timm's ramp), so that
    a short run's average does not keep its first, untrained weights for thousands of steps."""
    return min(decay, (1 + step) / (10 + step))


def averaged_copy(model: torch.nn.Module, decay_now) -> torch.optim.swa_utils.AveragedModel:
    """A moving average of ``model``'s weights and buffers (BatchNorm's statistics too): each update moves
    it towards the model by 1 - ``decay_now()``."""
    def update(averaged: list, current: list, _count) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - decay_now())
        else:  # BatchNorm's step counters
            torch._foreach_copy_(averaged, current)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)


class Lookahead:
    """Lookahead (Zhang et al., 2019; airbench): slow weights that every ``steps`` steps move ``alpha`` of the way
    to the trained (fast) weights, which then restart from them; the optimizer's momentum is kept. Every
    floating tensor of the model's state moves, BatchNorm's statistics too (as airbench)."""

    def __init__(self, model: torch.nn.Module, steps: int, alpha: float = 0.5):
        self.model, self.steps, self.alpha = model, steps, alpha
        self.slow = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
                     if tensor.is_floating_point()}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """``step``: steps taken; the last step of the run syncs too, so the run ends on slow weights."""
        if step % self.steps and step != total_steps:
            return
        current = self.model.state_dict()
        fast = [current[name] for name in self.slow]
        torch._foreach_lerp_(list(self.slow.values()), fast, self.alpha)
        torch._foreach_copy_(fast, list(self.slow.values()))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on conv/linear weights only (not on biases or BatchNorm). With
    ``bn_bias_lr`` other than 1 the BatchNorm biases get their own group, whose ``lr_scale`` multiplies
    the scheduled lr; frozen BatchNorm scales (``freeze_bn_scales``) are left out."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    bn_biases = {id(m.bias) for m in norms} if config.bn_bias_lr != 1 else set()
    if config.freeze_bn_scales:
        for norm in norms:
            norm.weight.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in trained if p.ndim <= 1 and id(p) not in bn_biases], "weight_decay": 0.0}]
    if bn_biases:
        groups.append({"params": [p for p in trained if id(p) in bn_biases], "weight_decay": 0.0,
                       "lr_scale": config.bn_bias_lr})
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0)




def warmup_steps(total_steps: int, config: TrainConfig) -> int:
    steps_per_epoch = max(1, total_steps // config.epochs)
    return min(int(config.warmup_epochs * steps_per_epoch), int(MAX_WARMUP_FRACTION * total_steps))


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up from lr/10 over ``warmup_epochs`` (at most a quarter of the run, so that a short
    run decays too), then the decay ``schedule`` to the end."""
    warmup = warmup_steps(total_steps, config)
    if step < warmup:
        return config.lr * (0.1 + 0.9 * step / warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "linear":
        return config.lr * (1 - progress)
    if config.schedule == "step":
        return config.lr * 0.1 ** sum(progress >= m for m in config.step_milestones)
    return config.lr


DROPOUT_WARMUP_STAGES = 4  # the rate rises in this many steps: few values, so a compiled model recompiles little


def dropout_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """The dropout rate at ``step``: the configured rate, or with ``dropout_warmup`` none at the start and
    a quarter more each quarter of the lr warm-up (the plain networks' class maps die less often when
    their first, large steps are taken without dropout's noise)."""
    warmup = warmup_steps(total_steps, config)
    if not config.dropout_warmup or step >= warmup:
        return config.dropout
    return config.dropout * math.floor(DROPOUT_WARMUP_STAGES * step / warmup) / DROPOUT_WARMUP_STAGES


@dataclass
class RunState:
    """What changes during training besides the weights and the optimizer; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch: int = 0  # batches done in the current, unfinished epoch (non-zero after an interruption)
    loss_sum: float = 0.0  # the current epoch's running sums, for its metrics row
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0  # time spent in the current epoch before an interruption
    lr_scale: float = 1.0  # divided by 10 at each rollback after a non-finite loss
    rollbacks: int = 0


class NonFiniteLoss(Exception):
    pass


MAX_ROLLBACKS = 3
SYNC_EVERY = 25  # steps between the host syncs of an epoch (the finite-loss check, the progress bar, DDP stops)
# an epoch's mean loss above this many times chance (ln classes) is a divergence; far above what a start may
# give (the paper recipes' std-0.05 start passed 100 x chance in its first steps on the test fixtures)
EXPLODED_LOSS = 10_000


def fit(config: TrainConfig, *, resume: str | None = None, log=print) -> dict:
    """Train (or resume) a run; returns the final test metrics with ``run_dir`` added.

    SIGINT/SIGTERM finish the current step, write a checkpoint and raise ``Interrupted``."""
    config = validate(config)
    if (config.freeze_bn_scales or config.bn_bias_lr != 1) and not variant_has_batch_norm(config.model):
        raise NinError(f"--freeze-bn-scales and --bn-bias-lr need a BatchNorm variant; {config.model} has none "
                       "(nin models lists them)")
    world = init_world(config.device)
    folder = None
    try:
        folder = _claim_run_folder(config, resume, world)
        run = Run(config, resume, log if world.is_main else _silent, world, folder)
        try:
            with StopSignals() as stop:
                metrics = run.train(stop)
            if world.is_main:
                folder.write_final(metrics, run.config.eval_split)
            if stop.received:  # it came during the last epoch: the run is complete, and a caller running
                # several (nin reproduce, benchmarks) must stop rather than start the next one
                raise Interrupted(f"{stop.received} received as the run finished: {run.run_dir} is complete "
                                  "(nothing to resume)")
        finally:
            run.tensorboard.close()
    finally:
        if folder is not None:
            folder.release()
        close_world(world)
    run.log(format_report(metrics, run.config.eval_split))
    run.log(f"run folder: {run.run_dir}")
    return {**metrics, "run_dir": str(run.run_dir)}


class Run:
    """One training run: its data, model, optimizer and state, and the folder it writes."""

    def __init__(self, config: TrainConfig, resume: str | None, log, world: World, folder: RunFolder):
        resumed = ckpt.load_checkpoint(resume) if resume else None
        self.config, self.log, self.world, self.folder = config, log, world, folder  # written by rank 0 only
        self.device = device_for(world, resolve_device(config.device))
        self.run_dir = folder.path
        torch.manual_seed(config.seed)
        self.data = prepare_data(config, self.device, world, resumed["normalization"] if resumed else None, log)
        plain = not variant_has_batch_norm(config.model)
        self.config = config = resolve_for_model(self.data.config, plain)
        self.model_kwargs = model_arguments(config, len(self.data.classes), self.data.channels, self.data.size)
        batch = local_batch_size(config.batch_size, world)
        step_bytes = training_step_bytes(config.model, self.model_kwargs, batch, self.data.channels, self.data.size)
        log(memory_plan(self.data, step_bytes, batch, self.device))
        require_memory(step_bytes, self.device, f"training {config.model} on batches of {batch} images of "
                       f"{self.data.size} pixels", "lower --batch-size or --image-size")
        self.model = create_model(config.model, **self.model_kwargs).to(self.device)
        if config.progressive_resize and not self.model.takes_any_size:
            raise NinError(f"--progressive-resize needs a network that takes any image size (global average "
                           f"pooling, no locally connected layer); {config.model} with head {config.head} has a "
                           "layer sized for its images")
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if resumed is None and config.identity_init:
            identity_init(self.model)
        if resumed is None and (config.whiten or config.data_init and plain):
            batch = init_batch(self.data.train, config.seed)
            if config.whiten:
                whiten_first_layer(self.model, batch)
            if config.data_init and plain:
                fit_init_to_data(self.model, batch)
        self.optimizer = make_optimizer(self.model, config)
        self.dropouts = [m for m in self.model.modules() if isinstance(m, torch.nn.Dropout)]
        self.state = RunState()
        if world.active:  # the same initial weights everywhere (DDP broadcasts them), other dropout masks
            torch.manual_seed(config.seed * 1000 + world.rank)
        self.forward = wrap(self.model, world, self.device)  # for training steps (DDP when several processes)
        self.ema = averaged_copy(self.model, lambda: ema_decay_at(self.state.step, config.ema)) if config.ema else None
        self.evaluator = self.ema.module if self.ema else self.model  # evaluation needs no gradient sync
        self.lookahead = Lookahead(self.model, config.lookahead) if config.lookahead else None
        if config.compile:
            self.forward, self.evaluator = torch.compile(self.forward), torch.compile(self.model)
        self.amp = use_bf16(config.amp, self.device)
        self.total_steps = config.epochs * len(self.data.train)
        self.full_eval_seconds = 0.0  # the last evaluation's time, scaled to full size (for the time left)
        if world.is_main:
            folder.write_config(config)
        self.tensorboard = TensorBoardLog(folder.path / "tensorboard", enabled=config.tensorboard and world.is_main)
        if resumed is not None:
            self.restore(resumed)
            if world.is_main:
                folder.truncate_metrics(self.state.epoch)
        else:
            self.save()  # step 0: a last good checkpoint exists from the start

    def train(self, stop: "StopSignals") -> dict:
        config = self.config
        self.log(f"training {config.model} on {dataset_info(config.dataset).title} "
                 f"({len(self.data.train.images)} images, {len(self.data.classes)} classes) for {config.epochs} "
                 f"epoch{'s' * (config.epochs != 1)} at a peak lr of {config.lr:g} on {self.device} in "
                 f"{precision_name(self.amp)}; "
                 f"run folder {self.run_dir}")
        if config.eval_split == "val":
            self.log(f"evaluating on the paper's validation split ({len(self.data.test.images)} training images "
                     "held out; the test set is not used): the test_* columns hold validation numbers")
        metrics = None
        while self.state.epoch < config.epochs:
            try:
                if any_process(stop.received is not None, self.device):
                    self.check_weights()  # never replace a good checkpoint with a poisoned one
                    self.save()
                    raise Interrupted(f"{stop.received or 'a stop signal'} received: stopped at epoch "
                                      f"{self.state.epoch + 1}, batch {self.state.batch}/{len(self.data.train)}, "
                                      f"checkpoint saved; continue with: nin train --resume {self.run_dir}")
                if self.train_epoch(stop):
                    self.check_weights()
                    metrics = self.end_epoch()
            except NonFiniteLoss as error:
                self.rollback(str(error))
        return metrics or evaluate(self.evaluator, self.data.test, self.data.classes, amp=self.amp, tta=config.tta)

    def train_epoch(self, stop: "StopSignals") -> bool:
        """Train from the state's batch to the end of the epoch; False if a stop signal came first."""
        state, loader, config = self.state, self.data.train, self.config
        self.model.train()
        loader.set_epoch(state.epoch, image_size_at(state.epoch, config.epochs, config.progressive_resize,
                                                    self.data.size))
        loss_sum = torch.tensor(state.loss_sum, device=self.device)
        correct = torch.tensor(state.correct, device=self.device)
        started = time.perf_counter() - state.seconds
        show_bar = config.progress and sys.stderr.isatty()  # a log file gets the epoch lines only
        bar = tqdm(loader.batches(start=state.batch), desc=f"epoch {state.epoch + 1}", leave=False,
                   disable=not show_bar, dynamic_ncols=True, initial=state.batch, total=len(loader))
        with bar:
            self.run_batches(bar, loss_sum, correct, stop)
        state.loss_sum, state.correct = float(loss_sum), int(correct)
        state.seconds = time.perf_counter() - started
        return state.batch == len(loader)

    def run_batches(self, bar, loss_sum: torch.Tensor, correct: torch.Tensor, stop: "StopSignals") -> None:
        state, loader = self.state, self.data.train
        for images, labels in bar:
            lr = self.set_schedule()
            loss, logits = self.step(images, labels)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            state.seen += len(labels)
            state.batch += 1
            sync_point = state.batch % SYNC_EVERY == 0 or state.batch == len(loader)
            if sync_point:  # the only host syncs of the epoch
                self.check_finite(loss_sum, lr)
                bar.set_postfix(loss=f"{float(loss_sum) / state.seen:.4f}", lr=f"{lr:.4g}", refresh=False)
            # a stop signal: at once alone; with several processes at a sync point, where all of them stop
            if (sync_point or not self.world.active) and any_process(stop.received is not None, self.device):
                break

    def set_schedule(self) -> float:
        """The lr (returned) and the dropout rate of this step."""
        lr = lr_at(self.state.step, self.total_steps, self.config) * self.state.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        rate = dropout_at(self.state.step, self.total_steps, self.config)
        for layer in self.dropouts:
            layer.p = rate
        return lr

    def step(self, images: torch.Tensor, labels: torch.Tensor):
        with autocast(self.device, self.amp):
            logits = self.forward(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if self.lookahead is not None:
            self.lookahead.after_step(self.state.step + 1, self.total_steps)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.state.step += 1
        return loss, logits

    def check_finite(self, loss_sum: torch.Tensor, lr: float) -> None:
        if any_process(not torch.isfinite(loss_sum), self.device):
            raise NonFiniteLoss(f"the loss became non-finite by step {self.state.step} (epoch {self.state.epoch + 1},"
                                f" lr {lr:.4g})")

    def check_weights(self) -> None:
        """Raise NonFiniteLoss when the epoch's loss or any weight is not finite, or the loss exploded
        (checked before saving: a poisoned model never replaces the last good checkpoint)."""
        state = self.state
        finite = math.isfinite(state.loss_sum) and all(
            bool(torch.isfinite(t).all()) for t in self.model.state_dict().values() if t.is_floating_point())
        mean_loss = state.loss_sum / state.seen if state.seen else 0.0
        exploded = finite and mean_loss > EXPLODED_LOSS * math.log(len(self.data.classes))
        if any_process(not finite or exploded, self.device):
            what = "exploded" if exploded else "or the weights became non-finite"
            raise NonFiniteLoss(f"the loss {what} by step {state.step} (epoch {state.epoch + 1}, "
                                f"lr {self.optimizer.param_groups[0]['lr']:.4g})")

    def end_epoch(self) -> dict | None:
        """The epoch's row of metrics.csv and its checkpoint; the test metrics when this epoch evaluates
        (every ``eval_every`` epochs and the last; the last's with ``config.tta``'s test-time views when set),
        else None and empty test columns."""
        state, config = self.state, self.config
        epoch = state.epoch + 1
        metrics = final = None
        eval_started = time.perf_counter()
        if evaluates_after(epoch, config):
            # an epoch trained on scaled-down images (progressive resizing) is tested at its own size: at full
            # size its numbers would say little about the run (BatchNorm's statistics are those of small images)
            self.data.test.set_epoch(0, image_size=self.data.train.image_size)
            metrics = evaluate(self.evaluator, self.data.test, self.data.classes, amp=self.amp)
            if epoch == config.epochs and config.tta:  # the run's result; its metrics.csv row stays plain
                final = evaluate(self.evaluator, self.data.test, self.data.classes, amp=self.amp, tta=config.tta)
            self.data.test.set_epoch(0)
            if not math.isfinite(metrics["loss"]):  # finite weights can still overflow on the test images
                raise NonFiniteLoss(f"the test loss became non-finite by step {state.step} (epoch {epoch})")
            self.full_eval_seconds = (time.perf_counter() - eval_started) / epoch_cost(
                state.epoch, config.epochs, config.progressive_resize, self.data.size)
        totals = all_reduce_sum(torch.tensor([state.loss_sum, state.correct, state.seen], dtype=torch.float64,
                                             device=self.device)).tolist()
        train_loss, train_acc = totals[0] / totals[2], totals[1] / totals[2]
        row = dict(epoch=epoch, step=state.step, train_loss=train_loss, train_acc=train_acc,
                   test_loss=metrics and metrics["loss"], test_acc=metrics and metrics["accuracy"],
                   lr=self.optimizer.param_groups[0]["lr"], seconds=state.seconds)
        self.state = dataclasses.replace(RunState(), epoch=epoch, step=state.step,
                                         lr_scale=state.lr_scale, rollbacks=state.rollbacks)
        if self.world.is_main:  # the row first: a crash before the checkpoint only repeats this epoch
            self.folder.append_metrics(row)
        self.save()
        self.tensorboard.log_epoch(row, row["step"])
        tested = f"  test {100 * metrics['accuracy']:.2f}%" if metrics else ""
        resized = self.data.train.image_size
        at_size = f"  at {resized}px" if resized and resized != self.data.size else ""
        left = time_left(epoch, state.seconds, self.full_eval_seconds, config, self.data.size)
        self.log(f"epoch {epoch}/{config.epochs}  loss {train_loss:.4f}  train {100 * train_acc:.2f}%{tested}  "
                 f"lr {row['lr']:.4g}  {row['seconds']:.1f}s{at_size}{left}")
        if state.step >= warmup_steps(self.total_steps, config):  # a slow start at the warm-up's low lr is expected
            _warn_if_stuck(train_loss, len(self.data.classes), epoch, config, self.log)
        return final or metrics

    def rollback(self, problem: str) -> None:
        """After a non-finite loss: stop (the default) or reload the last checkpoint at a tenth of the lr."""
        path = self.run_dir / ckpt.CHECKPOINT_NAME
        last = ckpt.load_checkpoint(path)
        where = f"the last good checkpoint is {path} (epoch {last['epoch']}, step {last['step']})"
        if self.config.on_nan != "rollback" or self.state.rollbacks >= MAX_ROLLBACKS:
            tried = f" after {self.state.rollbacks} rollbacks" if self.state.rollbacks else ""
            raise NinError(f"{problem}{tried}; {where}; lower --lr, add --grad-clip, or use --on-nan rollback")
        rollbacks, lr_scale = self.state.rollbacks + 1, self.state.lr_scale / 10
        self.restore(last)
        self.state.lr_scale, self.state.rollbacks = lr_scale, rollbacks
        self.log(f"warning: {problem}; rolled back to step {last['step']} with the learning rate divided by "
                 f"{round(1 / self.state.lr_scale)} (rollback {rollbacks} of {MAX_ROLLBACKS})")

    def save(self) -> None:
        if not self.world.is_main:
            return
        config, data = self.config, self.data
        path = self.run_dir / ckpt.CHECKPOINT_NAME
        try:
            ckpt.atomic_save({
                "format": ckpt.FORMAT, "version": ckpt.VERSION,
                "model_name": config.model, "model_kwargs": self.model_kwargs, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "epoch": self.state.epoch, "step": self.state.step,
                "state": dataclasses.asdict(self.state), "rng": ckpt.capture_rng(),
                "config": dataclasses.asdict(config), "classes": data.classes,
                "normalization": data.preprocess.state_dict(),  # the key's name from the first format
                "input": {"size": data.size, "channels": data.channels, "dataset": config.dataset},
                **({"ema_model": self.ema.module.state_dict(), "ema_updates": int(self.ema.n_averaged)}
                   if self.ema else {}),  # eval, export and predict read ema_model in model's place
                **({"lookahead_slow": self.lookahead.slow} if self.lookahead else {}),
            }, path)
        except OSError as error:
            if not path.exists():
                raise NinError(f"could not write the first checkpoint {path} ({error.strerror or error}); nothing "
                               "was trained: free some space and start the run again") from None
            raise NinError(f"could not write the checkpoint {path} ({error.strerror or error}); the previous "
                           f"checkpoint is intact: free some space, then continue with --resume {self.run_dir}"
                           ) from None

    def restore(self, saved: dict) -> None:
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            if self.ema is not None:
                self.ema.module.load_state_dict(saved["ema_model"])
                self.ema.n_averaged.fill_(saved["ema_updates"])
            if self.lookahead is not None:
                torch._foreach_copy_(list(self.lookahead.slow.values()),
                                     [saved["lookahead_slow"][name] for name in self.lookahead.slow])
        except (RuntimeError, ValueError, KeyError) as error:
            raise NinError(f"the checkpoint does not fit this run's model or optimizer "
                           f"({str(error).splitlines()[0]})") from None
        self.state = RunState(**saved["state"])
        ckpt.restore_rng(saved["rng"])


class StopSignals:
    """SIGINT and SIGTERM ask the training loop to stop after the current step; a second SIGINT stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _warn_if_stuck(train_loss: float, num_classes: int, epoch: int, config: TrainConfig, log) -> None:
    chance = math.log(num_classes)
    if abs(train_loss - chance) < 0.02 * chance:
        log(f"warning: after epoch {epoch} the training loss {train_loss:.4f} is still at chance (ln {num_classes} "
            f"= {chance:.4f}). Usual causes: a learning rate too high (--lr {config.lr}), its initialisation "
            f"(--init {config.init}; without BatchNorm, --data-init, --grad-clip 1 and --dropout-warmup help), "
            "or dead ReLUs before global average pooling (--no-relu-before-gap).")


def _claim_run_folder(config: TrainConfig, resume: str | None, world: World) -> RunFolder:
    """Rank 0 claims (creates, locks, checks) the run folder; every process learns its path, or the same
    error. The other ranks get it unclaimed: they write nothing."""
    folder, outcome = None, None
    if world.is_main:
        try:
            folder = RunFolder.claim(config.out, config.recipe or config.dataset, resume)
            outcome = ("ok", str(folder.path))
        except NinError as error:
            outcome = ("error", str(error))
    kind, value = broadcast_from_main(outcome)
    if kind == "error":
        raise NinError(value)
    return folder or RunFolder(Path(value))


RESUME_OVERRIDES = ("epochs", "device", "progress")


def resume_config(run: str, overrides: dict) -> TrainConfig:
    """The config a run was started with; only ``epochs``, ``device`` and ``progress`` may change."""
    saved = ckpt.load_checkpoint(run)
    config = from_dict(without_retired_fields(saved["config"]), source="checkpoint config")
    refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if refused:
        raise NinError(f"--resume continues a run with its own settings; only --epochs, --device and "
                       f"--progress may change, not --{refused[0].replace('_', '-')}")
    if overrides.get("epochs", saved["epoch"]) < saved["epoch"]:
        raise NinError(f"{run} has trained {saved['epoch']} epochs already: --epochs must be {saved['epoch']} "
                       f"or more, got {overrides['epochs']}")
    return dataclasses.replace(config, **overrides)
