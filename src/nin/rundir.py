"""The run folder: where one training run writes, owned by one process for the run's life.

    RUN_DIR/config.json    the resolved config (what was used, defaults included)
    RUN_DIR/metrics.csv    one row per epoch (METRIC_FIELDS)
    RUN_DIR/checkpoint.pt  written atomically by the training loop (checkpoint.py)
    RUN_DIR/final.json     the finished run's result: the last evaluation (with --tta's views when given)
    RUN_DIR/.lock          held (flock) by the process that trains into the folder; holds its pid

The lock is the kernel's: it goes away with the process that held it, so a folder left by a killed run
is taken over by the next ``--resume`` without any cleaning up. A second process gets one line naming
the holder. Every place the run will write is checked (created, locked) before any data is loaded.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

from . import checkpoint as ckpt
from .errors import NinError
from .files import LOCK_NAME, lock_folder, metrics_json, reason

METRIC_FIELDS = ["epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]
TEST_FIELDS = ("test_loss", "test_acc")  # empty in an epoch that was not evaluated (--eval-every)
LEFTOVERS = (LOCK_NAME,)  # what a killed run may leave in a folder besides temporary files (*.tmp)


class RunFolder:
    """A run folder claimed by this process: ``RunFolder.claim(out, resume)``; released at exit."""

    def __init__(self, path: Path):
        self.path = path
        self.created: Path | None = None  # the topmost folder this process made: removed by a run that fails
        self.found: set[str] | None = None  # what a new run's existing folder held: a failed run leaves just that
        self._lock_file = None

    @classmethod
    def claim(cls, out: str, default_name: str, resume: str | None) -> "RunFolder":
        """The folder a run writes: ``resume``'s, else ``out``, else runs/DEFAULT_NAME-TIME; created,
        locked, and (for a new run) checked to hold no run yet."""
        if resume:
            path = Path(resume).expanduser()
            folder = cls(path if path.is_dir() else path.parent)
        else:
            path = Path(out).expanduser() if out else Path("runs") / f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
            folder = cls(path)
            folder._create()
        had_lock = (folder.path / LOCK_NAME).exists()
        if not resume and not had_lock:  # not a run's folder: the user's is refused before anything is written in it
            folder.found = set(os.listdir(folder.path))
            folder._check_new()
        folder._lock()
        if not resume:  # listed once locked: another run's files are then there for good, or gone
            folder.found = set(os.listdir(folder.path)) - ({LOCK_NAME} if not had_lock else set())
            folder._check_new()
        return folder

    def _check_new(self) -> None:
        """A new run goes into an empty folder: one holding a run is continued with --resume, and anything
        else is the user's (their files, a pack, a data set), which the run's config.json, metrics.csv and
        checkpoint would overwrite or mix with."""
        problem = None
        if self.checkpoint.exists():
            problem = f"{self.path} already holds a run: continue it with --resume {self.path}, or pick another --out"
        elif held := sorted(name for name in self.found if name not in LEFTOVERS and not name.endswith(".tmp")):
            problem = (f"--out {self.path} is not empty and holds no nin run ({', '.join(held[:3])}"
                       f"{', ...' if len(held) > 3 else ''}): a run writes into a new or empty folder; "
                       "pick another --out")
        if problem:
            self.release()
            raise NinError(problem)

    def _create(self) -> None:
        missing = [self.path, *self.path.parents]
        missing = [folder for folder in missing if not folder.exists()]
        self.created = missing[-1] if missing else None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise NinError(f"--out {self.path}: a file is in the way (a run folder is a directory)") from None
        except OSError as error:
            self._remove_created()  # the parents made before the failure
            raise NinError(f"cannot create the run folder {self.path}: {reason(error)}") from None

    def _lock(self) -> None:
        self._lock_file = lock_folder(self.path, f"the run folder {self.path}", "nin train", lambda holder: (
            f"{self.path} is in use by {holder}: wait for it to finish, or pick another --out"))

    def release(self) -> None:
        """Unlock; a run that never wrote a checkpoint leaves the place as it found it."""
        if self._lock_file is None:
            return
        if not self.checkpoint.exists():
            self._remove_what_was_written()
        self._lock_file.close()  # closing the file drops the flock
        self._lock_file = None

    def _remove_what_was_written(self) -> None:
        """A run that wrote no checkpoint leaves nothing: the folders it made are removed; in a folder that
        was there, what it wrote (the lock file, config.json) is, while it still holds the lock."""
        if self.created is not None:
            self._remove_created()
        elif self.found is not None:
            for name in set(os.listdir(self.path)) - self.found:
                target = self.path / name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)

    def _remove_created(self) -> None:
        if self.created is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        above = self.path.parents[:self.path.parents.index(self.created) + 1] if self.created != self.path else ()
        for made in above:
            try:
                made.rmdir()  # only when empty: another process may have put something there meanwhile
            except OSError:
                break

    @property
    def checkpoint(self) -> Path:
        return self.path / ckpt.CHECKPOINT_NAME

    def write_config(self, config) -> None:
        text = json.dumps(dataclasses.asdict(config), indent=2) + "\n"
        self._write(self.path / "config.json", text)

    def truncate_metrics(self, epochs: int) -> None:
        """Keep the rows of the checkpoint's epochs only: a row written just before a crash (its epoch is
        trained again) or torn by one would otherwise appear twice or break the file. The kept rows replace
        the file in one step, so that a kill during the rewrite loses none of them."""
        path = self.path / "metrics.csv"
        if path.exists():
            with open(path, newline="") as stream:
                rows = [row for row in csv.DictReader(stream) if _complete_row(row) and int(row["epoch"]) <= epochs]
            kept = path.with_name("metrics.csv.tmp")
            try:
                with open(kept, "w", newline="") as stream:
                    writer = csv.DictWriter(stream, fieldnames=METRIC_FIELDS, lineterminator="\n")
                    writer.writeheader()
                    writer.writerows(rows)
                os.replace(kept, path)
            except OSError as error:
                kept.unlink(missing_ok=True)
                raise NinError(f"could not write {kept} ({reason(error)}); the last checkpoint and {path} are "
                               f"intact: free some space, then continue with --resume {self.path}") from None

    def append_metrics(self, row: dict) -> None:
        path = self.path / "metrics.csv"
        new = not path.exists()
        try:
            with open(path, "a", newline="") as stream:  # "\n" ends a row: csv's "\r\n" shows in awk and cut
                writer = csv.DictWriter(stream, fieldnames=METRIC_FIELDS, lineterminator="\n")
                if new:
                    writer.writeheader()
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        except OSError as error:
            raise NinError(f"could not write {path} ({reason(error)}); the last checkpoint is intact: "
                           f"free some space, then continue with --resume {self.path}") from None

    def write_final(self, metrics: dict, split: str) -> None:
        """final.json, in one step (a reader never sees half of it): the split and the final metrics."""
        path, partial = self.path / "final.json", self.path / "final.json.tmp"
        try:
            partial.write_text(metrics_json({"split": split, **metrics}, indent=2) + "\n")
            os.replace(partial, path)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise NinError(f"could not write {path} ({reason(error)}); the trained checkpoint is intact: "
                           f"nin eval {self.path} gives its accuracy") from None

    def _write(self, path: Path, text: str) -> None:
        try:
            path.write_text(text)
        except OSError as error:
            raise NinError(f"could not write {path} ({reason(error)})") from None


def read_metrics(run: str | os.PathLike) -> tuple[Path, list[dict]]:
    """``metrics.csv`` of a run folder (or the CSV file itself) -> (its path, rows of floats)."""
    path = Path(run).expanduser()
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.is_file():
        raise NinError(f"no metrics.csv at {path}: expected a run folder written by `nin train`")
    try:
        with open(path, newline="") as stream:
            reader = csv.DictReader(stream)
            header = reader.fieldnames
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise NinError(f"{path} is not a readable metrics file ({error})") from None
    if header is None:
        raise NinError(f"{path} is empty: the run has not finished an epoch yet")
    missing = [c for c in METRIC_FIELDS if c not in header]
    if missing:
        raise NinError(f"{path} lacks the columns {', '.join(missing)}: expected {', '.join(METRIC_FIELDS)}")
    if not rows:
        raise NinError(f"{path} has no rows: the run has not finished an epoch yet")
    parsed = []
    for number, row in enumerate(rows, start=2):
        try:
            parsed.append({c: float(row[c]) if row[c] not in ("", None) else math.nan for c in METRIC_FIELDS})
        except ValueError:
            raise NinError(f"{path}, line {number}: a value is not a number: {row}") from None
    return path, parsed


def _complete_row(row: dict) -> bool:
    """Every training field filled; the test fields both filled (an evaluated epoch) or both empty (one that
    --eval-every skipped); nothing past the last field (a torn row the next one was appended to)."""
    tested = [row.get(name) not in (None, "") for name in TEST_FIELDS]
    trained = all(row.get(name) not in (None, "") for name in METRIC_FIELDS if name not in TEST_FIELDS)
    try:
        return trained and None not in row and len(set(tested)) == 1 and int(row["epoch"]) > 0
    except ValueError:
        return False
