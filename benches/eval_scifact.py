"""End-to-end retrieval quality: SciFact (BEIR) and Vaswani with the default model, exact search.

For each collection: the corpus is encoded once (embedding cache under ``$LATIX_CACHE_DIR``, keyed
by model fingerprint and data checksum), a collection is built from the cached vectors, and
``latix eval`` (the command line, exhaustive exact MaxSim) scores the judged queries, whose
encoding is timed live.

    python benches/eval_scifact.py [--data ../shared/data] [--which scifact vaswani] [--threads N]

Prints one JSON object per collection (metrics and latency percentiles).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from latix.collection import build_collection
from latix.corpus import Document, read_corpus
from latix.encoder import Encoder
from latix.eval import EmbeddingCache

ROOT = Path(__file__).resolve().parents[1]
SETS = {
    "scifact": ("scifact/corpus.jsonl.gz", "scifact/queries.jsonl", "scifact/qrels/test.tsv"),
    "vaswani": ("vaswani/doc-text.trec", "vaswani/query-text.trec", "vaswani/qrels"),
}


def build_from_cache(
    name: str, data: Path, out: Path, encoder: Encoder, cache: EmbeddingCache
) -> dict[str, Any]:
    """Encode (or load from cache) a corpus and index it into collection ``out``."""
    docs = list(read_corpus(data / SETS[name][0]))
    ids, texts = [d.id for d in docs], [d.text for d in docs]
    t0 = time.perf_counter()
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if done % 1024 < n:
            print(
                f"  {name}: encoded {done}/{len(docs)} ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    vecs, offs = cache.get_or_compute(encoder, ids, texts, progress=progress)
    t_enc = time.perf_counter() - t0
    pos = {d: i for i, d in enumerate(ids)}

    def lookup(batch: list[Document]) -> list[np.ndarray]:
        return [np.asarray(vecs[offs[pos[d.id]] : offs[pos[d.id] + 1]]) for d in batch]

    rep = build_collection(
        out,
        docs,
        encoder,
        model_spec="default",
        restart=out.exists(),
        vectors_fn=lookup,
        commit_every=len(docs),
        batch_size=512,
    )
    return {
        "docs": len(docs),
        "tokens": int(offs[-1]),
        "encode_or_cache_s": round(t_enc, 1),
        "index_s": round(rep.seconds, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=os.environ.get("LATIX_DATA", str(ROOT / "../shared/data")))
    ap.add_argument("--which", nargs="*", default=["scifact", "vaswani"], choices=list(SETS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", default=None, help="where collections are built (default: tmp)")
    args = ap.parse_args()
    data = Path(args.data)
    encoder = Encoder.default(n_threads=args.threads)
    cache = EmbeddingCache()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="latix-eval-"))
    for name in args.which:
        out = work / name
        info = build_from_cache(name, data, out, encoder, cache)
        _, q, r = SETS[name]
        cmd = [
            sys.executable,
            "-m",
            "latix.cli",
            "eval",
            str(out),
            "--queries",
            str(data / q),
            "--qrels",
            str(data / r),
            "--json",
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(json.dumps({"collection": name, **info, **res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
