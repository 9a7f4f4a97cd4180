"""Export a ColBERT-family checkpoint (PyTorch / Hugging Face) to a latix model directory.

Two layouts are recognised:

* Stanford ColBERT (``colbert-ir/colbertv2.0``; Santhanam et al., NAACL 2022): a BERT checkpoint
  whose weights carry a ``bert.`` prefix plus a bias-free ``linear`` projection, with the ColBERT
  settings in ``artifact.metadata`` (query/doc max length, punctuation masking,
  ``[unused0]``/``[unused1]`` markers).
* PyLate / sentence-transformers (``modules.json``): a Transformer module followed by one or more
  ``Dense`` modules, with ``"[Q] "``/``"[D] "`` prefixes and lengths in
  ``config_sentence_transformers.json``.

The transformer and the projection are traced together into one ONNX graph (``torch.onnx.export``,
dynamic batch and sequence axes), whose output ``embeddings`` is the projected, not yet normalised,
token vectors; the conventions go to ``latix_model.json``; ``tokenizer.json`` is the checkpoint's
fast tokenizer. Needs the ``export`` extra: ``pip install 'latix[export]'`` (torch, transformers).
"""

from __future__ import annotations

import inspect
import json
import os
import string
from pathlib import Path
from typing import Any

from latix.config import CONFIG_FILE, ModelConfig, ModelError

__all__ = ["export_checkpoint", "detect_layout"]

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def detect_layout(path: str | os.PathLike[str]) -> str:
    """``"pylate"`` (sentence-transformers ``modules.json``) or ``"stanford"`` (BERT + ``linear``).

    Raises:
        ModelError: not a directory, or neither layout.
    """
    p = Path(path)
    if not p.is_dir():
        raise ModelError(f"checkpoint directory {p} not found")
    if (p / "modules.json").is_file():
        return "pylate"
    if (p / "config.json").is_file() and any((p / f).is_file() for f in _WEIGHT_FILES):
        keys = _weight_keys(p)
        if "linear.weight" in keys:
            return "stanford"
    raise ModelError(
        f"{p} is neither a Stanford ColBERT checkpoint (config.json + weights with "
        "'linear.weight') "
        "nor a PyLate/sentence-transformers one (modules.json)"
    )


def _load_state(p: Path) -> dict[str, Any]:
    import torch

    if (p / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return dict(load_file(str(p / "model.safetensors")))
    if (p / "pytorch_model.bin").is_file():
        return dict(torch.load(p / "pytorch_model.bin", map_location="cpu", weights_only=True))
    raise ModelError(f"no model.safetensors or pytorch_model.bin in {p}")


def _linear_from_state(state: dict[str, Any]) -> Any:
    """A ``torch.nn.Linear`` holding a checkpoint's ``linear.weight`` (and ``linear.bias``)."""
    import torch

    w = state["linear.weight"]
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias="linear.bias" in state)
    with torch.no_grad():
        lin.weight.copy_(w)
        if "linear.bias" in state:
            lin.bias.copy_(state["linear.bias"])
    return lin


def _weight_keys(p: Path) -> set[str]:
    if (p / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(p / "model.safetensors"), framework="numpy") as f:
            return set(f.keys())
    return set(_load_state(p))


def _read_json(p: Path) -> dict[str, Any]:
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {p}: {e}") from None
    if not isinstance(d, dict):
        raise ModelError(f"{p}: expected a JSON object")
    return d


def export_checkpoint(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, opset: int = 17
) -> Path:
    """Convert a ColBERT-family checkpoint into a latix model directory.

    Args:
        checkpoint: Stanford ColBERT or PyLate/sentence-transformers checkpoint directory.
        out: output directory (created; existing latix files in it are replaced).
        opset: ONNX opset version.

    Returns:
        The output directory, loadable with :meth:`latix.Encoder.load`.

    Raises:
        ModelError: unknown layout, unsupported module (e.g. a Dense activation other than
            identity).
        MissingDependencyError: torch or transformers (the ``export`` extra) is missing.
    """
    from latix._optional import require

    torch = require("export", "torch", purpose="exporting a checkpoint")
    transformers = require("export", "transformers", purpose="exporting a checkpoint")
    AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer

    src = Path(checkpoint)
    layout = detect_layout(src)
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)

    linears: list[Any] = []  # torch.nn.Linear
    if layout == "stanford":
        tdir = src
        meta = _read_json(src / "artifact.metadata")
        linears.append(_linear_from_state(_load_state(src)))
        cfg_kw: dict[str, Any] = {
            "marker_mode": "token",
            "query_marker": str(meta.get("query_token_id", "[unused0]")),
            "document_marker": str(meta.get("doc_token_id", "[unused1]")),
            "query_max_length": int(meta.get("query_maxlen", 32)),
            "document_max_length": int(meta.get("doc_maxlen", 180)),
            "query_mask_augmentation": True,
            "attend_to_mask_tokens": bool(meta.get("attend_to_mask_tokens", False)),
            "skiplist_punctuation": bool(meta.get("mask_punctuation", True)),
            "keep_special_tokens": True,
        }
    else:
        modules = json.loads((src / "modules.json").read_text(encoding="utf-8"))
        tdir = None
        for m in sorted(modules, key=lambda m: int(m.get("idx", 0))):
            mtype, mpath = str(m.get("type", "")), src / str(m.get("path", ""))
            if mtype.endswith("Transformer"):
                tdir = mpath
            elif mtype.endswith("Dense"):
                dcfg = _read_json(mpath / "config.json")
                act = str(dcfg.get("activation_function", "torch.nn.modules.linear.Identity"))
                if not act.endswith("Identity"):
                    raise ModelError(f"{mpath}: Dense activation {act} is not supported")
                linears.append(_linear_from_state(_load_state(mpath)))
            elif not mtype.endswith(("Normalize", "Pooling")):
                raise ModelError(f"{src}/modules.json: module type {mtype} is not supported")
        if tdir is None:
            raise ModelError(f"{src}/modules.json has no Transformer module")
        st_cfg = _read_json(src / "config_sentence_transformers.json")
        if "query_prefix" not in st_cfg and not linears:
            # A plain sentence-transformers model (e.g. all-MiniLM-L6-v2) used as a token
            # encoder: no markers, no [MASK] augmentation, no skiplist, [CLS]/[SEP] dropped.
            sbert = _read_json(src / "sentence_bert_config.json")
            layout = "sentence-transformers"
            cfg_kw = {
                "marker_mode": "none",
                "query_max_length": 64,
                "document_max_length": int(sbert.get("max_seq_length", 256)),
                "keep_special_tokens": False,
            }
        else:
            skip = st_cfg.get("skiplist_words", list(string.punctuation))
            cfg_kw = {
                "marker_mode": "prefix",
                "query_marker": str(st_cfg.get("query_prefix", "[Q] ")),
                "document_marker": str(st_cfg.get("document_prefix", "[D] ")),
                "query_max_length": int(st_cfg.get("query_length", 32)),
                "document_max_length": int(st_cfg.get("document_length", 180)),
                "query_mask_augmentation": bool(st_cfg.get("do_query_expansion", True)),
                "attend_to_mask_tokens": bool(st_cfg.get("attend_to_expansion_tokens", False)),
                "skiplist_punctuation": bool(skip),
                "keep_special_tokens": True,
            }

    model = AutoModel.from_pretrained(str(tdir))
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(tdir))
    if not getattr(tok, "is_fast", False):
        raise ModelError(f"{tdir}: no fast tokenizer available (needed for tokenizer.json)")
    tok.backend_tokenizer.save(str(dst / "tokenizer.json"))
    mask_token = tok.mask_token or "[MASK]"

    wrapper = _make_wrapper(model, torch.nn.Sequential(*linears))
    wrapper.eval()
    use_tt = "token_type_ids" in inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if use_tt else [])
    ids = torch.tensor([[tok.cls_token_id or 0, 5, 6, 7, tok.sep_token_id or 0]])
    args = (ids, torch.ones_like(ids)) + ((torch.zeros_like(ids),) if use_tt else ())
    with torch.no_grad():
        dim = int(wrapper(*args).shape[-1])
        torch.onnx.export(
            wrapper,
            args,
            str(dst / "model.onnx"),
            input_names=names,
            output_names=["embeddings"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "embeddings"]},
            opset_version=opset,
            dynamo=False,
        )
    cfg = ModelConfig(
        dim=dim,
        output_name="embeddings",
        mask_token=mask_token,
        normalize=True,
        name=f"{src.name} ({layout})",
        **cfg_kw,
    )
    cfg.save(dst / CONFIG_FILE)
    return dst


def _make_wrapper(model: Any, proj: Any) -> Any:
    import torch

    class Wrapped(torch.nn.Module):  # type: ignore[misc,unused-ignore]  # Any without torch
        """Transformer + projection as one module: the graph outputs projected token vectors."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.proj = proj

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            return self.proj(self.model(**kw).last_hidden_state)

    return Wrapped()
