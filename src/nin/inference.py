"""A trained model back from its checkpoint, ready to evaluate and predict with what training applied."""
from __future__ import annotations

import json
import zipfile
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
    training: dict | None = None  # the images it learnt from (ModelInfo.training, and the run's root); None: unknown

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> Trained:
    """A run folder, a checkpoint, or a ``nin export``/``nin convert`` safetensors file (or its JSON)."""
    _refuse_other_exports(Path(path).expanduser())
    if Path(path).suffix in (".safetensors", ".json"):
        return _trained_from_export(path, device)
    state = load_checkpoint(path)
    size, channels, dataset = _checked_input(state["input"], path)
    try:
        model = create_model(state["model_name"], **state["model_kwargs"])
        model.load_state_dict(state.get("ema_model", state["model"]))  # a run with --ema: its average
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise NinError(f"{path}: the weights do not fit model {state.get('model_name')!r} "
                       f"({str(error).splitlines()[0]})") from None
    model.to(device).eval()
    try:
        normalize = preprocess_from_state(state["normalization"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise NinError(f"{path} is a damaged checkpoint: its preprocessing does not rebuild ({error})") from None
    _check_model(model, normalize, channels, size, f"{path} is a damaged checkpoint")
    config = state["config"] if isinstance(state["config"], dict) else {}
    training = {"dataset": dataset, "splits": str(config.get("train_split") or "train"),
                "val_held_out": config.get("eval_split") == "val", "root": config.get("root") or None}
    return Trained(model, list(state["classes"]), normalize, size, channels, dataset, config,
                   state["model_name"], dict(state["model_kwargs"]), training)


def _checked_input(given, path) -> tuple[int, int, str]:
    """The checkpoint's input (size, channels, data set), each of a kind a model can take."""
    problem = None
    if not isinstance(given, dict) or not {"size", "channels", "dataset"} <= set(given):
        problem = f"its input record {given!r} lacks size, channels or dataset"
    elif type(given["size"]) is not int or not 1 <= given["size"] <= 4096:
        problem = f"its input size {given['size']!r} is not a size in pixels"
    elif given["channels"] not in (1, 3) or type(given["channels"]) is not int:
        problem = f"its input has {given['channels']!r} channels (1 or 3 expected)"
    elif not isinstance(given["dataset"], str):
        problem = f"its data set {given['dataset']!r} is not a name"
    if problem:
        raise NinError(f"{path} is a damaged checkpoint: {problem}")
    return given["size"], given["channels"], given["dataset"]


def _check_model(model: NIN, normalize, channels: int, size: int, damaged: str) -> None:
    """The preprocessing keeps the images' shape, the first layer reads that many channels, and every weight
    is a number: else a damaged file would fail in the middle of a prediction (or predict nan%)."""
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first is not None and first.in_channels != channels:
        raise NinError(f"{damaged}: its model reads {first.in_channels} channels, its input has {channels}")
    try:
        black = normalize(torch.zeros(1, channels, size, size, dtype=torch.uint8))
    except (RuntimeError, ValueError) as error:
        raise NinError(f"{damaged}: its preprocessing does not take {channels}-channel images of {size} pixels "
                       f"({str(error).splitlines()[0]})") from None
    if tuple(black.shape) != (1, channels, size, size):
        raise NinError(f"{damaged}: its preprocessing turns {channels}-channel images into {tuple(black.shape[1:])}")
    if not bool(torch.isfinite(black).all()):
        raise NinError(f"{damaged}: its preprocessing gives NaN or infinite values (a standard deviation of 0?)")
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NinError(f"{damaged}: its weights hold NaN or infinite values ({name})")


# What nin eval, predict, export and visualize read, for the message that names another kind of file
READS = "a run folder, a checkpoint (.pt) or a safetensors export (nin export's default, with its JSON)"


def _refuse_other_exports(path: Path) -> None:
    """ONNX and TorchScript exports run elsewhere (onnxruntime, torch.jit.load): say so, and what is read here."""
    kind = None
    if path.suffix == ".onnx":
        kind = "an ONNX export"
    elif path.name.endswith(".torchscript.pt") or path.suffix == ".pt" and _is_torchscript(path):
        kind = "a TorchScript export"
    elif path.suffix == ".json" and path.is_file():
        try:
            described = json.loads(path.read_text()).get("file_format")
        except (OSError, ValueError, AttributeError):
            described = None
        kind = {"onnx": "the JSON of an ONNX export", "torchscript": "the JSON of a TorchScript export"}.get(described)
    if kind:
        raise NinError(f"{path} is {kind}, for onnxruntime or torch.jit.load (uint8 pixels in, logits out); "
                       f"nin reads {READS}: give the run, or nin export RUN --format safetensors")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _trained_from_export(path: str | Path, device) -> Trained:
    model = load(path, device)
    info = model.info
    _check_model(model, info.normalize(), info.channels, info.size, f"{path} is a damaged export")
    return Trained(model, list(info.classes), info.normalize(), info.size, info.channels, info.dataset, {},
                   info.name, dict(info.kwargs), info.training)


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


def seen_in_training(trained: Trained, dataset: str | None, root: str | None, split: str) -> str | None:
    """Why the images of ``split`` are ones the model learnt from, or None (they are not, or it is unknown)."""
    learnt = trained.training
    name = dataset or trained.dataset
    if not learnt or name != learnt["dataset"]:
        return None
    if dataset_info(name).size is None:  # an image folder: the same one only where both roots are known
        given = root if root is not None else learnt.get("root") if dataset is None else None
        if not given or not learnt.get("root") or _place(given) != _place(learnt["root"]):
            return None
    title = dataset_info(name).title
    if split == "val" and not learnt["val_held_out"]:
        return (f"the model was trained on every image of {title}'s {learnt['splits']} split, the val images "
                "included: its accuracy on them says nothing about new images")
    if split in learnt["splits"].split("+"):
        return f"the model was trained on {title}'s {split} split: these are the images it learnt from"
    return None


def _place(root: str) -> Path:
    return Path(root).expanduser().resolve()


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
        if not bool(torch.isfinite(values).all()):  # finite weights can still overflow: never print nan%
            raise NinError(f"the model's outputs for {batch[int((~torch.isfinite(values)).any(1).nonzero()[0])]} "
                           "are not numbers (its activations overflow): it cannot rank the classes")
        for path, vals, idxs in zip(batch, values.tolist(), indices.tolist()):
            yield {"image": str(path), "top": [{"class": trained.classes[i], "probability": v}
                                               for v, i in zip(vals, idxs)]}
