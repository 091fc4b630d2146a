"""An image folder given as one archive (``--root images.tar.gz``): ``.tar``, ``.tar.gz``/``.tgz``,
``.tar.bz2``, ``.tar.xz`` or ``.zip`` holding the folder layout (``train/CLASS/IMAGE``, ``test/CLASS/IMAGE``,
at the top or inside one top folder), read in place: nothing is extracted to disk; the images are decoded
once into the cache or a pack, as a folder's are.

Members are checked before any image is read: a path that leaves the root (``../x``, ``/etc/x``), a link
or a special file is refused, as is an archive that is truncated or is not one.
"""
from __future__ import annotations

import lzma
import os
import tarfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import NinError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
# what a damaged archive raises while it is listed or read, by format and compression
_DAMAGED = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, lzma.LZMAError,
            OSError, ValueError, NotImplementedError, RuntimeError)  # bz2's errors are OSErrors


def is_archive(root) -> bool:
    """Whether ``root`` names an archive file (by its name: a folder is never one)."""
    if root is None:
        return False
    path = Path(root).expanduser()
    return path.name.lower().endswith(ARCHIVE_SUFFIXES) and not path.is_dir()


@dataclass(frozen=True)
class Member:
    """One image inside an archive: what ``load_image`` reads in place of a file path."""
    archive: "ImageArchive"
    name: str  # the member's path inside the archive

    def read_bytes(self) -> bytes:
        return self.archive.read(self.name)

    def fingerprint(self) -> str:
        """What changes when the member's content may have: the archive's identity and the member's size."""
        return f"{self.archive.fingerprint}|{self.name}|{self.archive.size_of(self.name)}"

    def __str__(self) -> str:
        return f"{self.archive.path}:{self.name}"


class ImageArchive:
    """An archive's regular files by path below the layout's root (``train/cat/1.jpg``), checked once."""

    def __init__(self, path: Path, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint  # the archive's path, size and time: what the caches built from it key on
        self._lock = threading.Lock()  # one reader at a time: tar and zip streams hold a position
        try:
            self._handle, entries = _open(path)
        except NinError:
            raise
        except _DAMAGED as error:
            raise NinError(f"{path} is not a readable archive ({_reason(error)}): expected a .tar, .tar.gz or .zip "
                           "holding train/CLASS/IMAGE and test/CLASS/IMAGE") from None
        self._entries = _below_root(path, entries)  # relative path -> (tar member or zip name, size)

    def names(self, prefix: str) -> list[str]:
        """The relative paths of the files under ``prefix/``, sorted."""
        start = prefix.rstrip("/") + "/"
        return sorted(name for name in self._entries if name.startswith(start))

    def size_of(self, name: str) -> int:
        return self._entries[name][1]

    def read(self, name: str) -> bytes:
        key = self._entries[name][0]
        try:
            with self._lock:
                if isinstance(self._handle, zipfile.ZipFile):
                    return self._handle.read(key)
                stream = self._handle.extractfile(key)
                return stream.read() if stream is not None else b""
        except _DAMAGED as error:
            raise NinError(f"{self.path} is damaged: {name} cannot be read ({_reason(error)})") from None


def _open(path: Path):
    """The open archive and its entries: (path inside, tar member or zip name, size, kind) per member."""
    if path.name.lower().endswith(".zip"):
        handle = zipfile.ZipFile(path)
        entries = [(info.filename, info.filename, info.file_size, _zip_kind(info)) for info in handle.infolist()]
        return handle, entries
    handle = tarfile.open(path, "r:*")
    entries = [(m.name, m, m.size, "dir" if m.isdir() else "file" if m.isfile() else "link" if m.issym() or m.islnk()
                else "special") for m in handle.getmembers()]  # getmembers reads to the end: a truncation shows here
    return handle, entries


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if mode and (mode & 0o170000) not in (0, 0o100000):  # a symlink or device stored by a Unix zip tool
        return "link"
    return "file"


def _below_root(path: Path, entries) -> dict[str, tuple[object, int]]:
    """Regular files by their path below the layout's root; a member leaving the archive is refused."""
    files = {}
    for name, key, size, kind in entries:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
            raise NinError(f"{path} holds {name!r}, a path outside the archive's folder: refusing to read it")
        if kind in ("link", "special"):
            raise NinError(f"{path} holds {name!r}, a {'link' if kind == 'link' else 'special file'}: an image "
                           "archive holds plain files only")
        if kind == "file":
            files["/".join(p for p in parts if p != ".")] = (key, size)
    return _strip_top_folder(files)


def _strip_top_folder(files: dict) -> dict:
    """``cifar10/train/...`` read as ``train/...`` when one top folder holds everything."""
    tops = {name.split("/", 1)[0] for name in files}
    if len(tops) == 1 and all("/" in name for name in files) and not any(n.startswith("train/") for n in files):
        return {name.split("/", 1)[1]: entry for name, entry in files.items()}
    return files


def _reason(error: BaseException) -> str:
    if isinstance(error, EOFError):
        return "it ends early: truncated?"
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0].rstrip(":")  # tarfile lists each compression it tried on lines of their own


_OPEN: dict[tuple[str, int], ImageArchive] = {}


def open_archive(root) -> ImageArchive:
    """The archive at ``root``, listed and checked once per process (and again when the file changes)."""
    path = Path(root).expanduser()
    if not path.exists():
        raise NinError(f"archive {path} does not exist")
    try:
        stat = path.stat()
    except OSError as error:
        raise NinError(f"archive {path} cannot be read ({error.strerror or error})") from None
    fingerprint = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    key = (fingerprint, os.getpid())  # a forked process opens its own handle: a shared one shares its position
    if key not in _OPEN:
        _OPEN[key] = ImageArchive(path, fingerprint)
    return _OPEN[key]
