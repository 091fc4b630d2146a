"""Tests for nin.data: every data set is read from tiny files written in its real on-disk format."""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from nin.data import DeviceLoader, Normalize, load_dataset, load_image
from nin.data import readers
from nin.data.preprocess import FIT_CHUNK_BYTES, rows_per_chunk
from nin.errors import NinError

from formats import (CIFAR10_NAMES, CIFAR100_NAMES, bump_mtime, cifar_arrays, palette_image, write_cifar10,
                     write_cifar100, write_idx, write_image, write_mnist, write_pickle, write_svhn)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own cache folder, so no test reads or writes ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("NIN_CACHE_DIR", str(folder))
    return folder


# --- CIFAR ------------------------------------------------------------------------------------------

def test_cifar10_train_concatenates_the_five_batches(tmp_path):
    batches = write_cifar10(tmp_path, n=3)
    split = load_dataset("cifar10", tmp_path, "train")
    assert split.images.shape == (15, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.labels.dtype == torch.int64
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(split.images, torch.from_numpy(expected.reshape(-1, 3, 32, 32)))
    assert split.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert split.classes == CIFAR10_NAMES


def test_cifar10_pixel_layout_is_channel_row_column(tmp_path):
    data = write_cifar10(tmp_path, n=2)["test_batch"][0]
    images = load_dataset("cifar10", tmp_path, "test").images
    assert images.shape == (2, 3, 32, 32)
    for c, y, x in [(0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 17, 3)]:
        assert images[0, c, y, x] == data[0, c * 1024 + y * 32 + x]


def test_cifar100_reads_fine_labels_and_names(tmp_path):
    splits = write_cifar100(tmp_path, n=4)
    for name in ("train", "test"):
        split = load_dataset("cifar100", tmp_path, name)
        assert split.images.shape == (4, 3, 32, 32)
        assert torch.equal(split.images, torch.from_numpy(splits[name][0].reshape(-1, 3, 32, 32)))
        assert split.labels.tolist() == splits[name][1]
        assert split.classes == CIFAR100_NAMES


def test_cifar_pickle_written_by_python3_with_protocol_2_loads(tmp_path):
    """``pickle.dump(..., protocol=2)`` from Python 3 stores bytes as ``_codecs.encode(str, 'latin1')``."""
    write_cifar10(tmp_path, n=2)
    data, labels = cifar_arrays(2, 10, seed=9)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    (path.parent / "batches.meta").write_bytes(pickle.dumps({b"label_names": CIFAR10_NAMES}, protocol=2))
    split = load_dataset("cifar10", tmp_path, "test", cache=False)
    assert torch.equal(split.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert split.labels.tolist() == labels and split.classes == CIFAR10_NAMES


def test_truncated_cifar_pickle_raises(tmp_path):
    write_cifar10(tmp_path, n=2)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    content = path.read_bytes()
    for length in (0, 1, 40, len(content) // 2, len(content) - 1):
        path.write_bytes(content[:length])
        with pytest.raises(NinError, match="data_batch_2.*download again"):
            load_dataset("cifar10", tmp_path, "train", cache=False)


def test_cifar_pickle_with_damaged_length_field_raises(tmp_path):
    """A flipped byte can turn an opcode into BINBYTES8 with an absurd length (an OverflowError)."""
    write_cifar10(tmp_path, n=2)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"\x80\x02}q\x01(U\x04data\x8e" + b"\xff" * 8 + b"u.")
    with pytest.raises(NinError, match="test_batch"):
        load_dataset("cifar10", tmp_path, "test", cache=False)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo hacked > '{self.marker}'",)


def test_cifar_pickle_with_a_malicious_global_is_refused_and_not_run(tmp_path):
    write_cifar10(tmp_path, n=2)
    marker = tmp_path / "hacked"
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=2))
    assert b"system" in path.read_bytes()
    with pytest.raises(NinError, match="refusing"):
        load_dataset("cifar10", tmp_path, "test", cache=False)
    assert not marker.exists()


def test_cifar_batch_without_data_or_of_the_wrong_shape_raises(tmp_path):
    write_cifar10(tmp_path, n=2)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_pickle(path, {b"labels": [0, 1]})
    with pytest.raises(NinError, match="no 'data'"):
        load_dataset("cifar10", tmp_path, "test", cache=False)
    write_pickle(path, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(NinError, match="3072"):
        load_dataset("cifar10", tmp_path, "test", cache=False)
    write_pickle(path, [1, 2, 3])
    with pytest.raises(NinError, match="expected a dict"):
        load_dataset("cifar10", tmp_path, "test", cache=False)


def test_cifar_label_out_of_range_raises(tmp_path):
    write_cifar10(tmp_path, n=2)
    data, _ = cifar_arrays(2, 10, seed=0)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": data, b"labels": [3, 10]})
    with pytest.raises(NinError, match="labels must lie in 0..9"):
        load_dataset("cifar10", tmp_path, "test", cache=False)


# --- SVHN -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("y_dtype", [np.float64, np.uint8])
def test_svhn_transposes_and_maps_label_10_to_0(tmp_path, y_dtype):
    X, y = write_svhn(tmp_path, "train", n=4, y_dtype=y_dtype)
    split = load_dataset("svhn", tmp_path, "train")
    assert split.images.shape == (4, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.labels.dtype == torch.int64
    assert y[0] == 10 and split.labels.tolist() == [0, 1, 2, 3]
    for n, c, row, col in [(0, 0, 0, 0), (1, 2, 3, 4), (3, 1, 31, 0), (2, 0, 10, 29)]:
        assert split.images[n, c, row, col] == X[row, col, c, n]
    assert split.classes == [str(d) for d in range(10)]


def test_svhn_extra_split(tmp_path):
    write_svhn(tmp_path, "extra", n=3)
    assert load_dataset("svhn", tmp_path, "extra").images.shape == (3, 3, 32, 32)


def test_svhn_mat_without_x_and_y_raises(tmp_path):
    savemat(tmp_path / "train_32x32.mat", {"images": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(NinError, match="'X' and 'y'"):
        load_dataset("svhn", tmp_path, "train", cache=False)


def test_svhn_file_that_is_not_a_mat_file_raises(tmp_path):
    (tmp_path / "test_32x32.mat").write_bytes(b"not a MATLAB file at all" * 10)
    with pytest.raises(NinError, match="not a readable .mat"):
        load_dataset("svhn", tmp_path, "test", cache=False)


# --- MNIST and Fashion-MNIST ---------------------------------------------------------------------

def test_mnist_in_torchvision_layout(tmp_path):
    arrays = write_mnist(tmp_path / "MNIST" / "raw", gz=False, n=5)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        loaded = load_dataset("mnist", tmp_path, split)
        images, labels = arrays[prefix]
        assert loaded.images.shape == (5, 1, 28, 28) and loaded.images.dtype == torch.uint8
        assert loaded.labels.dtype == torch.int64
        assert loaded.images[3, 0, 7, 20] == images[3, 7, 20]
        assert torch.equal(loaded.images[:, 0], torch.from_numpy(images))
        assert loaded.labels.tolist() == labels.tolist()
        assert loaded.classes == [str(d) for d in range(10)]


def test_fashion_mnist_in_debian_layout_gzipped_in_the_root(tmp_path):
    arrays = write_mnist(tmp_path, gz=True, n=6)
    assert (tmp_path / "train-images-idx3-ubyte.gz").is_file()
    loaded = load_dataset("fashion-mnist", tmp_path, "test")
    assert torch.equal(loaded.images[:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert loaded.labels.tolist() == arrays["t10k"][1].tolist()
    assert loaded.classes[0] == "T-shirt/top" and loaded.classes[9] == "Ankle boot" and len(loaded.classes) == 10


def test_idx_labels_out_of_range_name_the_labels_file(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, n=2)
    write_idx(folder / "train-labels-idx1-ubyte", np.array([3, 12], np.uint8))
    with pytest.raises(NinError, match=r"train-labels-idx1-ubyte: labels must lie in 0..9, found 3..12"):
        load_dataset("mnist", tmp_path, "train", cache=False)


def test_idx_with_wrong_magic_raises(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", n=2)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x03" + path.read_bytes()[4:])  # 0x0d: float data
    with pytest.raises(NinError, match="magic 00 00 08 03"):
        load_dataset("mnist", tmp_path, "train", cache=False)


def test_idx_labels_file_in_place_of_images_raises(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, n=2)
    (folder / "t10k-images-idx3-ubyte").write_bytes((folder / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(NinError, match="magic"):
        load_dataset("mnist", tmp_path, "test", cache=False)


@pytest.mark.parametrize("change", ["truncate", "pad"])
def test_idx_whose_size_disagrees_with_its_header_raises(tmp_path, change):
    write_mnist(tmp_path / "MNIST" / "raw", n=2)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    content = path.read_bytes()
    path.write_bytes(content[:-10] if change == "truncate" else content + b"\x00")
    with pytest.raises(NinError, match="truncated or padded"):
        load_dataset("mnist", tmp_path, "train", cache=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped"])
def test_corrupt_gz_raises(tmp_path, damage):
    write_mnist(tmp_path, gz=True, n=3)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    content = bytearray(path.read_bytes())
    if damage == "truncated":
        content = content[:len(content) // 2]
    elif damage == "garbage":
        content = content[:10] + b"\xff" * 50
    else:
        content[-6] ^= 0xFF  # the stored CRC-32 no longer matches
    path.write_bytes(bytes(content))
    with pytest.raises(NinError, match="train-images-idx3-ubyte.gz cannot be read"):
        load_dataset("fashion-mnist", tmp_path, "train", cache=False)


def test_idx_label_count_must_match_image_count(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist(folder, n=4)
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(3))
    with pytest.raises(NinError, match="3 labels for 4 images"):
        load_dataset("mnist", tmp_path, "train", cache=False)


# --- the registry: one entry per data set ---------------------------------------------------------

def test_each_data_set_is_one_entry_and_no_code_tells_data_sets_apart_by_name():
    import ast
    import inspect

    from nin.data import DATASETS, datasets, splits

    for name, entry in DATASETS.items():
        assert entry.name == name and entry.title and entry.get and entry.splits[:2] == ("train", "test")
        assert entry.channels in (1, 3) and (entry.size is None or entry.size > 0) and callable(entry.validation)
        assert entry.load is not None or all(map(callable, (entry.files, entry.parse, entry.download)))
    names = set(DATASETS)
    for module in (datasets, splits):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            # `name == "folder"`, `name in ("cifar10", ...)`, a dict keyed by names (LAST_N), DATASETS["svhn"]
            parts = ([node.left, *node.comparators] if isinstance(node, ast.Compare) else node.keys
                     if isinstance(node, ast.Dict) else [node.slice] if isinstance(node, ast.Subscript) else [])
            used = {n.value for part in parts if part for n in ast.walk(part) if isinstance(n, ast.Constant)}
            assert not used & names, f"{module.__name__} line {node.lineno} tells data sets apart: {used & names}"


def test_each_entrys_validation_rule_holds_out_the_documented_images():
    from nin.data import DATASETS

    labels = torch.arange(50_000) % 10
    for name in ("cifar10", "cifar100", "mnist", "fashion-mnist"):  # the last 10,000 training images
        held_out = DATASETS[name].validation("train", labels, 10)
        assert held_out.nonzero().flatten().tolist() == list(range(40_000, 50_000))
    svhn = DATASETS["svhn"].validation  # the first 400 per class of train, 200 of extra
    train, extra = svhn("train", labels[:25_000], 10), svhn("extra", labels[:30_000], 10)
    assert train.nonzero().flatten().tolist() == list(range(4000))
    assert extra.nonzero().flatten().tolist() == list(range(2000))
    folder = DATASETS["folder"].validation("train", torch.tensor([0] * 10 + [1] * 5), 2)  # the last fifth per class
    assert folder.nonzero().flatten().tolist() == [8, 9, 14]


# --- names, splits and missing files --------------------------------------------------------------

def test_unknown_data_set_name_raises(tmp_path):
    with pytest.raises(NinError, match="unknown data set 'imagenet'.*cifar10"):
        load_dataset("imagenet", tmp_path, "train")


@pytest.mark.parametrize("name", ["cifar10", "mnist", "folder"])
def test_unknown_split_raises(tmp_path, name):
    with pytest.raises(NinError, match="no split 'validation'.*train, test"):
        load_dataset(name, tmp_path, "validation")


@pytest.mark.parametrize("name, missing, how", [
    ("cifar10", "data_batch_1", "--download"),
    ("cifar100", "train", "--download"),
    ("svhn", "train_32x32.mat", "--download"),
    ("mnist", "train-images-idx3-ubyte", "--download"),
    ("fashion-mnist", "train-images-idx3-ubyte", "apt-get install dataset-fashion-mnist"),
])
def test_missing_root_names_the_file_and_how_to_get_it(tmp_path, name, missing, how):
    with pytest.raises(NinError, match="not found") as error:
        load_dataset(name, tmp_path / "nowhere", "train")
    assert missing in str(error.value) and how in str(error.value)


def test_one_missing_cifar_batch_is_named(tmp_path):
    write_cifar10(tmp_path, n=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(NinError, match="missing .*data_batch_3; get it with: nin data cifar10"):
        load_dataset("cifar10", tmp_path, "train")
    assert load_dataset("cifar10", tmp_path, "test").images.shape == (2, 3, 32, 32)


# --- image folders ----------------------------------------------------------------------------------

def write_folder(root: Path) -> None:
    """Classes 'zebra', 'ant', 'mole' (created out of order) with images of many sizes and modes."""
    write_image(root / "train" / "zebra" / "a.png", Image.new("RGB", (20, 12), (10, 20, 30)))
    write_image(root / "train" / "zebra" / "b.png", Image.new("L", (7, 9), 77))
    write_image(root / "train" / "ant" / "c.png", Image.new("RGBA", (16, 16), (1, 2, 3, 4)))
    write_image(root / "train" / "ant" / "nested" / "d.png", palette_image((5, 40), 7, (200, 100, 50)))
    write_image(root / "train" / "mole" / "e.jpg", Image.new("RGB", (30, 30), (90, 160, 220)), quality=95)
    (root / "train" / "mole" / "notes.txt").write_text("not an image")
    write_image(root / "test" / "ant" / "f.png", Image.new("RGB", (16, 16), (5, 5, 5)))
    write_image(root / "test" / "mole" / "g.png", Image.new("RGB", (3, 3), (6, 6, 6)))
    write_image(root / "test" / "zebra" / "h.png", Image.new("RGB", (64, 48), (7, 7, 7)))


def test_folder_rgb_mixed_sizes_and_modes(tmp_path):
    write_folder(tmp_path)
    split = load_dataset("folder", tmp_path, "train", image_size=16, channels=3)
    assert split.classes == ["ant", "mole", "zebra"]
    assert split.images.shape == (5, 3, 16, 16) and split.images.dtype == torch.uint8
    assert split.labels.tolist() == [0, 0, 1, 2, 2]  # by class, then by path: c.png, nested/d.png, e.jpg, a.png, b.png
    colours = [(1, 2, 3), (200, 100, 50), (90, 160, 220), (10, 20, 30), (77, 77, 77)]
    for image, colour in zip(split.images, colours):
        expected = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16)
        assert (image.int() - expected.int()).abs().max() <= 3  # the JPEG is only close


def test_folder_greyscale(tmp_path):
    write_folder(tmp_path)
    split = load_dataset("folder", tmp_path, "train", image_size=8, channels=1)
    assert split.images.shape == (5, 1, 8, 8)
    assert split.images[3, 0, 4, 4] == Image.new("RGB", (1, 1), (10, 20, 30)).convert("L").getpixel((0, 0))
    assert split.images[4].unique().tolist() == [77]


def test_folder_test_split(tmp_path):
    write_folder(tmp_path)
    split = load_dataset("folder", tmp_path, "test", image_size=16, channels=3)
    assert split.classes == ["ant", "mole", "zebra"]
    assert split.labels.tolist() == [0, 1, 2]
    assert [int(image[0, 0, 0]) for image in split.images] == [5, 6, 7]


def test_folder_without_class_folders_raises(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "loose.png").write_bytes(b"")
    with pytest.raises(NinError, match="no class folders"):
        load_dataset("folder", tmp_path, "train")
    with pytest.raises(NinError, match="no class folders"):
        load_dataset("folder", tmp_path / "nowhere", "train")


def test_folder_with_class_folders_but_no_images_raises(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "readme.txt").write_text("empty")
    with pytest.raises(NinError, match="no images"):
        load_dataset("folder", tmp_path, "train")


def test_folder_train_split_with_one_class_raises(tmp_path):
    write_image(tmp_path / "train" / "cat" / "a.png", Image.new("RGB", (4, 4)))
    (tmp_path / "train" / "dog").mkdir()  # a class folder without images does not count
    with pytest.raises(NinError, match="one class only"):
        load_dataset("folder", tmp_path, "train")


def test_folder_needs_a_root():
    with pytest.raises(NinError, match="--root"):
        load_dataset("folder", None, "train")


# --- load_image -------------------------------------------------------------------------------------

def test_load_image_scales_16_bit_greyscale(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 32768, 65535, 256]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    image = load_image(path, 4, 1)
    assert image.shape == (1, 4, 4) and image.dtype == torch.uint8
    assert image[0, 0].tolist() == [0, 128, 255, 1]
    assert load_image(path, 4, 3)[:, 0, 2].tolist() == [255, 255, 255]


def test_load_image_drops_alpha_and_expands_palettes(tmp_path):
    write_image(tmp_path / "rgba.png", Image.new("RGBA", (5, 5), (10, 20, 30, 0)))
    write_image(tmp_path / "palette.png", palette_image((5, 5), 2, (200, 100, 50)))
    write_image(tmp_path / "grey.png", Image.new("L", (5, 5), 99))
    assert load_image(tmp_path / "rgba.png", 5, 3)[:, 2, 2].tolist() == [10, 20, 30]
    assert load_image(tmp_path / "palette.png", 5, 3)[:, 2, 2].tolist() == [200, 100, 50]
    assert load_image(tmp_path / "grey.png", 5, 3)[:, 2, 2].tolist() == [99, 99, 99]
    assert load_image(tmp_path / "palette.png", 3, 1).shape == (1, 3, 3)


def test_load_image_resizes_to_a_square(tmp_path):
    write_image(tmp_path / "wide.png", Image.new("RGB", (40, 10), (1, 2, 3)))
    image = load_image(tmp_path / "wide.png", 12, 3)
    assert image.shape == (3, 12, 12) and image[:, 6, 6].tolist() == [1, 2, 3]


def test_load_image_of_a_non_image_raises(tmp_path):
    (tmp_path / "notes.png").write_text("this is text, not a PNG")
    with pytest.raises(NinError, match="not a readable image"):
        load_image(tmp_path / "notes.png", 8, 3)
    write_image(tmp_path / "ok.png", Image.new("RGB", (30, 30), (1, 2, 3)))
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:40])
    with pytest.raises(NinError, match="not a readable image"):
        load_image(tmp_path / "cut.png", 8, 3)
    with pytest.raises(NinError, match="does not exist"):
        load_image(tmp_path / "missing.png", 8, 3)


def test_load_image_turns_a_photo_upright_by_its_exif_orientation(tmp_path):
    """Q01: a phone stores a photo as its sensor saw it, with the turn to make in EXIF (orientation 8: a turn of
    90 degrees to the left); every viewer shows it upright, and so must training, packing and predict."""
    stored = np.zeros((8, 16), dtype=np.uint8)
    stored[:4] = 255  # stored: white above, black below; shown: white on the left
    exif = Image.Exif()
    exif[0x0112] = 8
    for name in ("train/a/photo.png", "train/a/plain.png", "train/b/photo.png", "train/b/plain.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(stored).save(tmp_path / name, exif=exif if "photo" in name else None)
    shown = load_image(tmp_path / "train/a/photo.png", 8, 1)[0].float()
    assert shown[:, 0].min() > 200 and shown[:, -1].max() < 50, shown
    images = load_dataset("folder", tmp_path, "train", image_size=8, channels=1, cache=False).images  # training's
    assert torch.equal(images[0], shown[None].to(torch.uint8))  # a/photo.png
    assert images[1][0, 0].min() > 200 and images[1][0, -1].max() < 50  # a/plain.png, read as stored


def test_load_image_of_a_dangling_link_says_where_it_points(tmp_path):
    (tmp_path / "gone.png").symlink_to(tmp_path / "moved-away.png")
    with pytest.raises(NinError, match="gone.png is a link to .*moved-away.png, which does not exist"):
        load_image(tmp_path / "gone.png", 8, 3)


# --- cache ------------------------------------------------------------------------------------------

def test_second_load_reads_the_cache(tmp_path, cache, monkeypatch):
    write_cifar10(tmp_path, n=2)
    first = load_dataset("cifar10", tmp_path, "train")
    assert [p.name for p in cache.glob("*.pt")] and all(p.name.startswith("cifar10-train-") for p in cache.glob("*"))

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed again instead of reading the cache")

    monkeypatch.setattr(readers, "cifar_batch", no_parsing)
    second = load_dataset("cifar10", tmp_path, "train")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == first.classes == CIFAR10_NAMES


def test_a_full_disk_while_caching_costs_only_speed(tmp_path, cache, monkeypatch):
    write_cifar10(tmp_path, n=2)
    real_fdopen = os.fdopen

    class FullDisk:  # the cache file takes a few bytes, then the disk is full
        def __init__(self, *args, **kwargs):
            self.file = real_fdopen(*args, **kwargs)

        def write(self, data):
            self.file.write(bytes(data)[:10])
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr("nin.checkpoint.os.fdopen", FullDisk)
    loaded = load_dataset("cifar10", tmp_path, "train")
    assert torch.equal(loaded.images, load_dataset("cifar10", tmp_path, "train", cache=False).images)
    assert not list(cache.iterdir())  # neither a cache entry nor its temporary file is left


def test_cache_false_writes_nothing(tmp_path, cache):
    write_mnist(tmp_path / "MNIST" / "raw", n=2)
    load_dataset("mnist", tmp_path, "train", cache=False)
    assert not cache.exists() or not list(cache.iterdir())


def test_changed_source_file_invalidates_the_cache(tmp_path, cache):
    batches = write_cifar10(tmp_path, n=2)
    assert load_dataset("cifar10", tmp_path, "test").labels.tolist() == batches["test_batch"][1]
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    data, _ = cifar_arrays(2, 10, seed=0)
    size = path.stat().st_size
    write_pickle(path, {b"batch_label": b"test_batch", b"labels": [9, 8], b"data": data[::-1].copy(),
                        b"filenames": [b"image.png"] * 2})
    assert path.stat().st_size == size  # same size: only the time tells the files apart
    bump_mtime(path)
    reloaded = load_dataset("cifar10", tmp_path, "test")
    assert reloaded.labels.tolist() == [9, 8]
    assert torch.equal(reloaded.images, torch.from_numpy(data[::-1].reshape(-1, 3, 32, 32).copy()))


def test_damaged_cache_entry_is_rebuilt(tmp_path, cache):
    arrays = write_mnist(tmp_path / "MNIST" / "raw", n=3)
    load_dataset("mnist", tmp_path, "test")
    [entry] = cache.glob("*.pt")
    entry.write_bytes(b"garbage" * 10)
    loaded = load_dataset("mnist", tmp_path, "test")
    assert torch.equal(loaded.images[:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert torch.load(entry, weights_only=True)["labels"].tolist() == arrays["t10k"][1].tolist()


def test_tampered_cache_entry_is_not_executed(tmp_path, cache):
    write_mnist(tmp_path / "MNIST" / "raw", n=3)
    expected = load_dataset("mnist", tmp_path, "train")
    [entry] = cache.glob("*.pt")
    marker = tmp_path / "hacked"
    entry.write_bytes(pickle.dumps({"images": _Exploit(marker)}, protocol=2))
    loaded = load_dataset("mnist", tmp_path, "train")
    assert not marker.exists()
    assert torch.equal(loaded.images, expected.images)


def test_folder_cache_follows_size_channels_and_new_images(tmp_path):
    write_folder(tmp_path)
    assert load_dataset("folder", tmp_path, "train", image_size=16, channels=3).images.shape == (5, 3, 16, 16)
    assert load_dataset("folder", tmp_path, "train", image_size=8, channels=1).images.shape == (5, 1, 8, 8)
    assert load_dataset("folder", tmp_path, "train", image_size=16, channels=3).images.shape == (5, 3, 16, 16)
    write_image(tmp_path / "train" / "ant" / "z.png", Image.new("RGB", (4, 4)))
    assert load_dataset("folder", tmp_path, "train", image_size=16, channels=3).labels.tolist() == [0, 0, 0, 1, 2, 2]


# --- Normalize and DeviceLoader ------------------------------------------------------------------

def random_images(n: int, channels: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8)


def raw_pixels(batch: torch.Tensor) -> torch.Tensor:
    """Undo Normalize([0...], [1...]), which only divides by 255."""
    return (batch * 255).round().to(torch.uint8)


def identity(channels: int) -> Normalize:
    return Normalize([0.0] * channels, [1.0] * channels)


def test_normalize_fit_matches_numpy():
    images = random_images(20)
    as_float = images.numpy().astype(np.float64) / 255.0
    normalize = Normalize.fit(images)
    np.testing.assert_allclose(normalize.mean, as_float.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(normalize.std, as_float.std(axis=(0, 2, 3)), rtol=1e-6)
    chunked = Normalize.fit(images, chunk=7)
    np.testing.assert_allclose(chunked.mean, normalize.mean, rtol=1e-12)
    np.testing.assert_allclose(chunked.std, normalize.std, rtol=1e-9)
    normalised = normalize(images).double()
    np.testing.assert_allclose(normalised.mean(dim=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalised.std(dim=(0, 2, 3), unbiased=False), 1.0, atol=1e-5)


def test_fitting_large_images_converts_a_bounded_number_of_bytes_at_a_time():
    # the chunk is a number of bytes, not of images: 8,192 images of 3x224x224 would be 10 GB of float64
    for shape in ((1, 28, 28), (3, 64, 64), (3, 224, 224)):
        rows = rows_per_chunk(torch.empty(0, *shape, dtype=torch.uint8))
        assert rows * 8 * math.prod(shape) <= FIT_CHUNK_BYTES < (rows + 1) * 8 * math.prod(shape)


def test_loader_same_seed_and_epoch_give_identical_batches():
    images, labels = random_images(24), torch.arange(24)

    def epoch_batches(epoch: int):
        loader = DeviceLoader(images, labels, Normalize.fit(images), batch_size=5, train=True,
                              translate=2, flip=True, seed=0)
        loader.set_epoch(epoch)
        return list(loader)

    first, again, other = epoch_batches(3), epoch_batches(3), epoch_batches(4)
    assert len(first) == 4  # 24 // 5: training drops the remainder
    for (a, la), (b, lb) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.cat([l for _, l in first]).tolist() != torch.cat([l for _, l in other]).tolist()


def test_loader_resumes_mid_epoch():
    images, labels = random_images(20), torch.arange(20)
    loader = DeviceLoader(images, labels, identity(3), batch_size=4, train=True, translate=2, flip=True, seed=5)
    loader.set_epoch(2)
    full = list(loader)
    for (a, la), (b, lb) in zip(full[2:], loader.batches(start=2), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_loader_training_epoch_shows_each_image_at_most_once():
    images, labels = random_images(23), torch.arange(23)
    loader = DeviceLoader(images, labels, Normalize.fit(images), batch_size=4, train=True, seed=1)
    for epoch in range(3):
        loader.set_epoch(epoch)
        seen = torch.cat([batch_labels for _, batch_labels in loader]).tolist()
        assert len(seen) == len(set(seen)) == 20 == len(loader) * 4


def test_loader_evaluation_covers_all_images_in_order():
    images, labels = random_images(10), torch.arange(10) % 3
    normalize = Normalize.fit(images)
    loader = DeviceLoader(images, labels, normalize, batch_size=4, train=False, translate=2, flip=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(l) for _, l in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b for b, _ in batches]), normalize(images))  # no augmentation
    assert torch.equal(torch.cat([l for _, l in batches]), labels)


def test_loader_translate_moves_a_bright_pixel_by_at_most_two():
    n_centre, n_corner = 400, 100
    images = torch.zeros(n_centre + n_corner, 1, 9, 9, dtype=torch.uint8)
    images[:n_centre, 0, 4, 4] = 255  # stays in the frame whatever the shift
    images[n_centre:, 0, 0, 8] = 255  # top-right corner: may be shifted out of the frame
    loader = DeviceLoader(images, torch.arange(len(images)), identity(1), batch_size=50, train=True,
                          translate=2, flip=False, seed=0)
    shifts, left_frame, stayed = set(), 0, 0
    for batch, ids in loader:
        for image, index in zip(raw_pixels(batch), ids.tolist()):
            bright = (image[0] > 0).nonzero().tolist()
            assert len(bright) <= 1 and int(image.max()) in (0, 255)
            y0, x0 = (4, 4) if index < n_centre else (0, 8)
            if not bright:
                assert index >= n_centre, "a centre pixel cannot leave a 9x9 frame with shifts of 2"
                left_frame += 1
                continue
            dy, dx = bright[0][0] - y0, bright[0][1] - x0
            assert abs(dy) <= 2 and abs(dx) <= 2
            if index < n_centre:
                shifts.add((dy, dx))
            else:
                stayed += 1
    assert len(shifts) == 25  # every shift in [-2, 2] x [-2, 2] occurs
    assert left_frame > 0 and stayed > 0


def test_loader_flip():
    images, labels = random_images(64, channels=2), torch.arange(64)

    def flipped_count(flip: bool) -> int:
        loader = DeviceLoader(images, labels, identity(2), batch_size=16, train=True, flip=flip, seed=0)
        count = 0
        for batch, ids in loader:
            for image, index in zip(raw_pixels(batch), ids):
                original = images[index]
                assert torch.equal(image, original) or torch.equal(image, original.flip(-1))
                count += not torch.equal(image, original)
        return count

    assert flipped_count(False) == 0
    assert 0 < flipped_count(True) < 64


def test_alternating_flips_show_each_image_flipped_on_every_other_epoch():
    images, labels = random_images(64, channels=2), torch.arange(64)
    loader = DeviceLoader(images, labels, identity(2), batch_size=16, train=True, flip=True, seed=3,
                          alternate_flips=True)

    def flipped(epoch: int) -> dict[int, bool]:
        loader.set_epoch(epoch)
        return {int(index): not torch.equal(image, images[index])
                for batch, ids in loader for image, index in zip(raw_pixels(batch), ids)}

    first, second, third = flipped(0), flipped(1), flipped(2)
    assert 16 < sum(first.values()) < 48  # a coin per image to start with
    assert all(second[i] != first[i] and third[i] == first[i] for i in range(64))


def test_random_erasing_blanks_one_rectangle_of_2_to_40_percent_in_about_the_asked_share_of_images():
    images = torch.full((400, 2, 16, 16), 200, dtype=torch.uint8)  # no pixel is 0 but the erased ones
    loader = DeviceLoader(images, torch.arange(400), identity(2), batch_size=100, train=True, seed=4, erase=0.5)
    erased = 0
    for batch, _ in loader:
        for image in raw_pixels(batch):
            blank = (image == 0).nonzero()
            if not len(blank):
                continue
            erased += 1
            assert torch.equal(image[0] == 0, image[1] == 0)  # every channel, the same place
            top, left = blank[:, 1].min(), blank[:, 2].min()
            height, width = blank[:, 1].max() - top + 1, blank[:, 2].max() - left + 1
            assert len(blank) == 2 * height * width  # one solid rectangle
            assert 0.02 * 256 - 3 <= height * width <= 0.4 * 256 + 3  # rounding of the sides
    assert 150 < erased < 250


def test_random_erasing_is_fixed_by_seed_and_epoch_and_leaves_the_other_draws_alone():
    images, labels = random_images(40, channels=1, size=12), torch.arange(40)

    def epoch(erase: float, seed: int = 0, number: int = 1):
        loader = DeviceLoader(images, labels, identity(1), batch_size=8, train=True, translate=2, flip=True,
                              seed=seed, erase=erase)
        loader.set_epoch(number)
        return list(loader)

    erased, again, plain = epoch(1.0), epoch(1.0), epoch(0.0)
    for (a, la), (b, lb), (c, lc) in zip(erased, again, plain, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb) and torch.equal(la, lc)
        outside = a != 0
        assert torch.equal(a[outside], c[outside])  # the same order, shifts and flips; only the rectangles added
    assert not torch.equal(erased[0][0], epoch(1.0, number=2)[0][0])
    assert not torch.equal(erased[0][0], epoch(1.0, seed=1)[0][0])


def test_evaluation_batches_are_never_erased():
    images = random_images(16, channels=1)
    loader = DeviceLoader(images, torch.arange(16), identity(1), batch_size=8, erase=1.0)
    assert torch.equal(torch.cat([batch for batch, _ in loader]), identity(1)(images))


def test_progressive_resizing_scales_the_training_batches_of_an_epoch_down_and_not_the_test_batches():
    images, labels = random_images(32, channels=1, size=28), torch.arange(32)
    train = DeviceLoader(images, labels, identity(1), batch_size=8, train=True, seed=1)
    test = DeviceLoader(images, labels, identity(1), batch_size=8)
    train.set_epoch(0, image_size=14)
    small, ids = next(iter(train))
    assert small.shape == (8, 1, 14, 14)
    expected = torch.nn.functional.interpolate(images[ids].float() / 255, size=(14, 14), mode="bilinear",
                                               antialias=True, align_corners=False)
    torch.testing.assert_close(small, expected)  # the same images, scaled down (seed 1 neither shifts nor flips)
    train.set_epoch(1)  # no size: as stored
    assert next(iter(train))[0].shape == (8, 1, 28, 28)
    assert next(iter(test))[0].shape == (8, 1, 28, 28)


def test_loader_shards_are_disjoint_halves():
    images, labels = random_images(12), torch.arange(12)

    def rank_labels(rank: int, train: bool) -> list[int]:
        loader = DeviceLoader(images, labels, identity(3), batch_size=3, train=train, seed=7,
                              rank=rank, world_size=2)
        loader.set_epoch(1)
        return torch.cat([batch_labels for _, batch_labels in loader]).tolist()

    for train in (True, False):
        first, second = rank_labels(0, train), rank_labels(1, train)
        assert len(first) == len(second) == 6
        assert not set(first) & set(second) and set(first) | set(second) == set(range(12))
    assert rank_labels(0, train=False) == [0, 2, 4, 6, 8, 10]


def test_a_built_in_data_set_is_resized_and_recoloured_when_asked(fashion_mnist_root):
    own = load_dataset("fashion-mnist", fashion_mnist_root, "test")
    bigger = load_dataset("fashion-mnist", fashion_mnist_root, "test", image_size=32, channels=3)
    assert own.images.shape == (10_000, 1, 28, 28) and bigger.images.shape == (10_000, 3, 32, 32)
    assert torch.equal(bigger.images[:, 0], bigger.images[:, 2]) and torch.equal(bigger.labels, own.labels)
    mean_difference = (bigger.images[:, :1].float().mean() - own.images.float().mean()).abs()
    assert mean_difference < 1.0  # the same pictures, only resampled
    same = load_dataset("fashion-mnist", fashion_mnist_root, "test", image_size=28, channels=1)
    assert torch.equal(same.images, own.images)
