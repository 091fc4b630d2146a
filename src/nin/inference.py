"""A trained model back from its checkpoint, ready to evaluate and predict with what training applied."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .card import ModelInfo, read_safetensors
from .checkpoint import load_checkpoint
from .data import DATASETS, DeviceLoader, dataset_info, load_image
from .data.splits import select_images
from .data.preprocess import preprocess_from_state
from .errors import NinError
from .evaluate import evaluate, tta_mode
from .hardware import autocast, use_bf16
from .models import NIN, create_model, load_state


@dataclass
class Trained:
    model: NIN
    classes: list[str]
    normalize: object  # the run's preprocessing (nin.data.preprocess): uint8 batch -> float batch
    size: int
    channels: int
    dataset: str
    config: dict
    name: str = ""  # the model variant and the arguments that rebuild it (for exports)
    kwargs: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> Trained:
    """A run folder, a checkpoint, or a ``nin export``/``nin convert`` safetensors file (or its JSON)."""
    if Path(path).suffix in (".safetensors", ".json"):
        return _trained_from_export(path, device)
    state = load_checkpoint(path)
    try:
        model = create_model(state["model_name"], **state["model_kwargs"])
        model.load_state_dict(state.get("ema_model", state["model"]))  # a run with --ema: its average
    except (KeyError, RuntimeError) as error:
        raise NinError(f"{path}: the weights do not fit model {state.get('model_name')!r} "
                       f"({str(error).splitlines()[0]})") from None
    model.to(device).eval()
    norm = state["normalization"]
    return Trained(model, list(state["classes"]), preprocess_from_state(norm), state["input"]["size"],
                   state["input"]["channels"], state["input"]["dataset"], state["config"],
                   state["model_name"], dict(state["model_kwargs"]))


def _trained_from_export(path: str | Path, device) -> Trained:
    model = load(path, device)
    info = model.info
    return Trained(model, list(info.classes), info.normalize(), info.size, info.channels, info.dataset, {},
                   info.name, dict(info.kwargs))


def load(path: str | Path, device: str | torch.device = "cpu") -> NIN:
    """``nin.load``: a trained model ready for evaluation, from ``nin export`` safetensors weights (or their
    JSON) or from a run folder / checkpoint. ``model.info`` (a ``ModelInfo``) holds the class names, the
    input size and channels and the preprocessing; ``model.info.normalize()(uint8_images)`` is the input."""
    path = Path(path).expanduser()
    if path.suffix in (".safetensors", ".json"):
        state, info = read_safetensors(path)
        if info is None:
            raise NinError(f"no config for {path}: expected {path.with_suffix('.json').name} beside it "
                           "(written by `nin export`); or use nin.create_model(name, weights=PATH)")
        model = create_model(info.name, **info.kwargs)
        load_state(model, state, path, info.name)
    else:
        trained = load_trained(path, "cpu")
        model, info = trained.model, ModelInfo.from_trained(trained)
    model.info = info
    return model.to(device).eval()


def evaluate_trained(trained: Trained, dataset: str | None = None, root: str | None = None,
                     split: str = "test", batch_size: int = 1024, *, topk: tuple[int, ...] = (),
                     tta: str | bool = "", amp: str = "auto") -> dict:
    """Accuracy of a trained model on a split (by default the test split of the data it was trained on).
    ``topk``: also these top-k accuracies; ``tta``: flip test-time augmentation (refused for data sets
    whose class a horizontal flip may change, such as digits)."""
    tta = tta_mode(tta)
    name = dataset or trained.dataset
    if not name:
        raise NinError("the model does not say which data set it was trained on: give --dataset (and --root)")
    if "flip" in tta:
        check_tta(name)
    if root is None and dataset is None:  # the training data, where training found it
        root = trained.config.get("root") or None
    data = _load_split(trained, name, root, split)
    if len(data.classes) != len(trained.classes):
        raise NinError(f"the model predicts {len(trained.classes)} classes but {name} has {len(data.classes)}")
    if data.images.shape[1:] != (trained.channels, trained.size, trained.size):
        raise NinError(f"{name} images are {tuple(data.images.shape[1:])}; the model was trained on "
                       f"{(trained.channels, trained.size, trained.size)}")
    labels = data.labels
    if data.classes != trained.classes and sorted(data.classes) == sorted(trained.classes):
        # the same classes in another order (an image folder sorts them by name): labels follow the model's
        labels = torch.tensor([trained.classes.index(name) for name in data.classes])[labels]
    loader = DeviceLoader(data.images, labels, trained.normalize, batch_size=batch_size, device=trained.device)
    return evaluate(trained.model, loader, trained.classes, topk=topk, tta=tta,
                    amp=use_bf16(amp, trained.device))


def _load_split(trained: Trained, name: str, root, split: str):
    """One split; ``val`` is the paper's validation split, held out of the training split(s) the run used."""
    parts = (trained.config.get("train_split") or "train") if name == trained.dataset else "train"
    return select_images(name, root, parts, split, image_size=trained.size, channels=trained.channels,
                         need_train=False)[1]


def check_tta(dataset: str) -> None:
    info = dataset_info(dataset)
    if not info.flip:
        allowed = ", ".join(name for name, other in DATASETS.items() if other.flip)
        raise NinError(f"--tta flip is not offered for {info.title}: it averages each image with its horizontal "
                       f"flip, which can change a {info.title} image's class (--tta shift can); data sets that "
                       f"allow flips: {allowed}")


PREDICT_BATCH = 64  # images decoded and run at once: memory stays flat however many files are given


def predict_files(trained: Trained, paths: list[str], topk: int = 5, amp: str = "auto"):
    """Top-k (class, probability) for each image file, converted to the model's size and channels; yields
    one result per image, in order, working through the files a batch at a time."""
    k = min(topk, len(trained.classes))
    for start in range(0, len(paths), PREDICT_BATCH):
        batch = paths[start:start + PREDICT_BATCH]
        with torch.inference_mode(), autocast(trained.device, use_bf16(amp, trained.device)):
            images = torch.stack([load_image(p, trained.size, trained.channels) for p in batch]).to(trained.device)
            logits = trained.model(trained.normalize(images)).float()
            values, indices = logits.softmax(dim=1).topk(k, dim=1)
        for path, vals, idxs in zip(batch, values.tolist(), indices.tolist()):
            yield {"image": str(path), "top": [{"class": trained.classes[i], "probability": v}
                                               for v, i in zip(vals, idxs)]}
