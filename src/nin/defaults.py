"""The settings a run gets when neither the command line nor a recipe fixes them, decided once
(``resolve_defaults``) from its data and its network before the training loop starts.

The run's length follows from the training set's size: a budget of images seen that grows with the
square root of the set's size (small sets get many epochs, large ones few), so that the time a default
run takes grows with the data, but slower than it. ``benchmarks/first_try.py`` measures these defaults
against a small sweep on every set of its zoo.
"""
from __future__ import annotations

import dataclasses
import math

from .config import TrainConfig

IMAGES_PER_SQRT_IMAGE = 1500  # the length: 1500 * sqrt(N) images seen (N = training images)
MIN_EPOCHS, MAX_EPOCHS = 1, 100
# every run gets at least this many optimizer steps when it can: by smaller batches or more epochs (with 300, a
# 1,000-image set got 336 steps of batch 128 and ended underfit: results/first-try/README.md, "A floor of 400 steps")
MIN_STEPS = 400
MIN_WARMUP_STEPS = 100  # the warm-up lasts an epoch, or this many steps when an epoch has fewer (small sets)
MAX_WARMUP_FRACTION = 0.25  # and never more than this part of the run (train.lr_at caps a given one too)
BATCH_SIZES = (128, 64, 32)  # the default batch: the largest of these that gives MIN_STEPS steps
PLAIN_GRAD_CLIP = 1.0  # networks without BatchNorm: the gradient norm is clipped at this by default
PLAIN_DROPOUT, BATCH_NORM_DROPOUT = 0.5, 0.3
BATCH_NORM_LR = 0.1
PLAIN_LR, PLAIN_LR_BATCH = 0.2, 128  # networks without BatchNorm: this lr at this batch, times sqrt(batch ratio)
# default_lr's rule in words, from the numbers above: the option's help and the docs quote it
LR_RULE = (f"{BATCH_NORM_LR} with BatchNorm; without it {PLAIN_LR} at batch {PLAIN_LR_BATCH}, times "
           f"sqrt(batch / {PLAIN_LR_BATCH}) at other batches")
# by field: the defaults a run decides, in words from the numbers above, as the flags' help says them (nin.config)
RULES = {
    "epochs": f"follows from the data's size: about {IMAGES_PER_SQRT_IMAGE} x sqrt(images) seen",
    "batch_size": f"{BATCH_SIZES[0]}, or {' or '.join(map(str, BATCH_SIZES[1:]))} when the run would have fewer "
                  f"than {MIN_STEPS} steps",
    "warmup_epochs": f"1, or more when an epoch has fewer than {MIN_WARMUP_STEPS} steps",
    "lr": LR_RULE,
}


def default_epochs(train_images: int) -> int:
    """Epochs that show a default run about 1500 * sqrt(N) images: many epochs of a small set, few of a
    large one, so that the time grows with the data but slower than it."""
    epochs = math.ceil(IMAGES_PER_SQRT_IMAGE * math.sqrt(train_images) / train_images)
    return min(MAX_EPOCHS, max(MIN_EPOCHS, epochs))


def default_batch_size(train_images: int, epochs: int) -> int:
    """The largest batch of BATCH_SIZES that gives the run MIN_STEPS optimizer steps (else the smallest)."""
    return next((b for b in BATCH_SIZES if epochs * (train_images // b) >= MIN_STEPS), BATCH_SIZES[-1])


def default_warmup_epochs(train_images: int, batch_size: int) -> float:
    """One epoch, or enough epochs for MIN_WARMUP_STEPS steps: the networks without BatchNorm need about
    that many steps at a rising rate whatever the epoch's length (with 12 steps of warm-up, the CIFAR
    widths died at ln 10 on a 1,600-image set; with 100 they learned). ``lr_at`` caps it at a quarter of
    the run."""
    steps_per_epoch = max(1, train_images // batch_size)
    return max(1.0, math.ceil(100 * MIN_WARMUP_STEPS / steps_per_epoch) / 100)


def resolve_for_data(config: TrainConfig, train_images: int, log=print) -> TrainConfig:
    """``epochs``, ``batch_size`` and ``warmup_epochs`` left to the run (None) made concrete for
    ``train_images`` images, and said in one line, so that the run's config.json holds what was used."""
    epochs, batch_size = config.epochs, config.batch_size
    if epochs is None:
        epochs = default_epochs(train_images)
    if batch_size is None:
        batch_size = min(default_batch_size(train_images, epochs), train_images)
    if config.epochs is None:  # a tiny set: more epochs, up to the cap, to reach MIN_STEPS
        epochs = min(MAX_EPOCHS, max(epochs, math.ceil(MIN_STEPS / max(1, train_images // batch_size))))
    warmup = config.warmup_epochs
    if warmup is None:  # the cap said as it will act, so that the run's first line and config.json are true
        warmup = min(default_warmup_epochs(train_images, batch_size), MAX_WARMUP_FRACTION * epochs)
    if (epochs, batch_size, warmup) != (config.epochs, config.batch_size, config.warmup_epochs):
        steps = epochs * (train_images // batch_size)
        log(f"{train_images:,} training images: {epochs} epoch{'s' * (epochs != 1)} of batch {batch_size}, "
            f"{steps:,} steps, warm-up {warmup:g} epoch{'s' * (warmup != 1)} (the defaults for this many images: "
            f"about {IMAGES_PER_SQRT_IMAGE} x sqrt(images) seen, at least {MIN_STEPS} steps, at least "
            f"{MIN_WARMUP_STEPS} steps of warm-up; --epochs, --batch-size and --warmup-epochs set them)")
    return dataclasses.replace(config, epochs=epochs, batch_size=batch_size, warmup_epochs=warmup)


def default_eval_every(train_images: int, test_images: int) -> int:
    """Every epoch, or every k epochs where k epochs' training images outnumber the test images, so that a
    run never evaluates more images than it trains on (500 training images against 10,000 test images:
    every 20 epochs, not after each epoch that sees a twentieth of what it evaluates)."""
    return max(1, math.ceil(test_images / max(1, train_images)))


def resolve_eval_every(config: TrainConfig, train_images: int, test_images: int, log=print) -> TrainConfig:
    """``eval_every`` left to the run (None) made concrete, and said when it is not every epoch."""
    if config.eval_every is not None:
        return config
    every = default_eval_every(train_images, test_images)
    if every > 1 and config.epochs > 1:
        log(f"{test_images:,} test images for {train_images:,} training images: evaluating every {every} epochs "
            "and after the last (--eval-every sets it)")
    return dataclasses.replace(config, eval_every=every)


def default_lr(plain: bool, batch_size: int) -> float:
    """The peak lr: 0.1 with BatchNorm; without it 0.2 at batch 128, scaled by sqrt(batch / 128) (0.1 at
    batch 32). The plain networks learned more with 0.2 than 0.1 on most of the zoo at batch 128, and far
    less with it at batch 32 (``benchmarks/first_try.py``, ``benchmarks/sweep_defaults.py``): a smaller
    batch's noisier gradient wants a smaller step (the square-root rule of Hoffer et al. 2017)."""
    if not plain:
        return BATCH_NORM_LR
    return round(PLAIN_LR * math.sqrt(batch_size / PLAIN_LR_BATCH), 4)


def resolve_for_model(config: TrainConfig, plain: bool) -> TrainConfig:
    """The settings left to the run (None) that depend on the network: ``plain`` means without BatchNorm.
    Gradient clipping is on for plain networks, off with BatchNorm; dropout is the paper's 0.5 for plain
    networks, 0.3 for the BatchNorm twins (which need less of it), and rises with the warm-up for plain
    networks only (``train.dropout_at``); the lr is ``default_lr``'s (the batch
    size is known by then: ``resolve_for_data`` comes first)."""
    changes = {}
    if config.lr is None:
        changes["lr"] = default_lr(plain, config.batch_size)
    if config.grad_clip is None:
        changes["grad_clip"] = PLAIN_GRAD_CLIP if plain else 0.0
    if config.dropout is None:
        changes["dropout"] = PLAIN_DROPOUT if plain else BATCH_NORM_DROPOUT
    if config.dropout_warmup is None:
        changes["dropout_warmup"] = plain
    return dataclasses.replace(config, **changes)


def resolve_defaults(config: TrainConfig, train_images: int, test_images: int, plain: bool,
                     log=print) -> TrainConfig:
    """Every setting the run left open (None) made concrete, in one place and once, before the loop starts:
    from the data (``resolve_for_data``: length, batch and warm-up; ``resolve_eval_every``), then from the
    network (``resolve_for_model``, ``plain`` meaning without BatchNorm: lr, clipping, dropout), whose lr
    follows from the batch. The result is the run's config.json; what was decided from the data is said
    in the lines ``log`` gets. A resumed run's config has nothing left open: it comes back unchanged."""
    config = resolve_for_data(config, train_images, log)
    config = resolve_eval_every(config, train_images, test_images, log)
    return resolve_for_model(config, plain)
