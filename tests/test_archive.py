"""An image folder given as an archive (--root images.tar.gz): read in place, the same tensors as the
folder, and every damaged or hostile archive refused in one line with nothing left behind."""
import io
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from nin.cli import main
from nin.data import load_dataset
from nin.data.datasets import cache_dir
from tiny_run import CLASSES, write_folder_dataset

SHARED_CIFAR10 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


def run_cli(argv, capsys):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, message):
    assert code == 2, err
    assert err.startswith("nin: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def make_tar(folder: Path, out: Path, *, top: str = "", mode: str = "w:gz") -> Path:
    with tarfile.open(out, mode) as archive:
        for path in sorted(folder.rglob("*")):
            archive.add(path, arcname=str(Path(top) / path.relative_to(folder)), recursive=False)
    return out


def make_zip(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, arcname=str(path.relative_to(folder)))
    return out


def tar_with(out: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A valid small image archive plus one extra ``member``."""
    folder = write_folder_dataset(out.parent / "folder")
    make_tar(folder, out)
    with tarfile.open(out, "r:gz") as archive:
        members = [(m, archive.extractfile(m).read() if m.isfile() else None) for m in archive.getmembers()]
    with tarfile.open(out, "w:gz") as archive:
        for old, content in members:
            archive.addfile(old, io.BytesIO(content) if content is not None else None)
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return out


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache of the test's own, to see that a refusal leaves nothing in it."""
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def left_in(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


@pytest.fixture
def folder(tmp_path):
    return write_folder_dataset(tmp_path / "data")


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip", "top-folder"])
def test_an_archive_reads_as_the_folder_it_holds(folder, tmp_path, kind):
    if kind == "zip":
        archive = make_zip(folder, tmp_path / "images.zip")
    elif kind == "top-folder":  # cifar10/train/... as well as train/...
        archive = make_tar(folder, tmp_path / "images.tgz", top="cifar10")
    else:
        archive = make_tar(folder, tmp_path / f"images.{kind}", mode="w" if kind == "tar" else "w:gz")
    for split in ("train", "test"):
        expected = load_dataset("folder", folder, split, image_size=16, cache=False)
        read = load_dataset("folder", archive, split, image_size=16)
        assert read.classes == expected.classes == sorted(CLASSES)
        assert torch.equal(read.images, expected.images) and torch.equal(read.labels, expected.labels)
        assert torch.equal(load_dataset("folder", archive, split, image_size=16).images, expected.images)  # cached


def test_nothing_is_extracted_to_disk(folder, tmp_path):
    archive = make_tar(folder, tmp_path / "images.tar.gz")
    before = set(tmp_path.rglob("*"))
    load_dataset("folder", archive, "train", image_size=16)
    written = {p for p in set(tmp_path.rglob("*")) - before if cache_dir() not in p.parents}
    assert written == set()


def test_train_eval_and_pack_take_an_archive(folder, tmp_path, capsys):
    archive = make_tar(folder, tmp_path / "images.tar.gz")
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--dataset", "folder", "--root", archive, "--image-size", "16", "--epochs", "1",
                            "--batch-size", "4", "--device", "cpu", "--no-progress", "--no-tensorboard",
                            "--out", run], capsys)
    assert code == 0, err
    code, out, err = run_cli(["eval", run, "--dataset", "folder", "--root", archive, "--json"], capsys)
    assert code == 0 and '"accuracy"' in out, err
    code, _, err = run_cli(["data", "pack", "folder", "--root", archive, "--out", tmp_path / "pack"], capsys)
    assert code == 0, err
    packed = load_dataset("folder", tmp_path / "pack", "test")
    assert torch.equal(packed.images[:], load_dataset("folder", folder, "test", cache=False).images)


def hostile_member(name: str, kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, linkname
    return member


@pytest.mark.parametrize("member, data, message", [
    (hostile_member("../evil.png"), b"x", "a path outside the archive's folder"),
    (hostile_member("train/a/../../../evil.png"), b"x", "a path outside the archive's folder"),
    (hostile_member("/etc/evil.png"), b"x", "a path outside the archive's folder"),
    (hostile_member("train/red/link.png", tarfile.SYMTYPE, "/etc/passwd"), b"", "a link"),
    (hostile_member("train/red/hard.png", tarfile.LNKTYPE, "train/red/0.png"), b"", "a link"),
    (hostile_member("train/red/fifo.png", tarfile.FIFOTYPE), b"", "a special file"),
    (hostile_member("train/red/broken.png"), b"not a png at all", "is not a readable image"),
])
def test_a_hostile_member_is_refused_in_one_line(tmp_path, own_cache, capsys, member, data, message):
    archive = tar_with(tmp_path / "images.tar.gz", member, data)
    code, _, err = run_cli(["train", "--dataset", "folder", "--root", archive, "--image-size", "16", "--epochs", "1",
                            "--device", "cpu", "--no-progress", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "run").exists() and not Path("/etc/evil.png").exists()
    assert left_in(own_cache) == []


def test_a_zip_member_leaving_the_root_is_refused(tmp_path, capsys):
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("train/red/0.png", b"x")
        handle.writestr("../../evil.png", b"x")
    code, _, err = run_cli(["data", "pack", "folder", "--root", archive, "--out", tmp_path / "pack"], capsys)
    assert_one_line_error(code, err, "a path outside the archive's folder")
    assert not (tmp_path / "pack").exists()


@pytest.mark.parametrize("damage", ["truncated", "not-an-archive", "empty"])
def test_a_damaged_archive_is_refused_in_one_line(folder, tmp_path, own_cache, capsys, damage):
    archive = make_tar(folder, tmp_path / "images.tar.gz")
    if damage == "truncated":
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    elif damage == "not-an-archive":
        archive.write_text("these are not the images you are looking for\n")
    else:
        archive.write_bytes(b"")
    code, _, err = run_cli(["train", "--dataset", "folder", "--root", archive, "--image-size", "16", "--epochs", "1",
                            "--device", "cpu", "--no-progress", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "is not a readable archive")
    assert not (tmp_path / "run").exists() and left_in(own_cache) == []


def test_an_archive_without_the_layout_says_what_it_wants(tmp_path, capsys):
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("photos/cat.png", b"x")
    code, _, err = run_cli(["data", "pack", "folder", "--root", archive, "--out", tmp_path / "pack"], capsys)
    assert_one_line_error(code, err, "no class folders")


def test_a_missing_archive_is_named(tmp_path, capsys):
    code, _, err = run_cli(["data", "pack", "folder", "--root", tmp_path / "nowhere.tar.gz", "--out",
                            tmp_path / "pack"], capsys)
    assert_one_line_error(code, err, "does not exist")


@pytest.mark.skipif(not SHARED_CIFAR10.is_file(), reason="../shared/data/cifar10-jpeg.tar.gz is absent (a user's "
                    "clone): the shared JPEG copy of CIFAR-10 lives beside this project on its build machines")
def test_the_shared_cifar10_copy_reads_as_cifar10():
    test = load_dataset("folder", SHARED_CIFAR10, "test")
    assert test.images.shape == (10_000, 3, 32, 32)
    assert test.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert any(cache_dir().glob("folder-test-*.pt"))  # decoded once, into the tests' private cache
