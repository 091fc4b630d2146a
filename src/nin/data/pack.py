"""Packed data sets, for data larger than memory: a data set decoded once (``nin data pack``) into raw
uint8 files that training reads batch by batch through a memory map (FFCV's idea, without its
dependencies): the page cache holds what fits, and nothing is held twice.

A pack is a folder: ``pack.json`` (format, the data set it holds, its classes, image shape and, per
split, the image count and the images' SHA-256), and per split ``SPLIT.images`` (N x C x H x W bytes,
row-major) and ``SPLIT.labels`` (N little-endian int64). Every command reads it in place of the data
set's own files with the same ``--dataset`` and ``--root PACK``: the validation rule, flips and classes
stay the data set's.

Writing is resumable and atomic: a split goes to ``SPLIT.*.partial`` with ``SPLIT.progress.json``
rewritten (atomically, after the data is flushed) every chunk; a split is renamed into place when
complete, and ``pack.json`` is replaced after each split. A run stopped at any moment resumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checkpoint import atomic_write
from ..errors import NinError
from ..hardware import readable_bytes
from ..rundir import lock_folder
from .datasets import FOLDER_SIZE, Split, cache_dir, dataset_info, load_dataset, reshape
from .images import load_image
from .packed import FORMAT, HEADER, VERSION, load_packed, read_header, split_files

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
    """Pack every split of ``dataset`` into the folder ``out``; a pack stopped part-way resumes."""
    settings = _settings(dataset, root, image_size, channels)
    channels, size, _ = settings["shape"]
    sources = {split: partial(_source, dataset, root, split, size, channels) for split in dataset_info(dataset).splits}
    return write_sources(out, settings, sources, skip_bad=skip_bad, log=log)


def verify_pack(folder, log: Callable[[str], None] = print) -> None:
    """Check every split of the pack in ``folder`` against its header (files' sizes, labels, and the images'
    SHA-256, read once end to end); a difference is refused in one line."""
    folder = Path(folder).expanduser()
    header = read_header(folder)
    for split, entry in header["splits"].items():
        load_packed(folder, header["dataset"], split, None, None)  # sizes and labels
        images_file = split_files(folder, split)[0]
        if _sha256(images_file) != entry["sha256"]:
            raise NinError(f"{images_file} does not match its SHA-256 in {folder / HEADER}: the pack is damaged; "
                           "pack it again")
        log(f"{split}: {entry['count']:,} images, sizes, labels and SHA-256 as recorded")


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
        stat = path.stat()
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _free_disk(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(folder).free


def write_sources(out, settings: dict, sources: dict[str, Callable[[], Source]], *, skip_bad: bool = False,
                  log: Callable[[str], None] = print) -> Path:
    """Pack ``sources`` (split name -> a maker of its Source) into the folder ``out`` with the header
    ``settings`` (format, version, dataset, root, shape); the splits already packed are kept."""
    folder = Path(out).expanduser()
    lock = _claim(folder)
    try:
        header = _start_header(folder, settings)
        for split, make_source in sources.items():
            if split in header["splits"]:
                log(f"{split}: already packed ({header['splits'][split]['count']:,} images)")
                continue
            source = make_source()
            header["classes"] = header.get("classes") or source.classes
            if source.classes != header["classes"]:
                raise NinError(f"the {split} split's classes {source.classes} differ from {header['classes']}")
            header["splits"][split] = _pack_split(folder, split, source, settings, skip_bad, log)
            atomic_write(json.dumps(header, indent=2).encode() + b"\n", folder / HEADER)
    except OSError as error:
        raise NinError(f"could not write the pack {folder} ({error.strerror or error}): free space or fix it, "
                       "then run the same command again (it resumes)") from None
    finally:
        lock.close()
    return folder


def _claim(folder: Path):
    """The folder, created and locked against a second ``nin data pack`` writing into it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NinError(f"cannot write the pack folder {folder} ({error.strerror or error})") from None
    return lock_folder(folder, f"the pack folder {folder}", "nin data pack",
                       lambda holder: f"{folder} is being written by another nin data pack ({holder}): wait for "
                                      "it to finish")


def _start_header(folder: Path, settings: dict) -> dict:
    """The pack's header so far, or a new one; a folder holding another pack is refused."""
    if not (folder / HEADER).is_file():
        if any(p.name != ".lock" and not p.name.endswith((".partial", ".progress.json")) for p in folder.iterdir()):
            raise NinError(f"{folder} holds other files: pack into a new or empty folder")
        header = {**settings, "classes": None, "splits": {}}
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


def _pack_split(folder: Path, split: str, source: Source, settings: dict, skip_bad: bool, log) -> dict:
    """Write one split (resuming a partial one written with the same settings); its header entry."""
    from tqdm import tqdm

    images_file, labels_file = split_files(folder, split, ".partial")
    progress_file = folder / f"{split}.progress.json"
    progress = _progress(progress_file, settings, source.count)
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
    entry = {"count": progress["rows"], "sha256": _sha256(images_file), "skipped": len(progress["skipped"])}
    _finish(folder, split, progress)
    log(f"{split}: {entry['count']:,} images of {'x'.join(map(str, source.shape))}"
        + (f"; {entry['skipped']} unreadable skipped (listed in {folder / f'{split}.skipped.txt'})"
           if entry["skipped"] else ""))
    return entry


def _progress(path: Path, settings: dict, count: int) -> dict:
    """Where a stopped pack of this split left off, or the start."""
    fresh = {"settings": settings, "count": count, "next": 0, "rows": 0, "skipped": []}
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return fresh
    return stored if stored.get("settings") == settings and stored.get("count") == count else fresh


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
