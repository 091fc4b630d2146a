"""Helpers shared by the fault-injection tests: one small Fashion-MNIST run, and comparing two runs bit for bit."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from nin.checkpoint import load_checkpoint
from nin.config import TrainConfig
from nin.train import fit

STEPS_PER_EPOCH = 8  # 256 training images, batches of 32
EPOCHS = 3


def quiet(*_) -> None:
    pass


def small_config(out: Path, **changes) -> TrainConfig:
    """Fashion-MNIST, 256 images, 3 epochs of 8 steps, with dropout (so the RNG state matters) rising during
    the warm-up (a stop at step 3 falls inside it); fp32 on every machine (the exact-resume tests compare bits).
    A quarter of the widths: these tests check the mechanics of a run (stops, resumes, faults), not what it
    learns, and the narrower network takes a quarter of the time."""
    settings = dict(model="nin_mnist_bn", dataset="fashion-mnist", train_subset=256, test_subset=128,
                    epochs=EPOCHS, batch_size=32, lr=0.1, warmup_epochs=0.5, dropout_warmup=True, label_smoothing=0.1,
                    amp="off", width=0.25,
                    device="cpu", progress=False, tensorboard=False, out=str(out))
    return TrainConfig(**{**settings, **changes})


def train_straight(tmp_path_factory) -> Path:
    """The uninterrupted run of ``small_config`` (for module-scoped fixtures)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as patch:  # module fixtures run before conftest's private cache
        patch.setenv("NIN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "nin-cache"))
        fit(small_config(run), log=quiet)
    return run


def metrics_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def assert_same_objects(expected, actual, where: str = "") -> None:
    """Nested dicts, lists and tensors equal bit for bit."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and expected.dtype == actual.dtype, where
        assert torch.equal(expected, actual), where
    elif isinstance(expected, dict):
        assert set(expected) == set(actual), where
        for key in expected:
            assert_same_objects(expected[key], actual[key], f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (a, b) in enumerate(zip(expected, actual)):
            assert_same_objects(a, b, f"{where}[{index}]")
    else:
        assert expected == actual, where


def assert_same_run(straight: Path, resumed: Path) -> None:
    """Same weights, optimizer state, step, RNG state and metrics rows (all but the wall time)."""
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert (b["epoch"], b["step"]) == (a["epoch"], a["step"]) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH)
    for key in [key for key in ("model", "ema_model", "lookahead_slow") if key in a]:  # --ema's, --lookahead's too
        assert list(a[key]) == list(b[key])
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}: {name}"
    assert a.get("ema_updates") == b.get("ema_updates")
    assert_same_objects(a["optimizer"], b["optimizer"], "optimizer")
    assert_same_objects(a["rng"], b["rng"], "rng")
    assert a["state"] == b["state"]

    rows_a, rows_b = metrics_rows(straight), metrics_rows(resumed)
    assert [int(r["epoch"]) for r in rows_b] == list(range(1, EPOCHS + 1))  # each epoch exactly once
    for row_a, row_b in zip(rows_a, rows_b):
        assert {k: v for k, v in row_a.items() if k != "seconds"} == {k: v for k, v in row_b.items() if k != "seconds"}


def signal_and_collect(process, signum: int, timeout: float = 60) -> tuple[str, str]:
    """Send ``signum`` to a child process and return its (stdout, stderr); never leave it running."""
    try:
        process.send_signal(signum)
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
