"""The `nin` command as a user meets it: train, eval, predict, and one-line errors with exit code 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from nin.cli import main
from nin.data import load_dataset
from nin.inference import PREDICT_BATCH

TINY_TRAIN = ["--train-subset", "512", "--test-subset", "500", "--epochs", "1", "--batch-size", "64",
              "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, fashion_mnist_root):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--recipe", "fashion-mnist", *TINY_TRAIN, "--out", str(run)]) == 0
    return run


def test_train_prints_accuracy_and_run_folder(trained_run, capsys):
    assert (trained_run / "checkpoint.pt").is_file() and (trained_run / "metrics.csv").is_file()


def test_eval_json_reports_accuracy_error_count_and_per_class(trained_run, capsys):
    assert main(["eval", str(trained_run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["accuracy"] <= 1.0
    assert report["error"] == pytest.approx(1 - report["accuracy"])
    assert report["n"] == 10_000  # the whole test split, not the training run's subset
    assert set(report["per_class"]) == {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                        "Shirt", "Sneaker", "Bag", "Ankle boot"}


def test_eval_accepts_the_checkpoint_file_too(trained_run, tmp_path, capsys):
    test = load_dataset("fashion-mnist", None, "test")
    for index, name in enumerate(test.classes):  # ten images as a folder: what is tested is the path accepted
        folder = tmp_path / "test" / name.replace("/", "-")
        folder.mkdir(parents=True)
        Image.fromarray(test.images[int((test.labels == index).nonzero()[0]), 0].numpy()).save(folder / "0.png")
    assert main(["eval", str(trained_run / "checkpoint.pt"), "--dataset", "folder", "--root", str(tmp_path)]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_predict_converts_any_image_to_the_models_input(trained_run, tmp_path, capsys):
    test = load_dataset("fashion-mnist", None, "test")
    grey = tmp_path / "trouser.png"
    Image.fromarray(test.images[2, 0].numpy()).save(grey)  # test image 2 is a trouser
    big_rgba = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 45, 4), dtype=np.uint8), "RGBA").save(big_rgba)
    assert main(["predict", str(trained_run), str(grey), str(big_rgba), "--topk", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [len(r["top"]) for r in results] == [3, 3]
    probabilities = [t["probability"] for t in results[0]["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001


def test_predict_works_through_many_files_a_batch_at_a_time_in_order(trained_run, tmp_path, capsys):
    test = load_dataset("fashion-mnist", None, "test")
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(test.images[index, 0].numpy()).save(paths[-1])
    many = [paths[i % 3] for i in range(PREDICT_BATCH * 2 + 5)]  # three batches, the last one short
    assert main(["predict", str(trained_run), *map(str, many), "--topk", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(many) and all(line.startswith(f"{path}: ") for line, path in zip(lines, many))
    assert len({line for line in lines if line.startswith(str(paths[0]))}) == 1  # the same answer in every batch


@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "nin_cifar11", *TINY_TRAIN], "unknown model 'nin_cifar11'"),
    (["train", "--dataset", "imagenet21k", *TINY_TRAIN], "unknown data set 'imagenet21k'"),
    (["train", "--dataset", "cifar10", "--root", "/nonexistent", *TINY_TRAIN], "CIFAR-10 not found"),
    (["train", "--recipe", "no-such-recipe"], "unknown recipe"),
    (["train", "--epochs", "0"], "epochs must be positive"),
    (["train", "--batch-size", "-3"], "batch-size must be positive"),
    (["train", "--lr", "-0.1"], "lr must be positive"),
    (["train", "--lookahead", "-2"], "lookahead must be zero or more"),
    (["train", "--tta", "mirror"], "tta must be one of '' (none), flip, shift, flip-shift, got 'mirror'"),
    (["train", "--dataset", "mnist", "--tta", "flip-shift", *TINY_TRAIN], "this run trains without flips"),
    (["train", "--flip", "no", "--tta", "flip", *TINY_TRAIN], "--tta flip mirrors the test images"),
    (["eval", "/nonexistent/run"], "no checkpoint at"),
    (["data", "mnist", "--root", "/nonexistent"], "get it with: nin data mnist"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, message, capsys, tmp_path):
    assert main([*argv, *(["--out", str(tmp_path / "r")] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nin: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert main(["train", "--device", "cuda", *TINY_TRAIN]) == 2
    assert "no CUDA GPU is available here; use --device cpu" in capsys.readouterr().err


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path, capsys):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not a checkpoint at all")
    assert main(["eval", str(fake)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_an_unreadable_image_is_refused(trained_run, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("this is text, not a PNG")
    assert main(["predict", str(trained_run), str(text)]) == 2
    assert "not a readable image" in capsys.readouterr().err


def test_the_console_script_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "nin", "eval", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.startswith("nin: error: no checkpoint")


@pytest.mark.parametrize("argv", [["recipes"], ["models"]])
def test_a_reader_that_leaves_early_stops_the_command_quietly(argv):
    """`nin recipes | head -1`: no BrokenPipeError traceback, the exit status of a Unix tool (128 + SIGPIPE)."""
    command = subprocess.Popen([sys.executable, "-m", "nin", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    command.stdout.close()  # before it writes anything
    assert command.wait(timeout=120) == 141
    assert command.stderr.read() == b""


def test_eval_and_predict_take_amp_and_bf16_agrees_with_fp32(trained_run, tmp_path, capsys):
    test = load_dataset("fashion-mnist", None, "test")
    for index, name in enumerate(test.classes):  # one image per class as a folder: bf16 is emulated on many CPUs
        folder = tmp_path / "test" / name.replace("/", "-")
        folder.mkdir(parents=True)
        Image.fromarray(test.images[int((test.labels == index).nonzero()[0]), 0].numpy()).save(folder / "0.png")
    image = tmp_path / "test" / "Trouser" / "0.png"
    answers, accuracies = {}, {}
    for amp in ("off", "bf16"):
        assert main(["predict", str(trained_run), str(image), "--topk", "1", "--json", "--amp", amp]) == 0
        answers[amp] = json.loads(capsys.readouterr().out)[0]["top"][0]
        assert main(["eval", str(trained_run), "--dataset", "folder", "--root", str(tmp_path), "--json",
                     "--amp", amp]) == 0
        accuracies[amp] = json.loads(capsys.readouterr().out)["accuracy"]
    assert answers["bf16"]["class"] == answers["off"]["class"]
    assert answers["bf16"]["probability"] == pytest.approx(answers["off"]["probability"], abs=0.05)
    assert accuracies["bf16"] == pytest.approx(accuracies["off"], abs=0.1)  # at most one image of ten differs
    with pytest.raises(SystemExit) as stopped:
        main(["eval", str(trained_run), "--amp", "fp16"])
    assert stopped.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err


def test_every_option_and_positional_of_every_command_has_help():
    import argparse

    from nin.cli import get_parser

    commands = next(a for a in get_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"nin {name} {action.option_strings[0] if action.option_strings else action.metavar or action.dest}"
               for name, sub in commands.choices.items() for action in sub._actions
               if not action.help or not action.help.strip()]
    assert missing == [] and len(commands.choices) >= 10
