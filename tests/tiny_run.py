"""A real run folder in seconds: `nin.train.fit` on a tiny image-folder data set (3 classes, 16x16 RGB)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nin.config import TrainConfig
from nin.train import fit

CLASSES = ("blue", "green", "red")  # the folder reader sorts class folders by name


def write_folder_dataset(root: Path, train_per_class: int = 4, test_per_class: int = 3, seed: int = 0) -> Path:
    """ROOT/{train,test}/CLASS/*.png: noisy images tinted by class, 20x20 (resized to 16 on reading)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for channel, name in zip((2, 1, 0), CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 120, (20, 20, 3), dtype=np.uint8)
                pixels[:, : 10 + index, channel] += 120  # asymmetric, so a flip changes the image
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def train_tiny_run(base: Path, model: str = "nin_mnist_bn", **settings) -> Path:
    """One epoch on the folder data set; returns the run folder (checkpoint.pt, metrics.csv, config.json).
    ``settings``: other TrainConfig fields (e.g. ``preprocess="lcn"``, ``epochs=2``)."""
    data = write_folder_dataset(base / "data")
    run = base / "run"
    fields = dict(model=model, dataset="folder", root=str(data), image_size=16, epochs=1, batch_size=4,
                  eval_batch_size=8, device="cpu", progress=False, out=str(run), seed=0)
    config = TrainConfig(**{**fields, **settings})
    with pytest.MonkeyPatch.context() as patch:  # module-scoped fixtures run before conftest's private cache
        patch.setenv("NIN_CACHE_DIR", str(base / "cache"))
        fit(config, log=lambda *_: None)
    return run
