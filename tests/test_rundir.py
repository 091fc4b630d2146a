"""A run folder belongs to one process for the run's life, and output places are checked before any work."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import pytest

from nin.cli import main
from nin.errors import NinError
from nin.rundir import RunFolder
from tiny_run import train_tiny_run, write_folder_dataset

QUIET = ["--device", "cpu", "--no-progress", "--no-tensorboard"]


def train_argv(data, out, epochs=2) -> list[str]:
    return ["train", "--model", "nin_mnist_bn", "--dataset", "folder", "--root", str(data), "--image-size", "16",
            "--epochs", str(epochs), "--batch-size", "4", "--out", str(out), *QUIET]


def one_line_error(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("nin: error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_a_second_claim_on_a_folder_in_use_names_the_holder(tmp_path):
    first = RunFolder.claim(str(tmp_path / "run"), "", None)
    with pytest.raises(NinError, match=rf"in use by process {os.getpid()} .*pick another --out"):
        RunFolder.claim(str(tmp_path / "run"), "", None)
    with pytest.raises(NinError, match="in use by process"):
        RunFolder.claim("", "", resume=str(tmp_path / "run"))
    first.release()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from nin.rundir import RunFolder; held = RunFolder.claim(sys.argv[1], '', None); "
        "print('claimed', flush=True); time.sleep(60)"), str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "claimed"
    with pytest.raises(NinError, match=f"in use by process {holder.pid}"):
        RunFolder.claim(str(tmp_path / "run"), "", None)
    holder.kill()
    holder.wait()
    RunFolder.claim(str(tmp_path / "run"), "", None).release()  # the kernel dropped the dead process's lock


@pytest.mark.parametrize("delay", [0.0, 1.0])
def test_two_trainings_into_one_folder_leave_one_whole_run(tmp_path, delay):
    data = write_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "nin", *[a for a in train_argv(data, out) if a != "--no-progress"]]
    env = {**os.environ, "NIN_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outcomes = sorted([(p.wait(timeout=300), *p.communicate()) for p in (first, second)])
    (ok, log, bar), (refused, _, error) = outcomes
    assert (ok, refused) == (0, 2), outcomes
    assert "epoch 2/2" in log and "\r" not in bar  # not a terminal: one line per epoch, no progress bar
    assert "Traceback" not in error and ("in use by process" in error or "already holds a run" in error), error
    with open(out / "metrics.csv", newline="") as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["1", "2"]


def test_output_places_that_cannot_be_written_are_refused_before_the_data_loads(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    missing_data = tmp_path / "no-such-data"  # were the data loaded first, the error would be about it
    assert "a file is in the way" in one_line_error(train_argv(missing_data, a_file), capsys)
    assert "cannot create the run folder" in one_line_error(train_argv(missing_data, a_file / "run"), capsys)
    assert "cannot create the run folder" in one_line_error(train_argv(missing_data, "/proc/nin-run"), capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_place_is_refused_before_the_data_loads(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "cannot" in one_line_error(train_argv(tmp_path / "no-such-data", locked / "run"), capsys)
        assert "cannot write into the run folder" in one_line_error(train_argv(tmp_path / "none", locked), capsys)
    finally:
        locked.chmod(0o700)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path, capsys):
    one_line_error(train_argv(tmp_path / "no-such-data", tmp_path / "runs" / "new"), capsys)
    assert not (tmp_path / "runs" / "new").exists()
    kept = tmp_path / "mine"
    kept.mkdir()  # a folder the user made is theirs: left in place
    one_line_error(train_argv(tmp_path / "no-such-data", kept), capsys)
    assert kept.is_dir()


def test_export_and_reproduce_refuse_places_they_cannot_write_in_one_line(tmp_path, capsys):
    run = train_tiny_run(tmp_path / "tiny")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    assert "cannot write" in one_line_error(["export", run, "--out", "/proc/nin-export/model"], capsys)
    assert "cannot write" in one_line_error(["export", run, "--format", "onnx", "--out", a_file / "m"], capsys)
    data = write_folder_dataset(tmp_path / "data")
    argv = ["reproduce", "table5-gap", "--dataset", "folder", "--root", data, "--epochs", "1", "--batch-size", "4",
            "--out", a_file]
    assert "cannot create the run folder" in one_line_error(argv, capsys)


def test_a_new_run_refuses_a_folder_that_holds_the_users_files_and_writes_nothing(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}\n')
    (mine / "metrics.csv").write_text("a,b\n1,2\n")
    for out in (mine, data, data / "train"):  # O50: the user's files; O49: the image data's own root
        before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
        err = one_line_error(train_argv(data, out), capsys)
        assert "is not empty and holds no nin run" in err and "pick another --out" in err
        assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before  # no .lock either


def test_a_refused_run_leaves_an_empty_folder_empty_and_removes_the_folders_it_made(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(train_argv(tmp_path / "no-such-data", empty), capsys)
    assert list(empty.iterdir()) == []  # not even the lock file
    one_line_error(train_argv(tmp_path / "no-such-data", tmp_path / "a" / "b" / "run"), capsys)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]


def test_metrics_csv_rows_end_in_a_newline_alone_and_a_file_written_with_crlf_still_resumes(tmp_path):
    """csv's own line end is "\\r\\n": awk and cut then read "2.372\\r". Files written so still resume."""
    folder = RunFolder.claim(str(tmp_path / "run"), "run", None)
    try:
        row = dict(epoch=1, step=10, train_loss=2.372, train_acc=0.5, test_loss=2.1, test_acc=0.6, lr=0.1, seconds=1.5)
        folder.append_metrics(row)
        folder.append_metrics({**row, "epoch": 2, "step": 20})
        written = (folder.path / "metrics.csv").read_bytes()
        assert b"\r" not in written and written.count(b"\n") == 3
        (folder.path / "metrics.csv").write_bytes(written.replace(b"\n", b"\r\n"))  # as nin wrote it before
        folder.truncate_metrics(1)  # a resume from epoch 1's checkpoint
        assert (folder.path / "metrics.csv").read_bytes() == b"".join(written.splitlines(keepends=True)[:2])
    finally:
        folder.release()
