"""Never lose a run: SIGTERM or SIGINT at any step, then `--resume`, ends exactly where an uninterrupted run ends.

The interruptions are injected in-process and deterministically: ``Run.step`` is wrapped so that the
process sends itself the signal right after optimizer step N. The handler installed by the trainer only
sets a flag; the loop finishes the step, writes a checkpoint and raises ``Interrupted``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nin.checkpoint import load_checkpoint
from nin.errors import Interrupted
from nin.train import Run, fit, resume_config
from run_checks import (STEPS_PER_EPOCH, assert_same_run, metrics_rows, quiet, signal_and_collect, small_config,
                        train_straight)
from tiny_run import write_folder_dataset


def signal_after_step(patch: pytest.MonkeyPatch, step: int, signum: int = signal.SIGTERM, times: int = 1) -> None:
    """Make the process send itself ``signum`` right after optimizer step ``step``."""
    original = Run.step

    def step_then_signal(self, images, labels):
        result = original(self, images, labels)
        if self.state.step == step:
            for _ in range(times):
                os.kill(os.getpid(), signum)
                (lambda: None)()  # a Python call: the handler runs here, before the next signal is sent
        return result

    patch.setattr(Run, "step", step_then_signal)


def resume(run: Path) -> dict:
    return fit(resume_config(str(run), {}), resume=str(run), log=quiet)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, fashion_mnist_root) -> Path:
    """The uninterrupted run every interrupted one is compared with."""
    return train_straight(tmp_path_factory)


@pytest.mark.parametrize("stop_step, where", [
    (3, "epoch 1, batch 3/8"),  # in the middle of the first epoch
    (8, "epoch 2, batch 0/8"),  # the last step of epoch 1: exactly at the epoch boundary
    (19, "epoch 3, batch 3/8"),  # in the middle of a later epoch
], ids=["mid-first-epoch", "epoch-boundary", "mid-later-epoch"])
def test_sigterm_then_resume_gives_bit_identical_weights(straight, tmp_path, monkeypatch, stop_step, where):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        signal_after_step(patch, stop_step, signal.SIGTERM)
        with pytest.raises(Interrupted) as stopped:
            fit(small_config(run), log=quiet)

    message = str(stopped.value)
    assert message.startswith("SIGTERM received") and where in message
    assert f"nin train --resume {run}" in message
    assert load_checkpoint(run)["step"] == stop_step  # the checkpoint holds the last finished step
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the trainer gave the handler back

    result = resume(run)

    assert result["run_dir"] == str(run)
    assert_same_run(straight, run)


def test_a_run_with_a_moving_average_of_its_weights_resumes_bit_identical(tmp_path, monkeypatch, fashion_mnist_root):
    fit(small_config(tmp_path / "straight", ema=0.9), log=quiet)
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        signal_after_step(patch, 11, signal.SIGTERM)
        with pytest.raises(Interrupted):
            fit(small_config(run, ema=0.9), log=quiet)
    resume(run)
    assert_same_run(tmp_path / "straight", run)


def test_a_run_with_the_fast_training_methods_resumes_bit_identical(tmp_path, monkeypatch, fashion_mnist_root):
    """A whitened first layer and identity starts (set once, at the start), frozen BatchNorm scales, faster
    BatchNorm biases, progressive resizing (the stop falls in epoch 2, at 21 pixels), random erasing, and
    Lookahead every 3 steps (the stop, after step 11, falls between two syncs: the slow weights differ from
    the model's and must come back from the checkpoint)."""
    options = dict(whiten=True, identity_init=True, freeze_bn_scales=True, bn_bias_lr=8.0, progressive_resize=14,
                   erase=0.5, lookahead=3)
    fit(small_config(tmp_path / "straight", **options), log=quiet)
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        signal_after_step(patch, 11, signal.SIGTERM)
        with pytest.raises(Interrupted):
            fit(small_config(run, **options), log=quiet)
    resume(run)
    assert_same_run(tmp_path / "straight", run)


def test_sigint_stops_and_resumes_the_same_way(straight, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        signal_after_step(patch, 11, signal.SIGINT)  # Ctrl-C in the middle of epoch 2
        with pytest.raises(Interrupted, match=rf"^SIGINT received: stopped at epoch 2, batch 3/8.*--resume {run}$"):
            fit(small_config(run), log=quiet)

    resume(run)

    assert_same_run(straight, run)


def test_a_second_ctrl_c_stops_at_once_and_the_last_checkpoint_still_resumes(straight, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        signal_after_step(patch, 11, signal.SIGINT, times=2)
        with pytest.raises(KeyboardInterrupt):
            fit(small_config(run), log=quiet)

    assert load_checkpoint(run)["step"] == STEPS_PER_EPOCH  # epoch 1's checkpoint: only epoch 2's steps are lost
    resume(run)

    assert_same_run(straight, run)


def test_nin_train_stopped_by_sigterm_exits_75_and_resumes(tmp_path):
    """The real command: SIGTERM from outside, exit code 75, one line naming --resume, then `--resume` finishes."""
    data = write_folder_dataset(tmp_path / "data")
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "nin", "train", "--dataset", "folder", "--root", str(data), "--image-size", "16",
               "--batch-size", "4", "--epochs", "1000", "--device", "cpu", "--no-progress", "--no-tensorboard",
               "--out", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoint.pt").exists():  # the checkpoint at step 0: training has begun
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.05)
    except BaseException:
        signal_and_collect(process, signal.SIGKILL)
        raise
    time.sleep(0.5)
    out, err = signal_and_collect(process, signal.SIGTERM)

    assert process.returncode == 75, (out, err)
    assert "Traceback" not in err
    assert err.startswith("nin: SIGTERM received: stopped at epoch ")
    assert err.strip().endswith(f"continue with: nin train --resume {run}")
    stopped = load_checkpoint(run)
    assert 0 < stopped["step"] and stopped["epoch"] < 1000

    finish = str(stopped["epoch"] + 1)  # finish the epoch it was stopped in
    done = subprocess.run([sys.executable, "-m", "nin", "train", "--resume", str(run), "--epochs", finish],
                          capture_output=True, text=True, env=env, timeout=120)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "test accuracy" in done.stdout
    final = load_checkpoint(run)
    assert final["epoch"] == int(finish) and final["step"] == int(finish) * 3  # 12 images, batches of 4
    assert [int(r["epoch"]) for r in metrics_rows(run)] == list(range(1, int(finish) + 1))


def test_a_signal_during_the_last_epoch_still_stops_the_caller(tmp_path, monkeypatch, fashion_mnist_root):
    """The run completes (its last checkpoint holds every epoch), and a program running several runs in
    one process (nin reproduce) stops instead of starting the next one."""
    real_train = Run.train

    def train_then_signal(self, stop):
        metrics = real_train(self, stop)
        stop.received = "SIGTERM"  # as if it arrived during the final evaluation
        return metrics

    monkeypatch.setattr(Run, "train", train_then_signal)
    with pytest.raises(Interrupted, match="SIGTERM received as the run finished: .* is complete"):
        fit(small_config(tmp_path / "run", epochs=1), log=quiet)
    assert load_checkpoint(tmp_path / "run")["epoch"] == 1
