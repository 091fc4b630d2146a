"""Exports of a trained model: safetensors weights + a JSON config, ONNX, TorchScript; and loading back.

Every export writes ``BASE.<suffix>`` and a JSON file beside it, ``BASE.json``, that says what the file
is (model name and arguments, class names, preprocessing) and exactly what a caller must feed it:

- ``safetensors``: the bare network's weights (``safetensors.torch.save_file``, no pickle). The network
  takes float32 NCHW images already preprocessed as in training: for the default standardisation
  ``(pixels / 255 - mean) / std`` per channel; for ``gcn_zca`` and ``lcn`` the JSON's ``preprocessing``
  block has the settings, and gcn_zca's mean and whitening matrix are in the same file
  (``preprocess.mean``, ``preprocess.whiten``). ``nin.load(BASE.safetensors)`` or
  ``nin.create_model(name, weights=BASE.safetensors)`` rebuild the network, and ``model.info.normalize()``
  the preprocessing.
- ``onnx`` and ``torchscript``: the network with its preprocessing inside (``WithPreprocessing``): it
  takes raw **uint8** NCHW pixels, 0..255, any batch size, and returns logits.

Nothing here unpickles: checkpoints are read with ``torch.load(weights_only=True)``, weights with
safetensors, configs with json.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .errors import NinError
from .models import NIN, create_model

FORMAT = "nin-export"
FORMAT_VERSION = 2  # 2: the "preprocessing" block (gcn_zca, lcn); standardize exports are still written as 1
FORMATS = ("safetensors", "onnx", "torchscript")
SUFFIXES = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
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

    def __post_init__(self):
        if self.preprocess is not None and self.preprocess.get("kind", "standardize") == "standardize":
            self.mean = list(self.preprocess["mean"] if self.mean is None else self.mean)
            self.std = list(self.preprocess["std"] if self.std is None else self.std)
            self.preprocess = None
        if self.preprocess is not None:
            _check_kind(self.preprocess.get("kind"))
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
        return cls(trained.name, dict(trained.kwargs), list(trained.classes), trained.size, trained.channels,
                   dataset=trained.dataset, preprocess={"kind": "standardize", **state})

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
                       dataset=config.get("dataset", ""), extra=config, preprocess=_preprocess_from_json(config))
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


def _count(values) -> int:
    return 0 if values is None else len(values)


def _check_kind(kind) -> None:
    kinds = _preprocessing().KINDS
    if kind not in kinds:
        raise NinError(f"unknown preprocessing {kind!r}: expected one of {', '.join(kinds)}")


def _preprocessing():
    from .data import preprocess  # lazy: `import nin` does not load the data readers

    return preprocess


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


class WithPreprocessing(nn.Module):
    """The network with its input preprocessing inside: uint8 (N, C, H, W) pixels, 0..255 -> logits.

    ``preprocess``: a fitted preprocessing (``nin.data.preprocess``: ``Standardize``, ``GcnZca``, ``Lcn``;
    ``ModelInfo.normalize()`` gives the run's); its ``to_module()`` computes exactly what training and
    ``nin eval`` compute, so the exported model's outputs equal the PyTorch model's on the same pixels."""

    def __init__(self, model: nn.Module, preprocess):
        super().__init__()
        self.model = model
        self.preprocess = preprocess.to_module()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images))


# --- paths ------------------------------------------------------------------------------------------

def export_paths(out: str | os.PathLike, file_format: str) -> tuple[Path, Path]:
    """``--out PATH`` -> (the model file, the JSON beside it). PATH may carry the format's suffix or none."""
    check_format(file_format)
    path = Path(out).expanduser()
    suffix = SUFFIXES[file_format]
    name = path.name
    for known in (suffix, ".pt") if file_format == "torchscript" else (suffix,):
        if name.endswith(known) and len(name) > len(known):
            name = name[:-len(known)]
            break
    base = path.with_name(name)
    return base.with_name(name + suffix), base.with_name(name + ".json")


def check_format(file_format: str) -> None:
    if file_format not in FORMATS:
        raise NinError(f"unknown export format {file_format!r}: expected one of {', '.join(FORMATS)}")


# --- writing ----------------------------------------------------------------------------------------

def export_checkpoint(checkpoint: str | os.PathLike, file_format: str, out: str | os.PathLike | None = None,
                      *, check: bool = True) -> dict:
    """Export a run (folder or checkpoint file). ``out`` defaults to ``model`` beside the checkpoint.
    Returns {"model": path, "config": path, "max_abs_diff": float or None (ONNX/TorchScript check)}."""
    from .checkpoint import resolve_checkpoint
    from .inference import load_trained

    check_format(file_format)
    source = resolve_checkpoint(checkpoint)
    trained = load_trained(source, "cpu")
    info = ModelInfo.from_trained(trained)
    model_path, _ = export_paths(out if out is not None else source.parent / "model", file_format)
    if model_path.resolve() == source.resolve():
        raise NinError(f"--out {out} would overwrite the checkpoint it exports; pick another --out")
    return export_model(trained.model, info, file_format, model_path, check=check)


def export_model(model: nn.Module, info: ModelInfo, file_format: str, out: str | os.PathLike,
                 *, check: bool = True) -> dict:
    """Write ``model`` in ``file_format`` to ``out`` (suffix added when missing) and its JSON beside it."""
    model_path, json_path = export_paths(out, file_format)
    _refuse_foreign_json(json_path, file_format)
    model = model.cpu().eval()
    config = info.to_json(file_format, model_path.name)
    text = json.dumps(config, indent=2) + "\n"
    diff = None
    try:
        model_path.parent.mkdir(parents=True, exist_ok=True)
        if file_format == "safetensors":
            _write_safetensors(model, info, text, model_path)
        elif file_format == "onnx":
            wrapper = WithPreprocessing(model, info.normalize()).eval()
            _write_onnx(wrapper, info, text, model_path)
            diff = check_onnx(model_path, wrapper, info) if check else None
        else:
            wrapper = WithPreprocessing(model, info.normalize()).eval()
            _write_torchscript(wrapper, info, text, model_path)
            diff = check_torchscript(model_path, wrapper, info) if check else None
        json_path.write_text(text)
    except OSError as error:
        raise NinError(f"cannot write {error.filename or model_path}: {error.strerror or error}") from None
    if diff is not None and diff > 1e-3:
        raise NinError(f"the {file_format} export of {info.name} differs from the PyTorch model by {diff:.3g}")
    return {"model": model_path, "config": json_path, "max_abs_diff": diff}


def _refuse_foreign_json(json_path: Path, file_format: str) -> None:
    """BASE.json is shared by the exports of one BASE: refuse to overwrite one that describes another live file."""
    if not json_path.is_file():
        return
    try:
        old = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise NinError(f"{json_path} exists and is not a nin export config; pick another --out")
    other = json_path.with_name(str(old.get("file", "")))
    if old.get("file_format") != file_format and other.name and other.is_file():
        raise NinError(f"{json_path} describes {other.name} ({old.get('file_format')}); "
                       f"pick another --out for the {file_format} export")


def _example(info: ModelInfo, batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, info.channels, info.size, info.size), dtype=torch.uint8,
                         generator=generator)


def _write_safetensors(model: nn.Module, info: ModelInfo, config_text: str, path: Path) -> None:
    """The network's state dict, plus the preprocessing's tensors (if any) as ``preprocess.<key>``."""
    from safetensors.torch import save_file

    tensors = dict(model.state_dict())
    clash = [name for name in tensors if name.startswith(TENSOR_PREFIX)]
    if clash:
        raise NinError(f"the model's parameter {clash[0]} uses the prefix {TENSOR_PREFIX!r} kept for preprocessing")
    tensors.update({TENSOR_PREFIX + key: value for key, value in info.tensors().items()})
    # contiguous: a channels_last run's weights are strided views, which safetensors refuses
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt", JSON_KEY: config_text})


def _write_onnx(wrapper: nn.Module, info: ModelInfo, config_text: str, path: Path, batch: int = 2) -> None:
    """torch.onnx's default (dynamo, torch.export-based) exporter, with a dynamic batch axis."""
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise NinError(f"ONNX export needs {module}: pip install 'network-in-network[onnx]'") from None
    with _quiet():
        program = torch.onnx.export(wrapper, (_example(info, batch),), None, dynamo=True,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    program.model.metadata_props[JSON_KEY] = config_text
    program.model.doc_string = (f"nin {info.name}: uint8 NCHW images (batch, {info.channels}, {info.size}, "
                                f"{info.size}), 0..255 -> logits (batch, {info.num_classes})")
    program.save(str(path))


def _write_torchscript(wrapper: nn.Module, info: ModelInfo, config_text: str, path: Path, batch: int = 2) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(wrapper, _example(info, batch))
        torch.jit.save(traced, str(path), _extra_files={f"{JSON_KEY}.json": config_text})


@contextlib.contextmanager
def _quiet():
    """torch 2.14 marks torch.jit deprecated and the exporters warn about internals: keep the CLI quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- checking ---------------------------------------------------------------------------------------

@torch.no_grad()
def check_onnx(path: str | os.PathLike, reference: nn.Module, info: ModelInfo, batch: int = 3) -> float | None:
    """Largest |onnxruntime - PyTorch| over random uint8 images; None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = _example(info, batch)
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    return float((torch.from_numpy(logits) - reference(images)).abs().max())


@torch.no_grad()
def check_torchscript(path: str | os.PathLike, reference: nn.Module, info: ModelInfo, batch: int = 3) -> float:
    with _quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")
    images = _example(info, batch)
    return float((loaded(images) - reference(images)).abs().max())


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


def load_weights(name: str, weights: str | os.PathLike, **kwargs) -> NIN:
    """``create_model(name, weights=PATH)``: the variant built with the export's arguments (``kwargs``
    override them), its weights loaded from the .safetensors file. ``model.info`` holds the ModelInfo
    when the file has a config (class names, normalisation, input size)."""
    state, info = read_safetensors(weights)
    if info is not None and info.name != name:
        raise NinError(f"{weights} holds weights for {info.name!r}, not {name!r}")
    model = create_model(name, **{**(info.kwargs if info else {}), **kwargs})
    _load_state(model, state, weights, name)
    model.info = info
    return model


def _load_state(model: nn.Module, state: dict, where, name: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise NinError(f"{where}: the weights do not fit model {name!r} ({detail})") from None


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> NIN:
    """A trained model ready for evaluation, from ``nin export`` safetensors weights (or their JSON) or
    from a run folder / checkpoint. ``model.info`` (a ``ModelInfo``) holds the class names, the input
    size and channels and the preprocessing; ``model.info.normalize()(uint8_images)`` is the input."""
    path = Path(path).expanduser()
    if path.suffix in (".safetensors", ".json"):
        state, info = read_safetensors(path)
        if info is None:
            raise NinError(f"no config for {path}: expected {path.with_suffix('.json').name} beside it "
                           "(written by `nin export`); or use nin.create_model(name, weights=PATH)")
        model = create_model(info.name, **info.kwargs)
        _load_state(model, state, path, info.name)
    else:
        from .inference import load_trained

        trained = load_trained(path, "cpu")
        model, info = trained.model, ModelInfo.from_trained(trained)
    model.info = info
    return model.to(device).eval()
