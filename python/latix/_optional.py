"""Optional dependencies: import them by extra, or fail with the command that installs them.

latix's base install (``pip install latix``) is search only: numpy and the Rust core. Everything
else lives in an extra of ``pyproject.toml`` and is imported through :func:`require`, so that a
missing package gives the same clear error everywhere, naming the extra and the pip command that
installs it, instead of a raw ``ModuleNotFoundError`` from deep inside a call::

    ort = require("model", "onnxruntime")          # the encoder's runtime
    ir_measures = require("eval", "ir_measures")   # inside latix.eval.evaluate

For module authors (new extras such as ``serve``, ``ray``, ``langchain``, ``llama-index``):

1. declare the extra in ``pyproject.toml`` (``[project.optional-dependencies]``);
2. add it to :data:`EXTRAS` below with what it is for (shown in the error);
3. import each of its packages with ``require(extra, module)`` at the point of use (not at module
   import time, so that ``import latix`` keeps working without the extra);
4. add a test of the call site to ``tests/test_optional.py`` (which already checks the message
   of every extra in :data:`EXTRAS`, and that every user extra of ``pyproject.toml`` is in it).

:class:`MissingDependencyError` is a :class:`latix.LatixError` and an :class:`ImportError`, so
both ``except latix.LatixError`` (the CLI prints the message and exits 1) and
``except ImportError`` catch it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from latix.errors import LatixError

__all__ = ["EXTRAS", "MissingDependencyError", "install_command", "require"]

#: Every extra of ``pyproject.toml`` that :func:`require` may name, with what it enables.
EXTRAS: dict[str, str] = {
    "model": "encoding text (onnxruntime, tokenizers; the default model's files come with "
    "`latix model install`)",
    "eval": "evaluation metrics (ir-measures)",
    "hub": "loading models by Hugging Face hub name (huggingface_hub)",
    "export": "exporting ColBERT checkpoints to ONNX (torch, transformers, onnx)",
    "serve": "the HTTP server",
    "ray": "sharded collections on Ray",
    "langchain": "the LangChain retriever",
    "llama-index": "the LlamaIndex retriever",
}


class MissingDependencyError(LatixError, ImportError):
    """An optional dependency is not installed; the message names the extra and the pip command.

    Attributes:
        extra: the ``pyproject.toml`` extra that provides the module (e.g. ``"eval"``).
        module: the module that could not be imported (e.g. ``"ir_measures"``).
    """

    def __init__(self, message: str, *, extra: str, module: str) -> None:
        super().__init__(message, name=module)
        self.extra = extra
        self.module = module

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def install_command(extra: str) -> str:
    """The shell command that installs ``extra``: ``pip install 'latix[extra]'``."""
    return f"pip install 'latix[{extra}]'"


def require(extra: str, module: str, *, purpose: str | None = None) -> ModuleType:
    """Import ``module``, which the ``extra`` of latix provides.

    Args:
        extra: a key of :data:`EXTRAS`.
        module: the dotted module name to import (``"onnxruntime"``, ``"ir_measures"``).
        purpose: what the caller was doing, for the message (default: the extra's description).

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: the module (or one of its own imports) is not installed.
        ValueError: ``extra`` is not declared in :data:`EXTRAS` (a programming error).
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown latix extra {extra!r}; declare it in latix._optional.EXTRAS")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        # Only a *missing* module is the user's install problem; anything else (a broken
        # install raising ImportError from inside the package) keeps its own message too.
        missing = getattr(e, "name", None) or module
        what = purpose or EXTRAS[extra]
        detail = "" if missing == module else f" (it needs {missing!r}: {e})"
        raise MissingDependencyError(
            f"{what} needs the {module!r} package, which is not installed{detail}; "
            f"install latix's {extra!r} extra: {install_command(extra)}",
            extra=extra,
            module=module,
        ) from None
