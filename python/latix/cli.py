"""The ``latix`` command line: index a corpus, search it (explained), evaluate, export models.

Commands::

    latix index CORPUS --out DIR [--model M] [--batch-size N] [--threads T]
                [--commit-every N] [--restart] [--limit N]
    latix search DIR "query" [-k 10] [--model M]
    latix eval DIR --queries Q --qrels R [--json] [--depth N]
    latix export CHECKPOINT_DIR OUT_DIR

``search`` explains each hit the late-interaction way: for every query token it shows which document
token won its maximum, and highlights those words in the document text.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from latix.errors import LatixError

__all__ = ["main", "explain_hit", "highlight", "print_hits"]

_BOLD, _RESET = "\x1b[1;33m", "\x1b[0m"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latix", description="Late-interaction (ColBERT-style) retrieval."
    )
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("index", help="encode a corpus and build a searchable collection")
    pi.add_argument("corpus", help="BEIR corpus.jsonl(.gz), TREC file, or folder of .txt/.md")
    pi.add_argument("--out", required=True, help="collection directory to create or resume")
    pi.add_argument(
        "--model", default="default", help="model directory or hub id (default: %(default)s)"
    )
    pi.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    pi.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    pi.add_argument("--commit-every", type=int, default=1000, help="documents per commit")
    pi.add_argument("--restart", action="store_true", help="delete the collection and start over")
    pi.add_argument("--limit", type=int, default=None, help="index at most N documents")
    pi.add_argument("--no-progress", action="store_true", help="no progress bar")

    ps = sub.add_parser("search", help="search a collection and explain the hits")
    ps.add_argument("index", help="collection directory")
    ps.add_argument("query")
    ps.add_argument("-k", type=int, default=10, help="hits to show")
    ps.add_argument("--model", default=None, help="model (default: the collection's)")
    ps.add_argument("--threads", type=int, default=None)
    ps.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    ps.add_argument("--width", type=int, default=400, help="characters of text shown per hit")

    pe = sub.add_parser("eval", help="evaluate a collection against judged queries")
    pe.add_argument("index", help="collection directory")
    pe.add_argument("--queries", required=True, help="BEIR queries.jsonl or TREC topics")
    pe.add_argument("--qrels", required=True, help="BEIR qrels .tsv or TREC qrels")
    pe.add_argument("--model", default=None)
    pe.add_argument("--depth", type=int, default=1000, help="documents retrieved per query")
    pe.add_argument("--threads", type=int, default=None, help="search and encoder threads")
    pe.add_argument("--json", action="store_true", help="print JSON")

    px = sub.add_parser("export", help="convert a ColBERT-family checkpoint to a latix model")
    px.add_argument("checkpoint", help="Stanford ColBERT or PyLate/sentence-transformers directory")
    px.add_argument("out", help="output model directory")
    px.add_argument("--opset", type=int, default=17)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "index":
            return _cmd_index(args)
        if args.command == "search":
            return _cmd_search(args)
        if args.command == "eval":
            return _cmd_eval(args)
        return _cmd_export(args)
    except LatixError as e:
        print(f"latix {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"latix {args.command}: interrupted", file=sys.stderr)
        return 130


def _cmd_index(args: argparse.Namespace) -> int:
    import itertools

    from tqdm import tqdm

    from latix.collection import Collection, build_collection
    from latix.corpus import ReadStats, detect_format, read_corpus
    from latix.encoder import Encoder
    from latix.errors import AlreadyExistsError

    # Cheap checks first: unknown format or a foreign output directory fail before model loading.
    detect_format(args.corpus)
    out = Path(args.out)
    if out.exists() and not Collection.exists(out) and (not out.is_dir() or any(out.iterdir())):
        raise AlreadyExistsError(f"{out} exists and is not an empty directory or a collection")
    encoder = Encoder.load(args.model, n_threads=args.threads, batch_size=args.batch_size)
    stats = ReadStats()
    docs = read_corpus(args.corpus, stats)
    if args.limit is not None:
        docs = itertools.islice(docs, args.limit)
    bar = tqdm(unit="doc", disable=args.no_progress, file=sys.stderr, desc="indexing")

    def progress(n_docs: int, n_tokens: int) -> None:
        bar.update(n_docs)

    try:
        rep = build_collection(
            args.out,
            docs,
            encoder,
            model_spec=args.model,
            commit_every=args.commit_every,
            batch_size=max(args.batch_size, 1) * 2,
            restart=args.restart,
            progress=progress,
        )
    except KeyboardInterrupt:
        bar.close()
        print(
            "interrupted: the collection holds the documents committed so far; run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130
    bar.close()
    rate = rep.n_indexed / rep.seconds if rep.seconds > 0 else 0.0
    print(
        f"indexed {rep.n_indexed} documents ({rep.n_tokens} token vectors) in {rep.seconds:.1f} s "
        f"({rate:.1f} docs/s) into {args.out}"
    )
    if rep.n_already:
        print(f"skipped {rep.n_already} documents already in the collection (resumed)")
    if rep.n_truncated:
        print(
            f"truncated {rep.n_truncated} documents at {encoder.config.document_max_length} tokens"
        )
    if rep.n_duplicate:
        print(f"skipped {rep.n_duplicate} documents with duplicate ids")
    if stats.n_skipped:
        print(f"skipped {stats.n_skipped} unreadable records:", file=sys.stderr)
        for m in stats.messages:
            print(f"  {m}", file=sys.stderr)
    for m in rep.messages:
        print(f"  {m}", file=sys.stderr)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from latix.collection import Collection

    if not args.query.strip():
        print("latix search: error: the query is empty", file=sys.stderr)
        return 1
    with Collection.open(args.index) as coll:
        encoder = coll.encoder(args.model, n_threads=args.threads)
        color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
        print_hits(
            coll, encoder, args.query, args.k, color=color, width=args.width, n_threads=args.threads
        )
    return 0


def print_hits(
    coll: Any,
    encoder: Any,
    query: str,
    k: int,
    *,
    color: bool = False,
    width: int = 400,
    n_threads: int | None = None,
    out: TextIO | None = None,
) -> None:
    """Search a collection and print ranked hits with highlighted, explained text.

    Args:
        coll: an open :class:`~latix.collection.Collection`.
        encoder: its model.
        query: the query text.
        k: hits to show.
        color: ANSI highlighting (else matched words are shown in ``[brackets]``).
        width: characters of document text shown per hit.
        n_threads: search threads.
        out: stream (default stdout).
    """
    out = out or sys.stdout
    qenc, qspans = encoder.encode_with_spans([query], "query")
    qv = qenc[0]
    scores, ids = coll.index.search(qv, k=k, n_threads=n_threads)
    hits = [(str(d), float(s)) for d, s in zip(ids[0], scores[0], strict=False) if d != ""]
    if not hits:
        print("no results", file=out)
        return
    texts = coll.docs.get_many([d for d, _ in hits])
    qtoks = _span_texts(query, qspans[0], encoder.tokens(query, "query"))
    present = [d for d, _ in hits if d in texts]
    denc, dspans = (
        encoder.encode_with_spans([texts[d] for d in present], "document")
        if present
        else (None, [])
    )
    pos = {d: i for i, d in enumerate(present)}
    for rank, (doc_id, score) in enumerate(hits, start=1):
        print(f"{rank:>3}. {doc_id}  score {score:.3f}", file=out)
        if doc_id not in texts or denc is None:
            print("     (text not stored)", file=out)
            continue
        text = texts[doc_id]
        i = pos[doc_id]
        matches = explain_hit(qv, denc[i], dspans[i])
        why = ", ".join(
            f"{qtoks[q]}→{text[a:b] if a >= 0 else '·'} {s:.2f}"
            for q, (a, b, s) in sorted(matches.items(), key=lambda kv: -kv[1][2])[:8]
        )
        print(f"     why: {why}", file=out)
        spans = [(a, b, s) for a, b, s in matches.values() if a >= 0]
        print("     " + highlight(text, spans, color=color, width=width), file=out)


def _span_texts(text: str, spans: npt.NDArray[np.int64], tokens: list[str]) -> list[str]:
    return [text[a:b] if a >= 0 else t for (a, b), t in zip(spans.tolist(), tokens, strict=False)]


def explain_hit(
    query: npt.NDArray[np.float32], doc: npt.NDArray[np.float32], doc_spans: npt.NDArray[np.int64]
) -> dict[int, tuple[int, int, float]]:
    """For each query token, the document token that won its maximum (late interaction's own
    explanation).

    Args:
        query: (n_q, dim) float32 query vectors.
        doc: (n_d, dim) float32 document vectors.
        doc_spans: (n_d, 2) int64 character spans of the document vectors (-1 for none).

    Returns:
        query token index -> (start, end, similarity) of its best document token; the sum of the
        similarities is the MaxSim score (up to the index's storage precision).
    """
    sims = query @ doc.T
    best = sims.argmax(axis=1)
    return {
        q: (int(doc_spans[j, 0]), int(doc_spans[j, 1]), float(sims[q, j]))
        for q, j in enumerate(best.tolist())
    }


def highlight(
    text: str, spans: Sequence[tuple[int, int, float]], *, color: bool = False, width: int = 400
) -> str:
    """Mark the spans in ``text``; show the ``width``-character window holding most of their weight.

    Args:
        text: the document text.
        spans: (start, end, weight) character spans.
        color: ANSI bold yellow if True, else ``[brackets]``.
        width: maximum characters shown (an ellipsis marks cut ends).
    """
    start = 0
    if len(text) > width and spans:
        # window start that covers the most matched weight
        best_w = -1.0
        for a, _, _ in spans:
            s0 = max(0, min(a - width // 4, len(text) - width))
            w = sum(s for x, y, s in spans if x >= s0 and y <= s0 + width)
            if w > best_w:
                best_w, start = w, s0
    end = min(len(text), start + width)
    marks = sorted({_word(text, a, b) for a, b, _ in spans if a >= start and b <= end and b > a})
    parts: list[str] = []
    cur = start
    for a, b in marks:
        if a < cur:
            continue
        parts.append(text[cur:a])
        parts.append(f"{_BOLD}{text[a:b]}{_RESET}" if color else f"[{text[a:b]}]")
        cur = b
    parts.append(text[cur:end])
    s = "".join(parts).replace("\n", " ")
    return ("…" if start > 0 else "") + s + ("…" if end < len(text) else "")


def _word(text: str, a: int, b: int) -> tuple[int, int]:
    """Widen a sub-word token's span to its whole word (``##se`` of "parser" marks "parser")."""
    while a > 0 and text[a - 1].isalnum():
        a -= 1
    while b < len(text) and text[b].isalnum():
        b += 1
    return a, b


def _cmd_eval(args: argparse.Namespace) -> int:
    from latix.collection import Collection
    from latix.corpus import ReadStats, read_qrels, read_queries
    from latix.eval import evaluate

    qstats = ReadStats()
    queries = read_queries(args.queries, qstats)
    qrels = read_qrels(args.qrels, qstats)
    with Collection.open(args.index) as coll:
        encoder = coll.encoder(args.model, n_threads=args.threads)
        res = evaluate(
            coll.index, encoder, queries, qrels, depth=args.depth, n_threads=args.threads
        )
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    print(f"{res.n_queries} queries (depth {res.depth})")
    for name, v in res.metrics.items():
        print(f"  {name:<11} {v:.4f}")
    for what, p in (("encode", res.encode_ms), ("search", res.search_ms)):
        print(f"  {what} latency ms: p50 {p['p50']:.2f}  p90 {p['p90']:.2f}  p99 {p['p99']:.2f}")
    if res.n_queries_without_text:
        print(f"  {res.n_queries_without_text} judged queries have no text (not evaluated)")
    if qstats.n_skipped:
        print(f"  skipped {qstats.n_skipped} malformed query/qrels lines:", file=sys.stderr)
        for m in qstats.messages:
            print(f"    {m}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from latix.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, opset=args.opset)
    print(f"exported {args.checkpoint} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
