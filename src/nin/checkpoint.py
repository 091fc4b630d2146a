"""Checkpoints: one format, written atomically, read with ``weights_only=True``.

A checkpoint holds everything evaluation and prediction need (model name and arguments, weights,
class names, input size, channels and normalisation) and everything an exact resume needs
(optimizer, step, epoch, RNG states, the resolved config).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from .errors import NinError
from .files import atomic_write  # at the bottom of the package, for every layer; still importable from here

FORMAT = "nin-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (``atomic_write``)."""
    serialized = io.BytesIO()  # in memory first: a full disk is then a plain OSError from our write, not an
    torch.save(obj, serialized)  # error torch's zip writer reports as a RuntimeError after a chained OSError
    atomic_write(serialized.getbuffer(), path)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise NinError(f"no checkpoint at {path}: expected a run folder holding {CHECKPOINT_NAME} or a .pt file")
    return path


KEYS = ("model_name", "model_kwargs", "model", "optimizer", "epoch", "step", "state", "rng", "config", "classes",
        "normalization", "input")  # what `nin train` writes besides format and version


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise NinError(f"{path} is not a readable checkpoint ({type(error).__name__}); "
                       "expected a file written by `nin train`") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise NinError(f"{path} is not a nin checkpoint: expected a file written by `nin train`")
    version = state.get("version", 0)
    if type(version) is not int:
        raise NinError(f"{path} is not a nin checkpoint: its format version is {version!r}")
    if version > VERSION:
        raise NinError(f"{path} was written by a newer nin (format {state['version']}); upgrade nin")
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise NinError(f"{path} is an incomplete nin checkpoint: it lacks {', '.join(missing)}")
    kwargs, classes = state["model_kwargs"], state["classes"]
    if not isinstance(kwargs, dict) or not isinstance(classes, (list, tuple)):
        raise NinError(f"{path} is a damaged nin checkpoint: its model arguments or class names are malformed")
    if len(classes) != kwargs.get("num_classes", len(classes)):
        raise NinError(f"{path} is inconsistent: {len(classes)} class names for a model with "
                       f"{kwargs['num_classes']} outputs")
    return state


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
