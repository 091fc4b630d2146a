"""MkDocs hook: the command-line reference (reference/cli.md) written from `nin.cli.get_parser()` at build time.

Nothing here is kept by hand, so the page cannot drift from the parser: a new option, group or subcommand
appears in the next build. Registered in mkdocs.yml under `hooks:`.
"""
from __future__ import annotations

import argparse
import html
import os

from mkdocs.structure.files import File

PAGE = "reference/cli.md"


def _cell(text: str) -> str:
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _flags(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"`{name}`" for name in action.option_strings)
        if action.nargs != 0:
            metavar = action.metavar or (action.dest.upper() if action.choices is None
                                         else "{" + ",".join(map(str, action.choices)) + "}")
            if isinstance(metavar, tuple):
                metavar = " ".join(metavar)
            names += f" `{metavar}`"
        return names
    return f"`{action.metavar or action.dest}`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    try:
        return parser._get_formatter()._expand_help(action)
    except (KeyError, TypeError, ValueError):
        return action.help


def _default(action: argparse.Action) -> str:
    if not action.option_strings or action.nargs == 0 or action.default in (None, argparse.SUPPRESS, "", [], ()):
        return ""
    return f"`{action.default}`"


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name, "")


def _command(title: str, parser: argparse.ArgumentParser, summary: str, level: int) -> list[str]:
    out = [f"{'#' * level} {title}", ""]
    if summary:
        out += [_cell(summary)[0].upper() + _cell(summary)[1:] + ".", ""]
    if parser.description and parser.description != summary:
        out += [html.escape(parser.description, quote=False), ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS
                   and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if not actions:
            continue
        title = group.title or "options"
        out += [f"**{title[0].upper() + title[1:]}**", ""]
        if group.description:
            out += [_cell(group.description), ""]
        out += ["| argument | default | what it does |", "|---|---|---|"]
        out += [f"| {_flags(a)} | {_default(a)} | {_cell(_help(parser, a))} |" for a in actions]
        out.append("")
    for sub_name, sub, sub_summary in _subparsers(parser):  # nin data pack, nin data verify...
        out += _command(f"{title} {sub_name}", sub, sub_summary, level + 1)
    return out


def render() -> str:
    from nin.cli import get_parser  # imported here: the hook module loads before the package is needed

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "78"  # argparse wraps usage lines to the terminal's width: the page's, here
    try:
        parser = get_parser(experimental=True)  # nin train's experimental options too, in their own group
        return _page(parser)
    finally:
        if columns is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = columns


def _page(parser: argparse.ArgumentParser) -> str:
    lines = ["# Command-line reference", "",
             "Generated from `nin.cli.get_parser()` each time the site is built, so it follows the parser: "
             "`nin COMMAND --help` prints the same options.", "",
             "| command | what it does |", "|---|---|"]
    commands = list(_subparsers(parser))
    lines += [f"| [`nin {name}`](#{('nin-' + name).replace('.', '')}) | {_cell(summary)} |"
              for name, _, summary in commands]
    lines.append("")
    for name, sub, summary in commands:
        lines += _command(f"nin {name}", sub, summary, 2)
    return "\n".join(lines) + "\n"


def on_files(files, config):
    files.append(File.generated(config, PAGE, content=render()))
    return files
