"""``TrainConfig``: every setting of a training run, loadable from a TOML recipe, overridable per field.

Recipes live in ``nin/recipes/*.toml``; a recipe names only the fields it changes. Command-line
flags are generated from the dataclass fields (``--batch-size``, ``--no-flip``...), so a field added
here is a flag and a recipe key at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import NinError


@dataclass
class TrainConfig:
    recipe: str = ""
    description: str = ""
    paper: str = ""  # the row of the paper a recipe reproduces, e.g. "Table 1: CIFAR-10, dropout"
    paper_error: float = 0.0  # that row's test error in percent
    target_error: float = 0.0  # best-known recipes: the best public NIN test error (percent) they aim to beat
    # model
    model: str = "nin_mnist_bn"
    dropout: float | None = None  # None: the paper's 0.5 without BatchNorm, 0.3 with it (nin.defaults)
    init: str = "kaiming"  # kaiming (robust) | gaussian (the authors' std 0.05) | torch (PyTorch's defaults)
    data_init: bool = True  # without BatchNorm: fit each layer's scale to a batch of training images (LSUV)
    head: str = "gap"
    relu_before_gap: bool = True
    pools: list[str] = field(default_factory=list)  # per stage but the last; empty: the variant's
    # data
    dataset: str = "fashion-mnist"
    root: str = ""  # empty: the default location (Debian's Fashion-MNIST, else ./data)
    train_split: str = "train"  # the split(s) trained on; "train+extra" joins SVHN's two training splits
    eval_split: str = "test"  # test | val: hold out the paper's validation images and evaluate on them (tuning)
    image_size: int = 0  # 0: the data set's own size (folder data sets are resized to it)
    channels: int = 0  # 0: the data set's own channel count
    train_subset: int = 0  # >0: train on N training images (a fixed draw spread over the split)
    test_subset: int = 0  # >0: evaluate on N test images (a fixed draw spread over the split)
    translate: int = 2  # random translation by up to this many pixels (0: none)
    flip: str = "auto"  # auto (when the data set allows it) | yes | no
    preprocess: str = "standardize"  # standardize (per-channel mean/std) | gcn_zca (CIFAR, the paper) | lcn (SVHN)
    # optimisation
    epochs: int | None = None  # None: a length that follows from the training set's size (nin.defaults)
    batch_size: int | None = None  # None: 128, or smaller when the run would have few steps (nin.defaults)
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # cosine | linear | step | constant
    step_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions, for "step"
    grad_clip: float | None = None  # clip the gradient norm at this; 0: off; None: nin.defaults decides
    on_nan: str = "stop"  # stop | rollback (reload the last checkpoint, continue at a tenth of the lr)
    # running
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    channels_last: bool = True
    compile: bool = False
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    eval_batch_size: int = 1024
    out: str = ""  # run folder; empty: runs/<recipe or dataset>-<time>
    progress: bool = True
    tensorboard: bool = True  # TensorBoard scalars in RUN_DIR/tensorboard when tensorboard is installed


SCHEDULES = ("cosine", "linear", "step", "constant")
FLIPS = ("auto", "yes", "no")
AMPS = ("auto", "bf16", "off")
ON_NAN = ("stop", "rollback")
PREPROCESS_KINDS = ("standardize", "gcn_zca", "lcn")  # nin.data.preprocess.KINDS
EVAL_SPLITS = ("test", "val")
_POSITIVE = ("epochs", "batch_size", "lr", "eval_batch_size")
_NON_NEGATIVE = ("paper_error", "target_error", "momentum", "weight_decay", "label_smoothing", "warmup_epochs",
                 "dropout", "grad_clip", "translate", "train_subset", "test_subset", "image_size", "channels", "seed")


def field_types() -> dict[str, type]:
    """Each field's type; ``X | None`` (None: decided when the run starts) is given as X (see OPTIONAL)."""
    return {name: _strip_none(kind) for name, kind in typing.get_type_hints(TrainConfig).items()}


def _strip_none(kind):
    args = typing.get_args(kind)
    return next(a for a in args if a is not type(None)) if type(None) in args else kind


OPTIONAL = frozenset(name for name, kind in typing.get_type_hints(TrainConfig).items()
                     if type(None) in typing.get_args(kind))


def validate(config: TrainConfig) -> TrainConfig:
    for name in _POSITIVE:
        value = getattr(config, name)
        if value is None and name in OPTIONAL:
            continue
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise NinError(f"{name.replace('_', '-')} must be positive, got {value}")
    for name in _NON_NEGATIVE:
        value = getattr(config, name)
        if value is None and name in OPTIONAL:
            continue
        if not value >= 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise NinError(f"{name.replace('_', '-')} must be zero or more, got {value}")
    for name, choices in (("schedule", SCHEDULES), ("flip", FLIPS), ("amp", AMPS), ("on_nan", ON_NAN),
                          ("preprocess", PREPROCESS_KINDS), ("eval_split", EVAL_SPLITS)):
        if getattr(config, name) not in choices:
            raise NinError(f"{name} must be one of {', '.join(choices)}, got {getattr(config, name)!r}")
    if config.dropout is not None and config.dropout >= 1:
        raise NinError(f"dropout must be below 1, got {config.dropout}")
    return config


def _coerce(name: str, value, kind) -> object:
    """A TOML/JSON value checked against the field's type (no silent conversion of strings)."""
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise NinError(f"recipe field {name!r} must be a list, got {value!r}")
        return [_coerce(name, v, item) for v in value]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool) or not isinstance(value, kind) or (
            kind is int and isinstance(value, bool)):
        raise NinError(f"recipe field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def from_dict(values: dict, base: TrainConfig | None = None, source: str = "recipe") -> TrainConfig:
    types = field_types()
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise NinError(f"{source}: unknown field {unknown[0]!r}; known fields: {', '.join(types)}")
    checked = {name: None if value is None and name in OPTIONAL else _coerce(name, value, types[name])
               for name, value in values.items()}
    return dataclasses.replace(base or TrainConfig(), **checked)


def list_recipes() -> list[str]:
    folder = resources.files("nin") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_path: str) -> TrainConfig:
    """A shipped recipe by name, or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        text, name = path.read_text(), path.stem
    elif name_or_path in list_recipes():
        text, name = (resources.files("nin") / "recipes" / f"{name_or_path}.toml").read_text(), name_or_path
    else:
        raise NinError(f"unknown recipe {name_or_path!r}: expected one of {', '.join(list_recipes())} "
                       "or a path to a .toml file")
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise NinError(f"recipe {name_or_path}: not valid TOML ({error})") from None
    return from_dict({"recipe": name, **values}, source=f"recipe {name_or_path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field, default None so that only the flags given override the recipe."""
    for name, kind in field_types().items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            parser.add_argument(flag, dest=name, type=_list_parser(item), default=None,
                                metavar="A,B", help="comma-separated")
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None)


def _list_parser(item: type):
    def parse(text: str) -> list:
        return [item(part) for part in text.split(",") if part.strip()]

    return parse


def overrides_from_args(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in field_types() if getattr(args, name, None) is not None}
