"""Optional dependencies, imported where they are used, failing with the extra to install.

``latix serve`` needs the ``serve`` extra (FastAPI, uvicorn), the retrievers need ``langchain``
(langchain-core) or ``llama-index`` (llama-index-core). :func:`import_extra` is the one place that
imports them, so a missing package gives a :class:`MissingExtraError` naming the command that
installs it instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from latix.errors import LatixError

__all__ = ["MissingExtraError", "import_extra"]


class MissingExtraError(LatixError, ImportError):
    """An optional dependency of the feature used is not installed (the message names the
    ``pip install 'latix[extra]'`` command that installs it)."""


def import_extra(extra: str, module: str) -> ModuleType:
    """Imports ``module``, which the optional dependency group ``extra`` provides.

    Args:
        extra: the name of latix's extra (e.g. ``"serve"``).
        module: the module to import (e.g. ``"fastapi"``).

    Returns:
        The module.

    Raises:
        MissingExtraError: the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{module} is not installed; it comes with latix's {extra!r} extra: "
            f"pip install 'latix[{extra}]'"
        ) from e
