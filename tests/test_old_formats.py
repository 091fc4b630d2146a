"""Files written by an earlier main still load and compute the same: a tiny run's checkpoint and its
safetensors export as main wrote them on 2026-11-27 (tests/data/main-2026-11-27, made with
tests/tiny_run.py), with the logits they gave then."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import nin
from nin.data import load_dataset
from nin.train import resume_config
from tiny_run import write_folder_dataset

OLD = Path(__file__).parent / "data" / "main-2026-11-27"


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
    root = write_folder_dataset(tmp_path_factory.mktemp("old-formats"))
    return load_dataset("folder", root, "test", image_size=16, channels=3, cache=False).images


def expected_logits() -> torch.Tensor:
    return torch.tensor(json.loads((OLD / "expected.json").read_text())["logits"])


def test_an_old_checkpoint_loads_and_gives_the_same_logits(test_images):
    model = nin.load(OLD / "checkpoint.pt")
    with torch.no_grad():
        logits = model(model.info.normalize()(test_images))
    assert torch.allclose(logits, expected_logits(), atol=1e-5)
    assert model.info.classes == ["blue", "green", "red"]


def test_an_old_export_loads_and_gives_the_same_logits(test_images):
    model = nin.load(OLD / "model.safetensors")
    with torch.no_grad():
        logits = model(model.info.normalize()(test_images))
    assert torch.allclose(logits, expected_logits(), atol=1e-5)


def test_an_old_run_can_be_resumed_for_more_epochs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(OLD / "checkpoint.pt", run / "checkpoint.pt")
    config = resume_config(str(run), {"epochs": 2})
    assert config.epochs == 2 and config.model == "nin_mnist_bn"
