"""Writes the command-line reference page (Markdown) from ``latix.cli``'s argparse parser.

The page is generated at ``make docs`` time from the parser the ``latix`` command itself runs
(``latix.cli._parser()``), so every subcommand, argument, default and help text it shows is the
one the installed command accepts: nothing is copied by hand. Usage:
``python scripts/docs/gen_cli.py OUT.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latix import cli


def _subparsers(p: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """``(name, parser, help)`` of each subcommand of ``p``, in declaration order."""
    out = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in a._choices_actions}
            for name, sp in a.choices.items():
                out.append((name, sp, helps.get(name, "")))
    return out


def _help(a: argparse.Action) -> str:
    """The action's help text with argparse's ``%(default)s``-style fields filled in."""
    if not a.help or a.help == argparse.SUPPRESS:
        return ""
    fields = dict(vars(a))
    for k, v in list(fields.items()):
        if isinstance(v, list):
            fields[k] = ", ".join(map(str, v))
    return a.help % fields


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _arguments(p: argparse.ArgumentParser) -> list[str]:
    """A Markdown table of ``p``'s arguments: name(s), value, default, help."""
    rows = []
    for a in p._actions:
        if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if a.help == argparse.SUPPRESS:
            continue
        if a.option_strings:
            name = ", ".join(f"`{o}`" for o in a.option_strings)
        else:
            name = f"`{a.metavar or a.dest}`"
        if a.nargs == 0:  # store_true / store_false
            value = "flag"
        elif a.choices is not None:
            value = " \\| ".join(f"`{c}`" for c in a.choices)
        elif a.type is not None:
            value = getattr(a.type, "__name__", str(a.type))
        else:
            value = "str"
        if a.nargs in ("*", "+"):
            value += " (several)"
        if a.required or not a.option_strings and a.nargs not in ("*", "?"):
            default = "required"
        elif a.nargs == 0 or a.default is None:
            default = ""
        else:
            default = f"`{a.default}`"
        rows.append(f"| {name} | {value} | {default} | {_cell(_help(a))} |")
    if not rows:
        return ["No arguments."]
    return ["| argument | value | default | help |", "| --- | --- | --- | --- |", *rows]


def _usage(p: argparse.ArgumentParser) -> str:
    return " ".join(p.format_usage().removeprefix("usage: ").split())


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The reference page for ``parser`` (default: the ``latix`` command's)."""
    p = parser or cli._parser()
    md = [
        "# Command line",
        "",
        "Generated from the `latix` command's own argument parser (`latix.cli`) at `make docs`",
        "time: `latix COMMAND --help` prints the same.",
        "",
        "```text",
        _usage(p),
        "```",
        "",
    ]
    stack = [(f"latix {name}", sp, h) for name, sp, h in _subparsers(p)]
    while stack:
        title, sp, h = stack.pop(0)
        md += [f"## `{title}`", ""]
        if h:
            md += [h[0].upper() + h[1:] + ".", ""]
        md += ["```text", _usage(sp), "```", ""]
        subs = _subparsers(sp)
        args = _arguments(sp)
        if subs and args == ["No arguments."]:
            md += ["Subcommands: " + ", ".join(f"`{title} {n}`" for n, _, _ in subs) + ".", ""]
        else:
            md += [*args, ""]
        stack = [(f"{title} {n}", s, hh) for n, s, hh in subs] + stack
    return "\n".join(md)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
