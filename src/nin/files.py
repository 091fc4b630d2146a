"""File utilities every layer may use (it imports nothing of the package but its errors): writing a file
atomically, holding a folder's lock, and metrics as JSON."""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import NinError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second process is not detected there
    fcntl = None

LOCK_NAME = ".lock"


def atomic_write(data: bytes | memoryview | Callable[[BinaryIO], None], path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``:
    a crash at any moment leaves either the old file or the new one, never a torn one. ``data`` is the
    bytes, or a function that writes them to the open file (for what should not be copied in memory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's 0600 would make checkpoints unlike the other files
        with os.fdopen(handle, "wb") as stream:
            data(stream) if callable(data) else stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def lock_folder(folder: Path, what: str, command: str, busy: Callable[[str], str]):
    """FOLDER/.lock held (flock) by this process until the returned file is closed (the kernel drops it when
    the process ends); it names the holder. ``what`` names the folder in errors; ``busy(holder)`` is the
    one-line error when another process holds it."""
    try:
        stream = open(folder / LOCK_NAME, "a+")
    except OSError as error:
        raise NinError(f"cannot write into {what}: {reason(error)}") from None
    if fcntl is not None:
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            stream.seek(0)
            holder = stream.read().strip() or "another process"
            stream.close()
            raise NinError(busy(holder)) from None
    stream.seek(0)
    stream.truncate()
    stream.write(f"process {os.getpid()} ({command}, started {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    stream.flush()
    return stream


def reason(error: OSError) -> str:
    """An OS error in a few words ("No space left on device")."""
    return error.strerror or str(error)


def metrics_json(metrics: dict, indent: int | None = None) -> str:
    """The metrics (but the confusion matrix) as JSON; a number that is not one (the accuracy of a class
    without test images) is null, as JSON has no NaN."""
    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite({k: v for k, v in metrics.items() if k != "confusion"}), indent=indent,
                      allow_nan=False)
