"""Export tests: tiny randomly initialised checkpoints in both ColBERT layouts (built here),
exported to ONNX; the ONNX graph and the full latix Encoder must match the torch model within 1e-4.

Skipped when torch/transformers are not installed (they are the optional ``export`` extra).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnx")

from latix.config import ModelError  # noqa: E402
from latix.encoder import Encoder  # noqa: E402
from latix.export import detect_layout, export_checkpoint  # noqa: E402

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "dog",
    "ran",
    "big",
    "red",
    "house",
    "protein",
    "cell",
    "##s",
    "##ing",
    "gene",
    "a",
    "is",
    "of",
    "and",
    "blue",
]
SPECIAL = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HIDDEN, DIM = 32, 16
TEXTS = [
    "The cat sat on the mat.",
    "dog",
    "big red house, blue house! proteins of a cell",
    "genes " * 40,
    "a cat, a dog; and a gene?",
]


def _tiny_bert(dir_: Path) -> tuple[object, object]:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    dir_.mkdir(parents=True)
    vocab = SPECIAL + list(string.punctuation) + WORDS
    (dir_ / "vocab.txt").write_text("\n".join(vocab) + "\n")
    import inspect

    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers >= 5
        tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    else:
        tok = BertTokenizerFast(vocab_file=str(dir_ / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    model = BertModel(cfg, add_pooling_layer=False).eval()
    return tok, model


def _stanford(dir_: Path) -> tuple[object, object, object]:
    from safetensors.torch import save_file

    tok, model = _tiny_bert(dir_)
    lin = torch.nn.Linear(HIDDEN, DIM, bias=False)
    state = {f"bert.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["linear.weight"] = lin.weight.detach().contiguous()
    save_file(state, str(dir_ / "model.safetensors"))
    model.config.architectures = ["HF_ColBERT"]
    model.config.save_pretrained(str(dir_))
    tok.save_pretrained(str(dir_))
    (dir_ / "artifact.metadata").write_text(
        json.dumps(
            {
                "query_maxlen": 12,
                "doc_maxlen": 20,
                "mask_punctuation": True,
                "dim": DIM,
                "attend_to_mask_tokens": False,
                "query_token_id": "[unused0]",
                "doc_token_id": "[unused1]",
            }
        )
    )
    return tok, model, lin


def _pylate(dir_: Path) -> tuple[object, object, object]:
    from safetensors.torch import save_file

    tok, model = _tiny_bert(dir_)
    tok.add_tokens(["[Q]", "[D]"])
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(str(dir_))
    tok.save_pretrained(str(dir_))
    lin = torch.nn.Linear(HIDDEN, DIM, bias=False)
    (dir_ / "1_Dense").mkdir()
    save_file(
        {"linear.weight": lin.weight.detach().contiguous()},
        str(dir_ / "1_Dense" / "model.safetensors"),
    )
    (dir_ / "1_Dense" / "config.json").write_text(
        json.dumps(
            {
                "in_features": HIDDEN,
                "out_features": DIM,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
        )
    )
    (dir_ / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
            ]
        )
    )
    (dir_ / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "query_prefix": "[Q] ",
                "document_prefix": "[D] ",
                "query_length": 12,
                "document_length": 20,
                "attend_to_expansion_tokens": False,
                "skiplist_words": list(string.punctuation),
                "do_query_expansion": True,
            }
        )
    )
    return tok, model, lin


def _torch_vectors(model, lin, ids: list[int], att: list[int]) -> np.ndarray:
    with torch.no_grad():
        t = torch.tensor([ids])
        h = model(
            input_ids=t, attention_mask=torch.tensor([att]), token_type_ids=torch.zeros_like(t)
        ).last_hidden_state
        v = torch.nn.functional.normalize(lin(h)[0], dim=-1)
    return v.numpy()


def _check_onnx_equals_torch(out: Path, model, lin, tok) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    got = sess.run(["embeddings"], feeds)[0]
    with torch.no_grad():
        ref = lin(model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state)
    assert got.shape == ref.shape
    assert np.abs(got - ref.numpy()).max() < 1e-4


@pytest.mark.parametrize("layout", ["stanford", "pylate"])
def test_export_matches_torch(tmp_path: Path, layout: str) -> None:
    src = tmp_path / "ckpt"
    tok, model, lin = (_stanford if layout == "stanford" else _pylate)(src)
    assert detect_layout(src) == layout
    if layout == "stanford":
        out = export_checkpoint(src, tmp_path / "out")
    else:  # through the command line
        from latix import cli

        assert cli.main(["export", str(src), str(tmp_path / "out")]) == 0
        out = tmp_path / "out"
    _check_onnx_equals_torch(out, model, lin, tok)

    enc = Encoder.load(out)
    assert enc.dim == DIM
    mask = tok.mask_token_id
    punct = {tok.convert_tokens_to_ids(c) for c in string.punctuation}
    qv = enc.encode_queries(TEXTS)
    dv = enc.encode_documents(TEXTS)
    for text, q, d in zip(TEXTS, qv, dv, strict=True):
        if layout == "stanford":
            qids = tok(text, truncation=True, max_length=11)["input_ids"]
            qids.insert(1, tok.convert_tokens_to_ids("[unused0]"))
            dids = tok(text, truncation=True, max_length=19)["input_ids"]
            dids.insert(1, tok.convert_tokens_to_ids("[unused1]"))
        else:
            qids = tok("[Q] " + text, truncation=True, max_length=12)["input_ids"]
            dids = tok("[D] " + text, truncation=True, max_length=20)["input_ids"]
        att = [1] * len(qids) + [0] * (12 - len(qids))
        qids = qids + [mask] * (12 - len(qids))
        ref_q = _torch_vectors(model, lin, qids, att)
        assert q.shape == (12, DIM)
        assert np.abs(q - ref_q).max() < 1e-4
        keep = [j for j, t in enumerate(dids) if t not in punct]
        ref_d = _torch_vectors(model, lin, dids, [1] * len(dids))[keep]
        assert d.shape == ref_d.shape
        assert np.abs(d - ref_d).max() < 1e-4


def test_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(ModelError, match="neither"):
        export_checkpoint(tmp_path / "x", tmp_path / "out")
