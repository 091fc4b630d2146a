"""What changes with the step or the epoch: the lr and dropout schedules, the image size under progressive
resizing, which epochs evaluate, and the clock that says how long a run has left."""
from __future__ import annotations

import math

from ..config import TrainConfig
from ..defaults import MAX_WARMUP_FRACTION

MIN_PROGRESSIVE_SIZE = 8  # three 3x3/2 poolings still leave a map to average
FULL_SIZE_FRACTION = 0.25  # progressive resizing: the last quarter of the epochs trains at full size
DROPOUT_WARMUP_STAGES = 4  # the rate rises in this many steps: few values, so a compiled model recompiles little


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


def dropout_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """The dropout rate at ``step``: the configured rate, or with ``dropout_warmup`` none at the start and
    a quarter more each quarter of the lr warm-up (the plain networks' class maps die less often when
    their first, large steps are taken without dropout's noise)."""
    warmup = warmup_steps(total_steps, config)
    if not config.dropout_warmup or step >= warmup:
        return config.dropout
    return config.dropout * math.floor(DROPOUT_WARMUP_STAGES * step / warmup) / DROPOUT_WARMUP_STAGES


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
