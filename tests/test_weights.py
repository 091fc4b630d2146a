"""Weights shipped inside the package: a model that predicts without training, torchvision style, and
scores on the real Fashion-MNIST test set what its JSON records."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import nin
from nin.cli import main
from nin.data import load_dataset
from nin.errors import NinError
from nin.models import SHIPPED_WEIGHTS, shipped_weights

# CPUs add in different orders, so an image whose two best logits are within about 1e-6 may change class
# on another machine: the recorded accuracy is met exactly where it was recorded, within 3 images elsewhere.
ELSEWHERE = 3 / 10_000


def recorded(name: str) -> dict:
    return json.loads(shipped_weights(name)[1].with_suffix(".json").read_text())


def test_shipped_weights_are_small_safe_files_that_say_how_they_were_made():
    for name in SHIPPED_WEIGHTS:
        model, path = shipped_weights(name)
        assert path.suffix == ".safetensors" and path.stat().st_size < 5_000_000
        source = recorded(name)["source"]
        assert source["model"] == model and source["recipe"] and source["commit"] and source["test_images"] == 10_000


def test_create_model_and_torch_hub_load_the_fashion_mnist_weights():
    model = nin.create_model("nin_mnist_bn", weights="fashion-mnist")
    assert model.info.classes[1] == "Trouser" and model.info.size == 28
    hub = torch.hub.load(str(Path(__file__).parent.parent), "nin_mnist_bn", source="local", weights="fashion-mnist")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), hub.state_dict().values()))
    with pytest.raises(NinError, match="the shipped weights .* are nin_mnist_bn's, not nin_mnist's"):
        nin.create_model("nin_mnist", weights="fashion-mnist")
    plain = nin.create_model("nin_mnist", weights="fashion-mnist-plain")  # the paper's network, no BatchNorm
    assert plain.info.name == "nin_mnist" and plain.info.classes == model.info.classes


@pytest.mark.parametrize("name", SHIPPED_WEIGHTS)
def test_nin_eval_weights_scores_the_recorded_accuracy_on_the_real_test_set(name, fashion_mnist_root, capsys):
    assert main(["eval", "--weights", name, "--json", "--device", "cpu", "--amp", "off"]) == 0  # recorded in fp32
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 10_000
    assert report["accuracy"] == pytest.approx(recorded(name)["source"]["test_accuracy"], abs=ELSEWHERE)


def test_nin_predict_weights_names_a_trouser(fashion_mnist_root, tmp_path, capsys):
    test = load_dataset("fashion-mnist", None, "test")
    Image.fromarray(test.images[2, 0].numpy()).save(tmp_path / "trouser.png")  # test image 2 is a trouser
    assert main(["predict", "--weights", "fashion-mnist", str(tmp_path / "trouser.png"), "--topk", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'trouser.png'}: Trouser ")


@pytest.mark.parametrize("argv, message", [
    (["eval", "--weights", "imagenet"], "no shipped weights named 'imagenet': expected fashion-mnist"),
    (["eval", "runs/x", "--weights", "fashion-mnist"], "give a run, a checkpoint or an export, or --weights NAME"),
    (["predict", "photo.png"], "nin predict needs a run (or --weights NAME) and at least one image"),
])
def test_wrong_weights_options_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nin: error: ") and message in err and err.count("\n") == 1
