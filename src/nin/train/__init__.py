"""Training: ``fit(config)`` runs a recipe end to end and leaves a run folder.

Run folder: ``config.json`` (the resolved config), ``metrics.csv`` (one row per epoch) and
``checkpoint.pt`` (written atomically at the start, after every epoch and when a stop signal arrives;
see checkpoint.py for its contents). Resuming continues from the exact batch: the data order depends
only on (seed, epoch) and the checkpoint holds the RNG states, so the weights come out bit-identical.

The package by job: ``loop`` (fit and the Run), ``data`` (a run's data, its checks and memory plan),
``schedules`` (lr, dropout, image size, the clock), ``optim`` (the optimizer, EMA, Lookahead),
``signals`` (stop signals) and ``claim`` (the run folder claimed, a resumed run's config).
"""
from .claim import RESUME_OVERRIDES, claim_run_folder, resume_config
from .data import Data, init_batch, memory_plan, model_arguments, prepare_data
from .loop import EXPLODED_LOSS, MAX_ROLLBACKS, SYNC_EVERY, NonFiniteLoss, Run, RunState, fit
from .optim import Lookahead, averaged_copy, ema_decay_at, make_optimizer
from .schedules import (DROPOUT_WARMUP_STAGES, FULL_SIZE_FRACTION, MIN_PROGRESSIVE_SIZE, dropout_at, epoch_cost,
                        evaluates_after, image_size_at, lr_at, time_left, warmup_steps)
from .signals import StopSignals

__all__ = ["DROPOUT_WARMUP_STAGES", "EXPLODED_LOSS", "FULL_SIZE_FRACTION", "MAX_ROLLBACKS", "MIN_PROGRESSIVE_SIZE",
           "RESUME_OVERRIDES", "SYNC_EVERY", "Data", "Lookahead", "NonFiniteLoss", "Run", "RunState", "StopSignals",
           "averaged_copy", "claim_run_folder", "dropout_at", "ema_decay_at", "epoch_cost", "evaluates_after", "fit",
           "image_size_at", "init_batch", "lr_at", "make_optimizer", "memory_plan", "model_arguments",
           "prepare_data", "resume_config", "time_left", "warmup_steps"]
