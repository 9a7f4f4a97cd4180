"""Model configuration: the late-interaction conventions of one encoder model.

A latix model directory holds ``model.onnx`` (the transformer, maybe with its projection layer),
``tokenizer.json`` (Hugging Face ``tokenizers``) and ``latix_model.json``, which this module
reads and writes. The JSON describes what ColBERT-family models differ in (ColBERT, Khattab &
Zaharia, SIGIR 2020, section 3; ColBERTv2; PyLate): how queries and documents are marked
(``[unused0]``/``[unused1]`` tokens after ``[CLS]`` in Stanford checkpoints, ``"[Q] "``/``"[D] "``
text prefixes in PyLate ones), query length and ``[MASK]`` augmentation, document length, the
punctuation skiplist, whether ``[CLS]``/``[SEP]`` vectors are kept, an optional projection, L2
normalisation and the output dim.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from latix.errors import LatixError

__all__ = ["ModelConfig", "ModelError", "CONFIG_FILE"]

#: Name of the config file inside a latix model directory.
CONFIG_FILE = "latix_model.json"

_FORMAT_VERSION = 1


class ModelError(LatixError, ValueError):
    """A model directory or model file is missing, unreadable or inconsistent with its config."""


MarkerMode = Literal["none", "token", "prefix"]


@dataclass(frozen=True)
class ModelConfig:
    """Late-interaction conventions of one model (the contents of ``latix_model.json``).

    Attributes:
        dim: dimension of the output token vectors (after projection, if any).
        onnx_file: ONNX graph file name, relative to the model directory.
        tokenizer_file: ``tokenizers`` JSON file name, relative to the model directory.
        output_name: name of the ONNX output holding (batch, tokens, hidden) vectors.
        marker_mode: ``"none"`` (no markers), ``"token"`` (insert the marker token right after
            ``[CLS]``, Stanford ColBERT) or ``"prefix"`` (prepend the marker string to the text,
            PyLate / sentence-transformers).
        query_marker: marker token (``"[unused0]"``) or prefix string (``"[Q] "``) for queries.
        document_marker: marker token (``"[unused1]"``) or prefix string (``"[D] "``) for documents.
        query_max_length: queries are truncated to this many tokens (markers and specials included).
        query_mask_augmentation: pad queries with ``[MASK]`` up to ``query_max_length`` and keep the
            vectors of those positions (ColBERT query augmentation).
        attend_to_mask_tokens: whether the ``[MASK]`` padding is visible to attention.
        document_max_length: documents are truncated to this many tokens.
        skiplist_punctuation: drop document token vectors whose token is a punctuation character.
        keep_special_tokens: keep the vectors of ``[CLS]``/``[SEP]`` (markers and ``[MASK]`` vectors
            are always kept).
        projection_file: optional ``.npy`` file, (hidden, dim) float32, applied as ``h @ W`` when
            the projection is not inside the ONNX graph.
        projection_bias_file: optional ``.npy`` file, (dim,) float32, added after the projection.
        normalize: L2-normalise every output vector.
        mask_token: the tokenizer's mask token (for query augmentation).
        name: free-form model name, shown to users.
    """

    dim: int
    onnx_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    output_name: str = "last_hidden_state"
    marker_mode: MarkerMode = "none"
    query_marker: str | None = None
    document_marker: str | None = None
    query_max_length: int = 32
    query_mask_augmentation: bool = False
    attend_to_mask_tokens: bool = False
    document_max_length: int = 256
    skiplist_punctuation: bool = False
    keep_special_tokens: bool = True
    projection_file: str | None = None
    projection_bias_file: str | None = None
    normalize: bool = True
    mask_token: str = "[MASK]"
    name: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check that the fields are consistent.

        Raises:
            ModelError: a field has an impossible value; the message names it.
        """
        if not isinstance(self.dim, int) or self.dim <= 0:
            raise ModelError(f"model config: dim must be a positive integer, got {self.dim!r}")
        if self.marker_mode not in ("none", "token", "prefix"):
            raise ModelError(
                f"model config: marker_mode must be 'none', 'token' or 'prefix', "
                f"got {self.marker_mode!r}"
            )
        if self.marker_mode != "none" and (not self.query_marker or not self.document_marker):
            raise ModelError(
                f"model config: marker_mode {self.marker_mode!r} needs query_marker and "
                "document_marker"
            )
        # [CLS] + marker + at least one word + [SEP]
        for fname in ("query_max_length", "document_max_length"):
            v = getattr(self, fname)
            if not isinstance(v, int) or v < 4:
                raise ModelError(f"model config: {fname} must be an integer >= 4, got {v!r}")
        if self.projection_bias_file and not self.projection_file:
            raise ModelError("model config: projection_bias_file given without projection_file")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (with a format version)."""
        d = asdict(self)
        d["format_version"] = _FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> ModelConfig:
        """Build a config from a dict, rejecting unknown keys and newer format versions.

        Args:
            d: the parsed JSON object.
            source: where it came from, for error messages.

        Raises:
            ModelError: unknown key, missing ``dim``, wrong type or newer format version.
        """
        if not isinstance(d, dict):
            raise ModelError(f"{source}: expected a JSON object")
        d = dict(d)
        version = d.pop("format_version", _FORMAT_VERSION)
        if not isinstance(version, int) or version > _FORMAT_VERSION:
            raise ModelError(
                f"{source}: format_version {version!r} is newer than this latix supports "
                f"({_FORMAT_VERSION}); upgrade latix"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"{source}: unknown keys {unknown}")
        if "dim" not in d:
            raise ModelError(f"{source}: missing required key 'dim'")
        try:
            return cls(**d)
        except TypeError as e:
            raise ModelError(f"{source}: {e}") from None
        except ModelError as e:
            raise ModelError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelConfig:
        """Read a ``latix_model.json`` file.

        Raises:
            ModelError: file missing, not JSON, or inconsistent.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelError(f"model config {p} not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ModelError(f"cannot read model config {p}: {e}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelError(f"model config {p} is not valid JSON: {e}") from None
        return cls.from_dict(d, source=str(p))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the config as JSON (to a temporary file, then renamed into place)."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, p)
