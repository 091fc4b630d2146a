"""A trained model's one description, ``nin.card.ModelInfo``: it holds the fitted preprocessing, writes and
reads the checkpoint's model part and the export's JSON, and ``nin.load`` (the one loader) is what every
command that reads a model goes through."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import nin
import nin.inference
from nin.card import FORMAT_VERSION, ModelInfo
from nin.checkpoint import KEYS, load_checkpoint
from nin.cli import main
from nin.data.preprocess import Lcn, Standardize
from nin.errors import NinError
from nin.export import export_model
from tiny_run import write_folder_dataset

OLD = Path(__file__).parent / "data" / "main-2026-11-27"  # a checkpoint and an export of version 1


def standardize_info() -> ModelInfo:
    return ModelInfo("nin_mnist", {"num_classes": 3}, ["a", "b", "c"], 28, 1, [0.5], [0.25], dataset="folder")


def test_the_info_holds_its_fitted_preprocessing_and_hands_out_that_object():
    info = standardize_info()
    assert isinstance(info.preprocess, Standardize) and info.normalize() is info.normalize()
    lcn = ModelInfo("nin_mnist", {}, list("abc"), 16, 1, preprocess=Lcn.fit(kernel_size=5))
    assert lcn.normalize() is lcn.preprocess and lcn.kind == "lcn" and lcn.mean is None
    from_state = ModelInfo("nin_mnist", {}, list("abc"), 16, 1, preprocess=Lcn.fit(kernel_size=5).state_dict())
    assert isinstance(from_state.preprocess, Lcn)  # a state given by hand is rebuilt once, at construction
    with pytest.raises(NinError, match="normalisation has 2 means and 1 stds for 1 channels"):
        ModelInfo("nin_mnist", {}, list("abc"), 28, 1, [0.5, 0.5], [0.25])


def test_the_checkpoint_model_part_round_trips_with_the_keys_of_the_first_format():
    info = standardize_info()
    weights = nin.create_model("nin_mnist", num_classes=3).state_dict()
    part = info.to_checkpoint(weights)
    assert set(part) == set(KEYS) - {"optimizer", "epoch", "step", "state", "rng", "config"}
    assert part["normalization"] == {"kind": "standardize", "mean": [0.5], "std": [0.25]}
    state = {**part, "config": {"root": "data", "train_split": "train", "eval_split": "val"}}
    read_weights, again = ModelInfo.from_checkpoint(state, "run/checkpoint.pt")
    assert read_weights is weights
    assert (again.name, again.kwargs, again.classes, again.size, again.channels, again.dataset, again.mean,
            again.std) == (info.name, info.kwargs, info.classes, 28, 1, "folder", [0.5], [0.25])
    assert again.training == {"dataset": "folder", "splits": "train", "val_held_out": True, "root": "data"}
    averaged = {name: tensor + 1 for name, tensor in weights.items()}
    assert ModelInfo.from_checkpoint({**state, "ema_model": averaged}, "x")[0] is averaged  # --ema: the average


def test_every_export_is_written_as_one_format_version_and_version_1_is_still_read(tmp_path):
    info = standardize_info()
    info.training = {"dataset": "folder", "splits": "train", "val_held_out": False, "root": "runs/data"}
    config = info.to_json("safetensors", "m.safetensors")
    assert config["format_version"] == FORMAT_VERSION == 2 and "root" not in config["training"]
    lcn = ModelInfo("nin_mnist", {}, list("abc"), 16, 1, preprocess=Lcn.fit())
    assert lcn.to_json("onnx", "m.onnx")["format_version"] == FORMAT_VERSION
    again = ModelInfo.from_json({**config, "format_version": 1}, "m.json")
    assert (again.mean, again.std, again.training["splits"]) == ([0.5], [0.25], "train")
    old = json.loads((OLD / "model.json").read_text())
    assert old["format_version"] == 1 and ModelInfo.from_json(old, "model.json").kind == "standardize"


def test_nin_load_gives_the_same_description_from_a_checkpoint_and_from_its_export(tmp_path):
    from_checkpoint = nin.load(OLD / "checkpoint.pt")
    export_model(from_checkpoint, from_checkpoint.info, "safetensors", tmp_path / "m")
    from_export = nin.load(tmp_path / "m.safetensors")
    for field in ("name", "kwargs", "classes", "size", "channels", "dataset", "mean", "std", "kind"):
        assert getattr(from_export.info, field) == getattr(from_checkpoint.info, field), field
    assert from_export.info.training == {k: v for k, v in from_checkpoint.info.training.items() if k != "root"}


def test_nin_load_refuses_an_export_whose_weights_are_not_numbers(tmp_path):
    from safetensors.torch import load_file, save_file

    shutil.copy(OLD / "model.json", tmp_path / "model.json")
    weights = load_file(str(OLD / "model.safetensors"))
    weights["features1.0.weight"].view(-1)[0] = float("nan")
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(NinError, match="is a damaged export: its weights hold NaN or infinite values"):
        nin.load(tmp_path / "model.safetensors")


def test_every_command_that_reads_a_model_reads_it_with_nin_load(tmp_path, monkeypatch, capsys):
    data = write_folder_dataset(tmp_path / "data")
    image = str(data / "test" / "red" / "0.png")
    real_load, read = nin.inference.load, []
    monkeypatch.setattr(nin.inference, "load", lambda path, *a, **k: read.append(Path(path)) or real_load(path, *a, **k))
    monkeypatch.setattr("nin.export.load", nin.inference.load)  # export.py imported it by name
    checkpoint = OLD / "checkpoint.pt"
    commands = {"eval": ["eval", checkpoint, "--dataset", "folder", "--root", data],
                "predict": ["predict", checkpoint, image],
                "visualize": ["visualize", checkpoint, image, "--out", tmp_path / "maps"],
                "export": ["export", checkpoint, "--out", tmp_path / "m"],
                "eval of the export": ["eval", tmp_path / "m.safetensors", "--dataset", "folder", "--root", data]}
    for name, argv in commands.items():
        read.clear()
        assert main([str(a) for a in argv]) == 0, (name, capsys.readouterr().err)
        assert read == [Path(argv[1])], name
    capsys.readouterr()
