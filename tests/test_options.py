"""nin train's options in two tiers: the user options in groups (model, data, optimisation, run), the
ablation knobs no recipe uses behind --x- flags and --help-experimental, each option's help beside its
field; and nin data's subcommands (pack, verify) with parsers and help of their own."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import tomllib
from pathlib import Path

import pytest
import torch

import nin.config
from nin.cli import get_parser, main
from nin.config import EXPERIMENTAL, GROUPS, TrainConfig, from_dict, list_recipes, load_recipe, without_retired_fields
from nin.defaults import LR_RULE

ROOT = Path(__file__).resolve().parent.parent
OLD_RUN = Path(__file__).parent / "data" / "main-2026-11-27"
KNOBS = {"identity_init": True, "erase": 0.25, "freeze_bn_scales": True, "bn_bias_lr": 4.0, "ema": 0.99,
         "lookahead": 5, "flip": "alternate"}
NEW_FLAGS = ["--x-identity-init", "--x-erase", "0.25", "--x-freeze-bn-scales", "--x-bn-bias-lr", "4", "--x-ema",
             "0.99", "--x-lookahead", "5", "--x-alternate-flips"]
OLD_FLAGS = ["--identity-init", "--erase", "0.25", "--freeze-bn-scales", "--bn-bias-lr", "4", "--ema", "0.99",
             "--lookahead", "5", "--flip", "alternate"]


def printed(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as stop:  # argparse's help and refusals
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def overrides(argv: list[str]) -> dict:
    return nin.config.overrides_from_args(get_parser().parse_args(["train", *argv]))


def test_the_experimental_fields_are_the_knobs_and_no_shipped_recipe_uses_them():
    experimental = {spec.name for spec in dataclasses.fields(TrainConfig) if spec.metadata["group"] == EXPERIMENTAL}
    assert experimental == set(KNOBS) - {"flip"}
    for name in list_recipes():
        text = tomllib.loads((ROOT / "src" / "nin" / "recipes" / f"{name}.toml").read_text())
        assert not experimental & set(text) and text.get("flip") != "alternate", name


def test_each_field_has_its_group_and_help_beside_it():
    for spec in dataclasses.fields(TrainConfig):
        assert spec.metadata["group"] in ("", *GROUPS) and spec.metadata["help"].strip(), spec.name
    assert not hasattr(nin.config, "HELP")  # no parallel table to drift from the fields


def test_train_help_shows_the_groups_and_leaves_the_knobs_out(capsys):
    code, out, _ = printed(["train", "--help"], capsys)
    assert code == 0
    assert [line for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")] == [
        "options:", "model:", "data:", "optimisation:", "run:", "experimental (ablations):"]
    assert "--help-experimental lists them" in " ".join(out.split()) and "--flip {auto,yes,no}" in out
    for knob in ("identity-init", "erase", "freeze-bn-scales", "bn-bias-lr", "ema", "lookahead", "alternate"):
        assert knob not in out, knob


def test_help_experimental_lists_each_knob_under_its_x_flag(capsys):
    code, out, _ = printed(["train", "--help-experimental"], capsys)
    experimental = out[out.index("experimental (ablations):"):]
    assert code == 0 and "--epochs N" in out
    for flag in [flag for flag in NEW_FLAGS if flag.startswith("--")]:
        assert flag in experimental, flag


def test_the_x_flags_and_their_old_names_set_the_same_fields():
    assert overrides(NEW_FLAGS) == KNOBS == overrides(OLD_FLAGS)
    assert overrides(["--no-x-identity-init", "--no-freeze-bn-scales"]) == {"identity_init": False,
                                                                            "freeze_bn_scales": False}


def test_a_train_command_with_x_flags_reaches_the_run_with_them(tmp_path, monkeypatch):
    import nin.train

    started = []
    monkeypatch.setattr(nin.train, "fit", lambda config, resume=None: started.append(config))
    assert main(["train", *NEW_FLAGS, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert {name: getattr(started[0], name) for name in KNOBS} == KNOBS


def test_an_old_run_config_and_an_old_recipe_naming_the_knobs_load_and_resume(tmp_path):
    from nin.train import resume_config

    saved = torch.load(OLD_RUN / "checkpoint.pt", weights_only=True)
    saved["config"].update(KNOBS)  # a run of the days when the knobs were ordinary flags
    run = tmp_path / "run"
    run.mkdir()
    torch.save(saved, run / "checkpoint.pt")
    config = resume_config(str(run), {"epochs": 2})
    assert {name: getattr(config, name) for name in KNOBS} == KNOBS and config.epochs == 2
    assert from_dict(without_retired_fields(saved["config"])).ema == 0.99  # as config.json is read
    recipe = tmp_path / "old.toml"
    recipe.write_text('identity_init = true\nerase = 0.25\nfreeze_bn_scales = true\nbn_bias_lr = 4.0\nema = 0.99\n'
                      'lookahead = 5\nflip = "alternate"\n')  # a recipe of those days
    assert {name: getattr(load_recipe(str(recipe)), name) for name in KNOBS} == KNOBS



def test_a_recipe_sets_the_knobs_in_its_experimental_table_apart_from_the_user_options(tmp_path):
    recipe = tmp_path / "ablation.toml"
    recipe.write_text('epochs = 3\n\n[experimental]\nema = 0.99\nlookahead = 5\n')
    config = load_recipe(str(recipe))
    assert (config.epochs, config.ema, config.lookahead) == (3, 0.99, 5)


@pytest.mark.parametrize("table, message", [
    ("[experimental]\nepochs = 3\n", "unknown key 'epochs' in [experimental]"),  # a user option: at the top
    ("experimental = 0.99\n", "experimental must be a table ([experimental])"),
    ("[experimental]\nema = 1.5\n", "ema must be below 1"),
])
def test_a_wrong_experimental_table_is_one_line(tmp_path, capsys, table, message):
    recipe = tmp_path / "wrong.toml"
    recipe.write_text(table)
    code = main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--x-ema", "1"], "ema must be below 1, got 1.0"),
    (["train", "--x-ema", "abc"], "argument --x-ema: invalid float value: 'abc'"),
    (["train", "--x-lookahead", "-2"], "lookahead must be zero or more, got -2"),
    (["train", "--x-lookahead", "2.5"], "argument --x-lookahead: invalid int value: '2.5'"),
    (["train", "--x-erase", "1.5"], "erase is the share of training images erased, from 0 to 1, got 1.5"),
    (["train", "--x-bn-bias-lr", "0"], "bn-bias-lr must be positive, got 0.0"),
    (["train", "--x-alternate-flips", "yes"], "unrecognized arguments: yes"),
    (["train", "--x-identity-init", "no"], "unrecognized arguments: no"),
    (["train", "--x-nothing"], "unrecognized arguments: --x-nothing"),
    (["data", "pack", "folder", "--out", "{tmp}/p", "--image-size", "big"], "argument --image-size: invalid int"),
    (["data", "pack", "folder", "--out", "{tmp}/p", "--bogus"], "nin data pack: error: unrecognized arguments"),
    (["data", "verify", "{tmp}", "{tmp}"], "nin data verify takes a PACK folder alone, not"),
    (["data"], "nin data: error: the following arguments are required"),
])
def test_a_wrong_value_of_a_new_option_exits_2_in_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)  # a default run folder would land here
    code, _, err = printed([arg.format(tmp=tmp_path) for arg in argv] + (
        ["--root", tmp_path / "no-data", "--out", tmp_path / "run"] if argv[0] == "train" else []), capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "p").exists()


def test_the_lr_help_quotes_the_rule_of_nin_defaults(capsys):
    _, out, _ = printed(["train", "--help"], capsys)
    assert LR_RULE in " ".join(out.split())
    assert LR_RULE in " ".join((ROOT / "docs" / "training.md").read_text().split())


@pytest.mark.parametrize("command, usage", [("pack", "usage: nin data pack DATASET --out PACK"),
                                            ("verify", "usage: nin data verify PACK"),
                                            ("fashion-mnist", "usage: nin data DATASET [--root DIR]")])
def test_nin_data_subcommands_have_their_own_help(capsys, command, usage):
    code, out, _ = printed(["data", command, "--help"], capsys)
    assert code == 0 and out.startswith(usage)
    code, out, _ = printed(["data", "--help"], capsys)
    assert code == 0 and "    pack " in out and "    verify " in out


def test_every_option_of_nin_datas_subcommands_has_help():
    commands = next(a for a in get_parser()._actions if isinstance(a, argparse._SubParsersAction))
    nested = next(a for a in commands.choices["data"]._actions if isinstance(a, argparse._SubParsersAction))
    assert set(nested.choices) == {"DATASET", "pack", "verify"}
    for name, parser in nested.choices.items():
        assert all(action.help and action.help.strip() for action in parser._actions), name


def test_the_command_line_reference_shows_the_groups_the_knobs_and_the_data_subcommands():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "hooks" / "cli_reference.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.render()
    for heading in ("**Model**", "**Data**", "**Optimisation**", "**Run**", "**Experimental (ablations)**",
                    "### nin data DATASET", "### nin data pack", "### nin data verify", "`--x-ema` `X`"):
        assert heading in page, heading

