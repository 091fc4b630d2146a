"""The ``nin`` command: train, eval, export, predict, data, models, recipes.

Every user error is a ``NinError``: printed as one line ``nin: error: ...`` with exit code 2.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import warnings

from .version import __version__
from .config import (REPRODUCE_FIELDS, TTA_MODES, add_arguments, from_dict, list_recipes, load_recipe,
                     overrides_from_args, read_recipe)
from .defaults import RULES as DEFAULT_RULES
from .errors import Interrupted, NinError

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: the run stopped cleanly and can be resumed
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a Unix tool returns when its reader (head, less) goes away


WEIGHTS_HELP = "shipped weights instead of a run: fashion-mnist (nin_mnist_bn), fashion-mnist-plain (nin_mnist)"
DEVICE_HELP = "auto (the default: a CUDA GPU when there is one), cpu, cuda or cuda:N"
MODEL_HELP = "a run folder, a checkpoint (.pt) or a safetensors export with its JSON (nin export's default)"
AMP_HELP = "bf16 autocast: auto (on CUDA and on CPUs with AMX or AVX512-BF16), bf16 (always), off"
DATA_SETS = "mnist, fashion-mnist, cifar10, cifar100, svhn or folder"


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, with where to read more (argparse prints the whole usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def get_parser(experimental: bool = False) -> argparse.ArgumentParser:
    """The ``nin`` command's parser; ``experimental``: nin train's help lists its experimental options too
    (as ``nin train --help-experimental`` and the command-line reference do)."""
    parser = Parser(prog="nin", description="Network In Network: train, evaluate, predict.")
    parser.add_argument("--version", action="version", version=f"nin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(commands, experimental)
    _add_eval_parser(commands)
    _add_export_parser(commands)
    _add_convert_parser(commands)
    _add_predict_parser(commands)
    _add_data_parser(commands)
    _add_visualize_parser(commands)
    _add_plot_parser(commands)
    _add_reproduce_parser(commands)
    commands.add_parser("models", help="list the model variants").set_defaults(handler=cmd_models)
    commands.add_parser("recipes", help="list the shipped recipes").set_defaults(handler=cmd_recipes)
    for sub in commands.choices.values():  # its errors name the command: "see nin train --help"
        sub.set_defaults(command_parser=sub)
    return parser


class _ExperimentalHelp(argparse.Action):
    """``nin train --help-experimental``: nin train's help with the experimental options listed."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        get_parser(experimental=True).parse_args(["train", "--help"])  # prints it and exits


def _add_train_parser(commands, experimental: bool) -> None:
    train = commands.add_parser("train", help="train a recipe; every recipe field is a flag",
                                usage="nin train [--recipe NAME | --resume RUN_DIR] [OPTION ...]")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR where it stopped")
    train.add_argument("--help-experimental", action=_ExperimentalHelp,
                       help="show this help with the experimental options (ablations) too, and exit")
    add_arguments(train, experimental=experimental, rules=DEFAULT_RULES)
    train.set_defaults(handler=cmd_train)


def _add_eval_parser(commands) -> None:
    evaluate = commands.add_parser("eval", help="test accuracy, error and per-class accuracy of a run")
    evaluate.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT", nargs="?",
                          help=f"{MODEL_HELP} (or --weights)")
    evaluate.add_argument("--weights", metavar="NAME", help=WEIGHTS_HELP)
    evaluate.add_argument("--dataset", help="default: the data set the run was trained on")
    evaluate.add_argument("--root", help="where the data set lies")
    evaluate.add_argument("--split", default="test",
                          help="test (default), train, extra (SVHN) or val (the paper's validation split)")
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--report", metavar="DIR", help="write the confusion matrix (CSV, PNG), per-class "
                          "accuracy (CSV, PNG), the most confused pairs (CSV) and metrics.json into DIR")
    evaluate.add_argument("--topk", type=int, default=5, metavar="K", help="also report top-K accuracy (default 5)")
    evaluate.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto", help=AMP_HELP)
    evaluate.add_argument("--tta", nargs="?", const="flip", choices=TTA_MODES, metavar="{flip,shift,flip-shift}",
                          help="test-time augmentation: flip (the default: each image and its mirror image averaged; "
                               "data sets that allow flips), shift (moved one pixel each way), flip-shift (both)")
    evaluate.set_defaults(handler=cmd_eval)


def _add_export_parser(commands) -> None:
    export = commands.add_parser("export", help="write a run's model as safetensors + JSON, ONNX or TorchScript")
    export.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT", help="a run folder or a checkpoint (.pt)")
    export.add_argument("--format", default="safetensors", metavar="{safetensors,onnx,torchscript}",
                        help="safetensors: the weights, for nin.load; onnx, torchscript: the model with its "
                             "normalisation inside, fed uint8 NCHW pixels 0..255 (default: safetensors)")
    export.add_argument("--out", metavar="PATH", help="PATH.safetensors|.onnx|.torchscript.pt and PATH.json "
                        "(default: model beside the checkpoint)")
    export.set_defaults(handler=cmd_export)


def _add_convert_parser(commands) -> None:
    convert = commands.add_parser("convert", help="weights released elsewhere as a nin export (the authors' "
                                  "Caffe models, pytorchcv, neural-style)")
    convert.add_argument("source", choices=["caffe", "torch"],
                         help="caffe: a .caffemodel; torch: a PyTorch state dict (.pth) of a known NIN port")
    convert.add_argument("file", metavar="FILE", help="the file to convert: a .caffemodel or a .pth")
    convert.add_argument("--model", metavar="{nin_cifar10,nin_imagenet}", help="caffe: the network the file holds")
    convert.add_argument("--original", metavar="NAME", help="torch: pytorchcv:nin_cifar10, pytorchcv:nin_cifar100, "
                         "pytorchcv:nin_svhn or neural-style:nin_imagenet (default: recognised from the shapes)")
    convert.add_argument("--out", required=True, metavar="PATH", help="writes PATH.safetensors (or .onnx, "
                         ".torchscript.pt) and PATH.json, as nin export does")
    convert.add_argument("--format", default="safetensors", metavar="{safetensors,onnx,torchscript}",
                         help="the output's format, as for nin export (default: safetensors)")
    convert.add_argument("--prototxt", metavar="NET.prototxt", help="caffe: the network's definition (its "
                         "pooling kinds, its data layer's mean_value and scale), checked against the model's layers")
    convert.add_argument("--mean", metavar="R,G,B", help="the mean pixel (0..255) the original subtracts "
                         "(default: the original's, when known)")
    convert.add_argument("--mean-file", metavar="MEAN.binaryproto", help="Caffe's mean image: its "
                         "per-channel mean (channels in the order the network reads: BGR for nin_imagenet)")
    convert.add_argument("--fit-preprocess", metavar="DATASET", help="fit GCN + ZCA whitening on DATASET's "
                         "training images instead (the authors' CIFAR-10 preprocessing)")
    convert.add_argument("--root", help="where that data set lies")
    convert.set_defaults(handler=cmd_convert)


def _add_predict_parser(commands) -> None:
    predict = commands.add_parser("predict", help="top-k classes for image files")
    predict.add_argument("paths", nargs="+", metavar="[CHECKPOINT] IMAGE",
                         help=f"{MODEL_HELP}, then the images (only the images with --weights); ONNX and "
                              "TorchScript exports are for onnxruntime and torch.jit")
    predict.add_argument("--weights", metavar="NAME", help=WEIGHTS_HELP)
    predict.add_argument("--topk", type=int, default=5, metavar="K", help="the K most probable classes (default 5)")
    predict.add_argument("--device", default="auto", help=DEVICE_HELP)
    predict.add_argument("--json", action="store_true", help="print one JSON list: per image its classes and "
                         "probabilities")
    predict.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto", help=AMP_HELP)
    predict.set_defaults(handler=cmd_predict)


class _DataCommands(argparse._SubParsersAction):
    """nin data's subcommands, where a first word that names none is a data set: ``nin data mnist`` is
    parsed by the DATASET parser (argparse has no default subcommand)."""

    class _EveryWord(collections.UserDict):
        def __contains__(self, word) -> bool:  # argparse checks the first word against the choices: all pass
            return True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.choices = self._EveryWord()
        self.choices.data = self._name_parser_map  # the same parsers, by name

    def __call__(self, parser, namespace, values, option_string=None):
        if values[0] not in self._name_parser_map:
            values = ["DATASET", *values]
        super().__call__(parser, namespace, values, option_string)


def _add_data_parser(commands) -> None:
    data = commands.add_parser("data", help="check (or download) a data set and print its size; pack it, verify "
                               "a pack",
                               usage="nin data DATASET [--root DIR] [--download]\n"
                                     "       nin data pack DATASET --out PACK [OPTION ...]\n"
                                     "       nin data verify PACK",
                               description="nin data DATASET checks (or downloads) a data set and prints its "
                                           "size; nin data pack decodes one once into PACK, which any command "
                                           "then reads through a memory map with --root PACK (for data larger "
                                           "than memory); nin data verify checks a pack against its header's "
                                           "checksums. nin data SUBCOMMAND --help says more.")
    subcommands = data.add_subparsers(dest="data_command", required=True, action=_DataCommands,
                                      prog="nin data", metavar="{DATASET,pack,verify}",
                                      help="a data set to check, or a subcommand")
    _add_data_check_parser(subcommands)
    _add_pack_parser(subcommands)
    _add_verify_parser(subcommands)


def _add_data_check_parser(subcommands) -> None:
    check = subcommands.add_parser("DATASET", prog="nin data", usage="nin data DATASET [--root DIR] [--download]",
                                   help="check (or --download) a data set and print its size",
                                   description=f"Check (or download) a data set ({DATA_SETS}) and print the size of "
                                               "each split.")
    check.add_argument("dataset", metavar="DATASET", help=f"a data set: {DATA_SETS}")
    check.add_argument("--root", metavar="DIR", help="where the data set lies (default: ./data)")
    check.add_argument("--download", action="store_true", help="fetch it with torchvision (checksummed)")
    check.set_defaults(handler=cmd_data, command_parser=check, refuse_unknown=_pack_only)


def _add_pack_parser(subcommands) -> None:
    pack = subcommands.add_parser("pack", help="decode a data set once into a pack (data larger than memory)",
                                  usage="nin data pack DATASET --out PACK [--root DIR] [--image-size N] "
                                        "[--channels {1,3}] [--skip-bad-images]",
                                  description="Decode a data set once into PACK: raw pixels and labels, read "
                                              "through a memory map by any command given --root PACK (for data "
                                              "larger than memory). A stopped pack resumes when the same command "
                                              "runs again.")
    pack.add_argument("dataset", metavar="DATASET", nargs="?", help=f"the data set to pack: {DATA_SETS}")
    pack.add_argument("--out", metavar="PACK", help="the pack's folder (new, or a stopped pack's)")
    pack.add_argument("--root", metavar="DIR", help="where the data set lies (default: ./data)")
    pack.add_argument("--image-size", type=int, metavar="N", help="pixels a side (default: the data set's own; an "
                      "image folder's: 32)")
    pack.add_argument("--channels", type=int, choices=(1, 3), help="default: the data set's own")
    pack.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images (counted, listed in "
                      "PACK/SPLIT.skipped.txt) instead of stopping at the first")
    pack.set_defaults(handler=cmd_data_pack, command_parser=pack, refuse_unknown=_no_download)


def _add_verify_parser(subcommands) -> None:
    verify = subcommands.add_parser("verify", help="check a pack against its header's checksums",
                                    usage="nin data verify PACK",
                                    description="Re-read every split of a pack and check its size, labels and "
                                                "SHA-256 against its header (pack.json).")
    verify.add_argument("pack", metavar="PACK", nargs="?", help="a pack's folder (nin data pack --out)")
    verify.set_defaults(handler=cmd_data_verify, command_parser=verify,
                        refuse_unknown=lambda unknown: f"nin data verify takes a PACK folder alone, not {unknown[0]}")


def _add_visualize_parser(commands) -> None:
    visualize = commands.add_parser("visualize", help="category confidence maps of images, the paper's figure 4 "
                                    "(one PNG per image)")
    visualize.add_argument("checkpoint", metavar="CHECKPOINT", help=MODEL_HELP)
    visualize.add_argument("images", nargs="+", metavar="IMAGE", help="the images to map")
    visualize.add_argument("--out", default="visualizations", metavar="DIR",
                           help="where the PNGs go, one per image, named after it (default: ./visualizations)")
    visualize.add_argument("--label", metavar="CLASS", help="the images' true class (default: an image's folder "
                           "name when it is a class name, as in an image-folder data set)")
    visualize.add_argument("--max-maps", type=int, default=10, metavar="N",
                           help="with more classes than N, show the N most probable (default 10)")
    visualize.add_argument("--device", default="auto", help=DEVICE_HELP)
    visualize.set_defaults(handler=cmd_visualize)


def _add_plot_parser(commands) -> None:
    plot = commands.add_parser("plot", help="learning curves of a run (loss, accuracy, learning rate) as a PNG")
    plot.add_argument("run", metavar="RUN_DIR", help="a run folder (or its metrics.csv)")
    plot.add_argument("--out", metavar="PNG", help="default: RUN_DIR/curves.png")
    plot.set_defaults(handler=cmd_plot)


def _add_reproduce_parser(commands) -> None:
    reproduce = commands.add_parser("reproduce", help="run the paper's rows (nin reproduce --list) and write "
                                    "results.md")
    reproduce.add_argument("target", nargs="?", help="all (the paper), best (the best-known recipes), claims (the "
                           "paper's comparisons: writes paper-claims.md too), "
                           "a group (table1..table5, sec4.6, fig3) or a row")
    reproduce.add_argument("--list", action="store_true", help="print every row with its paper number")
    reproduce.add_argument("--seeds", type=int, default=1, metavar="N", help="train each row N times, with seeds "
                           "0..N-1, for a mean and a spread (default 1)")
    reproduce.add_argument("--out", default="reproduce", help="where the runs and results.md go (default: "
                           "./reproduce)")
    add_arguments(reproduce, only=REPRODUCE_FIELDS)  # where and how long the rows run, not what they are
    reproduce.set_defaults(handler=cmd_reproduce)


def cmd_train(args) -> int:
    from .train import fit, resume_config

    overrides = overrides_from_args(args)
    if args.resume:
        config = resume_config(args.resume, overrides)
    else:
        base = load_recipe(args.recipe) if args.recipe else None
        config = from_dict({k: v for k, v in overrides.items() if k != "recipe"}, base=base,
                           source="command line")
    fit(config, resume=args.resume)
    return 0


def cmd_eval(args) -> int:
    from .inference import evaluate_trained, load
    from .evaluate import format_report, metrics_json
    from .plotting import require_matplotlib
    from .report import confused_pairs, format_pairs, write_report
    from .hardware import resolve_device

    if args.topk < 1:
        raise NinError(f"--topk must be 1 or more, got {args.topk}")
    if args.report:
        require_matplotlib("--report")  # before the evaluation, not after it
    if args.checkpoint is None and args.weights is None:
        args.command_parser.error("the following arguments are required: RUN_DIR_OR_CHECKPOINT (or --weights NAME)")
    trained = load(_model_path(args.checkpoint, args.weights), resolve_device(args.device), command=True)
    seen = _seen(trained, args)
    metrics = evaluate_trained(trained, args.dataset, args.root, args.split, topk=(1, args.topk), tta=args.tta or "",
                               amp=args.amp)
    metrics.setdefault("tta", False)
    metrics["confused_pairs"] = confused_pairs(metrics["confusion"], trained.info.classes, limit=10)
    if args.report:
        files = write_report(metrics, trained.info.classes, args.report)
        metrics["report"] = {name: str(path) for name, path in files.items()}
    if args.json:
        print(metrics_json(metrics))
    else:
        print(format_report(metrics, args.split))
        print(format_pairs(metrics["confused_pairs"]))
        if args.report:
            print(f"report: {', '.join(metrics['report'].values())}")
    if seen:  # after the numbers, as library warnings are: a failed evaluation stays one line
        print(f"nin: warning: {seen}", file=sys.stderr)
    return 0


def _seen(trained, args) -> str | None:
    """Scoring a model on images it learnt from: refused for val (which promises held-out images); for a
    training split (whose accuracy is asked for on purpose, to compare with the test split's) the warning
    to print."""
    from .inference import seen_in_training

    seen = seen_in_training(trained, args.dataset, args.root, args.split)
    if seen and args.split == "val":
        raise NinError(f"--split val: {seen}; evaluate on --split test")
    return seen


def cmd_convert(args) -> int:
    from .convert import convert_caffe, convert_torch

    if args.source == "torch":
        unused = [flag for flag in ("model", "prototxt", "mean", "mean_file", "fit_preprocess") if getattr(args, flag)]
        if unused:
            raise NinError(f"--{unused[0].replace('_', '-')} is for Caffe files; a PyTorch port's preprocessing "
                           "is known (--original names the port)")
        written = convert_torch(args.file, args.out, original=args.original, file_format=args.format)
    else:
        if not args.model:
            raise NinError("nin convert caffe needs --model nin_cifar10 or --model nin_imagenet")
        if args.original:
            raise NinError("--original names a PyTorch port (nin convert torch); a Caffe file needs --model")
        written = convert_caffe(args.file, args.model, args.out, file_format=args.format,
                                mean=_floats(args.mean, "--mean"), mean_file=args.mean_file,
                                fit_preprocess=args.fit_preprocess, root=args.root, prototxt=args.prototxt)
    config = json.loads(written["config"].read_text())
    print(f"wrote {written['model']} and {written['config']} ({config['model']} from {args.file}: "
          f"{config['source']['released_by']})")
    return 0


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise NinError(f"{flag} wants three numbers 0..255 separated by commas (R,G,B), got {text!r}")
    return values


def cmd_export(args) -> int:
    from .export import check_format, export_checkpoint

    check_format(args.format)
    written = export_checkpoint(args.checkpoint, args.format, args.out)
    config = json.loads(written["config"].read_text())
    given = config["input"]
    line = (f"wrote {written['model']} and {written['config']}; input: {given['dtype']} {given['layout']} "
            f"(batch, {given['channels']}, {given['size']}, {given['size']})")
    kind = config.get("preprocessing", {}).get("kind", "standardize")
    line += ", pixels 0..255" if given["dtype"] == "uint8" else f", {kind} preprocessing as the JSON says"
    if written["max_abs_diff"] is not None:
        checker = "onnxruntime" if args.format == "onnx" else "torch.jit.load"
        line += f"; checked with {checker}: max abs diff {written['max_abs_diff']:.2g}"
    print(line)
    return 0


def cmd_predict(args) -> int:
    from .inference import load, predict_files
    from .hardware import resolve_device

    if args.topk < 1:
        raise NinError(f"--topk must be 1 or more, got {args.topk}")
    checkpoint, images = (None, args.paths) if args.weights else (args.paths[0], args.paths[1:])
    if not images:
        raise NinError("nin predict needs a run (or --weights NAME) and at least one image")
    trained = load(_model_path(checkpoint, args.weights), resolve_device(args.device), command=True)
    results = predict_files(trained, images, args.topk, amp=args.amp)
    if args.json:
        print(json.dumps(list(results), allow_nan=False))  # predict_files refuses what is not a number
        return 0
    for result in results:  # printed as they come: a long list of files shows progress
        ranked = ", ".join(f"{_printable(t['class'])} {100 * t['probability']:.1f}%" for t in result["top"])
        print(f"{_printable(result['image'])}: {ranked}", flush=True)
    return 0


def _printable(text: str) -> str:
    """One line per image: a newline (or another control character) in a file or class name is escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _model_path(checkpoint: str | None, weights: str | None):
    """What eval and predict load: the run, checkpoint or export given, or the shipped weights named."""
    from .models import shipped_weights

    if (checkpoint is None) == (weights is None):
        raise NinError("give a run, a checkpoint or an export, or --weights NAME (one of them)")
    return checkpoint if weights is None else shipped_weights(weights)[1]


def cmd_visualize(args) -> int:
    from .inference import load
    from .hardware import resolve_device
    from .plotting import require_matplotlib
    from .visualize import visualize_files

    require_matplotlib("nin visualize")  # before loading anything
    trained = load(args.checkpoint, resolve_device(args.device), command=True)
    for result in visualize_files(trained, args.images, args.out, label=args.label, max_maps=args.max_maps):
        truth = f", true {result.label}" if result.label is not None else ""
        print(f"{result.path}: predicted {result.predicted} {100 * result.probability:.1f}%{truth}")
    return 0


def cmd_plot(args) -> int:
    from .visualize import plot_curves

    print(f"wrote {plot_curves(args.run, args.out)}")
    return 0


def cmd_data(args) -> int:
    from .data import dataset_info, load_dataset

    info = dataset_info(args.dataset)
    for split in info.splits:
        part = load_dataset(args.dataset, args.root, split, download=args.download)
        print(f"{info.title} {split}: {len(part.labels)} images {tuple(part.images.shape[1:])}, "
              f"{len(part.classes)} classes")
    return 0


PACK_ONLY = ("--out", "--image-size", "--channels", "--skip-bad-images")


def _pack_only(unknown: list[str]) -> str:
    """nin data DATASET's refusal of a flag it does not take: one of nin data pack's, or another."""
    flag = unknown[0].split("=")[0]
    return f"{flag} belongs to nin data pack DATASET" if flag in PACK_ONLY else _unrecognized(unknown)


def _no_download(unknown: list[str]) -> str:
    if "--download" in unknown:
        return "--download: get the data set first (nin data DATASET --download), then pack it"
    return _unrecognized(unknown)


def cmd_data_verify(args) -> int:
    from .data.pack import verify_pack

    if not args.pack:
        args.command_parser.error("nin data verify takes a PACK folder alone")
    verify_pack(args.pack)
    print(f"{args.pack}: every split as its header records")
    return 0


def cmd_data_pack(args) -> int:
    from .data.pack import train_command, write_pack

    if not args.dataset or not args.out:
        args.command_parser.error("nin data pack needs a DATASET and --out PACK")
    if args.image_size is not None and not 8 <= args.image_size <= 1024:
        raise NinError(f"--image-size must lie in 8..1024, got {args.image_size}")
    folder = write_pack(args.dataset, args.root, args.out, image_size=args.image_size, channels=args.channels,
                        skip_bad=args.skip_bad_images)
    print(f"packed into {folder}: train with {train_command(folder)}")
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import check_overrides, format_list, reproduce

    if args.list:
        print(format_list())
        return 0
    if not args.target:
        raise NinError("nin reproduce needs a TARGET (all, a group or a row) or --list")
    overrides = check_overrides({name: getattr(args, name) for name in REPRODUCE_FIELDS
                                 if getattr(args, name) is not None})
    reproduce(args.target, seeds=args.seeds, out=args.out, overrides=overrides)
    return 0


def cmd_models(args) -> int:
    from .models import count_parameters, create_model, list_models

    for name in list_models():
        print(f"{name:18s} {count_parameters(create_model(name)):>12,d} parameters")
    return 0


def cmd_recipes(args) -> int:
    for name in list_recipes():
        recipe = read_recipe(name)
        print(f"{name:24s} {recipe.model:16s} {recipe.dataset:14s} {recipe.epochs:4d} epochs  {recipe.description}")
    return 0


def _unrecognized(unknown: list[str]) -> str:
    return f"unrecognized arguments: {' '.join(unknown)}"


def _run_keeping_warnings_for_success(args) -> int:
    """The command; the warnings of libraries (torch, numpy) are shown after it succeeds, and dropped when
    it fails with a NinError, whose one line says what matters."""
    with warnings.catch_warnings(record=True) as caught:
        code = args.handler(args)
    for warning in caught:
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return code


def main(argv: list[str] | None = None) -> int:
    args, unknown = get_parser().parse_known_args(argv)
    if unknown:  # a command may say why it takes no such argument (refuse_unknown)
        args.command_parser.error(getattr(args, "refuse_unknown", _unrecognized)(unknown))
    try:
        code = _run_keeping_warnings_for_success(args)
        sys.stdout.flush()  # output still buffered meets a reader that left here, where it is handled
        return code
    except Interrupted as error:
        print(f"nin: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NinError as error:
        print(f"nin: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nin: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output left: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
