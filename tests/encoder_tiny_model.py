"""A tiny, fully known model directory for encoder tests: WordPiece tokenizer + ONNX graph.

The graph is h = E[ids] + 0.1 * sum_j(mask_j * E[ids_j]) (attention-dependent, so [MASK]
attention can be observed); ``reference_hidden`` computes the same thing in numpy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VOCAB = [
    "[PAD]",
    "[unused0]",
    "[unused1]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    ".",
    ",",
    "!",
    "?",
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "dog",
    "ran",
    "a",
    "big",
    "red",
    "##s",
    "house",
    "[Q]",
    "[D]",
]
HIDDEN = 8


def build(
    dir_: Path, config: dict | None = None, *, hidden: int = HIDDEN, seed: int = 0
) -> np.ndarray:
    """Write model.onnx, tokenizer.json (and latix_model.json if config given); return E."""
    import pytest

    onnx = pytest.importorskip("onnx")  # in the test extra; the graph is built with its helpers
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    dir_.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", 5), ("[CLS]", 4))
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.add_tokens(["[Q]", "[D]"])
    # Like all-MiniLM's file: the model's own truncation/padding, which the encoder must override.
    tok.enable_truncation(6)
    tok.enable_padding(length=6, pad_id=0, pad_token="[PAD]")
    tok.save(str(dir_ / "tokenizer.json"))

    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((len(VOCAB), hidden)).astype(np.float32)
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])
    tt = helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["b", "s"])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", hidden])
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["x"]),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "ax2"], ["m3"]),
        helper.make_node("Mul", ["x", "m3"], ["xm"]),
        helper.make_node("ReduceSum", ["xm", "ax1"], ["ctx"], keepdims=1),
        helper.make_node("Mul", ["ctx", "tenth"], ["ctx2"]),
        helper.make_node("Add", ["x", "ctx2"], ["last_hidden_state"]),
    ]
    inits = [
        numpy_helper.from_array(emb, "E"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array(0.1, np.float32), "tenth"),
    ]
    g = helper.make_graph(nodes, "tiny", [ids, mask, tt], [out], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(dir_ / "model.onnx"))
    if config is not None:
        (dir_ / "latix_model.json").write_text(json.dumps(config))
    return emb


def reference_hidden(emb: np.ndarray, ids: list[int], attention: list[int]) -> np.ndarray:
    """(len(ids), hidden) output of the tiny graph for one unpadded sequence."""
    x = emb[np.asarray(ids)]
    ctx = (x * np.asarray(attention, np.float32)[:, None]).sum(axis=0)
    return x + 0.1 * ctx
