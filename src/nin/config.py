"""``TrainConfig``: every setting of a training run, loadable from a TOML recipe, overridable per field.

Recipes live in ``nin/recipes/*.toml``; a recipe names only the fields it changes. Command-line
flags are generated from the dataclass fields (``--batch-size``, ``--no-nesterov``...), so a field added
here is a flag and a recipe key at once; its group and help live beside it, in the field's metadata.
The experimental fields (ablation knobs no recipe uses) keep their names in recipes and run configs,
and their flags are ``--x-NAME``, left out of ``nin train --help``.
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


MODEL, DATA, OPTIMISATION, RUN = "model", "data", "optimisation", "run"
EXPERIMENTAL = "experimental"  # ablation knobs no recipe uses: flags --x-NAME, left out of nin train --help
GROUPS = (MODEL, DATA, OPTIMISATION, RUN, EXPERIMENTAL)


def option(group: str, default, help: str) -> typing.Any:
    """A TrainConfig field with its flag's group and help beside it; a list default is copied for each config."""
    initial = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(**initial, metadata={"group": group, "help": help})


@dataclass
class TrainConfig:
    """Every setting of a run; each field's metadata holds its group and what it means (its flag's help)."""
    recipe: str = option("", "", "a shipped recipe (nin recipes) or a .toml file; flags given beside it override "
                                 "its fields")  # in no group: the command's own options, beside --resume
    model: str = option(MODEL, "nin_mnist_bn", "the network (nin models lists them)")
    dropout: float | None = option(MODEL, None, "dropout after the mlpconv stages (default: the paper's 0.5 "
                                                "without BatchNorm, 0.3 with it)")
    dropout_warmup: bool | None = option(
        MODEL, None, "dropout rises from 0 to its rate during the lr warm-up, a quarter at a time (default: on "
                     "without BatchNorm, where dropout's noise at the first steps can kill the class maps)")
    init: str = option(MODEL, "kaiming", "kaiming (robust) | gaussian (the authors' std 0.05) | torch (PyTorch's "
                                         "defaults)")
    data_init: bool = option(MODEL, True, "without BatchNorm: fit each layer's scale to a batch of training images "
                                          "(LSUV)")
    whiten: bool = option(MODEL, False, "start the first convolution as a patch-whitening layer (airbench): its "
                                        "filters the +/- eigenvectors of the training patches' covariance, scaled "
                                        "to unit variance (still trained)")
    identity_init: bool = option(EXPERIMENTAL, False, "every convolution but the first and the class maps starts as "
                                                      "the identity on its first min(in, out) channels, the rest of "
                                                      "its filters random (airbench's dirac start)")
    head: str = option(MODEL, "gap", "gap (global average pooling, the paper) | fc | fc_dropout (Table 5's "
                                     "alternatives)")
    relu_before_gap: bool = option(MODEL, True, "a ReLU on the category maps before global average pooling (the "
                                                "paper's network)")
    pools: list[str] = option(MODEL, [], "pooling per stage but the last: max | avg | none (empty: the variant's)")
    width: float = option(MODEL, 1.0, "a width multiplier: every layer this many times as wide (the class maps stay "
                                      "one per class); 0.5 costs about a quarter of the compute")
    dataset: str = option(DATA, "fashion-mnist", "fashion-mnist | mnist | cifar10 | cifar100 | svhn | folder "
                                                 "(ROOT/train/CLASS/*.png, ROOT/test/...)")
    root: str = option(DATA, "", "where the data set lies (empty: Debian's Fashion-MNIST, else ./data)")
    train_split: str = option(DATA, "train", "the split(s) trained on; train+extra joins SVHN's two training "
                                             "splits")
    eval_split: str = option(DATA, "test", "test | val: hold out the paper's validation images and evaluate on "
                                           "them (for tuning)")
    image_size: int = option(DATA, 0, "resize images to this many pixels square (0: the data set's own size)")
    channels: int = option(DATA, 0, "convert the images to 1 (grey) or 3 (colour) channels (0: the data set's "
                                    "own)")
    train_subset: int = option(DATA, 0, "train on N training images, a fixed draw spread over the split (0: all)")
    test_subset: int = option(DATA, 0, "evaluate on N test images, a fixed draw spread over the split (0: all)")
    translate: int = option(DATA, 2, "random translation by up to this many pixels (0: none)")
    flip: str = option(DATA, "auto", "random horizontal flips: auto (when the data set allows them) | yes | no")
    progressive_resize: int = option(
        DATA, 0, "progressive resizing (fast.ai): the first epochs train on images scaled down to this many "
                 "pixels, growing each epoch to the full size, which the last quarter of the epochs trains at; "
                 "early epochs cost about (N / size)^2 of a full one (0: off)")
    erase: float = option(EXPERIMENTAL, 0.0, "random erasing (Zhong et al., 2017): this share of the training "
                                             "images gets a rectangle of 2-40% of its area, aspect ratio 0.3-3.3, "
                                             "set to the data's mean (0 after preprocessing); 0: off")
    preprocess: str = option(DATA, "standardize", "standardize (per-channel mean/std) | gcn_zca (CIFAR, the paper) "
                                                  "| lcn (SVHN)")
    epochs: int | None = option(OPTIMISATION, None, "passes over the training images")  # default: defaults.RULES
    batch_size: int | None = option(OPTIMISATION, None, "images per step")  # its default: defaults.RULES
    lr: float | None = option(OPTIMISATION, None, "the peak learning rate of SGD")  # its default: defaults.RULES
    momentum: float = option(OPTIMISATION, 0.9, "SGD momentum")
    nesterov: bool = option(OPTIMISATION, True, "Nesterov momentum")
    weight_decay: float = option(OPTIMISATION, 5e-4, "L2 weight decay")
    label_smoothing: float = option(OPTIMISATION, 0.0, "label smoothing of the cross-entropy (0: none)")
    warmup_epochs: float | None = option(OPTIMISATION, None, "linear warm-up from lr/10, in epochs, at most a "
                                                             "quarter of the run")  # its default: defaults.RULES
    schedule: str = option(OPTIMISATION, "cosine", "the learning rate after the warm-up: cosine | linear | step | "
                                                   "constant")
    step_milestones: list[float] = option(OPTIMISATION, [0.5, 0.75], "the step schedule: fractions of the run "
                                                                     "where the lr drops tenfold")
    grad_clip: float | None = option(OPTIMISATION, None, "clip the gradient norm at this, 0: off (default: 1 "
                                                         "without BatchNorm, off with it)")
    freeze_bn_scales: bool = option(EXPERIMENTAL, False, "BatchNorm scales stay at 1, untrained (airbench); "
                                                         "BatchNorm variants only")
    bn_bias_lr: float = option(EXPERIMENTAL, 1.0, "the BatchNorm biases' learning rate, as a multiple of the lr "
                                                  "(airbench trains them faster); BatchNorm variants only")
    ema: float = option(EXPERIMENTAL, 0.0, "evaluate and export an exponential moving average of the weights with "
                                           "this decay (e.g. 0.999; shorter at the start of a run); 0: off")
    lookahead: int = option(EXPERIMENTAL, 0, "Lookahead (Zhang et al., 2019): every N steps slow weights move "
                                             "halfway to the trained ones, which restart from them; the run ends "
                                             "on the slow weights (0: off)")
    on_nan: str = option(OPTIMISATION, "stop", "stop | rollback (reload the last checkpoint, continue at a tenth "
                                               "of the lr)")
    seed: int = option(RUN, 0, "the seed of the initialisation, the data order and the augmentation")
    device: str = option(RUN, "auto", "auto | cpu | cuda | cuda:N")
    channels_last: bool = option(RUN, True, "channels-last memory layout (faster convolutions on most hardware)")
    compile: bool = option(RUN, False, "torch.compile the model")
    amp: str = option(RUN, "auto", "auto (bf16 on CUDA and on CPUs with AMX or AVX512-BF16) | bf16 | off")
    eval_batch_size: int = option(RUN, 1024, "images per evaluation batch")
    eval_every: int | None = option(RUN, None, "evaluate every N epochs and after the last (default: every epoch, "
                                               "or every few when the test images outnumber the training images, "
                                               "so that evaluating stays a small part of the run)")
    tta: str = option(RUN, "", "the final evaluation averages test-time views, as nin eval --tta: flip | shift | "
                               "flip-shift (flips only for runs trained on flipped images); the other epochs' "
                               "evaluations and metrics.csv stay plain")
    out: str = option(RUN, "", "the run folder (empty: runs/RECIPE-OR-DATASET-TIME)")
    progress: bool = option(RUN, True, "a progress bar per epoch (only when the output is a terminal)")
    tensorboard: bool = option(RUN, True, "TensorBoard scalars in RUN_DIR/tensorboard when tensorboard is "
                                          "installed")


# a value of a user option kept for ablations: an experimental switch (FIELD VALUE still works), left out of
# the option's choices in the help
EXPERIMENTAL_VALUES = {"--x-alternate-flips": ("flip", "alternate", "each image flipped on every other epoch from "
                                               "a random start, as airbench (the same as --flip alternate)")}


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
    values.update(_experimental_table(values, f"recipe {name_or_path}"))
    return Recipe(name, from_dict({"recipe": name, **values}, source=f"recipe {name_or_path}"), **about)


def _experimental_table(values: dict, source: str) -> dict:
    """Pop the ``[experimental]`` table: the ablation knobs a recipe sets, apart from the user's options (the
    same fields at the top level, as recipes wrote them before the table, still load)."""
    table = values.pop("experimental", {})
    if not isinstance(table, dict):
        raise NinError(f"{source}: experimental must be a table ([experimental]), got {table!r}")
    knobs = [item.name for item in dataclasses.fields(TrainConfig) if item.metadata.get("group") == EXPERIMENTAL]
    unknown = sorted(set(table) - set(knobs))
    if unknown:
        raise NinError(f"{source}: unknown key {unknown[0]!r} in [experimental]; known keys: {', '.join(knobs)}")
    return table


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


TITLES = {MODEL: "model", DATA: "data", OPTIMISATION: "optimisation", RUN: "run",
          EXPERIMENTAL: "experimental (ablations)"}
EXPERIMENTAL_NOTE = "knobs kept for ablations, used by no recipe"


def add_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None, experimental: bool = False,
                  rules: dict[str, str] | None = None) -> None:
    """One flag per field, in its field's group, default None so that only the flags given override the
    recipe; its help is the field's and its default (``rules``: a default the run decides, in words, by
    field). ``only``: these fields, ungrouped, their default the recipe's. The experimental fields' flags
    are --x-NAME (their old --NAME still parses), their help shown only with ``experimental``."""
    fields, types = {spec.name: spec for spec in dataclasses.fields(TrainConfig)}, field_types()
    if only is not None:  # a recipe is always given: its value is the default
        for name in (name for name in fields if name in only):  # in the fields' order
            _add_flag(parser, fields[name], types[name], f"{fields[name].metadata['help']} (default: the recipe's)")
        return
    groups = {"": parser, **{group: parser.add_argument_group(TITLES[group]) for group in GROUPS}}
    groups[EXPERIMENTAL].description = _experimental_note(experimental)
    for name, spec in fields.items():
        help_text = spec.metadata["help"] + _default_text(spec, (rules or {}).get(name))
        if spec.metadata["group"] != EXPERIMENTAL:
            _add_flag(groups[spec.metadata["group"]], spec, types[name], help_text)
            continue
        _add_flag(groups[EXPERIMENTAL], spec, types[name], help_text, "--x-", shown=experimental)
        _add_flag(groups[EXPERIMENTAL], spec, types[name], "", "--", shown=False)  # its name before the prefix
    for flag, (name, value, help_text) in EXPERIMENTAL_VALUES.items():
        groups[EXPERIMENTAL].add_argument(flag, dest=name, action="store_const", const=value, default=None,
                                          help=help_text if experimental else argparse.SUPPRESS)


def _experimental_note(shown: bool) -> str:
    if not shown:
        return f"{EXPERIMENTAL_NOTE}: nin train --help-experimental lists them"
    return (f"{EXPERIMENTAL_NOTE} (a verdict on each: the documentation's Experimental options page); their "
            "flags before the x- prefix (--ema, --flip alternate...) still work")


def _default_text(spec: dataclasses.Field, rule: str | None) -> str:
    if rule is not None:
        return f" (default: {rule})"
    default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
    if default is None:  # decided when the run starts: the help says how
        return ""
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    return f" (default: {shown if shown != '' else 'none'})"


def _add_flag(target, spec: dataclasses.Field, kind, help_text: str, prefix: str = "--", shown: bool = True) -> None:
    """``spec``'s flag (``prefix`` + its name), taking a ``kind``, in ``target`` (a parser or a group)."""
    flag = prefix + spec.name.replace("_", "-")
    if typing.get_origin(kind) is list:
        help_text = f"comma-separated: {help_text}"
    settings = {"dest": spec.name, "default": None,
                "help": help_text.replace("%", "%%") if shown else argparse.SUPPRESS}  # argparse formats help with %
    if kind is bool:
        target.add_argument(flag, action=argparse.BooleanOptionalAction, **settings)
    elif typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        target.add_argument(flag, type=_list_parser(item), metavar="A,B", **settings)
    else:
        target.add_argument(flag, type=kind, metavar=_metavar(spec.name, kind), **settings)


def _metavar(name: str, kind: type) -> str:
    """The field's choices, bar its experimental values (EXPERIMENTAL_VALUES), or the kind of value it takes."""
    if name not in CHOICES:
        return METAVARS[kind]
    hidden = {value for field_name, value, _ in EXPERIMENTAL_VALUES.values() if field_name == name}
    return "{" + ",".join(choice for choice in CHOICES[name] if choice and choice not in hidden) + "}"


def _list_parser(item: type):
    def parse(text: str) -> list:
        return [item(part) for part in text.split(",") if part.strip()]

    return parse


def overrides_from_args(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in field_types() if getattr(args, name, None) is not None}
