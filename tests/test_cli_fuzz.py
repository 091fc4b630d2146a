"""Command lines drawn from the parser's own options with wrong values and wrong paths: every one ends with
exit code 0 or 2, never a traceback, and writes nothing outside the output place it was given."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nin.cli import get_parser, main

VALUES = ["0", "-1", "3", "0.5", "1e6", "nan", "inf", "-inf", "", "x", "auto", "yes", "max,avg", "1,2", "ten",
          "/proc/nin-x", "/dev/null", "nin_cifar10", "folder", "fashion-mnist", "gcn_zca", "val", "rollback",
          "cuda", "cuda:7", "9" * 30]


def train_options() -> dict[str, argparse.Action]:
    """The train command's options (bar --help and --resume), by flag."""
    commands = next(a for a in get_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {action.option_strings[0]: action for action in commands.choices["train"]._actions
            if action.option_strings and action.option_strings[0] not in ("-h", "--resume")}


OPTIONS = train_options()


@st.composite
def command_lines(draw) -> list[str]:
    argv = ["train"]
    for flag in draw(st.lists(st.sampled_from(sorted(OPTIONS)), min_size=1, max_size=4, unique=True)):
        if isinstance(OPTIONS[flag], argparse.BooleanOptionalAction):
            argv.append(draw(st.sampled_from([flag, "--no-" + flag[2:]])))
        else:
            argv += [flag, draw(st.sampled_from(VALUES))]
    return argv


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's refusals
            code = stop.code
    return code, err.getvalue()


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_a_drawn_train_command_line_exits_0_or_2_and_writes_only_its_output(tmp_path, monkeypatch, argv):
    place = tmp_path / "place"
    place.mkdir(exist_ok=True)
    monkeypatch.chdir(place)  # a default run folder would appear here
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))
    before = set(os.listdir(place))
    # the data is never there, so that no drawn line trains for minutes; the run's output goes to out/
    code, err = run([*argv, "--root", str(tmp_path / "no-data"), "--out", str(place / "out"), "--device", "cpu"])
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, (argv, err)
    assert set(os.listdir(place)) <= before | {"out"}, argv
    assert not Path("/proc/nin-x").exists()


def test_the_drawn_lines_reach_every_option():
    assert len(OPTIONS) > 40 and "--epochs" in OPTIONS and "--no-progress" not in OPTIONS


# --- the other commands -------------------------------------------------------------------------------

def command_options(name: str, skip: tuple[str, ...] = ("-h",)) -> dict[str, argparse.Action]:
    """A command's options and its subcommands' (nin data pack's, nin data verify's), by flag."""
    commands = next(a for a in get_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = commands.choices[name]
    nested = [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
              for sub in action.choices.values()]
    return {action.option_strings[0]: action for each in (parser, *nested) for action in each._actions
            if action.option_strings and action.option_strings[0] not in skip}


# --download would reach the network; the rest are drawn
OTHER_OPTIONS = {name: command_options(name, ("-h", "--download"))
                 for name in ("convert", "data", "export", "predict", "eval", "reproduce")}
PATHS = ["/dev/null", "/proc/nin-x", "", "missing.pt", "missing.png", "missing.safetensors", "missing.json",
         "missing.onnx", "x"]
FIRST = {"convert": [["caffe"], ["torch"], ["onnx"]], "data": [["pack", "folder"], ["verify", "x"], ["mnist"],
                                                                ["folder"], ["pack"]],
         "export": [[]], "predict": [[], ["--weights", "fashion-mnist"]], "eval": [[], ["--weights", "fashion-mnist"]],
         "reproduce": [["table5-gap"], ["claims"], ["bogus"], ["all"], []]}


@st.composite
def other_command_lines(draw) -> list[str]:
    name = draw(st.sampled_from(sorted(OTHER_OPTIONS)))
    argv = [name, *draw(st.sampled_from(FIRST[name])), *draw(st.lists(st.sampled_from(PATHS), max_size=2))]
    options = OTHER_OPTIONS[name]
    for flag in draw(st.lists(st.sampled_from(sorted(options)), max_size=3, unique=True)):
        if options[flag].nargs == 0:
            argv.append(flag)
        else:
            argv += [flag, draw(st.sampled_from(VALUES + PATHS))]
    return argv


def safe_places(argv: list[str], tmp_path: Path) -> list[str]:
    """What keeps a drawn line quick and in its place: no data (nothing trains), the output in out/."""
    options = OTHER_OPTIONS[argv[0]]
    extra = ["--root", str(tmp_path / "no-data")] if "--root" in options and "verify" not in argv[:2] else []
    if "--out" in options and (argv[0] != "data" or argv[1:2] == ["pack"]):
        extra += ["--out", str(tmp_path / "place" / "out")]
    return extra + (["--device", "cpu"] if "--device" in options else [])


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=other_command_lines())
def test_a_drawn_command_line_of_the_other_commands_exits_0_or_2_and_writes_only_its_output(tmp_path, monkeypatch,
                                                                                           argv):
    place = tmp_path / "place"
    place.mkdir(exist_ok=True)
    monkeypatch.chdir(place)
    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))
    before = set(os.listdir(place))
    code, err = run([*argv, *safe_places(argv, tmp_path)])
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, (argv, err)
    assert set(os.listdir(place)) <= before | {"out"}, argv
    assert not Path("/proc/nin-x").exists()


def test_the_drawn_lines_reach_every_command_and_option():
    assert set(OTHER_OPTIONS) == set(FIRST) and all(len(options) >= 2 for options in OTHER_OPTIONS.values())
