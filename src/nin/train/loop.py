"""The training loop: ``fit`` runs one run (or resumes it) in its folder, ``Run`` holds its data, model,
optimizer and state, trains epoch by epoch, evaluates, checkpoints and rolls back after a divergence."""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import checkpoint as ckpt
from ..card import ModelInfo
from ..config import TrainConfig, validate
from ..data import dataset_info
from ..distributed import (World, all_reduce_sum, any_process, close_world, device_for, init_world,
                           local_batch_size, wrap)
from ..errors import Interrupted, NinError
from ..evaluate import evaluate, format_report
from ..hardware import autocast, precision_name, require_memory, resolve_device, use_bf16
from ..init import fit_init_to_data, identity_init, whiten_first_layer
from ..models import create_model, training_step_bytes, variant_has_batch_norm
from ..rundir import RunFolder
from ..tblog import TensorBoardLog
from .claim import claim_run_folder
from .data import init_batch, memory_plan, model_arguments, prepare_data, silent
from .optim import Lookahead, averaged_copy, ema_decay_at, make_optimizer
from .schedules import dropout_at, epoch_cost, evaluates_after, image_size_at, lr_at, time_left, warmup_steps
from .signals import StopSignals


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
        folder = claim_run_folder(config, resume, world)
        run = Run(config, resume, log if world.is_main else silent, world, folder)
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
        self.config = self.data.config  # every default resolved, once: what config.json holds
        self.model = self.build_model()
        if resumed is None:
            self.initialise_weights()
        self.set_up_training()
        if world.is_main:
            folder.write_config(self.config)
        self.tensorboard = TensorBoardLog(folder.path / "tensorboard",
                                          enabled=self.config.tensorboard and world.is_main)
        if resumed is not None:
            self.restore(resumed)
            if world.is_main:
                folder.truncate_metrics(self.state.epoch)
        else:
            self.save()  # step 0: a last good checkpoint exists from the start

    def build_model(self) -> torch.nn.Module:
        """The model on the device, once its training step is known to fit there (said in one line)."""
        config, data = self.config, self.data
        self.model_kwargs = model_arguments(config, len(data.classes), data.channels, data.size)
        batch = local_batch_size(config.batch_size, self.world)
        step_bytes = training_step_bytes(config.model, self.model_kwargs, batch, data.channels, data.size)
        self.log(memory_plan(data, step_bytes, batch, self.device))
        require_memory(step_bytes, self.device, f"training {config.model} on batches of {batch} images of "
                       f"{data.size} pixels", "lower --batch-size or --image-size")
        model = create_model(config.model, **self.model_kwargs).to(self.device)
        if config.progressive_resize and not model.takes_any_size:
            raise NinError(f"--progressive-resize needs a network that takes any image size (global average "
                           f"pooling, no locally connected layer); {config.model} with head {config.head} has a "
                           "layer sized for its images")
        return model.to(memory_format=torch.channels_last) if config.channels_last else model

    def initialise_weights(self) -> None:
        """A new run's start beyond the model's own initialisation: identity, whitening, fitted to the data."""
        config = self.config
        plain = not variant_has_batch_norm(config.model)
        if config.identity_init:
            identity_init(self.model)
        if config.whiten or config.data_init and plain:
            batch = init_batch(self.data.train, config.seed)
            if config.whiten:
                whiten_first_layer(self.model, batch)
            if config.data_init and plain:
                fit_init_to_data(self.model, batch)

    def set_up_training(self) -> None:
        """The optimizer and its extras, the state, the forward passes for training and evaluation."""
        config, world = self.config, self.world
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

    def train(self, stop: StopSignals) -> dict:
        self.log_start()
        metrics = None
        while self.state.epoch < self.config.epochs:
            try:
                if any_process(stop.received is not None, self.device):
                    self.stop_here(stop)
                if self.train_epoch(stop):
                    self.check_weights()
                    metrics = self.end_epoch()
            except NonFiniteLoss as error:
                self.rollback(str(error))
        return metrics or evaluate(self.evaluator, self.data.test, self.data.classes, amp=self.amp,
                                   tta=self.config.tta)

    def log_start(self) -> None:
        config = self.config
        self.log(f"training {config.model} on {dataset_info(config.dataset).title} "
                 f"({len(self.data.train.images)} images, {len(self.data.classes)} classes) for {config.epochs} "
                 f"epoch{'s' * (config.epochs != 1)} at a peak lr of {config.lr:g} on {self.device} in "
                 f"{precision_name(self.amp)}; "
                 f"run folder {self.run_dir}")
        if config.eval_split == "val":
            self.log(f"evaluating on the paper's validation split ({len(self.data.test.images)} training images "
                     "held out; the test set is not used): the test_* columns hold validation numbers")

    def stop_here(self, stop: StopSignals) -> None:
        """A stop signal: the checkpoint of this very batch, then ``Interrupted``."""
        self.check_weights()  # never replace a good checkpoint with a poisoned one
        self.save()
        raise Interrupted(f"{stop.received or 'a stop signal'} received: stopped at epoch "
                          f"{self.state.epoch + 1}, batch {self.state.batch}/{len(self.data.train)}, "
                          f"checkpoint saved; continue with: nin train --resume {self.run_dir}")

    def train_epoch(self, stop: StopSignals) -> bool:
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

    def run_batches(self, bar, loss_sum: torch.Tensor, correct: torch.Tensor, stop: StopSignals) -> None:
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
        state, epoch = self.state, self.state.epoch + 1
        metrics, final = self.evaluate_epoch(epoch) if evaluates_after(epoch, self.config) else (None, None)
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
        self.log_epoch(row, metrics)
        # a slow start at the warm-up's low lr is expected: no warning before its end
        if state.step >= warmup_steps(self.total_steps, self.config):
            _warn_if_stuck(train_loss, len(self.data.classes), epoch, self.config, self.log)
        return final or metrics

    def evaluate_epoch(self, epoch: int) -> tuple[dict, dict | None]:
        """(the test metrics, the final ones with ``config.tta``'s views after the last epoch, else None)."""
        config, data = self.config, self.data
        started = time.perf_counter()
        # an epoch trained on scaled-down images (progressive resizing) is tested at its own size: at full
        # size its numbers would say little about the run (BatchNorm's statistics are those of small images)
        data.test.set_epoch(0, image_size=data.train.image_size)
        metrics = evaluate(self.evaluator, data.test, data.classes, amp=self.amp)
        final = None
        if epoch == config.epochs and config.tta:  # the run's result; its metrics.csv row stays plain
            final = evaluate(self.evaluator, data.test, data.classes, amp=self.amp, tta=config.tta)
        data.test.set_epoch(0)
        if not math.isfinite(metrics["loss"]):  # finite weights can still overflow on the test images
            raise NonFiniteLoss(f"the test loss became non-finite by step {self.state.step} (epoch {epoch})")
        self.full_eval_seconds = (time.perf_counter() - started) / epoch_cost(
            epoch - 1, config.epochs, config.progressive_resize, data.size)
        return metrics, final

    def log_epoch(self, row: dict, metrics: dict | None) -> None:
        tested = f"  test {100 * metrics['accuracy']:.2f}%" if metrics else ""
        resized = self.data.train.image_size
        at_size = f"  at {resized}px" if resized and resized != self.data.size else ""
        left = time_left(row["epoch"], row["seconds"], self.full_eval_seconds, self.config, self.data.size)
        self.log(f"epoch {row['epoch']}/{self.config.epochs}  loss {row['train_loss']:.4f}  "
                 f"train {100 * row['train_acc']:.2f}%{tested}  lr {row['lr']:.4g}  {row['seconds']:.1f}s"
                 f"{at_size}{left}")

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

    def checkpoint(self) -> dict:
        """What a checkpoint holds (checkpoint.py): the model and how to rebuild it (its part written by
        ``ModelInfo.to_checkpoint``, as ``nin.load`` reads it back), and an exact resume's state."""
        config, data = self.config, self.data
        info = ModelInfo(config.model, self.model_kwargs, data.classes, data.size, data.channels,
                         dataset=config.dataset, preprocess=data.preprocess)
        return {
            "format": ckpt.FORMAT, "version": ckpt.VERSION, **info.to_checkpoint(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(), "epoch": self.state.epoch, "step": self.state.step,
            "state": dataclasses.asdict(self.state), "rng": ckpt.capture_rng(), "config": dataclasses.asdict(config),
            **({"ema_model": self.ema.module.state_dict(), "ema_updates": int(self.ema.n_averaged)}
               if self.ema else {}),  # eval, export and predict read ema_model in model's place
            **({"lookahead_slow": self.lookahead.slow} if self.lookahead else {}),
        }

    def save(self) -> None:
        if not self.world.is_main:
            return
        path = self.run_dir / ckpt.CHECKPOINT_NAME
        try:
            ckpt.atomic_save(self.checkpoint(), path)
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


def _warn_if_stuck(train_loss: float, num_classes: int, epoch: int, config: TrainConfig, log) -> None:
    chance = math.log(num_classes)
    if abs(train_loss - chance) < 0.02 * chance:
        log(f"warning: after epoch {epoch} the training loss {train_loss:.4f} is still at chance (ln {num_classes} "
            f"= {chance:.4f}). Usual causes: a learning rate too high (--lr {config.lr}), its initialisation "
            f"(--init {config.init}; without BatchNorm, --data-init, --grad-clip 1 and --dropout-warmup help), "
            "or dead ReLUs before global average pooling (--no-relu-before-gap).")
