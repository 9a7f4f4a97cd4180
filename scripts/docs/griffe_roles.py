"""Griffe extension for the API reference: renders the docstrings' Sphinx-style cross-reference
roles (``:class:`~latix.errors.IndexLockedError```, ``:meth:`search```, ...) as Markdown code
spans (`IndexLockedError`, `search`), and a paragraph ending in ``::`` (reST's "a literal block
follows") with a single colon; the indented block after it is a Markdown code block already.
Loaded by mkdocs.yml (mkdocstrings' ``extensions`` option)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj):`~?([^`]+)`")


def _name(m: re.Match[str]) -> str:
    target = m.group(1)
    # `~a.b.C` shows `C`; a bare or relative name shows as written.
    short = target.rsplit(".", 1)[-1] if m.group(0).count("~") else target
    return f"`{short}`"


class SphinxRoles(griffe.Extension):
    """Rewrites each object's docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        doc = obj.docstring
        if doc is None:
            return
        text = _ROLE.sub(_name, doc.value)
        doc.value = re.sub(r"(\S)::$", r"\1:", text, flags=re.MULTILINE)
