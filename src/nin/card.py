"""The model card: what a trained model is besides its weights (the variant and its arguments, the
classes, the input and its preprocessing), and reading it back from a ``nin export`` safetensors file
and the JSON beside it. Below models.py: nothing here builds a network (``create_model(weights=)``
and ``nin.load`` do, with what this module reads).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import NinError
from .version import __version__

FORMAT = "nin-export"
FORMAT_VERSION = 2  # 2: the "preprocessing" block (gcn_zca, lcn); standardize exports are still written as 1
INPUT_NAME, OUTPUT_NAME = "images", "logits"
TENSOR_PREFIX = "preprocess."  # a safetensors export's preprocessing tensors: preprocess.mean, preprocess.whiten
JSON_KEY = "nin"  # the JSON config is also kept inside each file (safetensors/ONNX metadata, TorchScript extra file)


@dataclass
class ModelInfo:
    """What a caller needs besides the weights: the architecture, the classes, the input and its preprocessing.

    ``mean``/``std`` are the per-channel standardisation (the default preprocessing); a model trained with
    another preprocessing (``gcn_zca``, ``lcn``) has ``mean = std = None`` and its state in ``preprocess``
    (``nin.data.preprocess``'s ``state_dict()``: the settings, and for gcn_zca the mean and whitening tensors)."""

    name: str
    kwargs: dict
    classes: list[str]
    size: int
    channels: int
    mean: list[float] | None = None  # per channel, on the 0..1 scale (standardize only)
    std: list[float] | None = None
    dataset: str = ""
    extra: dict = field(default_factory=dict, repr=False)  # the rest of the JSON it was read from
    preprocess: dict | None = field(default=None, repr=False)  # the state of a preprocessing other than standardize
    source: dict | None = field(default=None, repr=False)  # weights converted from elsewhere: where from (nin convert)
    # the images it learnt from: {"dataset", "splits" ("train", "train+extra"), "val_held_out"}; None: unknown
    training: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.preprocess is not None and self.preprocess.get("kind", "standardize") == "standardize":
            self.mean = list(self.preprocess["mean"] if self.mean is None else self.mean)
            self.std = list(self.preprocess["std"] if self.std is None else self.std)
            self.preprocess = None
        if self.preprocess is not None:
            _preprocessing().check_kind(self.preprocess.get("kind"))
        elif self.mean is None or self.std is None or len(self.mean) != self.channels or len(self.std) != self.channels:
            raise NinError(f"normalisation has {_count(self.mean)} means and {_count(self.std)} stds "
                           f"for {self.channels} channels")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def kind(self) -> str:
        """The preprocessing: standardize, gcn_zca or lcn."""
        return self.preprocess["kind"] if self.preprocess is not None else "standardize"

    def preprocess_state(self) -> dict:
        """The preprocessing's ``state_dict()`` (what ``preprocess_from_state`` rebuilds it from)."""
        if self.preprocess is not None:
            return dict(self.preprocess)
        return {"kind": "standardize", "mean": list(self.mean), "std": list(self.std)}

    def settings(self) -> dict:
        """The preprocessing's scalar settings (no tensors): what the JSON carries."""
        return {key: value for key, value in self.preprocess_state().items() if not isinstance(value, torch.Tensor)}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The preprocessing's tensors (gcn_zca's mean and whitening matrix), by state key."""
        return {key: value for key, value in self.preprocess_state().items() if isinstance(value, torch.Tensor)}

    def normalize(self):
        """The preprocessing that turns uint8 images into this model's input: a ``nin.data.Normalize``
        (``Standardize``), or the run's ``GcnZca`` / ``Lcn`` (``nin.data.preprocess``)."""
        return _preprocessing().preprocess_from_state(self.preprocess_state())

    @classmethod
    def from_trained(cls, trained) -> "ModelInfo":
        state = trained.normalize.state_dict()
        training = {k: v for k, v in trained.training.items() if k != "root"} if trained.training else None
        return cls(trained.name, dict(trained.kwargs), list(trained.classes), trained.size, trained.channels,
                   dataset=trained.dataset, preprocess={"kind": "standardize", **state}, training=training)

    def to_json(self, file_format: str, file_name: str) -> dict:
        shape = ["batch", self.channels, self.size, self.size]
        standard = self.kind == "standardize"
        config = {
            "format": FORMAT, "format_version": 1 if standard else FORMAT_VERSION, "nin_version": __version__,
            "file": file_name, "file_format": file_format,
            "model": self.name, "model_kwargs": _jsonable(self.kwargs),
            "classes": list(self.classes), "dataset": self.dataset,
            "input": {"layout": "NCHW", "shape": shape, "size": self.size, "channels": self.channels,
                      **_input_description(self.kind, file_format)},
            "preprocessing": self._preprocessing_json(file_format),
            "output": {"name": OUTPUT_NAME, "shape": ["batch", self.num_classes], "dtype": "float32",
                       "meaning": "logits, one per class in the order of classes; softmax gives probabilities"},
        }
        if standard:
            config["normalization"] = {"mean": list(self.mean), "std": list(self.std), "scale": "0..1"}
        if self.source:
            config["source"] = _jsonable(self.source)
        if self.training:  # so that nin eval can tell when it is shown the images the model learnt from
            config["training"] = _jsonable(self.training)
        return config

    def _preprocessing_json(self, file_format: str) -> dict:
        if self.kind == "standardize":
            return {"kind": "standardize", "description": DESCRIPTIONS["standardize"]}
        block = {**_jsonable(self.settings()), "description": DESCRIPTIONS[self.kind]}
        if file_format == "safetensors" and self.tensors():
            block["tensors"] = {key: TENSOR_PREFIX + key for key in self.tensors()}
        return block

    @classmethod
    def from_json(cls, config: dict, where: str) -> "ModelInfo":
        """The info a JSON config describes; a gcn_zca config's tensors are not in it (``read_safetensors``
        adds them from the weights file)."""
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise NinError(f"{where} is not a nin export config (expected \"format\": \"{FORMAT}\")")
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise NinError(f"{where} was written by a newer nin (format version {config['format_version']}); "
                           "upgrade nin")
        try:
            kwargs = dict(config["model_kwargs"])
            if kwargs.get("pools") is not None:
                kwargs["pools"] = tuple(kwargs["pools"])
            given = config["input"]
            return cls(config["model"], kwargs, list(config["classes"]), int(given["size"]), int(given["channels"]),
                       dataset=config.get("dataset", ""), extra=config, preprocess=_preprocess_from_json(config),
                       source=config.get("source"), training=_training_from_json(config.get("training")))
        except (KeyError, TypeError, ValueError) as error:
            raise NinError(f"{where}: incomplete nin export config ({type(error).__name__}: {error})") from None


DESCRIPTIONS = {
    "standardize": "per channel (pixels / 255 - mean) / std, mean and std (0..1 scale) in normalization",
    "gcn_zca": "global contrast normalisation then ZCA whitening (nin.data.preprocess.GcnZca): each image "
               "flattened channel-major to a float vector x of length channels*size*size; if gcn, "
               "x = x - mean(x) and x = x * scale / norm(x) (only centred when norm(x) / scale < min_divisor); "
               "then (x - preprocess.mean) @ preprocess.whiten, reshaped to (channels, size, size)",
    "lcn": "local contrast normalisation (nin.data.preprocess.Lcn): if gcn, each image (all channels as one "
           "vector) centred and scaled to norm 1; then per channel, with G the kernel_size x kernel_size "
           "Gaussian of sigma (weights summing to 1, zero padding): v = x - G*x, s = sqrt(G*v^2), "
           "y = v / max(s, mean of s over the image, threshold)",
}


def _input_description(kind: str, file_format: str) -> dict:
    if file_format != "safetensors":
        return {"name": INPUT_NAME, "dtype": "uint8", "range": [0, 255],
                "preprocessing": f"resize to size x size only: the {kind} preprocessing described in "
                                 "preprocessing is inside the model"}
    if kind == "standardize":
        return {"dtype": "float32", "range": "normalised",
                "preprocessing": "resize to size x size, then per channel (pixels / 255 - mean) / std "
                                 "with the normalization below"}
    where = " (its tensors are in the safetensors file)" if kind == "gcn_zca" else ""
    return {"dtype": "float32", "range": f"{kind} preprocessed",
            "preprocessing": f"resize to size x size, then the {kind} preprocessing described in "
                             f"preprocessing{where}, on pixels 0..255"}


def _preprocess_from_json(config: dict) -> dict | None:
    block = config.get("preprocessing") or {"kind": "standardize"}
    if block.get("kind", "standardize") == "standardize":
        norm = config["normalization"]
        return {"kind": "standardize", "mean": [float(m) for m in norm["mean"]],
                "std": [float(s) for s in norm["std"]]}
    return {key: value for key, value in block.items() if key not in ("description", "tensors")}


def _training_from_json(block) -> dict | None:
    """The "training" block, when it is whole (an export written before it existed has none)."""
    if not isinstance(block, dict) or not all(isinstance(block.get(key), str) for key in ("dataset", "splits")):
        return None
    return {"dataset": block["dataset"], "splits": block["splits"], "val_held_out": block.get("val_held_out") is True}


def _count(values) -> int:
    return 0 if values is None else len(values)


def _preprocessing():
    from .data import preprocess  # lazy: `import nin` does not load the data readers

    return preprocess


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


# --- loading ----------------------------------------------------------------------------------------

def read_safetensors(path: str | os.PathLike) -> tuple[dict, ModelInfo | None]:
    """(the network's state dict, its ModelInfo or None): the JSON beside the file, else the copy inside
    the file. The preprocessing's tensors (``preprocess.*``) go into the ModelInfo, not the state dict."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if path.suffix == ".json":
        info = _read_json(path)
        if info.extra.get("file_format") != "safetensors":
            raise NinError(f"{path} describes a {info.extra.get('file_format')} export; nin.load and "
                           "create_model(weights=...) read safetensors weights")
        path = path.with_name(info.extra["file"])
    if path.suffix != ".safetensors":
        raise NinError(f"weights must be a .safetensors file (written by `nin export`), got {path}")
    if not path.is_file():
        raise NinError(f"no weights at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
            embedded = (handle.metadata() or {}).get(JSON_KEY)
    except (SafetensorError, OSError, ValueError) as error:
        raise NinError(f"{path} is not a readable safetensors file ({str(error).splitlines()[0]})") from None
    tensors = {name[len(TENSOR_PREFIX):]: state.pop(name) for name in list(state) if name.startswith(TENSOR_PREFIX)}
    info = _config_of(path, embedded)
    if info is not None:
        _attach_tensors(info, tensors, path)
    return state, info


def _config_of(path: Path, embedded: str | None) -> ModelInfo | None:
    beside = path.with_suffix(".json")
    if beside.is_file():
        return _read_json(beside)
    if embedded:
        try:
            return ModelInfo.from_json(json.loads(embedded), str(path))
        except ValueError:
            pass
    return None


def _attach_tensors(info: ModelInfo, tensors: dict, path: Path) -> None:
    """Give a read config its preprocessing tensors, and check that the preprocessing rebuilds."""
    if info.preprocess is None:
        return
    info.preprocess.update(tensors)
    try:
        info.normalize()
    except NinError as error:
        raise NinError(f"{path}: cannot rebuild its {info.kind} preprocessing ({error})") from None


def _read_json(path: Path) -> ModelInfo:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise NinError(f"no export config at {path}") from None
    except (OSError, ValueError) as error:
        raise NinError(f"{path} is not a readable JSON file ({error})") from None
    return ModelInfo.from_json(config, str(path))
