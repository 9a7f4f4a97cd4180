"""Encodes SciFact for the compressed-index benchmark (benches/bench_compressed.py).

SciFact's corpus, its test queries (those judged in qrels/test.tsv) and its train queries (those
judged in qrels/train.tsv: the 809 queries every default is tuned on, benches/tune_compressed.py)
are encoded with latix's
default model (`latix.Encoder.default()`: all-MiniLM-L6-v2 int8 ONNX as a token encoder, [CLS]
and [SEP] dropped, L2-normalised, documents cut at 256 tokens, queries at 64). Encodings go
through latix's embedding cache (`latix.eval.EmbeddingCache`, under $LATIX_CACHE_DIR or
~/.cache/latix), the one `benches/eval_scifact.py` uses, so nothing is encoded twice; the cached
files are hard-linked into the data root (copied when the root is on another file system).

Written into <data>/scifact/ (each file through a temporary name and an atomic rename):
    docs_vectors.npy   float16 (n_doc_tokens, 384), documents in corpus file order
    doc_offsets.npy    int64 (n_docs + 1,): document i owns rows offsets[i]:offsets[i + 1]
    doc_ids.json       the n_docs document ids
    query_vectors.npy  float32 (n_query_tokens, 384), test queries in queries.jsonl order
    query_offsets.npy  int64 (n_queries + 1,)
    query_ids.json     the n_queries query ids
    train_query_vectors.npy, train_query_offsets.npy, train_query_ids.json: the same for the
                       train queries

If the root already holds this data (same ids, consistent shapes and dtypes), nothing is done.
Encoding the full corpus (5,183 docs, 1.23M tokens) takes 6 min on a quiet 2-core machine (55 min
was seen on a loaded one); the 300 + 809 queries take seconds.

Usage: python benches/prepare_bench_data.py [--data DIR] [--source ../shared/data] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
DIM = 384


def default_data_root() -> str:
    """$LATIX_BENCH_DATA, or ~/.cache/latix/bench."""
    return os.environ.get("LATIX_BENCH_DATA") or str(Path.home() / ".cache" / "latix" / "bench")


def default_source() -> str:
    """The evaluation collections: $LATIX_DATA, or ../shared/data from the project's root."""
    return os.environ.get("LATIX_DATA") or str(ROOT / ".." / "shared" / "data")


#: File names of each set in <data>/scifact/: (vectors, offsets, ids).
FILES = {
    "doc": ("docs_vectors.npy", "doc_offsets.npy", "doc_ids.json"),
    "query": ("query_vectors.npy", "query_offsets.npy", "query_ids.json"),
    "train_query": ("train_query_vectors.npy", "train_query_offsets.npy", "train_query_ids.json"),
}


def holds(d: Path, which: str, ids: Sequence[str], dtype: type[np.generic]) -> bool:
    """Whether `d` holds a complete `which` set (vectors, offsets, ids) for exactly `ids`."""
    vname, oname, iname = FILES[which]
    try:
        with open(d / iname, encoding="utf-8") as f:
            if json.load(f) != list(ids):
                return False
        off = np.load(d / oname)
        vec = np.load(d / vname, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return (
        off.shape == (len(ids) + 1,)
        and off.dtype == np.int64
        and int(off[0]) == 0
        and bool(np.all(np.diff(off) >= 0))
        and vec.shape == (int(off[-1]), DIM)
        and vec.dtype == dtype
    )


def place(src: Path, dst: Path) -> None:
    """Put a copy of `src` at `dst` atomically: hard link if possible (cache entries are never
    modified in place), else a byte copy; either goes through `dst`.tmp and a rename."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_json(obj: Any, dst: Path) -> None:
    """Write `obj` as JSON to `dst` through `dst`.tmp and an atomic rename."""
    tmp = dst.with_name(dst.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, dst)


def encode_set(
    encoder: Any,
    cache: Any,
    out: Path,
    which: str,
    kind: str,
    ids: list[str],
    texts: list[str],
) -> None:
    """Encode `texts` through the embedding cache and write the `which` set into `out`.

    The ids file is written last, so an interrupted run never looks complete to `holds`.
    """
    from tqdm import tqdm

    entry = cache.entry_dir(encoder, kind, ids, texts)
    cached = (entry / "offsets.npy").is_file()
    what = f"SciFact {kind} ({len(texts)} texts)"
    print(f"{what}: {'from the cache ' if cached else 'encoding into '}{entry}", file=sys.stderr)
    t0 = time.time()
    with tqdm(total=len(texts), unit="text", desc=what, disable=cached, file=sys.stderr) as bar:
        cache.get_or_compute(encoder, ids, texts, kind, progress=bar.update)
    if not cached:
        print(f"{what}: encoded in {time.time() - t0:.0f} s", file=sys.stderr)
    vname, oname, iname = FILES[which]
    place(entry / "vectors.npy", out / vname)
    place(entry / "offsets.npy", out / oname)
    write_json(ids, out / iname)


def scifact_queries(source: Path, split: str) -> tuple[list[str], list[str]]:
    """(query ids, texts) of SciFact's `split` ("test" or "train"): the queries with a judgement
    in qrels/<split>.tsv, in queries.jsonl order."""
    from latix.corpus import read_qrels, read_queries

    queries = read_queries(source / "scifact" / "queries.jsonl")
    judged = read_qrels(source / "scifact" / "qrels" / f"{split}.tsv")
    qids = [q for q in queries if q in judged]
    return qids, [queries[q] for q in qids]


def scifact_texts(
    source: Path, limit: int | None
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(doc ids, doc texts, test query ids, query texts) of SciFact, as the benchmark uses them.

    Documents are `title + " " + text` in corpus order (latix.corpus.read_corpus); queries are
    those with a judgement in qrels/test.tsv, in queries.jsonl order.
    """
    from latix.corpus import ReadStats, read_corpus

    st = ReadStats()
    docs = list(read_corpus(source / "scifact" / "corpus.jsonl.gz", st))
    if st.n_skipped:
        raise SystemExit(f"SciFact corpus: {st.n_skipped} records skipped: {st.messages}")
    if limit is not None:
        docs = docs[:limit]
    qids, qtexts = scifact_queries(source, "test")
    return [d.id for d in docs], [d.text for d in docs], qids, qtexts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=default_data_root(), help="bench data root (written)")
    ap.add_argument("--source", default=default_source(), help="evaluation collections (read)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default all)")
    ap.add_argument(
        "--limit", type=int, default=None, help="only the first N documents (for smoke tests)"
    )
    a = ap.parse_args()
    out = Path(a.data) / "scifact"
    ids, texts, qids, qtexts = scifact_texts(Path(a.source), a.limit)
    tids, ttexts = scifact_queries(Path(a.source), "train")
    if (
        holds(out, "doc", ids, np.float16)
        and holds(out, "query", qids, np.float32)
        and holds(out, "train_query", tids, np.float32)
    ):
        print(
            f"{out}: already holds {len(ids)} docs, {len(qids)} test and {len(tids)} train "
            "queries, nothing to do"
        )
        return
    from latix.encoder import Encoder
    from latix.eval import EmbeddingCache

    encoder = Encoder.default(n_threads=a.threads)
    cache = EmbeddingCache()
    out.mkdir(parents=True, exist_ok=True)
    encode_set(encoder, cache, out, "query", "query", qids, qtexts)
    encode_set(encoder, cache, out, "train_query", "query", tids, ttexts)
    encode_set(encoder, cache, out, "doc", "document", ids, texts)
    doc_off: npt.NDArray[np.int64] = np.load(out / "doc_offsets.npy")
    assert holds(out, "doc", ids, np.float16) and holds(out, "query", qids, np.float32)
    assert holds(out, "train_query", tids, np.float32)
    print(
        f"{out}: {len(ids)} docs ({int(doc_off[-1]):,} tokens), {len(qids)} test queries, "
        f"{len(tids)} train queries"
    )


if __name__ == "__main__":
    main()
