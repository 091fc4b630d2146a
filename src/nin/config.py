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
from .kinds import AMPS, EVAL_SPLITS, FLIPS, ON_NAN, PREPROCESS_KINDS, SCHEDULES, TTA_MODES


@dataclass
class TrainConfig:
    """Every setting of a run; ``HELP`` says what each one means (it is also the flag's help)."""
    recipe: str = ""
    # model
    model: str = "nin_mnist_bn"
    dropout: float | None = None
    dropout_warmup: bool | None = None
    init: str = "kaiming"
    data_init: bool = True
    whiten: bool = False
    identity_init: bool = False
    head: str = "gap"
    relu_before_gap: bool = True
    pools: list[str] = field(default_factory=list)
    width: float = 1.0
    # data
    dataset: str = "fashion-mnist"
    root: str = ""
    train_split: str = "train"
    eval_split: str = "test"
    image_size: int = 0
    channels: int = 0
    train_subset: int = 0
    test_subset: int = 0
    translate: int = 2
    flip: str = "auto"
    progressive_resize: int = 0
    erase: float = 0.0
    preprocess: str = "standardize"
    # optimisation
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: float | None = None
    schedule: str = "cosine"
    step_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    grad_clip: float | None = None
    freeze_bn_scales: bool = False
    bn_bias_lr: float = 1.0
    ema: float = 0.0
    lookahead: int = 0
    on_nan: str = "stop"
    # running
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True
    compile: bool = False
    amp: str = "auto"
    eval_batch_size: int = 1024
    eval_every: int | None = None
    tta: str = ""
    out: str = ""
    progress: bool = True
    tensorboard: bool = True


HELP: dict[str, str] = {
    "recipe": "a shipped recipe (nin recipes) or a .toml file; flags given beside it override its fields",
    "model": "the network (nin models lists them)",
    "dropout": "dropout after the mlpconv stages (default: the paper's 0.5 without BatchNorm, 0.3 with it)",
    "dropout_warmup": "dropout rises from 0 to its rate during the lr warm-up, a quarter at a time (default: on "
                      "without BatchNorm, where dropout's noise at the first steps can kill the class maps)",
    "init": "kaiming (robust) | gaussian (the authors' std 0.05) | torch (PyTorch's defaults)",
    "data_init": "without BatchNorm: fit each layer's scale to a batch of training images (LSUV)",
    "whiten": "start the first convolution as a patch-whitening layer (airbench): its filters the +/- "
              "eigenvectors of the training patches' covariance, scaled to unit variance (still trained)",
    "identity_init": "every convolution but the first and the class maps starts as the identity on its first "
                     "min(in, out) channels, the rest of its filters random (airbench's dirac start)",
    "head": "gap (global average pooling, the paper) | fc | fc_dropout (Table 5's alternatives)",
    "relu_before_gap": "a ReLU on the category maps before global average pooling (the paper's network)",
    "pools": "pooling per stage but the last: max | avg | none (empty: the variant's)",
    "width": "a width multiplier: every layer this many times as wide (the class maps stay one per class); "
             "0.5 costs about a quarter of the compute",
    "dataset": "fashion-mnist | mnist | cifar10 | cifar100 | svhn | folder (ROOT/train/CLASS/*.png, ROOT/test/...)",
    "root": "where the data set lies (empty: Debian's Fashion-MNIST, else ./data)",
    "train_split": "the split(s) trained on; train+extra joins SVHN's two training splits",
    "eval_split": "test | val: hold out the paper's validation images and evaluate on them (for tuning)",
    "image_size": "resize images to this many pixels square (0: the data set's own size)",
    "channels": "convert the images to 1 (grey) or 3 (colour) channels (0: the data set's own)",
    "train_subset": "train on N training images, a fixed draw spread over the split (0: all)",
    "test_subset": "evaluate on N test images, a fixed draw spread over the split (0: all)",
    "translate": "random translation by up to this many pixels (0: none)",
    "flip": "random horizontal flips: auto (when the data set allows them) | yes | no | alternate (each image "
            "flipped on every other epoch from a random start, as airbench)",
    "progressive_resize": "progressive resizing (fast.ai): the first epochs train on images scaled down to this "
                          "many pixels, growing each epoch to the full size, which the last quarter of the "
                          "epochs trains at; early epochs cost about (N / size)^2 of a full one (0: off)",
    "erase": "random erasing (Zhong et al., 2017): this share of the training images gets a rectangle of 2-40% "
             "of its area, aspect ratio 0.3-3.3, set to the data's mean (0 after preprocessing); 0: off",
    "preprocess": "standardize (per-channel mean/std) | gcn_zca (CIFAR, the paper) | lcn (SVHN)",
    "epochs": "passes over the training images (default: follows from the data's size: about 1500 x sqrt(images) seen)",
    "batch_size": "images per step (default: 128, or 64 or 32 when the run would have fewer than 400 steps)",
    "lr": "the peak learning rate of SGD (default: 0.1 with BatchNorm; without it 0.2 at batch 128, times "
          "sqrt(batch / 128) at other batches)",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum",
    "weight_decay": "L2 weight decay",
    "label_smoothing": "label smoothing of the cross-entropy (0: none)",
    "warmup_epochs": "linear warm-up from lr/10, in epochs, at most a quarter of the run (default: 1, or more "
                     "when an epoch has fewer than 100 steps)",
    "schedule": "the learning rate after the warm-up: cosine | linear | step | constant",
    "step_milestones": "the step schedule: fractions of the run where the lr drops tenfold",
    "grad_clip": "clip the gradient norm at this, 0: off (default: 1 without BatchNorm, off with it)",
    "freeze_bn_scales": "BatchNorm scales stay at 1, untrained (airbench); BatchNorm variants only",
    "bn_bias_lr": "the BatchNorm biases' learning rate, as a multiple of the lr (airbench trains them faster); "
                  "BatchNorm variants only",
    "ema": "evaluate and export an exponential moving average of the weights with this decay (e.g. 0.999; "
           "shorter at the start of a run); 0: off",
    "lookahead": "Lookahead (Zhang et al., 2019): every N steps slow weights move halfway to the trained ones, "
                 "which restart from them; the run ends on the slow weights (0: off)",
    "on_nan": "stop | rollback (reload the last checkpoint, continue at a tenth of the lr)",
    "seed": "the seed of the initialisation, the data order and the augmentation",
    "device": "auto | cpu | cuda | cuda:N",
    "channels_last": "channels-last memory layout (faster convolutions on most hardware)",
    "compile": "torch.compile the model",
    "amp": "auto (bf16 on CUDA and on CPUs with AMX or AVX512-BF16) | bf16 | off",
    "eval_batch_size": "images per evaluation batch",
    "eval_every": "evaluate every N epochs and after the last (default: every epoch, or every few when the "
                  "test images outnumber the training images, so that evaluating stays a small part of the run)",
    "tta": "the final evaluation averages test-time views, as nin eval --tta: flip | shift | flip-shift (flips "
           "only for runs trained on flipped images); the other epochs' evaluations and metrics.csv stay plain",
    "out": "the run folder (empty: runs/RECIPE-OR-DATASET-TIME)",
    "progress": "a progress bar per epoch (only when the output is a terminal)",
    "tensorboard": "TensorBoard scalars in RUN_DIR/tensorboard when tensorboard is installed",
}


CHOICES = {"schedule": SCHEDULES, "flip": FLIPS, "amp": AMPS, "on_nan": ON_NAN, "preprocess": PREPROCESS_KINDS,
           "eval_split": EVAL_SPLITS, "tta": ("", *TTA_MODES)}
METAVARS = {int: "N", float: "X", str: "TEXT"}
_POSITIVE = ("epochs", "batch_size", "lr", "eval_batch_size", "eval_every", "width", "bn_bias_lr")
_NON_NEGATIVE = ("momentum", "weight_decay", "label_smoothing", "warmup_epochs", "ema",
                 "dropout", "grad_clip", "translate", "train_subset", "test_subset", "image_size", "channels", "seed",
                 "progressive_resize", "erase", "lookahead")


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
    for name, choices in CHOICES.items():
        if getattr(config, name) not in choices:
            named = ", ".join(choice or "'' (none)" for choice in choices)
            raise NinError(f"{name} must be one of {named}, got {getattr(config, name)!r}")
    for name in ("dropout", "label_smoothing", "ema"):
        if getattr(config, name) is not None and getattr(config, name) >= 1:
            raise NinError(f"{name.replace('_', '-')} must be below 1, got {getattr(config, name)}")
    if config.erase > 1:
        raise NinError(f"erase is the share of training images erased, from 0 to 1, got {config.erase}")
    if config.channels not in (0, 1, 3):
        raise NinError(f"channels must be 1 (grey) or 3 (colour), got {config.channels}")
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


def _read_recipe_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NinError(f"recipe file {path} is not UTF-8 text (TOML files are)") from None
    except OSError as error:
        raise NinError(f"recipe file {path} cannot be read ({error.strerror or error})") from None


def list_recipes() -> list[str]:
    folder = resources.files("nin") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


@dataclass(frozen=True)
class Recipe:
    """A recipe file: the run it trains (``config``) and, from its ``[paper]`` table, what it is for: a
    line of description, the row of the paper it reproduces and that row's test error in percent, or
    (best-known recipes) the best public NIN error it aims to beat. The table is not part of
    TrainConfig, so it is neither a flag nor in a run's config."""
    name: str
    config: TrainConfig
    description: str = ""
    paper: str = ""
    paper_error: float = 0.0
    target_error: float = 0.0

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def dataset(self) -> str:
        return self.config.dataset

    @property
    def epochs(self) -> int | None:
        return self.config.epochs


PAPER_KEYS = {"description": "description", "row": "paper", "error": "paper_error", "target_error": "target_error"}
RETIRED_FIELDS = ("description", "paper", "paper_error", "target_error")  # TrainConfig fields before the [paper] table


def load_recipe(name_or_path: str) -> TrainConfig:
    """A shipped recipe by name, or a TOML file by path: the run it trains."""
    return read_recipe(name_or_path).config


def read_recipe(name_or_path: str) -> Recipe:
    """A shipped recipe by name, or a TOML file by path, with its ``[paper]`` table."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        text, name = _read_recipe_file(path), path.stem
    elif path.suffix == ".toml":
        raise NinError(f"recipe file {path} not found")
    elif name_or_path in list_recipes():
        text, name = (resources.files("nin") / "recipes" / f"{name_or_path}.toml").read_text(), name_or_path
    else:
        raise NinError(f"unknown recipe {name_or_path!r}: expected one of {', '.join(list_recipes())} "
                       "or a path to a .toml file")
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise NinError(f"recipe {name_or_path}: not valid TOML ({error})") from None
    about = _paper_table(values, f"recipe {name_or_path}")
    return Recipe(name, from_dict({"recipe": name, **values}, source=f"recipe {name_or_path}"), **about)


def _paper_table(values: dict, source: str) -> dict:
    """Pop the ``[paper]`` table (and the same keys at the top level, as recipes wrote them before it)."""
    table = values.pop("paper", {})
    if not isinstance(table, dict):  # an older recipe: paper = "Table 1: ..." at the top level
        table = {"row": table}
    for key in ("description", "paper_error", "target_error"):
        if key in values:
            table["error" if key == "paper_error" else key] = values.pop(key)
    unknown = sorted(set(table) - set(PAPER_KEYS))
    if unknown:
        raise NinError(f"{source}: unknown key {unknown[0]!r} in [paper]; known keys: {', '.join(PAPER_KEYS)}")
    for key in ("error", "target_error"):
        if not isinstance(table.get(key, 0.0), (int, float)) or table.get(key, 0.0) < 0:
            raise NinError(f"{source}: [paper] {key} must be a number of percent, got {table[key]!r}")
    return {PAPER_KEYS[key]: value for key, value in table.items()}


def without_retired_fields(saved: dict) -> dict:
    """A run config saved before the [paper] table existed, without the fields TrainConfig no longer has."""
    return {key: value for key, value in saved.items() if key not in RETIRED_FIELDS}


# what `nin reproduce` may change in a recipe: where and how long a row runs, not what it is
REPRODUCE_FIELDS = ("dataset", "root", "device", "epochs", "train_subset", "test_subset", "batch_size", "compile",
                    "channels_last", "amp", "eval_split", "width")


def add_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per field (``only``: these fields), default None so that only the flags given override the
    recipe; its help is HELP's line and the field's default."""
    defaults = dataclasses.asdict(TrainConfig())
    for name, kind in field_types().items():
        if only is not None and name not in only:
            continue
        flag = "--" + name.replace("_", "-")
        default = defaults[name]
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text = HELP[name] if default is None else f"{HELP[name]} (default: {shown if shown != '' else 'none'})"
        if only is not None:  # a recipe is always given: its value is the default
            help_text = f"{HELP[name]} (default: the recipe's)"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            parser.add_argument(flag, dest=name, type=_list_parser(item), default=None, metavar="A,B",
                                help=f"comma-separated: {help_text}")
        else:
            metavar = "{" + ",".join(filter(None, CHOICES[name])) + "}" if name in CHOICES else METAVARS[kind]
            parser.add_argument(flag, dest=name, type=kind, default=None, metavar=metavar, help=help_text)


def _list_parser(item: type):
    def parse(text: str) -> list:
        return [item(part) for part in text.split(",") if part.strip()]

    return parse


def overrides_from_args(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in field_types() if getattr(args, name, None) is not None}
