"""Bad input through the `nin` command: one line `nin: error: ...`, exit code 2, no traceback.

Complements tests/test_cli.py (unknown names, missing data, epochs 0, batch size -3, lr -0.1, CUDA for
training, a text file as checkpoint or image) and tests/test_data.py (the readers themselves).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from nin.cli import main
from nin.errors import NinError
from tiny_run import train_tiny_run, write_folder_dataset

QUIET = ["--device", "cpu", "--no-progress", "--no-tensorboard"]
FAST = ["--epochs", "1", "--batch-size", "4", *QUIET]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2
    assert err.startswith("nin: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A trained run on the 3-class, 16x16 RGB image folder of tests/tiny_run.py."""
    return train_tiny_run(tmp_path_factory.mktemp("bad-input"))


@pytest.fixture
def folder_data(tmp_path):
    return write_folder_dataset(tmp_path / "data")


# --- recipes and settings -------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ('epoch = 3\n', "unknown field 'epoch'"),  # a typo of epochs
    ('epochs = "ten"\n', "recipe field 'epochs' must be int, got 'ten'"),
    ('epochs = 2.5\n', "recipe field 'epochs' must be int, got 2.5"),
    ('lr = "0.1"\n', "recipe field 'lr' must be float, got '0.1'"),
    ('nesterov = "yes"\n', "recipe field 'nesterov' must be bool"),
    ('dropout_warmup = 1\n', "recipe field 'dropout_warmup' must be bool, got 1"),
    ('pools = "max"\n', "recipe field 'pools' must be a list"),
    ('epochs = \n', "not valid TOML"),
    ('epochs = 0\n', "epochs must be positive, got 0"),
    ('batch_size = -8\n', "batch-size must be positive, got -8"),
    ('lr = -0.1\n', "lr must be positive, got -0.1"),
    ('lr = nan\n', "lr must be positive, got nan"),
], ids=lambda value: value.strip().replace(" ", "") if "=" in value else None)
def test_a_bad_recipe_file_is_one_line(tmp_path, capsys, folder_data, text, message):
    recipe = tmp_path / "mine.toml"
    recipe.write_text(text)
    code, _, err = run_cli(["train", "--recipe", recipe, "--dataset", "folder", "--root", folder_data, *QUIET,
                            "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "epochs must be positive, got -1"),
    (["--batch-size", "0"], "batch-size must be positive, got 0"),
    (["--lr", "0"], "lr must be positive, got 0.0"),
    (["--lr", "inf"], "lr must be positive, got inf"),
    (["--eval-batch-size", "0"], "eval-batch-size must be positive, got 0"),
    (["--eval-every", "0"], "eval-every must be positive, got 0"),
    (["--eval-every", "-2"], "eval-every must be positive, got -2"),
    (["--momentum", "-0.9"], "momentum must be zero or more"),
    (["--width", "0"], "width must be positive, got 0.0"),
    (["--flip", "sometimes"], "flip must be one of auto, yes, no, alternate, got 'sometimes'"),
    (["--ema", "1"], "ema must be below 1, got 1.0"),
    (["--ema", "-0.5"], "ema must be zero or more, got -0.5"),
    (["--width", "40"], "width 40.0 is not a multiplier in (0, 16]"),
    (["--dropout", "1"], "dropout must be below 1"),
    (["--dropout", "-0.1"], "dropout must be zero or more, got -0.1"),
    (["--grad-clip", "-1"], "grad-clip must be zero or more, got -1.0"),
    (["--grad-clip", "nan"], "grad-clip must be zero or more, got nan"),
    (["--schedule", "exponential"], "schedule must be one of cosine, linear, step, constant"),
    (["--on-nan", "retry"], "on_nan must be one of stop, rollback"),
    (["--label-smoothing", "2"], "label-smoothing must be below 1, got 2.0"),
    (["--channels", "5"], "channels must be 1 (grey) or 3 (colour), got 5"),
    (["--translate", "100000"], "--translate 100000 shifts images of 28 pixels out of view"),
    (["--bn-bias-lr", "0"], "bn-bias-lr must be positive, got 0.0"),
    (["--bn-bias-lr", "nan"], "bn-bias-lr must be positive, got nan"),
    (["--model", "nin_mnist", "--bn-bias-lr", "4"], "--bn-bias-lr need a BatchNorm variant; nin_mnist has none"),
    (["--model", "nin_mnist", "--freeze-bn-scales"], "need a BatchNorm variant; nin_mnist has none"),
    (["--erase", "-0.5"], "erase must be zero or more, got -0.5"),
    (["--erase", "nan"], "erase must be zero or more, got nan"),
    (["--erase", "1.5"], "erase is the share of training images erased, from 0 to 1, got 1.5"),
    (["--progressive-resize", "-4"], "progressive-resize must be zero or more, got -4"),
    (["--progressive-resize", "28"], "--progressive-resize 28 is not a smaller size for images of 28 pixels: "
                                     "use 8 to 27, or 0 for none"),
    (["--progressive-resize", "4"], "--progressive-resize 4 is not a smaller size"),
    (["--image-size", "8", "--progressive-resize", "4"], "images of 8 pixels: it starts at 8 pixels, so the "
                                                          "images must be larger than that, or 0 for none"),
    (["--head", "fc", "--progressive-resize", "16"], "--progressive-resize needs a network that takes any image size"),
])
def test_a_bad_setting_is_one_line(tmp_path, capsys, folder_data, flags, message):
    code, _, err = run_cli(["train", "--dataset", "folder", "--root", folder_data, *FAST, *flags,
                            "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, message)


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "ten"],
     "nin train: error: argument --epochs: invalid int value: 'ten' (see nin train --help)"),
    (["train", "--epoks", "3"], "nin train: error: unrecognized arguments: --epoks 3 (see nin train --help)"),
    (["train", "--dropout-warmup", "yes"],
     "nin train: error: unrecognized arguments: yes (see nin train --help)"),  # a switch: --no-dropout-warmup
    (["eval", "run", "--topk", "all"], "nin eval: error: argument --topk: invalid int value: 'all'"),
    (["trian"], "nin: error: argument command: invalid choice: 'trian'"),
    ([], "nin: error: the following arguments are required: command (see nin --help)"),
    (["eval"], "nin eval: error: the following arguments are required: RUN_DIR_OR_CHECKPOINT"),
], ids=["wrong-type", "unknown-flag", "switch-given-a-value", "eval-wrong-type", "unknown-command", "no-command", "missing-argument"])
def test_a_command_line_the_parser_refuses_is_one_line_with_exit_code_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith(message.split(" (see")[0]) and message in err and len(err.strip().splitlines()) == 1, err


def test_every_train_option_says_what_it_does_and_its_default_or_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    options = capsys.readouterr().out.split("options:")[1]
    entries = [e for e in options.split("\n  --")[1:]]  # one entry per option, its help wrapped under it
    assert len(entries) > 40
    for entry in entries:
        text = " ".join(entry.split())
        assert "default:" in text or "{" in text or text.startswith(("resume", "help-experimental")), entry


@pytest.mark.parametrize("content, message", [
    (None, "recipe file {path} not found"),
    (b"epochs = 3 # caf\xe9\n", "recipe file {path} is not UTF-8 text"),
], ids=["missing", "not-utf8"])
def test_a_recipe_file_that_cannot_be_read_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "mine.toml"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run_cli(["train", "--recipe", path, *FAST], capsys)
    assert_one_line_error(code, err, message.format(path=path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_cuda_without_a_gpu_is_one_line_for_eval_and_predict(tiny_run, tmp_path, capsys, command):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    argv = ["eval", tiny_run] if command == "eval" else ["predict", tiny_run, image]
    code, _, err = run_cli([*argv, "--device", "cuda"], capsys)
    assert_one_line_error(code, err, "no CUDA GPU is available here; use --device cpu")


# --- files that are not checkpoints -----------------------------------------------------------------

def not_a_checkpoint(kind: str, tiny_run, tmp_path):
    path = tmp_path / "model.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "another-torch-file":
        torch.save({"state_dict": {"weight": torch.zeros(3)}}, path)  # readable, but not written by nin train
    elif kind == "truncated":
        path.write_bytes((tiny_run / "checkpoint.pt").read_bytes()[:5000])
    elif kind == "folder-without-checkpoint":
        path = tmp_path / "empty-run"
        path.mkdir()
    return path


@pytest.mark.parametrize("command", ["eval", "predict", "export", "resume"])
@pytest.mark.parametrize("kind, message", [
    ("empty", "is not a readable checkpoint"),
    ("another-torch-file", "is not a nin checkpoint"),
    ("truncated", "is not a readable checkpoint"),
    ("folder-without-checkpoint", "no checkpoint at"),
])
def test_a_file_that_is_not_a_checkpoint_is_one_line(tiny_run, tmp_path, capsys, command, kind, message):
    path = not_a_checkpoint(kind, tiny_run, tmp_path)
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    argv = {"eval": ["eval", path], "predict": ["predict", path, image], "resume": ["train", "--resume", path],
            "export": ["export", path, "--out", tmp_path / "exported"]}[command]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, message)


def test_eval_on_a_data_set_with_another_class_count_is_one_line(tiny_run, tmp_path, capsys):
    two_classes = tmp_path / "two"
    for name in ("cat", "dog"):
        (two_classes / "test" / name).mkdir(parents=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(two_classes / "test" / name / "a.png")
    code, _, err = run_cli(["eval", tiny_run, "--dataset", "folder", "--root", two_classes], capsys)
    assert_one_line_error(code, err, "the model predicts 3 classes but folder has 2")


# --- images for predict -----------------------------------------------------------------------------

def palette(mode_size=(20, 14)) -> Image.Image:
    image = Image.new("P", mode_size, 1)
    image.putpalette([0, 0, 0, 30, 200, 90] + [0, 0, 0] * 254)
    return image


IMAGES = {
    "rgba.png": lambda: Image.new("RGBA", (21, 17), (10, 200, 30, 128)),
    "grey-alpha.png": lambda: Image.new("LA", (16, 16), (90, 0)),
    "palette.png": palette,
    "palette-transparent.png": lambda: palette(),  # saved with a transparent index below
    "palette.gif": palette,
    "16-bit.png": lambda: Image.fromarray((np.arange(24 * 24, dtype=np.uint16) * 113).reshape(24, 24)),
    "1-bit.png": lambda: Image.new("1", (9, 9), 1),
    "cmyk.jpg": lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0)),
    "float.tiff": lambda: Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)),
}


def test_predict_converts_alpha_palette_and_16_bit_images(tiny_run, tmp_path, capsys):
    paths = []
    for name, make in IMAGES.items():
        path = tmp_path / name
        extra = {"transparency": 1} if name == "palette-transparent.png" else {}
        make().save(path, **extra)
        paths.append(path)
    assert Image.open(tmp_path / "16-bit.png").mode.startswith("I;16")

    code, out, err = run_cli(["predict", tiny_run, *paths, "--topk", "2"], capsys)

    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(p) for p in paths]
    assert all(line.count("%") == 2 for line in lines)


@pytest.mark.parametrize("name, content", [
    ("empty.png", b""),
    ("cut.png", "truncated PNG"),
    ("noise.jpg", bytes(range(256)) * 4),
    ("folder.png", "a folder"),
])
def test_predict_on_something_that_is_not_an_image_is_one_line(tiny_run, tmp_path, capsys, name, content):
    path = tmp_path / name
    if content == "truncated PNG":
        Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "whole.png")
        path.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    elif content == "a folder":
        path.mkdir()
    else:
        path.write_bytes(content)
    code, _, err = run_cli(["predict", tiny_run, path], capsys)
    assert_one_line_error(code, err, str(path))


# --- image folders for training -----------------------------------------------------------------------

def make_folder(root, train: dict[str, int], test: dict[str, int]):
    for split, counts in (("train", train), ("test", test)):
        for name, count in counts.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.new("RGB", (8, 8), (index * 40, 0, 0)).save(root / split / name / f"{index}.png")
    return root


@pytest.mark.parametrize("train, test, message", [
    ({}, {"a": 2, "b": 2}, "no class folders in"),
    ({"a": 0, "b": 0}, {"a": 2, "b": 2}, "no images (.png"),
    ({"a": 8}, {"a": 2}, "holds images of one class only (a)"),
    ({"a": 4, "b": 4}, {}, "no class folders in"),  # the test split is missing
    ({"a": 4, "b": 4}, {"a": 2, "c": 2}, "differ from the training split's"),
    ({"a": 1, "b": 1}, {"a": 1, "b": 1}, "2 training images are fewer than one batch of 4"),
    ({"a": 4, "b": 4, "c": 0}, {"a": 2, "b": 2, "c": 2}, "c holds no images: a class needs training images"),
], ids=["empty", "class-folders-without-images", "one-class", "no-test-split", "other-test-classes",
        "fewer-than-a-batch", "a-class-without-images"])
def test_a_folder_that_cannot_be_trained_on_is_one_line(tmp_path, capsys, train, test, message):
    root = make_folder(tmp_path / "data", train, test)
    (root / "train").mkdir(exist_ok=True)
    code, _, err = run_cli(["train", "--dataset", "folder", "--root", root, *FAST, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, message)


def test_a_class_without_test_images_is_null_in_the_json_not_nan(tiny_run, tmp_path, capsys):
    root = make_folder(tmp_path / "data", {}, {"blue": 2, "green": 2, "red": 0})
    code, out, _ = run_cli(["eval", tiny_run, "--root", root, "--json", "--device", "cpu"], capsys)
    assert code == 0 and "NaN" not in out
    assert json.loads(out)["per_class"]["red"] is None


def test_a_corrupt_image_among_the_training_images_is_named(tmp_path, capsys):
    root = make_folder(tmp_path / "data", {"a": 4, "b": 4}, {"a": 2, "b": 2})
    (root / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    code, _, err = run_cli(["train", "--dataset", "folder", "--root", root, *FAST, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "broken.png is not a readable image")


def test_resuming_after_the_data_gained_a_class_is_one_line(tmp_path, capsys):
    run = train_tiny_run(tmp_path)
    new_class = tmp_path / "data" / "train" / "yellow"
    new_class.mkdir()
    for index in range(4):
        Image.new("RGB", (20, 20), (200, 200, index)).save(new_class / f"{index}.png")
    (tmp_path / "data" / "test" / "yellow").mkdir()
    Image.new("RGB", (20, 20), (200, 200, 0)).save(tmp_path / "data" / "test" / "yellow" / "0.png")

    code, _, err = run_cli(["train", "--resume", run, "--epochs", "2"], capsys)

    assert_one_line_error(code, err, "the checkpoint does not fit this run's model or optimizer")


def test_resuming_a_longer_run_with_fewer_epochs_is_refused(tmp_path, capsys):
    run = train_tiny_run(tmp_path, epochs=2)
    code, _, err = run_cli(["train", "--resume", run, "--epochs", "1"], capsys)
    assert_one_line_error(code, err, "has trained 2 epochs already: --epochs must be 2 or more, got 1")
    assert '"epochs": 2' in (run / "config.json").read_text()


@pytest.mark.parametrize("damage, message", [
    (lambda state: state.pop("normalization"), "is an incomplete nin checkpoint: it lacks normalization"),
    (lambda state: state.update(classes=state["classes"][:2]), "inconsistent: 2 class names for a model with 3"),
], ids=["a-missing-key", "fewer-class-names-than-outputs"])
@pytest.mark.parametrize("command", ["eval", "export", "resume"])
def test_a_checkpoint_with_the_right_marker_but_damaged_contents_is_one_line(tiny_run, tmp_path, capsys, damage,
                                                                              message, command):
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    damage(state)
    path = tmp_path / "damaged.pt"
    torch.save(state, path)
    argv = {"eval": ["eval", path], "export": ["export", path, "--out", tmp_path / "m"],
            "resume": ["train", "--resume", path]}[command]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, message)


def test_images_too_large_for_the_memory_and_the_disk_are_refused_before_they_are_decoded(
        tmp_path, capsys, folder_data, monkeypatch):
    monkeypatch.setattr("nin.hardware.free_memory", lambda device: 2 ** 30)  # a training step fits,
    monkeypatch.setattr("nin.data.datasets.HELD_BYTES_PER_PIXEL", 10 ** 9)  # the images held in memory do not
    monkeypatch.setattr("nin.data.pack._free_disk", lambda folder: 100_000)  # and 100 kB of disk
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = run_cli(["train", "--dataset", "folder", "--root", folder_data, *FAST, "--image-size", "64",
                            "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "12 images of 3x64x64 fit neither in memory nor on the cache's disk")
    assert "lower --image-size" in err and not list((tmp_path / "cache").glob("packs/*/*"))


def test_a_batch_too_large_for_the_memory_is_refused_before_training(tmp_path, capsys, folder_data, monkeypatch):
    monkeypatch.setattr("nin.hardware.free_memory", lambda device: 5_000_000)  # the 12 images fit, a step not
    code, _, err = run_cli(["train", "--dataset", "folder", "--root", folder_data, *FAST, "--model", "nin_cifar10",
                            "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "training nin_cifar10 on batches of 4 images of 32 pixels needs about")
    assert "lower --batch-size or --image-size" in err and not (tmp_path / "run").exists()


def test_images_too_large_for_a_training_step_are_refused_before_one_is_decoded(tmp_path, capsys, folder_data,
                                                                               monkeypatch):
    """A14: a step's memory follows from the image shape and the batch; at 3000 pixels a side the run was refused
    only after every image had been decoded at that size (into memory, or packed into the cache)."""
    monkeypatch.setattr("nin.hardware.free_memory", lambda device: 2 * 2 ** 30)  # the 12 images fit (1.6 GB)
    monkeypatch.setattr("nin.data.images.load_image", lambda *_: pytest.fail("an image was decoded"))
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = run_cli(["train", "--dataset", "folder", "--root", folder_data, "--epochs", "1", *QUIET,
                            "--image-size", "3000", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "on batches of 12 images of 3000 pixels needs about")
    assert not list((tmp_path / "cache").rglob("*.*")) and not (tmp_path / "run").exists()


def test_a_dangling_link_among_the_training_images_is_one_line(tmp_path, capsys, folder_data):
    (folder_data / "train" / "blue" / "gone.png").symlink_to(tmp_path / "moved-away.png")
    code, _, err = run_cli(["train", "--dataset", "folder", "--root", folder_data, *FAST, "--out", tmp_path / "run"],
                           capsys)
    assert_one_line_error(code, err, "gone.png is a link to")


def test_a_100_megapixel_image_is_read_and_the_size_limit_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    huge = tmp_path / "huge.png"
    Image.new("RGB", (12_000, 8_400), (200, 30, 30)).save(huge)  # 100.8 megapixels, above PIL's own default
    code, out, _ = run_cli(["predict", tiny_run, huge, "--device", "cpu", "--topk", "1"], capsys)
    assert code == 0 and out.startswith(f"{huge}: ")
    monkeypatch.setenv("NIN_MAX_IMAGE_PIXELS", "50000000")
    code, _, err = run_cli(["predict", tiny_run, huge, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "has 12000x8400 pixels, more than the limit of 50,000,000: raise it with "
                                     "NIN_MAX_IMAGE_PIXELS=100800000")
    monkeypatch.setenv("NIN_MAX_IMAGE_PIXELS", "a lot")
    code, _, err = run_cli(["predict", tiny_run, huge, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "NIN_MAX_IMAGE_PIXELS must be a whole number of pixels, got 'a lot'")


def test_library_warnings_never_come_above_a_one_line_error(tmp_path, capsys, monkeypatch):
    def warn_then_fail(_args):
        warnings.warn("a torch internal detail", UserWarning)
        raise NinError("the real problem")

    monkeypatch.setattr("nin.cli.cmd_models", warn_then_fail)
    code, _, err = run_cli(["models"], capsys)
    assert_one_line_error(code, err, "the real problem")


def test_library_warnings_of_a_command_that_succeeds_are_still_shown(monkeypatch):
    def warn_then_succeed(_args):
        warnings.warn("worth knowing", UserWarning)
        return 0

    monkeypatch.setattr("nin.cli.cmd_models", warn_then_succeed)
    with pytest.warns(UserWarning, match="worth knowing"):  # shown once the command is done
        assert main(["models"]) == 0


def test_eval_scores_a_split_whose_classes_come_in_another_order_by_class_name(tiny_run, monkeypatch):
    import nin.inference
    from nin.data import DeviceLoader, Split

    trained = nin.inference.load(tiny_run)  # classes blue, green, red
    own = nin.inference._load_split(trained, "folder", str(tiny_run.parent / "data"), "test")
    keep = torch.cat([(own.labels == 0).nonzero().flatten()[:1], (own.labels > 0).nonzero().flatten()])
    images, labels = own.images[keep], own.labels[keep]  # one blue image: the rows of the confusion differ
    order = ["green", "red", "blue"]
    reordered = Split(images, torch.tensor([order.index(own.classes[y]) for y in labels]), order)
    monkeypatch.setattr(nin.inference, "_load_split", lambda *args: reordered)
    expected = nin.inference.evaluate(trained, DeviceLoader(images, labels, trained.info.normalize(), batch_size=64),
                                      trained.info.classes)
    assert nin.inference.evaluate_trained(trained)["confusion"] == expected["confusion"]
