"""TensorBoard scalars for a training run, when ``tensorboard`` is installed; otherwise nothing at all.

    tb = TensorBoardLog(run_dir / "tensorboard")
    tb.log_epoch(row, step)   # the metrics.csv row of an epoch: train_loss -> loss/train, test_acc -> accuracy/test
    tb.close()

Install the ``tensorboard`` extra (pip install 'network-in-network[tensorboard]') and run
``tensorboard --logdir runs`` to watch every run under ``runs/``.
"""
from __future__ import annotations

import os

_SKIP = ("epoch", "step")
_METRIC_NAMES = {"acc": "accuracy"}


def tag(key: str) -> str:
    """``train_loss`` -> ``loss/train``: TensorBoard groups by the part before the slash, so the training
    and test curves of one metric share a section. Other keys (``lr``, ``seconds``) stay as they are."""
    split, _, metric = key.partition("_")
    if split in ("train", "test", "val") and metric:
        return f"{_METRIC_NAMES.get(metric, metric)}/{split}"
    return key


class TensorBoardLog:
    """Writes each epoch's scalars with a ``SummaryWriter`` when ``torch.utils.tensorboard`` imports;
    a no-op otherwise (or when ``enabled`` is false). ``active`` says which."""

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def active(self) -> bool:
        return self.writer is not None

    def log_epoch(self, row: dict, step: int) -> None:
        """One scalar per numeric value of ``row`` (``epoch`` and ``step`` excepted), at ``step``."""
        if self.writer is None:
            return
        for key, value in row.items():
            if key in _SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(tag(key), value, global_step=step)
        self.writer.flush()  # a crash or a kill loses no finished epoch

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
