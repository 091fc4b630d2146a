"""A trained model back from its run, checkpoint or export (``nin.load``, the one loader), ready to evaluate
and predict with what training applied: the model with its description in ``model.info``."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch

from .card import ModelInfo, read_safetensors
from .checkpoint import load_checkpoint
from .data import DATASETS, DeviceLoader, dataset_info, load_image
from .data.splits import select_images
from .errors import NinError
from .evaluate import evaluate, tta_mode
from .hardware import autocast, use_bf16
from .models import NIN, create_model, load_state


def load(path: str | os.PathLike, device: str | torch.device = "cpu", *, command: bool = False) -> NIN:
    """``nin.load``: a trained model ready for evaluation, from a run folder, a checkpoint, or ``nin export``
    (or ``nin convert``) safetensors weights or their JSON. ``model.info`` (a ``ModelInfo``) holds the class
    names, the input size and channels and the fitted preprocessing: ``model.info.normalize()(uint8_images)``
    is the network's input. Every command that reads a model reads it here, with ``command=True``: the JSON
    of an ONNX or TorchScript export is then refused with what the commands read, not what ``nin.load`` reads."""
    path = Path(path).expanduser()
    _refuse_other_exports(path, their_json=command)
    if path.suffix in (".safetensors", ".json"):
        weights, info = read_safetensors(path)
        if info is None:
            raise NinError(f"no config for {path}: expected {path.with_suffix('.json').name} beside it "
                           "(written by `nin export`); or use nin.create_model(name, weights=PATH)")
        damaged = f"{path} is a damaged export"
    else:
        weights, info = ModelInfo.from_checkpoint(load_checkpoint(path), path)
        damaged = f"{path} is a damaged checkpoint"
    model = _built(info, weights, path)
    _check_model(model, info, damaged)
    model.info = info
    return model.to(device).eval()


def _built(info: ModelInfo, weights: dict, where) -> NIN:
    """The network ``info`` describes, with ``weights``; weights that do not fit are one line naming ``where``."""
    try:
        model = create_model(info.name, **info.kwargs)
        load_state(model, weights, where, info.name)
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise NinError(f"{where}: the weights do not fit model {info.name!r} "
                       f"({str(error).splitlines()[0]})") from None
    return model


def _check_model(model: NIN, info: ModelInfo, damaged: str) -> None:
    """The preprocessing keeps the images' shape, the first layer reads that many channels, and every weight
    is a number: else a damaged file would fail in the middle of a prediction (or predict nan%)."""
    channels, size = info.channels, info.size
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first is not None and first.in_channels != channels:
        raise NinError(f"{damaged}: its model reads {first.in_channels} channels, its input has {channels}")
    try:
        black = info.normalize()(torch.zeros(1, channels, size, size, dtype=torch.uint8))
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


def _device(model: NIN) -> torch.device:
    return next(model.parameters()).device


# What nin eval, predict, export and visualize read, for the message that names another kind of file
READS = "a run folder, a checkpoint (.pt) or a safetensors export (nin export's default, with its JSON)"


def _refuse_other_exports(path: Path, their_json: bool) -> None:
    """ONNX and TorchScript exports run elsewhere (onnxruntime, torch.jit.load): say so, and what is read here
    (``their_json``: their JSON too; else ``read_safetensors`` says what it describes)."""
    kind = None
    if path.suffix == ".onnx":
        kind = "an ONNX export"
    elif path.name.endswith(".torchscript.pt") or path.suffix == ".pt" and _is_torchscript(path):
        kind = "a TorchScript export"
    elif their_json and path.suffix == ".json" and path.is_file():
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


def evaluate_trained(model: NIN, dataset: str | None = None, root: str | None = None,
                     split: str = "test", batch_size: int = 1024, *, topk: tuple[int, ...] = (),
                     tta: str | bool = "", amp: str = "auto") -> dict:
    """Accuracy of a trained model (``nin.load``'s) on a split (by default the test split of the data it was
    trained on). ``topk``: also these top-k accuracies; ``tta``: flip test-time augmentation (refused for
    data sets whose class a horizontal flip may change, such as digits)."""
    info = model.info
    tta = tta_mode(tta)
    name = dataset or info.dataset
    if not name:
        raise NinError("the model does not say which data set it was trained on: give --dataset (and --root)")
    if "flip" in tta:
        check_tta(name)
    if root is None and dataset is None:  # the training data, where training found it
        root = (info.training or {}).get("root")
    data = _load_split(model, name, root, split)
    if len(data.classes) != len(info.classes):
        raise NinError(f"the model predicts {len(info.classes)} classes but {name} has {len(data.classes)}")
    if data.images.shape[1:] != (info.channels, info.size, info.size):
        raise NinError(f"{name} images are {tuple(data.images.shape[1:])}; the model was trained on "
                       f"{(info.channels, info.size, info.size)}")
    labels = data.labels
    if data.classes != info.classes and sorted(data.classes) == sorted(info.classes):
        # the same classes in another order (an image folder sorts them by name): labels follow the model's
        labels = torch.tensor([info.classes.index(name) for name in data.classes])[labels]
    device = _device(model)
    loader = DeviceLoader(data.images, labels, info.normalize(), batch_size=batch_size, device=device)
    return evaluate(model, loader, info.classes, topk=topk, tta=tta, amp=use_bf16(amp, device))


def seen_in_training(model: NIN, dataset: str | None, root: str | None, split: str) -> str | None:
    """Why the images of ``split`` are ones the model learnt from, or None (they are not, or it is unknown)."""
    learnt = model.info.training
    name = dataset or model.info.dataset
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


def _load_split(model: NIN, name: str, root, split: str):
    """One split; ``val`` is the paper's validation split, held out of the training split(s) the run used."""
    info = model.info
    parts = (info.training or {}).get("splits", "train") if name == info.dataset else "train"
    return select_images(name, root, parts, split, image_size=info.size, channels=info.channels,
                         need_train=False)[1]


def check_tta(dataset: str) -> None:
    info = dataset_info(dataset)
    if not info.flip:
        allowed = ", ".join(name for name, other in DATASETS.items() if other.flip)
        raise NinError(f"--tta flip is not offered for {info.title}: it averages each image with its horizontal "
                       f"flip, which can change a {info.title} image's class (--tta shift can); data sets that "
                       f"allow flips: {allowed}")


PREDICT_BATCH = 64  # images decoded and run at once: memory stays flat however many files are given


def predict_files(model: NIN, paths: list[str], topk: int = 5, amp: str = "auto"):
    """Top-k (class, probability) for each image file, converted to the model's size and channels; yields
    one result per image, in order, working through the files a batch at a time."""
    info, device = model.info, _device(model)
    k = min(topk, len(info.classes))
    for start in range(0, len(paths), PREDICT_BATCH):
        batch = paths[start:start + PREDICT_BATCH]
        with torch.inference_mode(), autocast(device, use_bf16(amp, device)):
            images = torch.stack([load_image(p, info.size, info.channels) for p in batch]).to(device)
            logits = model(info.normalize()(images)).float()
            values, indices = logits.softmax(dim=1).topk(k, dim=1)
        if not bool(torch.isfinite(values).all()):  # finite weights can still overflow: never print nan%
            raise NinError(f"the model's outputs for {batch[int((~torch.isfinite(values)).any(1).nonzero()[0])]} "
                           "are not numbers (its activations overflow): it cannot rank the classes")
        for path, vals, idxs in zip(batch, values.tolist(), indices.tolist()):
            yield {"image": str(path), "top": [{"class": info.classes[i], "probability": v}
                                               for v, i in zip(vals, idxs)]}
