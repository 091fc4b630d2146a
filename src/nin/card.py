"""A trained model's description, the model card (the variant and its arguments, the classes, the input
and its fitted preprocessing), and its serialisation both ways: the model part of a checkpoint
(``ModelInfo.to_checkpoint`` / ``from_checkpoint``), the JSON of an export (``to_json`` / ``from_json``)
and a ``nin export`` safetensors file read back (``read_safetensors``). Below models.py: nothing here
builds a network (``nin.load`` and ``create_model(weights=)`` do, with what this module reads).
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
# Every export is written as version 2 (the "preprocessing" block: standardize, gcn_zca, lcn). Version 1,
# standardize only, is still read: its JSON is version 2's for a standardize model.
FORMAT_VERSION = 2
INPUT_NAME, OUTPUT_NAME = "images", "logits"
TENSOR_PREFIX = "preprocess."  # a safetensors export's preprocessing tensors: preprocess.mean, preprocess.whiten
JSON_KEY = "nin"  # the JSON config is also kept inside each file (safetensors/ONNX metadata, TorchScript extra file)


@dataclass
class ModelInfo:
    """What a caller needs besides the weights: the architecture, the classes, the input and its preprocessing.

    ``preprocess`` is the fitted preprocessing (``nin.data.preprocess``: ``Standardize``, ``GcnZca``, ``Lcn``),
    what ``normalize()`` returns; given as ``mean``/``std`` lists (the per-channel standardisation) or as a
    ``state_dict()``, it is rebuilt once, here. ``mean``/``std`` are the standardisation's, None for the
    other kinds."""

    name: str
    kwargs: dict
    classes: list[str]
    size: int
    channels: int
    mean: list[float] | None = None  # per channel, on the 0..1 scale (standardize only)
    std: list[float] | None = None
    dataset: str = ""
    extra: dict = field(default_factory=dict, repr=False)  # the rest of the JSON it was read from
    preprocess: object = field(default=None, repr=False)  # the fitted preprocessing (or its state, rebuilt once)
    source: dict | None = field(default=None, repr=False)  # weights converted from elsewhere: where from (nin convert)
    # the images it learnt from: {"dataset", "splits" ("train", "train+extra"), "val_held_out"}, and from a
    # checkpoint "root" (where the run found them; never exported); None: unknown
    training: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.preprocess is None or isinstance(self.preprocess, dict):
            self.preprocess = _rebuilt(self.preprocess, self.mean, self.std, self.channels)
        elif not hasattr(self.preprocess, "kind"):  # a plain nin.data.Normalize
            self.preprocess = _preprocessing().Standardize(self.preprocess.mean, self.preprocess.std)
        standard = self.kind == "standardize"
        self.mean = list(self.preprocess.mean) if standard else None
        self.std = list(self.preprocess.std) if standard else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def kind(self) -> str:
        """The preprocessing: standardize, gcn_zca or lcn."""
        return self.preprocess.kind

    def normalize(self):
        """The preprocessing that turns uint8 images into this model's input: the fitted ``Standardize``
        (a ``nin.data.Normalize``), ``GcnZca`` or ``Lcn`` of ``nin.data.preprocess``."""
        return self.preprocess

    def settings(self) -> dict:
        """The preprocessing's scalar settings (no tensors): what the JSON carries."""
        return _state_part(self.preprocess.state_dict(), tensors=False)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The preprocessing's tensors (gcn_zca's mean and whitening matrix), by state key."""
        return _state_part(self.preprocess.state_dict(), tensors=True)

    # --- the checkpoint's model part ------------------------------------------------------------------

    def to_checkpoint(self, weights: dict) -> dict:
        """The model part of a checkpoint (``nin train`` adds the run's state): ``weights`` is the network's
        state dict. The keys and their contents are those of the first checkpoint format."""
        return {"model_name": self.name, "model_kwargs": self.kwargs, "model": weights, "classes": self.classes,
                "normalization": self.preprocess.state_dict(),  # the key's name from the first format
                "input": {"size": self.size, "channels": self.channels, "dataset": self.dataset}}

    @classmethod
    def from_checkpoint(cls, state: dict, where) -> tuple[dict, "ModelInfo"]:
        """(the weights, the info) of a checkpoint read by ``nin.checkpoint.load_checkpoint``. The weights
        are the run's average when it kept one (``--ema``): what eval, predict and export use."""
        size, channels, dataset = _checked_input(state["input"], where)
        try:
            preprocess = _preprocessing().preprocess_from_state(state["normalization"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise NinError(f"{where} is a damaged checkpoint: its preprocessing does not rebuild ({error})") from None
        config = state["config"] if isinstance(state["config"], dict) else {}
        training = {"dataset": dataset, "splits": str(config.get("train_split") or "train"),
                    "val_held_out": config.get("eval_split") == "val", "root": config.get("root") or None}
        info = cls(state["model_name"], dict(state["model_kwargs"]), list(state["classes"]), size, channels,
                   dataset=dataset, preprocess=preprocess, training=training)
        return state.get("ema_model", state["model"]), info

    # --- the export's JSON ----------------------------------------------------------------------------

    def to_json(self, file_format: str, file_name: str) -> dict:
        shape = ["batch", self.channels, self.size, self.size]
        config = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "nin_version": __version__,
            "file": file_name, "file_format": file_format,
            "model": self.name, "model_kwargs": _jsonable(self.kwargs),
            "classes": list(self.classes), "dataset": self.dataset,
            "input": {"layout": "NCHW", "shape": shape, "size": self.size, "channels": self.channels,
                      **_input_description(self.kind, file_format)},
            "preprocessing": self._preprocessing_json(file_format),
            "output": {"name": OUTPUT_NAME, "shape": ["batch", self.num_classes], "dtype": "float32",
                       "meaning": "logits, one per class in the order of classes; softmax gives probabilities"},
        }
        if self.kind == "standardize":
            config["normalization"] = {"mean": list(self.mean), "std": list(self.std), "scale": "0..1"}
        if self.source:
            config["source"] = _jsonable(self.source)
        if self.training:  # so that nin eval can tell when it is shown the images the model learnt from
            config["training"] = _jsonable({k: v for k, v in self.training.items() if k != "root"})
        return config

    def _preprocessing_json(self, file_format: str) -> dict:
        if self.kind == "standardize":
            return {"kind": "standardize", "description": DESCRIPTIONS["standardize"]}
        block = {**_jsonable(self.settings()), "description": DESCRIPTIONS[self.kind]}
        if file_format == "safetensors" and self.tensors():
            block["tensors"] = {key: TENSOR_PREFIX + key for key in self.tensors()}
        return block

    @classmethod
    def from_json(cls, config: dict, where: str, tensors: dict | None = None, *,
                  tensors_from: str | None = None) -> "ModelInfo":
        """The info a JSON config describes (format version 1 or 2). ``tensors``: the preprocessing's tensors,
        which are not in the JSON (``read_safetensors`` passes those of the weights file, ``tensors_from``)."""
        check_config(config, where)
        try:
            kwargs = dict(config["model_kwargs"])
            if kwargs.get("pools") is not None:
                kwargs["pools"] = tuple(kwargs["pools"])
            given = config["input"]
            fields = dict(name=config["model"], kwargs=kwargs, classes=list(config["classes"]),
                          size=int(given["size"]), channels=int(given["channels"]),
                          dataset=config.get("dataset", ""), extra=config, source=config.get("source"),
                          training=_training_from_json(config.get("training")))
            state = _preprocess_from_json(config)
        except (KeyError, TypeError, ValueError) as error:
            raise NinError(f"{where}: incomplete nin export config ({type(error).__name__}: {error})") from None
        if state.get("kind") == "standardize":  # checked against the channels, as lists given by hand are
            return cls(**fields, mean=state["mean"], std=state["std"])
        _preprocessing().check_kind(state.get("kind"))
        try:
            preprocess = _preprocessing().preprocess_from_state({**state, **(tensors or {})})
        except NinError as error:
            raise NinError(f"{tensors_from or where}: cannot rebuild its {state.get('kind')} preprocessing "
                           f"({error})") from None
        return cls(**fields, preprocess=preprocess)


def check_config(config, where) -> None:
    """A nin export config that this nin reads (format versions up to FORMAT_VERSION)."""
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise NinError(f"{where} is not a nin export config (expected \"format\": \"{FORMAT}\")")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise NinError(f"{where} was written by a newer nin (format version {config['format_version']}); "
                       "upgrade nin")


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


def _preprocess_from_json(config: dict) -> dict:
    """The preprocessing's state without its tensors: version 1 (and a standardize version 2) keeps the mean
    and std in "normalization", the other kinds' settings are the "preprocessing" block."""
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


def _rebuilt(state: dict | None, mean, std, channels: int):
    """The fitted preprocessing of a state, or of ``mean``/``std`` lists (a standardisation, one value per channel)."""
    state = state if state is not None else {"kind": "standardize", "mean": mean, "std": std}
    if state.get("kind", "standardize") == "standardize":
        means, stds = _count(state.get("mean")), _count(state.get("std"))
        if means != channels or stds != channels:
            raise NinError(f"normalisation has {means} means and {stds} stds for {channels} channels")
    return _preprocessing().preprocess_from_state(state)


def _checked_input(given, where) -> tuple[int, int, str]:
    """A checkpoint's input (size, channels, data set), each of a kind a model can take."""
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
        raise NinError(f"{where} is a damaged checkpoint: {problem}")
    return given["size"], given["channels"], given["dataset"]


def _state_part(state: dict, *, tensors: bool) -> dict:
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor) == tensors}


def _count(values) -> int:
    return 0 if values is None else len(values)


def _preprocessing():
    from .data import preprocess  # lazy: `import nin.card` does not load the data readers

    return preprocess


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


# --- reading an export back ---------------------------------------------------------------------------

def read_safetensors(path: str | os.PathLike) -> tuple[dict, ModelInfo | None]:
    """(the network's state dict, its ModelInfo or None): the JSON beside the file, else the copy inside
    the file. The preprocessing's tensors (``preprocess.*``) go into the ModelInfo, not the state dict."""
    path = Path(path).expanduser()
    if path.suffix == ".json":
        path = _weights_named_in(path)
    if path.suffix != ".safetensors":
        raise NinError(f"weights must be a .safetensors file (written by `nin export`), got {path}")
    if not path.is_file():
        raise NinError(f"no weights at {path}")
    state, embedded = _read_tensors(path)
    tensors = {name[len(TENSOR_PREFIX):]: state.pop(name) for name in list(state) if name.startswith(TENSOR_PREFIX)}
    config, where = _config_of(path, embedded)
    if config is None:
        return state, None
    return state, ModelInfo.from_json(config, where, tensors, tensors_from=str(path))


def _weights_named_in(path: Path) -> Path:
    """The safetensors file a JSON config names."""
    config = _read_json(path)
    check_config(config, str(path))
    if config.get("file_format") != "safetensors":
        raise NinError(f"{path} describes a {config.get('file_format')} export; nin.load and "
                       "create_model(weights=...) read safetensors weights")
    if not isinstance(config.get("file"), str):
        raise NinError(f"{path}: incomplete nin export config (it names no file)")
    return path.with_name(config["file"])


def _read_tensors(path: Path) -> tuple[dict, str | None]:
    """(every tensor of the file, the JSON config kept in its metadata or None)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
            return state, (handle.metadata() or {}).get(JSON_KEY)
    except (SafetensorError, OSError, ValueError) as error:
        raise NinError(f"{path} is not a readable safetensors file ({str(error).splitlines()[0]})") from None


def _config_of(path: Path, embedded: str | None) -> tuple[dict | None, str]:
    """(the JSON config, where it was read): the file beside the weights, else the copy inside them."""
    beside = path.with_suffix(".json")
    if beside.is_file():
        return _read_json(beside), str(beside)
    try:
        return (json.loads(embedded) if embedded else None), str(path)
    except ValueError:
        return None, str(path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NinError(f"no export config at {path}") from None
    except (OSError, ValueError) as error:
        raise NinError(f"{path} is not a readable JSON file ({error})") from None
