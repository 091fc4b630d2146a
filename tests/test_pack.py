"""Packed data sets (`nin data pack`, nin/data/pack.py): what a pack reads back, training from it, a pack
stopped part-way, unreadable images, and the one-line refusals."""
from __future__ import annotations

import json
import shlex
import shutil

import numpy as np
import pytest
import torch

from nin.cli import main
from nin.config import TrainConfig
from nin.data import load_dataset
from nin.data import pack as packing
from nin.data.pack import write_pack
from nin.data.packed import PackedImages
from nin.errors import Interrupted, NinError
from nin.train import fit
from tiny_run import write_folder_dataset

QUIET = ["--device", "cpu", "--no-progress", "--no-tensorboard"]


def run_cli(argv, capsys):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def folder(tmp_path):
    return write_folder_dataset(tmp_path / "data", train_per_class=6, test_per_class=3)


@pytest.fixture
def packed(folder, tmp_path):
    return write_pack("folder", folder, tmp_path / "pack", image_size=16, log=lambda _: None)


def test_a_pack_reads_back_the_folder_it_was_made_from(folder, packed):
    for split in ("train", "test"):
        direct = load_dataset("folder", folder, split, image_size=16)
        from_pack = load_dataset("folder", packed, split, image_size=16)
        assert isinstance(from_pack.images, PackedImages)  # mapped, not loaded
        assert torch.equal(from_pack.images[:], direct.images)
        assert torch.equal(from_pack.labels, direct.labels) and from_pack.classes == direct.classes
    header = json.loads((packed / "pack.json").read_text())
    assert header["dataset"] == "folder" and header["shape"] == [3, 16, 16]
    assert header["splits"]["train"]["count"] == 18 and len(header["splits"]["train"]["sha256"]) == 64


def test_packed_images_index_like_a_tensor_and_select_without_reading():
    images = torch.arange(10 * 2 * 2 * 2, dtype=torch.uint8).view(10, 2, 2, 2)
    packed = PackedImages(images)
    assert torch.equal(packed[4], images[4]) and torch.equal(packed[-1], images[-1])
    for key in (torch.tensor([7, 2, 2, 9]), torch.arange(10) % 3 == 0, slice(3, 8), slice(None, None, 4)):
        assert torch.equal(packed[key], images[key])
    selection = packed.take(torch.tensor([9, 4, 1, 0]))  # then a selection of the selection
    assert selection.shape == (4, 2, 2, 2) and len(selection) == 4
    assert torch.equal(selection[torch.tensor([2, 0])], images[torch.tensor([1, 9])])
    assert torch.equal(selection.take(torch.tensor([True, False, True, False]))[:], images[torch.tensor([9, 1])])


def test_training_from_a_pack_gives_the_same_weights_as_from_memory(tmp_path, fashion_mnist_root):
    """Real Fashion-MNIST, its paper validation split carved out of the pack's training split, a subset,
    flips and shifts: every batch is read from the memory map, and the weights are bit-identical."""
    pack = write_pack("fashion-mnist", fashion_mnist_root, tmp_path / "fashion.pack", log=lambda _: None)
    weights = []
    for root, name in ((fashion_mnist_root, "memory"), (pack, "pack")):
        config = TrainConfig(model="nin_mnist", dataset="fashion-mnist", root=str(root) if root else None,
                             epochs=1, train_subset=256, test_subset=64, batch_size=32, eval_split="val",
                             translate=2, flip="yes", progress=False, tensorboard=False, out=str(tmp_path / name))
        fit(config, log=lambda _: None)
        weights.append(torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_nin_train_and_eval_take_a_pack_as_root(packed, tmp_path, capsys):
    code, out, err = run_cli(["train", "--dataset", "folder", "--root", packed, "--image-size", "16", "--epochs", "1",
                              "--batch-size", "6", "--out", tmp_path / "run", *QUIET], capsys)
    assert code == 0, err
    assert "read from the pack through the page cache" in out  # the memory line says where the images are
    code, out, err = run_cli(["eval", tmp_path / "run", "--root", packed], capsys)
    assert code == 0 and "test accuracy" in out, err


def interrupt_after_two_chunks(monkeypatch):
    """Packing in chunks of 4 images, SIGINT (KeyboardInterrupt) comes as the third is read; undone by the
    returned function."""
    monkeypatch.setattr(packing, "CHUNK", 4)
    real_source = packing._source

    def failing_after_two_chunks(*args):
        source = real_source(*args)
        read, calls = source.read, []

        def read_twice(start, stop):
            calls.append(start)
            if len(calls) > 2:
                raise KeyboardInterrupt  # stopped while packing the train split
            return read(start, stop)
        source.read = read_twice
        return source
    monkeypatch.setattr(packing, "_source", failing_after_two_chunks)
    return lambda: monkeypatch.setattr(packing, "_source", real_source)


def test_a_pack_stopped_part_way_resumes_to_the_same_files(folder, tmp_path, monkeypatch):
    whole = write_pack("folder", folder, tmp_path / "whole", image_size=16, log=lambda _: None)
    undo = interrupt_after_two_chunks(monkeypatch)
    with pytest.raises(Interrupted, match="the same command resumes the pack"):
        write_pack("folder", folder, tmp_path / "stopped", image_size=16, log=lambda _: None)
    progress = json.loads((tmp_path / "stopped" / "train.progress.json").read_text())
    assert progress["next"] == 8 and not (tmp_path / "stopped" / "train.images").exists()
    undo()
    write_pack("folder", folder, tmp_path / "stopped", image_size=16, log=lambda _: None)
    for name in ("train.images", "train.labels", "test.images", "test.labels", "pack.json"):
        assert (tmp_path / "stopped" / name).read_bytes() == (whole / name).read_bytes()
    assert not list((tmp_path / "stopped").glob("*.partial")) and not list((tmp_path / "stopped").glob("*progress*"))


def test_unreadable_images_stop_the_pack_or_are_skipped_and_listed(folder, tmp_path, capsys):
    broken = folder / "train" / "green" / "2.png"
    broken.write_bytes(b"not a png")
    code, _, err = run_cli(["data", "pack", "folder", "--root", folder, "--out", tmp_path / "refused",
                            "--image-size", "16"], capsys)
    assert code == 2 and "2.png is not a readable image" in err and "--skip-bad-images" in err
    code, out, err = run_cli(["data", "pack", "folder", "--root", folder, "--out", tmp_path / "skipped",
                              "--image-size", "16", "--skip-bad-images"], capsys)
    assert code == 0, err
    header = json.loads((tmp_path / "skipped" / "pack.json").read_text())
    assert header["splits"]["train"] == {**header["splits"]["train"], "count": 17, "skipped": 1}
    assert str(broken) in (tmp_path / "skipped" / "train.skipped.txt").read_text()
    assert len(load_dataset("folder", tmp_path / "skipped", "train").labels) == 17


def test_a_damaged_pack_is_refused_in_one_line(packed, tmp_path):
    damaged = shutil.copytree(packed, tmp_path / "damaged")
    with open(damaged / "train.images", "r+b") as stream:
        stream.truncate(100)
    with pytest.raises(NinError, match="train.images is 100 bytes, expected 13,824: the pack is damaged"):
        load_dataset("folder", damaged, "train")
    bad_labels = shutil.copytree(packed, tmp_path / "bad-labels")
    labels = np.fromfile(packed / "train.labels", dtype="<i8")
    labels[0] = 7  # 3 classes
    labels.tofile(bad_labels / "train.labels")
    with pytest.raises(NinError, match="labels must lie in 0..2; the pack is damaged"):
        load_dataset("folder", bad_labels, "train")


def test_nin_data_verify_rehashes_a_pack_and_finds_a_changed_byte(packed, tmp_path, capsys):
    code, out, _ = run_cli(["data", "verify", packed], capsys)
    assert code == 0 and "train: 18 images, sizes, labels and SHA-256 as recorded" in out
    changed = shutil.copytree(packed, tmp_path / "changed")
    with open(changed / "test.images", "r+b") as stream:  # same size, one pixel changed: only the hash sees it
        first = stream.read(1)
        stream.seek(0)
        stream.write(bytes([first[0] ^ 1]))
    code, _, err = run_cli(["data", "verify", changed], capsys)
    assert code == 2 and "test.images does not match its SHA-256" in err and len(err.strip().splitlines()) == 1
    for argv, message in ((["data", "verify", tmp_path], "is not a readable pack header"),
                          (["data", "verify"], "nin data verify takes a PACK folder alone"),
                          (["data", "verify", packed, "--out", tmp_path / "x"], "alone, not --out")):
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as exit:  # the parser's own errors
            code = exit.code
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist"], "is a pack of folder, not mnist: use --dataset folder"),
    (["--dataset", "folder", "--image-size", "32"], "holds images of 16 pixels a side, not 32: pack again with "
                                                    "--image-size 32"),
    (["--dataset", "folder", "--image-size", "16", "--channels", "1"], "holds images of 3 channels, not 1"),
])
def test_a_pack_that_does_not_hold_what_the_run_asks_for_is_refused(packed, tmp_path, capsys, argv, message):
    code, _, err = run_cli(["train", *argv, "--root", packed, "--epochs", "1", "--out", tmp_path / "run", *QUIET],
                           capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv, message", [
    (["data", "pack", "folder", "--root", "{folder}"], "nin data pack needs a DATASET and --out PACK"),
    (["data", "pack", "--out", "{tmp}/p"], "nin data pack needs a DATASET and --out PACK"),
    (["data", "pack", "nosuch", "--out", "{tmp}/p"], "unknown data set 'nosuch'"),
    (["data", "pack", "folder", "--root", "{folder}", "--out", "{tmp}/p", "--image-size", "3"],
     "--image-size must lie in 8..1024, got 3"),
    (["data", "pack", "folder", "--root", "{folder}", "--out", "{tmp}/p", "--channels", "2"], "invalid choice: 2"),
    (["data", "pack", "folder", "--root", "{folder}", "--out", "{folder}"], "holds other files: pack into a new"),
    (["data", "pack", "folder", "--root", "{tmp}/nowhere", "--out", "{tmp}/p"], "no class folders in"),
    (["data", "fashion-mnist", "--out", "{tmp}/p"], "--out belongs to nin data pack DATASET"),
    (["data", "pack", "mnist", "--download", "--out", "{tmp}/p"], "--download: get the data set first"),
])
def test_nin_data_pack_refuses_wrong_arguments_in_one_line(folder, tmp_path, capsys, argv, message):
    argv = [arg.format(folder=folder, tmp=tmp_path) for arg in argv]
    try:
        code = main(argv)
    except SystemExit as exit:  # the parser's own errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_second_pack_into_the_same_folder_or_another_source_is_refused(packed, folder, tmp_path):
    import fcntl

    with open(packed / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running nin data pack holds it
        with pytest.raises(NinError, match="is being written by another nin data pack"):
            write_pack("folder", folder, packed, image_size=16)
    with pytest.raises(NinError, match="holds a pack with another shape"):
        write_pack("folder", folder, packed, image_size=32)
    assert write_pack("folder", folder, packed, image_size=16, log=lambda _: None) == packed  # complete: nothing to do


def test_a_full_disk_while_packing_is_one_line_and_resumes(folder, tmp_path, monkeypatch):
    real_write = packing.atomic_write

    def full(data, path):
        if str(path).endswith("progress.json"):
            raise OSError(28, "No space left on device")
        return real_write(data, path)
    monkeypatch.setattr(packing, "atomic_write", full)
    with pytest.raises(NinError, match="No space left on device.*run the same command again"):
        write_pack("folder", folder, tmp_path / "p", image_size=16)
    monkeypatch.setattr(packing, "atomic_write", real_write)
    write_pack("folder", folder, tmp_path / "p", image_size=16, log=lambda _: None)
    assert len(load_dataset("folder", tmp_path / "p", "test").labels) == 9


def test_a_data_set_too_large_for_the_memory_is_packed_into_the_cache_and_trained_from_there(
        folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("nin.data.datasets.HELD_BYTES_PER_PIXEL", 10 ** 9)  # no image fits in memory
    argv = ["train", "--dataset", "folder", "--root", folder, "--image-size", "16", "--epochs", "1",
            "--batch-size", "6", *QUIET]
    code, out, err = run_cli([*argv, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert "do not fit in memory: packing the train split once into" in out and "reading it from there" in out
    assert "read from the pack through the page cache" in out
    packs = sorted((tmp_path / "cache" / "packs").glob("folder-*"))  # one a split
    assert [p.name.split("-")[1] for p in packs] == ["test", "train"]
    assert all((p / f"{p.name.split('-')[1]}.images").is_file() for p in packs)
    code, out, err = run_cli([*argv, "--out", tmp_path / "again"], capsys)  # the pack is reused
    assert code == 0 and "packing" not in out, err
    (folder / "train" / "red" / "0.png").unlink()  # a changed folder gets a new pack, in place of the old one
    code, out, err = run_cli([*argv, "--out", tmp_path / "changed"], capsys)
    assert code == 0 and "17 images of 3x16x16" in out, err
    renewed = sorted((tmp_path / "cache" / "packs").glob("folder-*"))
    assert len(renewed) == 2 and renewed[0] == packs[0] and renewed[1] != packs[1]


def test_sigint_during_nin_data_pack_says_that_the_same_command_resumes(folder, tmp_path, capsys, monkeypatch):
    interrupt_after_two_chunks(monkeypatch)
    code, _, err = run_cli(["data", "pack", "folder", "--root", folder, "--out", tmp_path / "p", "--image-size", "16"],
                           capsys)
    assert code == 75 and "the same command resumes the pack in" in err and len(err.strip().splitlines()) == 1, err


def test_a_resumed_pack_checks_the_files_it_already_packed(folder, tmp_path, monkeypatch):
    """P49: stopped after 8 train images, then images moved between class folders (the count unchanged): the
    resumed pack is the folder as it is now, not 8 rows of the old one and the rest of the new one."""
    undo = interrupt_after_two_chunks(monkeypatch)
    with pytest.raises(Interrupted):
        write_pack("folder", folder, tmp_path / "stopped", image_size=16, log=lambda _: None)
    undo()
    (folder / "train" / "blue" / "0.png").rename(folder / "train" / "red" / "from-blue.png")
    (folder / "train" / "red" / "1.png").rename(folder / "train" / "blue" / "from-red.png")
    said = []
    write_pack("folder", folder, tmp_path / "stopped", image_size=16, log=said.append)
    assert any("the images have changed since the pack stopped" in line for line in said)
    fresh = write_pack("folder", folder, tmp_path / "fresh", image_size=16, log=lambda _: None)
    for name in ("train.images", "train.labels", "test.images", "test.labels"):
        assert (tmp_path / "stopped" / name).read_bytes() == (fresh / name).read_bytes(), name
    (folder / "train" / "green" / "2.png").rename(folder / "train" / "blue" / "from-green.png")  # after it is complete
    with pytest.raises(NinError, match="the train images have changed since .* packed them .*: pack them into a new"):
        write_pack("folder", folder, tmp_path / "stopped", image_size=16, log=lambda _: None)


def test_nin_data_verify_finds_a_changed_label(packed, tmp_path, capsys):
    changed = shutil.copytree(packed, tmp_path / "changed")
    labels = np.fromfile(changed / "train.labels", dtype="<i8")
    labels[0] = (labels[0] + 1) % 3  # another valid class: only a hash of the labels sees it
    labels.tofile(changed / "train.labels")
    code, _, err = run_cli(["data", "verify", changed], capsys)
    assert code == 2 and "train.labels does not match its SHA-256" in err and len(err.strip().splitlines()) == 1, err


def _stopped_by_a_bad_image(folder, out, monkeypatch):
    monkeypatch.setattr(packing, "CHUNK", 4)
    (folder / "train" / "blue" / "5.png").write_bytes(b"not a png")  # the 6th image: in the second chunk
    with pytest.raises(NinError, match="5.png is not a readable image"):
        write_pack("folder", folder, out, image_size=16, log=lambda _: None)


def _stopped_by_sigint(folder, out, monkeypatch):
    interrupt_after_two_chunks(monkeypatch)
    with pytest.raises(Interrupted):
        write_pack("folder", folder, out, image_size=16, log=lambda _: None)


def _left_empty_by_a_refused_pack(folder, out, monkeypatch):  # as nin did before refusals left nothing behind
    out.mkdir()
    header = {"format": "nin-pack", "version": 1, "dataset": "folder", "root": str(folder.resolve()),
              "shape": [3, 16, 16], "classes": None, "splits": {}}
    (out / "pack.json").write_text(json.dumps(header))


def _without_its_test_split(folder, out, monkeypatch):
    write_pack("folder", folder, out, image_size=16, log=lambda _: None)
    header = json.loads((out / "pack.json").read_text())
    del header["splits"]["test"]
    (out / "pack.json").write_text(json.dumps(header))


@pytest.mark.parametrize("make, message", [
    (_stopped_by_a_bad_image, "its train split was stopped part-way (none packed)"),
    (_stopped_by_sigint, "its train split was stopped part-way (none packed)"),
    (_left_empty_by_a_refused_pack, "its train split is missing (none packed)"),
    (_without_its_test_split, "its test split is missing (train packed)"),
], ids=["bad-image", "sigint", "empty", "no-test-split"])
def test_nin_data_verify_refuses_a_pack_that_is_not_complete(folder, tmp_path, capsys, monkeypatch, make, message):
    out = tmp_path / "pack"
    make(folder, out, monkeypatch)
    code, _, err = run_cli(["data", "verify", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"is not a complete pack: {message}; finish it with nin data pack folder --root {folder.resolve()} " \
           f"--out {out} --image-size 16" in err


def _one_class(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    for name in ("blue", "green"):
        shutil.rmtree(root / "train" / name)
    return ["folder", "--root", root]


def _more_test_than_train_classes(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    shutil.copytree(root / "test" / "red", root / "test" / "yellow")
    return ["folder", "--root", root]


def _the_pack_as_root(tmp_path):
    pack = write_pack("folder", write_folder_dataset(tmp_path / "data"), tmp_path / "made", image_size=16,
                      log=lambda _: None)
    return ["folder", "--root", pack]


@pytest.mark.parametrize("source, message", [
    (_one_class, "holds images of one class only"),
    (_more_test_than_train_classes, "the test split's classes differ from the train split's (yellow is in one"),
    (lambda tmp_path: ["cifar10", "--root", tmp_path / "nowhere"], "CIFAR-10 not found under"),
    (lambda tmp_path: ["folder"], "the folder data set needs --root DIR"),
    (_the_pack_as_root, "is a pack (nin data pack wrote it), not the data set's files: train from it with --root"),
], ids=["one-class", "more-test-classes", "missing-data-set", "no-root", "root-a-pack"])
def test_a_refused_pack_decodes_nothing_and_leaves_nothing_behind(tmp_path, capsys, monkeypatch, source, message):
    argv = source(tmp_path)
    monkeypatch.setattr(packing, "load_image", lambda *_: pytest.fail("an image was decoded"))
    out = tmp_path / "new" / "pack"  # its parent folder too is made by nin data pack
    code, _, err = run_cli(["data", "pack", *argv, "--out", out], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()


def test_a_pack_into_the_images_own_folder_is_refused_before_it_writes_there(folder, tmp_path, capsys):
    before = sorted(folder.rglob("*"))
    code, _, err = run_cli(["data", "pack", "folder", "--root", folder, "--out", folder], capsys)
    assert code == 2 and "holds other files: pack into a new or empty folder" in err
    assert sorted(folder.rglob("*")) == before  # no .lock, no pack.json in the user's data


def test_a_pack_stopped_in_its_first_chunk_leaves_nothing_and_an_empty_folder_empty(folder, tmp_path, capsys):
    (folder / "train" / "blue" / "0.png").write_bytes(b"not a png")
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new", empty):
        code, _, err = run_cli(["data", "pack", "folder", "--root", folder, "--out", out, "--image-size", "16"], capsys)
        assert code == 2 and "0.png is not a readable image" in err
    assert not (tmp_path / "new").exists() and list(empty.iterdir()) == []


def test_the_training_command_nin_data_pack_prints_trains_from_the_pack(folder, tmp_path, capsys):
    """P03: a folder is packed at 32 pixels when no size is asked; the run's default is its model's (28)."""
    code, out, err = run_cli(["data", "pack", "folder", "--root", folder, "--out", tmp_path / "pack"], capsys)
    assert code == 0, err
    printed = shlex.split(out.strip().splitlines()[-1].split("train with ", 1)[1])
    assert printed[:2] == ["nin", "train"] and "--image-size" in printed
    code, _, err = run_cli([*printed[1:], "--epochs", "1", "--batch-size", "6", "--out", tmp_path / "run", *QUIET],
                           capsys)
    assert code == 0, err


def test_a_dangling_link_among_the_images_is_one_line_or_skipped(folder, tmp_path, capsys):
    (folder / "train" / "blue" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    code, _, err = run_cli(["data", "pack", "folder", "--root", folder, "--out", tmp_path / "refused",
                            "--image-size", "16"], capsys)
    assert code == 2 and "gone.png is a link to" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(["data", "pack", "folder", "--root", folder, "--out", tmp_path / "skipped",
                            "--image-size", "16", "--skip-bad-images"], capsys)
    assert code == 0 and "gone.png" in (tmp_path / "skipped" / "train.skipped.txt").read_text(), err
