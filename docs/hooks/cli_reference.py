"""MkDocs hook: the command-line reference, rendered from nucleiseg's own argparse parser at
build time, so the documented commands and options cannot drift from the code.

A page writes `<!-- cli: predict -->`, alone on a line, where `nucleiseg predict`'s reference
goes (its usage line, description and one table per option group), or `<!-- cli: nucleiseg -->`
for the top-level command and its list of subcommands. After the build, a subcommand that no page
rendered is a warning, which `mkdocs build --strict` turns into a failure.

`<!-- bundled-model -->` becomes a table of the bundled model's tuned post-processing and
training nucleus size, read from the model file's record (no TensorFlow), beside the defaults
that other models get.

Importing nucleiseg.cli imports no TensorFlow (the parser is built from light modules only).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re

log = logging.getLogger("mkdocs.plugins.nucleiseg")

MARKER = re.compile(r"^<!--\s*cli:\s*([\w-]+)\s*-->$", flags=re.M)  # alone on its line
BUNDLED = re.compile(r"^<!--\s*bundled-model\s*-->$", flags=re.M)
rendered: set[str] = set()


def parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser], dict]:
    """(the top-level parser, {subcommand: its parser}, {subcommand: its one-line help})."""
    from nucleiseg.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    return parser, dict(action.choices), helps


def cell(text) -> str:
    """Text for one markdown table cell: no newlines, no bare pipes, no HTML (`<stem>`)."""
    text = " ".join(str(text).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def default_of(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS) or isinstance(
            action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                     argparse._HelpAction, argparse._VersionAction)):
        return ""
    value = action.default
    if isinstance(value, (tuple, list)):
        value = ",".join(map(str, value))
    return f"`{value}`"


def option_table(parser: argparse.ArgumentParser, actions) -> list[str]:
    formatter = parser._get_formatter()
    lines = ["| option | default | what |", "|---|---|---|"]
    for action in actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        invocation = formatter._format_action_invocation(action)
        what = formatter._expand_help(action) if action.help else ""
        default = default_of(action)
        if default:  # said in the default column: not again in the text
            what = what.replace(f" (default {default.strip('`')})", "")
        if action.choices is not None and not action.option_strings:
            what = f"{what} (one of {', '.join(map(str, action.choices))})".strip()
        required = " **(required)**" if action.required and action.option_strings else ""
        lines.append(f"| `{cell(invocation)}`{required} | {default} "
                     f"| {cell(what)} |")
    return lines


@contextlib.contextmanager
def columns(width: int = 88):
    """argparse wraps usage lines to the terminal's width: a fixed one, so builds agree."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def render(name: str) -> str:
    """Markdown reference of `nucleiseg NAME` (or of `nucleiseg` itself)."""
    with columns():
        return _render(name)


def _render(name: str) -> str:
    top, commands, helps = parsers()
    if name == "nucleiseg":
        parser = top
        intro = [parser.description or ""]
        intro += ["", "| command | what |", "|---|---|"]
        intro += [f"| [`nucleiseg {command}`]({command}.md) | {cell(helps.get(command, ''))} |"
                  for command in commands]
    elif name in commands:
        parser = commands[name]
        intro = [parser.description or helps.get(name) or ""]
    else:
        known = ", ".join(["nucleiseg", *commands])
        raise ValueError(f"<!-- cli: {name} -->: no such command (known: {known})")
    usage = parser.format_usage().strip().removeprefix("usage: ")
    usage = usage.replace("\n" + " " * len("usage: "), "\n")  # continuation lines, aligned
    lines = ["```text", usage, "```", "", *intro, ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if a.help != argparse.SUPPRESS
                   and not isinstance(a, argparse._SubParsersAction)]
        if not actions:
            continue
        title = {"positional arguments": "Arguments", "options": "Options",
                 "optional arguments": "Options"}.get(group.title, group.title[:1].upper()
                                                      + group.title[1:])
        lines += [f"**{title}**", ""]
        if group.description:
            lines += [group.description, ""]
        lines += [*option_table(parser, actions), ""]
    rendered.add(name)
    return "\n".join(lines)


def bundled_model_table() -> str:
    """The bundled model's post-processing (from its record) beside the library defaults."""
    import dataclasses

    from nucleiseg.algorithms.instances import InstanceOptions
    from nucleiseg.model.saving import bundled_model_path, read_record

    record = read_record(bundled_model_path())
    tuned = record.get("postprocessing", {})

    def shown(value) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, (tuple, list)):
            return ",".join(map(str, value)) or "none"
        return str(value)

    lines = ["| option | other models | bundled model |", "|---|---|---|"]
    for field in dataclasses.fields(InstanceOptions):
        flag = f"--{field.name.replace('_', '-')}"
        default, value = field.default, tuned.get(field.name, field.default)
        if field.name == "fill_holes":  # the command line has only the negation
            flag, default, value = "--no-fill-holes", not default, not value
        lines.append(f"| `{flag}` | `{shown(default)}` | `{shown(value)}` |")
    diameter = (record.get("nucleus_size") or {}).get("median_diameter")
    lines.append(f"| `--diameter` | fixed scale 1 unless the model records its nucleus size "
                 f"| `auto` (training nuclei: median diameter {diameter} px) |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    def replace(match: re.Match) -> str:
        try:
            return render(match.group(1))
        except ValueError as exc:
            log.warning("%s: %s", page.file.src_path, exc)
            return match.group(0)

    if BUNDLED.search(markdown):
        markdown = BUNDLED.sub(lambda _: bundled_model_table(), markdown)
    return MARKER.sub(replace, markdown)


def on_config(config):
    """Import nucleiseg from the checkout being documented (src/ beside mkdocs.yml), whatever
    nucleiseg the environment has installed."""
    import sys
    from pathlib import Path

    source = str(Path(config.config_file_path).parent / "src")
    if source not in sys.path:
        sys.path.insert(0, source)
    return config


def on_pre_build(config) -> None:
    rendered.clear()


def on_post_build(config) -> None:
    _, commands, _ = parsers()
    missing = sorted(set(commands) - rendered)
    if missing:
        log.warning("no docs page renders the reference of: %s (add <!-- cli: NAME -->)",
                    ", ".join(missing))
