"""The paper's validation splits (held out of the training images) and subsets of a split."""
import pytest
import torch

from nin.cli import main
from nin.config import TrainConfig, from_dict, load_recipe, validate
from nin.data import Split
from nin.data.splits import paper_validation
from nin.errors import NinError
from nin.train import prepare_data
from formats import write_cifar10, write_svhn
from tiny_run import write_folder_dataset


def numbered(labels: list[int]) -> Split:
    """A split whose single pixel holds each image's row number (mod 256) and whose labels are given."""
    rows = torch.arange(len(labels))
    return Split((rows % 256).to(torch.uint8).view(-1, 1, 1, 1), torch.tensor(labels), [str(c) for c in range(10)])


def test_cifar_validation_is_the_last_10000_of_50000_training_images():
    labels = [row % 10 for row in range(50_000)]
    train, val = paper_validation("cifar10", {"train": numbered(labels)})
    assert len(train.labels) == 40_000 and len(val.labels) == 10_000
    assert val.labels.tolist() == labels[40_000:] and train.labels.tolist() == labels[:40_000]


def test_svhn_validation_is_400_per_class_of_train_and_200_per_class_of_extra():
    train_labels = [row % 10 for row in range(10 * 2500)]
    extra_labels = [row % 10 for row in range(10 * 3000)]
    parts = {"train": numbered(train_labels), "extra": numbered(extra_labels)}
    train, val = paper_validation("svhn", parts)
    assert len(val.labels) == 10 * (400 + 200) and len(train.labels) == 55_000 - 6_000
    assert torch.bincount(val.labels).tolist() == [600] * 10
    # the first 400 of each class in train come first: rows 0..3999 of train, then rows 0..1999 of extra
    assert val.images.flatten()[:4000].tolist() == [row % 256 for row in range(4000)]


def test_image_folder_validation_is_the_last_fifth_of_each_class():
    labels = [0] * 10 + [1] * 5
    train, val = paper_validation("folder", {"train": numbered(labels)})
    assert val.labels.tolist() == [0, 0, 1] and val.images.flatten().tolist() == [8, 9, 14]
    assert len(train.labels) == 12


def test_too_few_images_to_hold_out_any_raise():
    with pytest.raises(NinError, match="too few"):
        paper_validation("cifar10", {"train": numbered([0, 1, 2])})


def test_training_on_tiny_svhn_train_plus_extra_holds_out_validation_and_never_reads_the_test_set(tmp_path):
    for split in ("train", "extra"):
        write_svhn(tmp_path, split, n=50)  # 5 images per class in each
    config = from_dict({"root": str(tmp_path), "batch_size": 8, "preprocess": "standardize", "eval_split": "val"},
                       base=load_recipe("table3"))
    data = prepare_data(config, torch.device("cpu"))  # no test_32x32.mat exists: it must not be needed
    assert len(data.test.images) == 10 * (1 + 1)  # a fifth of each class: 1 from train, 1 from extra
    assert len(data.train.images) == 100 - 20


def test_train_with_eval_split_val_on_cifar_files(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n=10)  # 50 training images: the last 10 validate
    args = ["train", "--recipe", "table1-dropout", "--root", str(tmp_path / "data"), "--eval-split", "val",
            "--epochs", "1", "--batch-size", "8", "--preprocess", "standardize", "--device", "cpu",
            "--out", str(tmp_path / "run"), "--no-progress", "--no-tensorboard"]
    assert main(args) == 0
    trained = capsys.readouterr().out
    assert "paper's validation split (10 training images held out" in trained
    assert "val accuracy" in trained and "test accuracy" not in trained  # a tuning run never reads as a test result
    assert main(["eval", str(tmp_path / "run"), "--split", "val"]) == 0  # the same 10 images, from the checkpoint
    evaluated = capsys.readouterr().out
    assert "val accuracy" in evaluated and "/10 images" in evaluated


def test_an_unknown_eval_split_is_refused():
    with pytest.raises(NinError, match="eval_split must be one of test, val"):
        validate(from_dict({"eval_split": "dev"}))


def test_a_subset_of_an_image_folder_draws_from_every_class_and_keeps_file_order(tmp_path):
    root = write_folder_dataset(tmp_path, train_per_class=20, test_per_class=10)  # sorted by class on reading
    config = TrainConfig(dataset="folder", root=str(root), image_size=16, batch_size=4, train_subset=12,
                         test_subset=9, device="cpu")
    data = prepare_data(config, torch.device("cpu"))
    labels = data.train.labels.tolist()
    assert len(labels) == 12 and set(labels) == {0, 1, 2} and labels == sorted(labels)
    assert set(data.test.labels.tolist()) == {0, 1, 2}
    assert torch.equal(prepare_data(config, torch.device("cpu")).train.images, data.train.images)  # a fixed draw


def test_reproduce_with_eval_split_val_needs_no_test_file_and_says_so(tmp_path):
    write_cifar10(tmp_path / "data", n=10)
    (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").unlink()  # tuning never reads the test set
    assert main(["reproduce", "table1-dropout", "--root", str(tmp_path / "data"), "--eval-split", "val",
                 "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    assert "evaluated on the paper's validation split" in (tmp_path / "out" / "results.md").read_text()
