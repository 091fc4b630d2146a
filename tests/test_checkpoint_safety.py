"""Never lose a run: a crash while writing, a full disk, or a crash between the checkpoint and the metrics row.

Each test injects the fault at a fixed moment and then checks that the last checkpoint is complete, that
nothing else claims to be the checkpoint, and that `--resume` ends where an uninterrupted run ends.
"""
from __future__ import annotations

import errno
import resource
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nin.rundir
from nin.checkpoint import FORMAT, KEYS, VERSION, atomic_save, load_checkpoint, resolve_checkpoint
from nin.errors import NinError
from nin.rundir import RunFolder
from nin.train import fit, resume_config
from tiny_run import write_folder_dataset
from run_checks import (EPOCHS, assert_same_run, metrics_rows, quiet, signal_and_collect, small_config,
                        train_straight)

VALUES = 4_000_000  # a 32 MB tensor: each write takes tens of milliseconds, long enough to be hit mid-way
KILL_DELAYS = (0.0, 0.03, 0.07, 0.15, 0.26, 0.4)  # seconds after the writer is ready

WRITER = """
import sys, torch
from nin.checkpoint import FORMAT, KEYS, VERSION, atomic_save
path, iteration = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
while True:
    atomic_save({**dict.fromkeys(KEYS, 0), "model_kwargs": {}, "classes": [], "format": FORMAT, "version": VERSION,
                 "iteration": iteration, "values": torch.full((%d,), iteration, dtype=torch.int64)}, path)
    print(iteration, flush=True)
    iteration += 1
""" % VALUES


def leftover_temporaries(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def test_sigkill_while_saving_never_leaves_a_torn_checkpoint(tmp_path):
    """A writer saves a 32 MB checkpoint onto the same path in a loop; SIGKILL hits it at six moments."""
    path = tmp_path / "checkpoint.pt"
    atomic_save({**dict.fromkeys(KEYS, 0), "model_kwargs": {}, "classes": [], "format": FORMAT, "version": VERSION,
                 "iteration": -1, "values": torch.full((VALUES,), -1)}, path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    last = -1
    for kill, delay in enumerate(KILL_DELAYS):
        first = (kill + 1) * 1_000_000
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(first)], stdout=subprocess.PIPE,
                                  text=True, env=env)
        ready, _, _ = select.select([writer.stdout], [], [], 60)
        if not (ready and writer.stdout.readline() == "ready\n"):
            signal_and_collect(writer, signal.SIGKILL)
            pytest.fail("the checkpoint writer did not start")
        time.sleep(delay)
        out, _ = signal_and_collect(writer, signal.SIGKILL, timeout=30)
        assert writer.returncode == -signal.SIGKILL
        finished = [int(line) for line in out.split()]

        saved = load_checkpoint(tmp_path)  # the run folder resolves to checkpoint.pt, never to a temporary

        # the last finished write, or the next one when the kill came between its rename and its print
        newest = finished[-1] if finished else last
        assert saved["iteration"] in (newest, newest + 1 if finished else first), (delay, finished)
        assert saved["values"].shape == (VALUES,)
        assert torch.equal(saved["values"], torch.full((VALUES,), saved["iteration"]))  # complete, not torn
        last = saved["iteration"]
        assert resolve_checkpoint(tmp_path) == path
        assert all(name.startswith(".checkpoint.pt.") for name in leftover_temporaries(tmp_path))


def full_disk_when_saving(patch: pytest.MonkeyPatch, epoch: int) -> None:
    """``torch.save`` of the checkpoint of ``epoch`` writes a few bytes, then fails with ENOSPC."""
    real_save = torch.save

    def save(obj, stream, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == FORMAT and obj.get("epoch") == epoch:
            stream.write(b"PK\x03\x04 the first bytes of a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, stream, *args, **kwargs)

    patch.setattr(torch, "save", save)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, fashion_mnist_root) -> Path:
    return train_straight(tmp_path_factory)


def test_a_full_disk_stops_with_a_clear_error_and_the_previous_checkpoint_resumes(straight, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        full_disk_when_saving(patch, epoch=2)
        with pytest.raises(NinError) as error:
            fit(small_config(run), log=quiet)

    message = str(error.value)
    assert "No space left on device" in message and "previous checkpoint is intact" in message
    assert message.endswith(f"continue with --resume {run}")
    assert leftover_temporaries(run) == []
    assert load_checkpoint(run)["epoch"] == 1  # the checkpoint of epoch 1, untouched

    fit(resume_config(str(run), {}), resume=str(run), log=quiet)  # space freed: continue

    assert_same_run(straight, run)


def test_a_full_disk_before_the_first_checkpoint_promises_no_resume(tmp_path, monkeypatch, fashion_mnist_root):
    """Nothing was trained and no checkpoint exists: the advice must be to start again, not to resume."""
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        full_disk_when_saving(patch, epoch=0)
        with pytest.raises(NinError, match="No space left on device") as error:
            fit(small_config(run, epochs=1), log=quiet)

    assert not run.exists()  # the folder it made for a run that never started is gone, temporaries included
    assert "--resume" not in str(error.value) and "intact" not in str(error.value)

    fit(small_config(run, epochs=1), log=quiet)  # the same command works once there is space

    assert load_checkpoint(run)["epoch"] == 1


class Crash(BaseException):
    """The process dies here (as with SIGKILL or a power cut): nothing after this point runs."""


def crash_while_writing_the_checkpoint(patch: pytest.MonkeyPatch, epoch: int) -> None:
    real_save = torch.save

    def save(obj, stream, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == FORMAT and obj.get("epoch") == epoch:
            stream.write(b"PK\x03\x04 half a checkpoint")
            raise Crash
        return real_save(obj, stream, *args, **kwargs)

    patch.setattr(torch, "save", save)


def crash_before_the_metrics_row(patch: pytest.MonkeyPatch, epoch: int) -> None:
    real_append = RunFolder.append_metrics

    def append(folder, row):
        if int(row["epoch"]) == epoch:
            raise Crash
        real_append(folder, row)

    patch.setattr(RunFolder, "append_metrics", append)


@pytest.mark.parametrize("crash", [crash_while_writing_the_checkpoint, crash_before_the_metrics_row],
                         ids=["while-writing-the-checkpoint", "between-the-checkpoint-and-the-metrics-row"])
def test_a_crash_at_the_end_of_an_epoch_loses_no_metrics_row(straight, tmp_path, monkeypatch, crash):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        crash(patch, epoch=2)
        with pytest.raises(Crash):
            fit(small_config(run), log=quiet)

    fit(resume_config(str(run), {}), resume=str(run), log=quiet)

    assert [int(r["epoch"]) for r in metrics_rows(run)] == list(range(1, EPOCHS + 1))
    assert_same_run(straight, run)


class TornFile:
    """A file whose next write puts half the text on disk, then fails as a full disk does."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text[: len(text) // 2])
        self.stream.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def test_a_full_disk_while_appending_to_metrics_csv_is_a_clear_error_and_resumes(straight, tmp_path, monkeypatch):
    appends = []

    def open_metrics(file, mode="r", *args, **kwargs):
        stream = open(file, mode, *args, **kwargs)
        if Path(file).name == "metrics.csv" and "a" in mode:
            appends.append(file)
            if len(appends) == 2:  # epoch 2's row
                return TornFile(stream)
        return stream

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(nin.rundir, "open", open_metrics, raising=False)
        with pytest.raises(NinError, match=rf"No space left on device.*--resume {run}"):
            fit(small_config(run), log=quiet)

    fit(resume_config(str(run), {}), resume=str(run), log=quiet)

    rows = metrics_rows(run)
    assert all(value not in ("", None) for row in rows for value in row.values())  # no torn row survives
    assert_same_run(straight, run)


def test_resume_keeps_the_rows_of_epochs_that_were_not_evaluated_and_drops_torn_ones(tmp_path):
    """--eval-every leaves an epoch's test columns empty: such a row is complete. A row the crash tore, and
    one past the checkpoint's epoch, go; the file is replaced whole (no temporary left behind)."""
    (tmp_path / "metrics.csv").write_text(
        "epoch,step,train_loss,train_acc,test_loss,test_acc,lr,seconds\n"
        "1,8,2.1,0.31,,,0.1,5.0\n"  # not evaluated
        "2,16,1.9,0.42,1.8,0.45,0.09,5.1\n"  # evaluated
        "3,24,1.7,0.5,1.6\n"  # torn: test_acc and the rest never written
        "3,24,1.7,0.5,,,0.05,5.2\n"  # trained again after the crash, but the checkpoint holds epoch 2
    )
    RunFolder(tmp_path).truncate_metrics(epochs=2)

    assert [(row["epoch"], row["test_acc"]) for row in metrics_rows(tmp_path)] == [("1", ""), ("2", "0.45")]
    assert leftover_temporaries(tmp_path) == []


def test_a_full_disk_while_resuming_keeps_metrics_csv_whole(tmp_path, monkeypatch):
    rows = "epoch,step,train_loss,train_acc,test_loss,test_acc,lr,seconds\n1,8,2.1,0.31,,,0.1,5.0\n"
    (tmp_path / "metrics.csv").write_text(rows)

    def full_disk(file, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(nin.rundir, "open", full_disk, raising=False)
    with pytest.raises(NinError, match="No space left on device.*intact.*--resume"):
        RunFolder(tmp_path).truncate_metrics(epochs=1)

    assert (tmp_path / "metrics.csv").read_text() == rows
    assert leftover_temporaries(tmp_path) == []


def test_a_real_write_limit_on_the_first_checkpoint_is_one_line(tmp_path):
    """The kernel refuses writes past 1 MB (RLIMIT_FSIZE, as a full disk refuses them): `nin train` says so in
    one line, exit 2, with no torch traceback, and leaves no folder behind."""
    data = write_folder_dataset(tmp_path / "data")
    run = tmp_path / "run"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    command = [sys.executable, "-m", "nin", "train", "--model", "nin_mnist_bn", "--dataset", "folder", "--root",
               str(data), "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
               "--no-progress", "--no-tensorboard", "--out", str(run)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size,
                          env={**os.environ, "NIN_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"nin: error: could not write the first checkpoint {run / 'checkpoint.pt'} "
                                  "(File too large)") and done.stderr.count("\n") == 1, done.stderr
    assert not run.exists()
