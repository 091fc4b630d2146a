"""Exports of a trained model: safetensors weights + a JSON config, ONNX, TorchScript, each checked
(the JSON and reading it back: ``nin.card``; the model back: ``nin.load``).

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
import io
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from .card import FORMAT, INPUT_NAME, JSON_KEY, OUTPUT_NAME, TENSOR_PREFIX, ModelInfo
from .checkpoint import resolve_checkpoint
from .errors import NinError
from .inference import load

FORMATS = ("safetensors", "onnx", "torchscript")
SUFFIXES = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".torchscript.pt"}


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
    check_format(file_format)
    source = resolve_checkpoint(checkpoint)
    model = load(source, "cpu", command=True)
    model_path, _ = export_paths(out if out is not None else source.parent / "model", file_format)
    if model_path.resolve() == source.resolve():
        raise NinError(f"--out {out} would overwrite the checkpoint it exports; pick another --out")
    return export_model(model, model.info, file_format, model_path, check=check)


def export_model(model: nn.Module, info: ModelInfo, file_format: str, out: str | os.PathLike,
                 *, check: bool = True) -> dict:
    """Write ``model`` in ``file_format`` to ``out`` (suffix added when missing) and its JSON beside it."""
    model_path, json_path = export_paths(out, file_format)
    _refuse_foreign_json(json_path, file_format)
    model = model.cpu().eval()
    _refuse_non_finite(model, info)
    text = json.dumps(info.to_json(file_format, model_path.name), indent=2) + "\n"
    wrapper = None if file_format == "safetensors" else WithPreprocessing(model, info.normalize()).eval()

    def write_model(path: Path) -> float | None:
        """The model file at ``path``, and for ONNX and TorchScript the largest difference read back."""
        if file_format == "safetensors":
            _save(model_path, lambda: _write_safetensors(model, info, text, path))
            return None
        if file_format == "onnx":
            program = _onnx_program(wrapper, info, text)
            _save(model_path, lambda: program.save(str(path)))
            diff = check_onnx(path, wrapper, info) if check else None
        else:
            serialized = io.BytesIO()  # in memory first: torch.jit.save aborts the process on a full disk
            torch.jit.save(_traced(wrapper, info), serialized, _extra_files={f"{JSON_KEY}.json": text})
            _save(model_path, lambda: _write_bytes(path, serialized.getbuffer()))
            diff = check_torchscript(path, wrapper, info) if check else None
        if diff is not None and diff > 1e-3:
            raise NinError(f"the {file_format} export of {info.name} differs from the PyTorch model by {diff:.3g}")
        return diff

    diff = _write_pair(model_path, json_path, write_model, text)
    return {"model": model_path, "config": json_path, "max_abs_diff": diff}


def _write_pair(model_path: Path, json_path: Path, write_model, text: str) -> float | None:
    """Both files or neither: each is written to a temporary file beside it, and both are renamed into place
    once both are whole. A failure (a full disk, a read-only folder) leaves neither, nor a folder made here.
    The files get the mode the umask gives (safetensors alone would write 0600)."""
    for path in (model_path, json_path):
        if path.is_dir():
            raise NinError(f"cannot write {path}: a folder is in the way; pick another --out")
    made = _make_folder(model_path.parent)
    temps = [path.with_name(f".{path.name}.{os.getpid()}.tmp") for path in (model_path, json_path)]
    try:
        diff = write_model(temps[0])
        _save(json_path, lambda: _write_text(temps[1], text))
        for temp, path in zip(temps, (model_path, json_path)):
            _save(path, lambda: (os.chmod(temp, 0o666 & ~_umask()), os.replace(temp, path)))
    except BaseException:
        for temp in temps:
            temp.unlink(missing_ok=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    return diff


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode())


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    with open(path, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())  # a full disk shows here, not after the rename


def _make_folder(folder: Path) -> Path | None:
    """``folder`` made if missing; returns the topmost folder made (None: it was there)."""
    missing = [f for f in (folder, *folder.parents) if not f.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NinError(f"cannot write {folder}: {error.strerror or error}") from None
    return missing[-1] if missing else None


def _save(target: Path, write) -> None:
    """Run ``write``; an I/O failure is one line naming ``target`` (the file the user asked for)."""
    from safetensors import SafetensorError

    try:
        write()
    except OSError as error:
        raise NinError(f"cannot write {target}: {error.strerror or error}") from None
    except (SafetensorError, RuntimeError) as error:  # safetensors and torch.jit report I/O errors so
        raise NinError(f"cannot write {target}: {_io_reason(error)}") from None


def _io_reason(error: Exception) -> str:
    """'No space left on device' out of safetensors' 'Error while serializing: I/O error: ... (os error 28)'."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    found = re.search(r"(?:I/O error|IoError)[:(]\s*(.*?)\s*\(os error \d+\)", text)
    return found.group(1) if found else text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _refuse_non_finite(model: nn.Module, info: ModelInfo) -> None:
    """NaN or infinite weights would predict nan% for every class: refused, naming the first such tensor."""
    standardize = {"normalization mean": info.mean, "normalization std": info.std}
    for name, values in standardize.items():
        if values is not None and not all(math.isfinite(v) for v in values):
            raise NinError(f"the {name} {values} holds NaN or infinite values; nothing was written")
    for name, tensor in [*model.state_dict().items(), *info.tensors().items()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NinError(f"the weights hold NaN or infinite values ({name}): a model with them predicts "
                           "nothing; nothing was written")


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


def _onnx_program(wrapper: nn.Module, info: ModelInfo, config_text: str, batch: int = 2):
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
    return program


def _traced(wrapper: nn.Module, info: ModelInfo, batch: int = 2):
    with _quiet(), torch.no_grad():
        return torch.jit.trace(wrapper, _example(info, batch))


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
