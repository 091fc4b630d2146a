"""Models that cannot predict, and predictions that would mislead: damaged checkpoints, weights that are not
numbers, exports nin does not run, class names that would break the output, and a model scored on the
images it learnt from. Each is one line (exit 2) that names the file, or the right answer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nin.card import ModelInfo
from nin.cli import main
from nin.data import Normalize
from tiny_run import train_tiny_run


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    """A trained run on grey (1-channel) 16x16 images of the 3-class folder of tests/tiny_run.py."""
    return train_tiny_run(tmp_path_factory.mktemp("damaged"), channels=1)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
    return path


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(argv, capsys) -> str:
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.startswith("nin: error: ") and len(err.strip().splitlines()) == 1, err
    return err


def damaged(run, tmp_path, damage) -> str:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    damage(state)
    torch.save(state, tmp_path / "damaged.pt")
    return tmp_path / "damaged.pt"


def set_nan(state):
    state["model"][next(iter(state["model"]))].view(-1)[0] = float("nan")


@pytest.mark.parametrize("damage, message", [
    (lambda state: state["input"].pop("dataset"), "its input record"),
    (lambda state: state["input"].update(size=-5), "its input size -5 is not a size in pixels"),
    (lambda state: state["input"].update(channels=3), "its model reads 1 channels, its input has 3"),
    (lambda state: state["normalization"].update(mean=[0.5] * 3, std=[0.25] * 3),
     "its preprocessing turns 1-channel images into (3, 16, 16)"),
    (set_nan, "its weights hold NaN or infinite values"),
], ids=["input-without-dataset", "size-minus-5", "3-channel-input", "3-channel-preprocessing", "nan-weight"])
@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_a_damaged_checkpoint_is_one_line_that_blames_it(grey_run, tmp_path, image, capsys, damage, message, command):
    path = damaged(grey_run, tmp_path, damage)
    argv = {"eval": ["eval", path], "predict": ["predict", path, image],
            "export": ["export", path, "--out", tmp_path / "m"]}[command]
    err = one_line_error(argv, capsys)
    assert f"{path} is a damaged checkpoint: " in err and message in err, err
    assert not list(tmp_path.glob("m.*"))


class Overflowing(torch.nn.Module):
    """Finite weights whose outputs overflow to infinity: softmax then gives NaN."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(3e38))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_ones(len(images), 3) * self.scale * 10


def test_predict_never_prints_nan_and_its_json_stays_json(tmp_path, image, capsys, monkeypatch):
    trained = Overflowing()
    trained.info = ModelInfo("overflowing", {}, ["a", "b", "c"], 16, 1, dataset="folder",
                             preprocess=Normalize([0.5], [0.25]))
    monkeypatch.setattr("nin.inference.load", lambda *_, **__: trained)
    for json_flag in ([], ["--json"]):
        code, out, err = run_cli(["predict", tmp_path / "model.pt", image, *json_flag], capsys)
        assert code == 2 and out == "" and "nan%" not in err  # nothing printed: no JSON cut short either
        assert f"the model's outputs for {image} are not numbers" in err and len(err.strip().splitlines()) == 1


def test_a_class_name_with_a_newline_keeps_one_line_per_image(grey_run, tmp_path, image, capsys):
    path = damaged(grey_run, tmp_path, lambda state: state.update(classes=["blue\nsky", "green", "red"]))
    code, out, _ = run_cli(["predict", path, image, image, "--topk", "3"], capsys)
    assert code == 0 and len(out.splitlines()) == 2 and all("blue\\nsky" in line for line in out.splitlines())
    code, out, _ = run_cli(["predict", path, image, "--topk", "3", "--json"], capsys)
    assert code == 0 and "blue\nsky" in [top["class"] for top in json.loads(out)[0]["top"]]  # JSON keeps it as is


def test_predict_on_a_torchscript_or_onnx_export_says_what_it_reads(grey_run, tmp_path, image, capsys):
    assert main(["export", str(grey_run), "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 0
    (tmp_path / "renamed.pt").write_bytes((tmp_path / "ts.torchscript.pt").read_bytes())
    (tmp_path / "m.onnx").write_bytes(b"an ONNX file")
    onnx_json = json.loads((tmp_path / "ts.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**onnx_json, "file": "m.onnx", "file_format": "onnx"}))
    capsys.readouterr()
    for model, kind in (("ts.torchscript.pt", "a TorchScript export"), ("renamed.pt", "a TorchScript export"),
                        ("ts.json", "the JSON of a TorchScript export"), ("m.onnx", "an ONNX export"),
                        ("m.json", "the JSON of an ONNX export")):
        err = one_line_error(["predict", tmp_path / model, image], capsys)
        assert f"is {kind}, for onnxruntime or torch.jit.load" in err and "a safetensors export" in err, err


def test_eval_refuses_val_for_a_model_trained_on_it_and_warns_on_its_training_split(grey_run, capsys):
    err = one_line_error(["eval", "--weights", "fashion-mnist", "--split", "val"], capsys)
    assert "trained on every image of Fashion-MNIST's train split, the val images included" in err
    err = one_line_error(["eval", grey_run, "--split", "val"], capsys)
    assert "the val images included" in err and "--split test" in err
    code, out, err = run_cli(["eval", grey_run, "--split", "train"], capsys)
    assert code == 0 and "accuracy" in out
    assert err.startswith("nin: warning: the model was trained on") and "these are the images it learnt from" in err


def test_an_export_records_the_images_it_learnt_from(grey_run, tmp_path):
    assert main(["export", str(grey_run), "--out", str(tmp_path / "m")]) == 0
    training = json.loads((tmp_path / "m.json").read_text())["training"]
    assert training == {"dataset": "folder", "splits": "train", "val_held_out": False}
