"""Training: ``fit(config)`` runs a recipe end to end and leaves a run folder.

Run folder: ``config.json`` (the resolved config), ``metrics.csv`` (one row per epoch) and
``checkpoint.pt`` (written atomically after every epoch; see checkpoint.py for its contents).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint as ckpt
from .config import TrainConfig, from_dict, validate
from .data import DeviceLoader, Normalize, dataset_info, load_dataset
from .errors import NinError
from .evaluate import autocast, evaluate, format_report
from .models import create_model, default_cfg

METRIC_FIELDS = ["epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NinError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NinError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise NinError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type not in ("cpu", "cuda"):
        raise NinError(f"unsupported device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


@dataclass
class Data:
    train: DeviceLoader
    test: DeviceLoader
    classes: list[str]
    normalize: Normalize
    channels: int
    size: int


def prepare_data(config: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1) -> Data:
    info = dataset_info(config.dataset)
    model_cfg = default_cfg(config.model)
    size = config.image_size or (info.size if config.dataset != "folder" else model_cfg.input_size)
    channels = config.channels or info.channels
    root = config.root or None
    train = load_dataset(config.dataset, root, "train", image_size=size, channels=channels)
    test = load_dataset(config.dataset, root, "test", image_size=size, channels=channels)
    if test.classes != train.classes:
        raise NinError(f"the test split's classes {test.classes} differ from the training split's {train.classes}")
    train_images, train_labels = _first(train.images, config.train_subset), _first(train.labels, config.train_subset)
    test_images, test_labels = _first(test.images, config.test_subset), _first(test.labels, config.test_subset)
    if len(train_images) < config.batch_size * world_size:
        raise NinError(f"{len(train_images)} training images are fewer than one batch of {config.batch_size}; "
                       "lower --batch-size")
    normalize = Normalize.fit(train_images)  # fitted on the training images only
    flip = info.flip if config.flip == "auto" else config.flip == "yes"
    common = dict(device=device, channels_last=config.channels_last, rank=rank, world_size=world_size)
    train_loader = DeviceLoader(train_images, train_labels, normalize, batch_size=config.batch_size, train=True,
                                translate=config.translate, flip=flip, seed=config.seed, **common)
    test_loader = DeviceLoader(test_images, test_labels, normalize, batch_size=config.eval_batch_size, **common)
    return Data(train_loader, test_loader, train.classes, normalize, int(train_images.shape[1]),
                int(train_images.shape[2]))


def _first(tensor: torch.Tensor, count: int) -> torch.Tensor:
    return tensor[:count] if count else tensor


def model_arguments(config: TrainConfig, num_classes: int, channels: int, size: int) -> dict:
    """The keyword arguments that rebuild the model exactly (stored in every checkpoint)."""
    kwargs = dict(num_classes=num_classes, in_channels=channels, dropout=config.dropout, init=config.init,
                  head=config.head, relu_before_gap=config.relu_before_gap, input_size=size)
    if config.pools:
        kwargs["pools"] = tuple(config.pools)
    return kwargs


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on conv/linear weights only (not on biases or BatchNorm)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0)


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up from lr/10 over ``warmup_epochs``, then the decay ``schedule`` to the end."""
    steps_per_epoch = max(1, total_steps // config.epochs)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)
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


@dataclass
class RunState:
    """What changes during training, besides the model and optimizer."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken


def fit(config: TrainConfig, *, resume: str | None = None, log=print) -> dict:
    """Train (or resume) a run; returns the final test metrics with ``run_dir`` added."""
    resumed = ckpt.load_checkpoint(resume) if resume else None
    config = validate(config)
    device = resolve_device(config.device)
    run_dir = _run_folder(config, resume)
    torch.manual_seed(config.seed)
    data = prepare_data(config, device)
    model_kwargs = model_arguments(config, len(data.classes), data.channels, data.size)
    model = create_model(config.model, **model_kwargs).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    state = RunState()
    if resumed is not None:
        _restore(resumed, model, optimizer, state)
    _write_config(run_dir, config)
    trainer = torch.compile(model) if config.compile else model
    amp = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")
    total_steps = config.epochs * len(data.train)
    log(f"training {config.model} on {dataset_info(config.dataset).title} ({len(data.train.images)} images, "
        f"{len(data.classes)} classes) for {config.epochs} epochs on {device}; run folder {run_dir}")
    metrics = None
    while state.epoch < config.epochs:
        started = time.perf_counter()
        data.train.set_epoch(state.epoch)
        train_loss, train_acc = train_one_epoch(trainer, optimizer, data.train, state, total_steps, config, amp)
        metrics = evaluate(trainer, data.test, data.classes, amp=amp)
        state.epoch += 1
        row = dict(epoch=state.epoch, step=state.step, train_loss=train_loss, train_acc=train_acc,
                   test_loss=metrics["loss"], test_acc=metrics["accuracy"], lr=optimizer.param_groups[0]["lr"],
                   seconds=time.perf_counter() - started)
        _save(run_dir, model, optimizer, state, config, data, model_kwargs)
        _append_metrics(run_dir, row)
        log(f"epoch {state.epoch}/{config.epochs}  loss {train_loss:.4f}  train {100 * train_acc:.2f}%  "
            f"test {100 * metrics['accuracy']:.2f}%  lr {row['lr']:.4g}  {row['seconds']:.1f}s")
        _warn_if_stuck(train_loss, len(data.classes), state.epoch, config, log)
    if metrics is None:  # resumed a finished run: evaluate it once more
        metrics = evaluate(trainer, data.test, data.classes, amp=amp)
    log(format_report(metrics))
    log(f"run folder: {run_dir}")
    return {**metrics, "run_dir": str(run_dir)}


def train_one_epoch(model, optimizer, loader: DeviceLoader, state: RunState, total_steps: int,
                    config: TrainConfig, amp: bool) -> tuple[float, float]:
    """One pass over the training loader; returns (mean loss, accuracy) on the augmented batches."""
    model.train()
    device = loader.images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}", leave=False, disable=not config.progress,
               dynamic_ncols=True)
    for batch_index, (images, labels) in enumerate(bar):
        lr = lr_at(state.step, total_steps, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, amp):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        state.step += 1
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if batch_index % 25 == 0:  # the only host sync inside the epoch: progress and the NaN check
            _check_finite(loss_sum, state, lr)
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", lr=f"{lr:.4g}", refresh=False)
    _check_finite(loss_sum, state, optimizer.param_groups[0]["lr"])
    return float(loss_sum) / seen, int(correct) / seen


def _check_finite(loss_sum: torch.Tensor, state: RunState, lr: float) -> None:
    if not torch.isfinite(loss_sum):
        raise NinError(f"the loss became non-finite by step {state.step} (epoch {state.epoch + 1}, lr {lr:.4g}); "
                       f"lower --lr or add --grad-clip; the last good checkpoint is from epoch {state.epoch}")


def _warn_if_stuck(train_loss: float, num_classes: int, epoch: int, config: TrainConfig, log) -> None:
    chance = math.log(num_classes)
    if abs(train_loss - chance) < 0.02 * chance:
        log(f"warning: after epoch {epoch} the training loss {train_loss:.4f} is still at chance (ln {num_classes} "
            f"= {chance:.4f}). Usual causes: a learning rate too high (--lr {config.lr}), the std-0.05 Gaussian init "
            f"(--init {config.init}), or dead ReLUs before global average pooling (--no-relu-before-gap).")


def _run_folder(config: TrainConfig, resume: str | None) -> Path:
    if resume:
        path = Path(resume).expanduser()
        return path if path.is_dir() else path.parent
    if config.out:
        run_dir = Path(config.out).expanduser()
    else:
        run_dir = Path("runs") / f"{config.recipe or config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / ckpt.CHECKPOINT_NAME).exists():
        raise NinError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _write_config(run_dir: Path, config: TrainConfig) -> None:
    text = json.dumps(dataclasses.asdict(config), indent=2) + "\n"
    (run_dir / "config.json").write_text(text)


def _append_metrics(run_dir: Path, row: dict) -> None:
    path = run_dir / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _save(run_dir: Path, model, optimizer, state: RunState, config: TrainConfig, data: Data,
          model_kwargs: dict) -> None:
    ckpt.atomic_save({
        "format": ckpt.FORMAT, "version": ckpt.VERSION,
        "model_name": config.model, "model_kwargs": model_kwargs, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "epoch": state.epoch, "step": state.step,
        "rng": ckpt.capture_rng(), "config": dataclasses.asdict(config), "classes": data.classes,
        "normalization": data.normalize.state_dict(),
        "input": {"size": data.size, "channels": data.channels, "dataset": config.dataset},
    }, run_dir / ckpt.CHECKPOINT_NAME)


RESUME_OVERRIDES = ("epochs", "device", "progress")


def resume_config(run: str, overrides: dict) -> TrainConfig:
    """The config a run was started with; only ``epochs``, ``device`` and ``progress`` may change."""
    config = from_dict(ckpt.load_checkpoint(run)["config"], source="checkpoint config")
    refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if refused:
        raise NinError(f"--resume continues a run with its own settings; only --epochs, --device and "
                       f"--progress may change, not --{refused[0].replace('_', '-')}")
    return dataclasses.replace(config, **overrides)


def _restore(resumed: dict, model, optimizer, state: RunState) -> None:
    model.load_state_dict(resumed["model"])
    optimizer.load_state_dict(resumed["optimizer"])
    state.epoch, state.step = resumed["epoch"], resumed["step"]
    ckpt.restore_rng(resumed["rng"])
