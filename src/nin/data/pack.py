"""Packed data sets, for data larger than memory: a data set decoded once (``nin data pack``) into raw
uint8 files that training reads batch by batch through a memory map (FFCV's idea, without its
dependencies): the page cache holds what fits, and nothing is held twice.

A pack is a folder: ``pack.json`` (format, the data set it holds, its classes, image shape, the splits
it is made for and, per packed split, the image count, the images' and the labels' SHA-256 and the
identity of the files it was packed from), and per split ``SPLIT.images`` (N x C x H x W bytes,
row-major) and ``SPLIT.labels`` (N little-endian int64). Every command reads it in place of the data
set's own files with the same ``--dataset`` and ``--root PACK``: the validation rule, flips and classes
stay the data set's.

Writing is resumable and atomic: a split goes to ``SPLIT.*.partial`` with ``SPLIT.progress.json``
rewritten (atomically, after the data is flushed) every chunk; a split is renamed into place when
complete, and ``pack.json`` is replaced after each split. A run stopped at any moment resumes, from where
it stopped when the split's files are those it started from, else from the start of the split. What can
be refused from the files alone (no root, one class, splits with other classes, a missing data set) is
refused before anything is written, and a pack that fails before its first chunk leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import Interrupted, NinError
from ..files import atomic_write, lock_folder
from ..hardware import readable_bytes
from .datasets import FOLDER_SIZE, Split, cache_dir, dataset_info, load_dataset, reshape, source_identity
from .images import load_image
from .datasets import source_files
from .packed import FORMAT, HEADER, VERSION, is_pack, load_packed, read_header, split_files

CHUNK = 1024  # images decoded and written between two progress records


# --- writing -----------------------------------------------------------------------------------------

@dataclass
class Source:
    """A split to pack: its size, classes, image shape and a reader of images [start, stop)."""
    count: int
    classes: list[str]
    shape: tuple[int, int, int]
    read: Callable[[int, int], tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]]  # images, labels, bad


def write_pack(dataset: str, root, out, *, image_size: int | None = None, channels: int | None = None,
               skip_bad: bool = False, log: Callable[[str], None] = print) -> Path:
    """Pack every split of ``dataset`` into the folder ``out``; a pack stopped part-way resumes, once its
    files are found to be those it was started from. What the data set's files allow to refuse is refused
    before anything is written or decoded."""
    settings = _settings(dataset, root, image_size, channels)
    identities = _check_source(dataset, root)
    channels, size, _ = settings["shape"]
    sources = {split: partial(_source, dataset, root, split, size, channels) for split in identities}
    try:
        return write_sources(out, settings, sources, identities=identities, skip_bad=skip_bad, log=log)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: the same command resumes the pack in {out}") from None


def verify_pack(folder, log: Callable[[str], None] = print) -> None:
    """Check that the pack in ``folder`` holds every split it was made for, and each split against its
    header (files' sizes, labels' range, and the images' and labels' SHA-256, read once end to end); a
    difference is refused in one line."""
    folder = Path(folder).expanduser()
    header = read_header(folder)
    _require_complete(folder, header)
    for split, entry in header["splits"].items():
        load_packed(folder, header["dataset"], split, None, None)  # sizes and labels' range
        for path, key in zip(split_files(folder, split), ("sha256", "labels_sha256")):
            if key in entry and _sha256(path) != entry[key]:
                raise NinError(f"{path} does not match its SHA-256 in {folder / HEADER}: the pack is damaged; "
                               "pack it again")
        log(f"{split}: {entry['count']:,} images, sizes, labels and SHA-256 as recorded" if "labels_sha256" in entry
            else f"{split}: {entry['count']:,} images, sizes and the images' SHA-256 as recorded (its labels were "
                 "not hashed by the nin that packed it: pack again to have them checked)")


def _require_complete(folder: Path, header: dict) -> None:
    """A pack stopped part-way (an unreadable image, SIGINT, a full disk) or missing a split is refused: its
    header is true of what it holds, but it holds less than it was made for."""
    planned = header.get("planned_splits") or list(dataset_info(header["dataset"]).splits)
    missing = [split for split in planned if split not in header["splits"]]
    if not missing:
        return
    split, done = missing[0], ", ".join(header["splits"]) or "none"
    stopped = (folder / f"{split}.progress.json").exists() or split_files(folder, split, ".partial")[0].exists()
    raise NinError(f"{folder} is not a complete pack: its {split} split "
                   f"{'was stopped part-way' if stopped else 'is missing'} ({done} packed); finish it with "
                   f"{pack_command(header, folder)} (with --skip-bad-images if an unreadable image stopped it)")


def pack_command(header: dict, folder: Path) -> str:
    """The ``nin data pack`` command that made (and resumes) the pack in ``folder``."""
    words = ["nin", "data", "pack", header["dataset"], *(["--root", header["root"]] if header.get("root") else [])]
    return shlex.join([*words, "--out", str(folder), *_shape_flags(header)])


def train_command(folder) -> str:
    """A ``nin train`` command that trains from the pack in ``folder`` (at its images' shape)."""
    header = read_header(Path(folder).expanduser())
    return shlex.join(["nin", "train", "--dataset", header["dataset"], "--root", str(folder), *_shape_flags(header)])


def _shape_flags(header: dict) -> list[str]:
    """The flags that ask for a pack's image shape: a run takes a data set's own size, or (an image folder,
    which has none) its model's, and a pack holds one size only."""
    info = dataset_info(header["dataset"])
    channels, size, _ = header["shape"]
    return [*(["--image-size", str(size)] if size != info.size else []),
            *(["--channels", str(channels)] if channels != info.channels else [])]


def _check_source(dataset: str, root) -> dict[str, str]:
    """Each split's identity (what changes when one of its files does), once every refusal that the files
    allow is made: before anything is written or decoded, so that a refused pack leaves nothing behind."""
    if is_pack(root):
        raise NinError(f"{root} is a pack (nin data pack wrote it), not the data set's files: train from it with "
                       f"--root {root}, or pack from the images' own folder")
    info = dataset_info(dataset)
    identities, classes = {}, {}
    for split in info.splits:
        if info.samples is not None:  # an image folder: its class lists are known before any image is decoded
            classes[split], samples = info.samples(root, split)
        else:  # files of the data set's own format, which name its classes inside
            samples = [(path, 0) for path in source_files(dataset, root, split) or []]
        identities[split] = _fingerprint(samples)
    first = info.splits[0]
    for split, names in classes.items():
        if names != classes[first]:
            odd = sorted(set(names) ^ set(classes[first]))[0]
            raise NinError(f"the {split} split's classes differ from the {first} split's ({odd} is in one and "
                           "not the other): a pack's splits share their classes")
    return identities


def auto_pack(dataset: str, root, split: str, image_size: int | None, channels: int | None, log) -> Path:
    """A split too large for memory, packed once into the cache (``NIN_CACHE_DIR``/packs), keyed by the data
    set, its root, the image shape and (for a folder) the split's files; refused in one line when the disk is
    short. A pack of the same split made from files that have changed since is removed for the new one."""
    info = dataset_info(dataset)
    settings = _settings(dataset, root, image_size, channels)
    channels, size, _ = settings["shape"]
    source = f"{dataset}-{split}-{_key(settings)}"  # one split a pack, of one source at one shape
    samples = info.samples(root, split)[1] if info.samples is not None else None
    if samples is not None:  # a changed folder gets a new pack
        settings["files"] = _fingerprint(samples)
    folder = cache_dir() / "packs" / f"{source}-{_key(settings)}"
    if not (folder / f"{split}.images").is_file():
        for stale in folder.parent.glob(f"{source}-*"):  # the same split's files as they were: never read again
            if stale != folder:
                shutil.rmtree(stale, ignore_errors=True)
        count = len(samples) if samples is not None else len(load_dataset(dataset, root, split).labels)
        needed, free = count * channels * size * size, _free_disk(folder.parent)
        if needed > 0.95 * free:
            raise NinError(f"{count:,} images of {channels}x{size}x{size} fit neither in memory nor on the cache's "
                           f"disk ({readable_bytes(needed)}; {readable_bytes(free)} free under {cache_dir()}): "
                           "lower --image-size, or pack elsewhere (nin data pack DATASET --out PACK, or NIN_CACHE_DIR)")
        log(f"{count:,} images of {channels}x{size}x{size} ({readable_bytes(needed)}) do not fit in memory: "
            f"packing the {split} split once into {folder} and reading it from there (nin data pack does this "
            "by hand)")
    return write_sources(folder, settings, {split: partial(_source, dataset, root, split, size, channels)},
                         log=lambda _: None)


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _settings(dataset: str, root, image_size: int | None, channels: int | None) -> dict:
    """The header fields a pack is made with; a stopped pack resumes only with the same ones."""
    info = dataset_info(dataset)
    size = image_size or info.size or FOLDER_SIZE
    return {"format": FORMAT, "version": VERSION, "dataset": dataset,
            "root": str(Path(root).expanduser().resolve()) if root is not None else None,
            "shape": [channels or info.channels, size, size]}


def _fingerprint(samples: list[tuple[Path, int]]) -> str:
    digest = hashlib.sha256()
    for path, label in samples:
        digest.update(f"{source_identity(path)}|{label}".encode())
    return digest.hexdigest()


def _free_disk(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(folder).free


def write_sources(out, settings: dict, sources: dict[str, Callable[[], Source]], *,
                  identities: dict[str, str] | None = None, skip_bad: bool = False,
                  log: Callable[[str], None] = print) -> Path:
    """Pack ``sources`` (split name -> a maker of its Source) into the folder ``out`` with the header
    ``settings`` (format, version, dataset, root, shape); the splits already packed are kept when their
    ``identities`` (split name -> what changes with its files) are as recorded. A pack that fails before
    its first images are written leaves nothing behind."""
    folder = Path(out).expanduser()
    _refuse_other_files(folder)  # before the lock file is made: a refused pack leaves nothing in the user's folder
    made = next((path for path in [*reversed(folder.parents), folder] if not path.exists()), None)
    before = set(folder.iterdir()) if made is None and folder.is_dir() else set()
    lock = _claim(folder)
    try:
        header = _start_header(folder, settings, list(sources))
        for split, make_source in sources.items():
            identity = (identities or {}).get(split)
            if split in header["splits"]:
                _require_unchanged(folder, split, header["splits"][split], identity)
                log(f"{split}: already packed ({header['splits'][split]['count']:,} images)")
                continue
            source = make_source()
            header["classes"] = header.get("classes") or source.classes
            if source.classes != header["classes"]:
                raise NinError(f"the {split} split's classes {source.classes} differ from {header['classes']}")
            header["splits"][split] = _pack_split(folder, split, source, settings, identity, skip_bad, log)
            atomic_write(json.dumps(header, indent=2).encode() + b"\n", folder / HEADER)
    except BaseException as error:
        _remove_if_nothing_packed(folder, before, made)
        if isinstance(error, OSError):
            raise NinError(f"could not write the pack {folder} ({error.strerror or error}): free space or fix it, "
                           "then run the same command again (it resumes)") from None
        raise
    finally:
        lock.close()
    return folder


def _refuse_other_files(folder: Path) -> None:
    try:
        if folder.is_dir() and not (folder / HEADER).is_file() and any(not _packs_own(p) for p in folder.iterdir()):
            raise NinError(f"{folder} holds other files: pack into a new or empty folder")
    except OSError as error:
        raise NinError(f"cannot read the pack folder {folder} ({error.strerror or error})") from None


def _packs_own(path: Path) -> bool:
    """A file a pack writes before its header (a stopped pack's own)."""
    return path.name == ".lock" or path.name.endswith((".partial", ".progress.json"))


def _remove_if_nothing_packed(folder: Path, before: set[Path], made: Path | None) -> None:
    """The files this pack made (and the folders, from ``made`` down), removed when no image was written yet:
    a refused or failed pack leaves no empty pack behind. A pack holding images is kept for the same command
    to resume."""
    try:
        if any(folder.glob("*.progress.json")) or (is_pack(folder) and read_header(folder)["splits"]):
            return
        for path in set(folder.iterdir()) - before:
            path.unlink()
        for created in [folder, *folder.parents] if made is not None else []:
            created.rmdir()
            if created == made:
                break
    except (OSError, NinError):
        pass  # what cannot be removed stays; the error that stopped the pack is the one to report


def _require_unchanged(folder: Path, split: str, entry: dict, identity: str | None) -> None:
    """A split packed from files that have changed since (added, removed, edited, moved to another class)."""
    if identity is not None and entry.get("files") not in (None, identity):
        raise NinError(f"the {split} images have changed since {folder} packed them (added, removed, edited or "
                       "moved): pack them into a new --out")


def _claim(folder: Path):
    """The folder, created and locked against a second ``nin data pack`` writing into it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NinError(f"cannot write the pack folder {folder} ({error.strerror or error})") from None
    return lock_folder(folder, f"the pack folder {folder}", "nin data pack",
                       lambda holder: f"{folder} is being written by another nin data pack ({holder}): wait for "
                                      "it to finish")


def _start_header(folder: Path, settings: dict, planned: list[str]) -> dict:
    """The pack's header so far, or a new one; a folder holding another pack is refused. ``planned``: the
    splits the pack is made for (nin data verify refuses a pack that lacks one)."""
    if not (folder / HEADER).is_file():
        _refuse_other_files(folder)  # again, now that the folder is locked
        header = {**settings, "planned_splits": planned, "classes": None, "splits": {}}
        atomic_write(json.dumps(header, indent=2).encode() + b"\n", folder / HEADER)
        return header
    header = read_header(folder)
    differing = [key for key, value in settings.items() if header.get(key) != value]
    if differing:
        raise NinError(f"{folder} holds a pack with another {differing[0]} ({header.get(differing[0])}): "
                       "pack into another --out")
    return header


def _source(dataset: str, root, split: str, size: int, channels: int) -> Source:
    """One file per image (a folder): decoded chunk by chunk on every core; other data sets are read
    whole, as training reads them (they fit in memory), and sliced."""
    info = dataset_info(dataset)
    if info.samples is None:  # held at its own size, resized a chunk at a time
        whole = load_dataset(dataset, root, split)

        def chunk(start: int, stop: int):
            part = reshape(Split(whole.images[start:stop], whole.labels[start:stop], whole.classes), size, channels)
            return part.images, part.labels, []
        return Source(len(whole.labels), whole.classes, (channels, size, size), chunk)
    classes, samples = info.samples(root, split)
    decoder = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)  # PIL decodes without the GIL

    def decode(sample):
        try:
            return load_image(sample[0], size, channels), None
        except NinError as error:
            return None, (str(sample[0]), str(error))

    def read(start: int, stop: int):
        decoded = list(decoder.map(decode, samples[start:stop]))
        kept = [i for i, (image, _) in enumerate(decoded) if image is not None]
        images = torch.stack([decoded[i][0] for i in kept]) if kept else torch.empty(0, channels, size, size,
                                                                                      dtype=torch.uint8)
        labels = torch.tensor([samples[start + i][1] for i in kept], dtype=torch.int64)
        return images, labels, [bad for _, bad in decoded if bad is not None]
    return Source(len(samples), classes, (channels, size, size), read)


def _pack_split(folder: Path, split: str, source: Source, settings: dict, identity: str | None, skip_bad: bool,
                log) -> dict:
    """Write one split (resuming a partial one written with the same settings from the same files); its
    header entry."""
    from tqdm import tqdm

    images_file, labels_file = split_files(folder, split, ".partial")
    progress_file = folder / f"{split}.progress.json"
    progress = _progress(progress_file, settings, source.count, identity, split, log)
    row_bytes = int(np.prod(source.shape))
    with open(images_file, "r+b" if progress["next"] else "wb") as images_out, \
            open(labels_file, "r+b" if progress["next"] else "wb") as labels_out:
        images_out.truncate(progress["rows"] * row_bytes)  # drop what was written after the last record
        labels_out.truncate(progress["rows"] * 8)
        images_out.seek(0, os.SEEK_END)
        labels_out.seek(0, os.SEEK_END)
        with tqdm(total=source.count, initial=progress["next"], desc=f"packing {split}", unit="img",
                  disable=None) as bar:
            for start in range(progress["next"], source.count, CHUNK):
                stop = min(start + CHUNK, source.count)
                images, labels, bad = source.read(start, stop)
                if bad and not skip_bad:
                    raise NinError(f"{bad[0][1]} (--skip-bad-images packs the others and lists the skipped)")
                images_out.write(images.contiguous().numpy().tobytes())
                labels_out.write(labels.numpy().astype("<i8").tobytes())
                for stream in (images_out, labels_out):
                    stream.flush()
                    os.fsync(stream.fileno())
                progress.update(next=stop, rows=progress["rows"] + len(labels), skipped=progress["skipped"] + bad)
                atomic_write(json.dumps(progress).encode(), progress_file)
                bar.update(stop - start)
    if progress["rows"] == 0:
        raise NinError(f"no image of the {split} split could be read: nothing to pack")
    # hashed once complete, by reading the file again: a hash kept while writing could not survive a resume
    entry = {"count": progress["rows"], "sha256": _sha256(images_file), "labels_sha256": _sha256(labels_file),
             "skipped": len(progress["skipped"]), **({"files": identity} if identity is not None else {})}
    _finish(folder, split, progress)
    log(f"{split}: {entry['count']:,} images of {'x'.join(map(str, source.shape))}"
        + (f"; {entry['skipped']} unreadable skipped (listed in {folder / f'{split}.skipped.txt'})"
           if entry["skipped"] else ""))
    return entry


def _progress(path: Path, settings: dict, count: int, identity: str | None, split: str, log) -> dict:
    """Where a stopped pack of this split left off, or the start: when the split's files have changed since
    (an image moved to another class leaves the count as it was), the rows written are not theirs."""
    fresh = {"settings": settings, "count": count, "files": identity, "next": 0, "rows": 0, "skipped": []}
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return fresh
    if isinstance(stored, dict) and [stored.get(key) for key in ("settings", "count", "files")] == \
            [settings, count, identity]:
        return stored
    log(f"{split}: the images have changed since the pack stopped: packing the {split} split from the start")
    return fresh


def _finish(folder: Path, split: str, progress: dict) -> None:
    if progress["skipped"]:
        lines = "".join(f"{path}\t{reason}\n" for path, reason in progress["skipped"])
        atomic_write(lines.encode(), folder / f"{split}.skipped.txt")
    for written, final in zip(split_files(folder, split, ".partial"), split_files(folder, split)):
        os.replace(written, final)
    (folder / f"{split}.progress.json").unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
