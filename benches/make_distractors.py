"""Builds a seeded distractor corpus of real-looking token vectors to test latix at scale.

Recipe (deterministic for a given --seed):
1. Encode the Vaswani documents (<source>/vaswani/doc-text.trec, read by latix.corpus) with
   latix's default model (`latix.Encoder.default()`: int8 ONNX all-MiniLM-L6-v2 as a token
   encoder, no [CLS]/[SEP], L2-normalised, 256-token cap) through latix's embedding cache
   ($LATIX_CACHE_DIR or ~/.cache/latix, shared with benches/eval_scifact.py: 6-11 min the first
   time on a 2-core machine, then instant), and take a seeded sample of --n-source-docs of them.
2. For each of --n-docs distractor documents: draw a length from SciFact's document-length
   distribution (<data>/scifact/doc_offsets.npy, written by benches/prepare_bench_data.py;
   capped at --max-len, default 128, the model's native limit: ~13M tokens), draw its tokens from
   two Vaswani documents (topical coherence), add isotropic Gaussian noise of norm ~--noise and
   re-normalise.
3. Write docs_vectors.npy (float16, memory-mapped while writing), doc_offsets.npy (int64),
   doc_ids.json ("distractor-<i>"), checksums.json (BLAKE2b of those three files, see
   benches/checksums.py) and params.json into <data>/distractors, each through a temporary name
   and an atomic rename. If that folder already holds a corpus made with the same parameters,
   nothing is done (--force rebuilds); a corpus made before checksums were recorded gets its
   checksums.json then. 100k documents take 4-11 min and 9.8 GB. benches/bench_compressed.py
   checks params.json against these defaults and every file against checksums.json.

Usage: python benches/make_distractors.py [--data DIR] [--n-docs 100000] [--source ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from checksums import digests

ROOT = Path(__file__).resolve().parents[1]
#: The corpus's data files, whose checksums are recorded in checksums.json.
DATA_FILES = ("docs_vectors.npy", "doc_offsets.npy", "doc_ids.json")
#: Parameters recorded in params.json (the argparse destinations of parser()).
PARAM_KEYS = ("n_docs", "n_source_docs", "noise", "max_len", "seed")


def default_data_root() -> str:
    """$LATIX_BENCH_DATA, or ~/.cache/latix/bench."""
    return os.environ.get("LATIX_BENCH_DATA") or str(Path.home() / ".cache" / "latix" / "bench")


def default_source() -> str:
    """The evaluation collections: $LATIX_DATA, or ../shared/data from the project's root."""
    return os.environ.get("LATIX_DATA") or str(ROOT / ".." / "shared" / "data")


def encode_vaswani(
    vaswani: Path, n_docs: int, seed: int, threads: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Token vectors of a seeded sample of Vaswani documents: (vectors f32 (n, 384), offsets)."""
    from latix.corpus import read_corpus
    from latix.encoder import Encoder
    from latix.eval import EmbeddingCache
    from tqdm import tqdm

    docs = list(read_corpus(vaswani))
    ids, texts = [d.id for d in docs], [d.text for d in docs]
    encoder = Encoder.default(n_threads=threads)
    cache = EmbeddingCache()
    cached = (cache.entry_dir(encoder, "document", ids, texts) / "offsets.npy").is_file()
    with tqdm(total=len(docs), unit="doc", desc="Vaswani", disable=cached, file=sys.stderr) as bar:
        vecs, offs = cache.get_or_compute(encoder, ids, texts, progress=bar.update)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(docs), min(n_docs, len(docs)), replace=False))
    lens = offs[pick + 1] - offs[pick]
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    rows = np.concatenate([np.arange(offs[i], offs[i + 1]) for i in pick])
    return np.asarray(vecs[rows], dtype=np.float32), offsets


def save_npy(arr: np.ndarray, path: str) -> None:
    """np.save through `path`.tmp and an atomic rename."""
    with open(path + ".tmp", "wb") as f:
        np.save(f, arr)
    os.replace(path + ".tmp", path)


def holds(out: str, params: dict[str, object]) -> bool:
    """Whether `out` holds a complete distractor corpus made with `params` (written last)."""
    try:
        with open(out + "/doc_ids.json") as f:
            n = len(json.load(f))
        off = np.load(out + "/doc_offsets.npy")
        vec = np.load(out + "/docs_vectors.npy", mmap_mode="r")
        if os.path.exists(out + "/params.json"):
            with open(out + "/params.json") as f:
                if json.load(f) != params:
                    return False
        else:  # made before parameters were recorded: trust the sizes
            print(f"{out}: no params.json, checking sizes only", file=sys.stderr)
    except (OSError, ValueError):
        return False
    return n == params["n_docs"] and off.shape == (n + 1,) and vec.shape[0] == int(off[-1])


def write_checksums(out: str) -> dict[str, str]:
    """Writes <out>/checksums.json (through a temporary name) and returns it."""
    sums = digests(out, DATA_FILES)
    with open(out + "/checksums.json.tmp", "w") as f:
        json.dump(sums, f, indent=1)
    os.replace(out + "/checksums.json.tmp", out + "/checksums.json")
    return sums


def default_params() -> dict[str, object]:
    """The parameters of the default corpus (what the benchmark expects in params.json)."""
    ap = parser()
    return {k: ap.get_default(k) for k in PARAM_KEYS}


def parser() -> argparse.ArgumentParser:
    """The command line (its defaults are the benchmark's corpus)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n-docs", type=int, default=100_000)
    ap.add_argument("--n-source-docs", type=int, default=3000, help="Vaswani documents encoded")
    ap.add_argument("--noise", type=float, default=0.3, help="norm of the added Gaussian noise")
    ap.add_argument(
        "--max-len",
        type=int,
        default=128,
        help="cap on drawn lengths (128 = the model's native limit; gives ~13M tokens)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=default_data_root(), help="bench data root")
    ap.add_argument("--source", default=default_source(), help="evaluation collections (read)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default all)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the corpus exists")
    return ap


def main() -> None:
    from tqdm import tqdm

    a = parser().parse_args()
    out = os.path.join(a.data, "distractors")
    scifact_offsets = os.path.join(a.data, "scifact", "doc_offsets.npy")
    params: dict[str, object] = {k: getattr(a, k) for k in PARAM_KEYS}
    if not a.force and holds(out, params):
        if not os.path.exists(out + "/checksums.json"):
            print(f"{out}: recording checksums.json", file=sys.stderr)
            write_checksums(out)
        print(f"{out}: already holds {a.n_docs} distractor docs, nothing to do")
        return
    if not os.path.exists(scifact_offsets):
        raise SystemExit(f"{scifact_offsets} not found: run benches/prepare_bench_data.py first")
    for stale in ("params.json", "checksums.json"):
        if os.path.exists(f"{out}/{stale}"):
            os.remove(f"{out}/{stale}")  # an interrupted rebuild must not look complete
    t0 = time.time()
    vaswani = Path(a.source) / "vaswani" / "doc-text.trec"
    pool, pool_off = encode_vaswani(vaswani, a.n_source_docs, a.seed, a.threads)
    print(f"vaswani pool: {len(pool_off) - 1} docs, {len(pool)} tokens ({time.time() - t0:.0f} s)")
    sci_len = np.diff(np.load(scifact_offsets))
    sci_len = sci_len[sci_len > 0]
    rng = np.random.default_rng(a.seed + 1)
    lengths = np.minimum(rng.choice(sci_len, a.n_docs, replace=True), a.max_len).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    os.makedirs(out, exist_ok=True)
    dim = pool.shape[1]
    vec = np.lib.format.open_memmap(
        out + "/docs_vectors.npy.tmp", mode="w+", dtype=np.float16, shape=(int(offsets[-1]), dim)
    )
    n_src = len(pool_off) - 1
    sigma = a.noise / np.sqrt(dim)
    chunk = 2000
    for c0 in tqdm(range(0, a.n_docs, chunk), desc="distractors", unit="chunk", file=sys.stderr):
        c1 = min(a.n_docs, c0 + chunk)
        rows = []
        for d in range(c0, c1):
            s1, s2 = rng.integers(0, n_src, 2)
            cand = np.concatenate(
                [
                    np.arange(pool_off[s1], pool_off[s1 + 1]),
                    np.arange(pool_off[s2], pool_off[s2 + 1]),
                ]
            )
            rows.append(rng.choice(cand, lengths[d], replace=True))
        idx = np.concatenate(rows)
        v = pool[idx] + rng.normal(0.0, sigma, (len(idx), dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        vec[offsets[c0] : offsets[c1]] = v.astype(np.float16)
    vec.flush()
    del vec
    os.replace(out + "/docs_vectors.npy.tmp", out + "/docs_vectors.npy")
    save_npy(offsets, out + "/doc_offsets.npy")
    with open(f"{out}/doc_ids.json.tmp", "w") as f:
        json.dump([f"distractor-{i}" for i in range(a.n_docs)], f)
    os.replace(f"{out}/doc_ids.json.tmp", f"{out}/doc_ids.json")
    write_checksums(out)
    with open(f"{out}/params.json.tmp", "w") as f:
        json.dump(params, f)
    os.replace(f"{out}/params.json.tmp", f"{out}/params.json")  # last: marks complete
    print(f"{a.n_docs} distractor docs, {offsets[-1]} tokens -> {out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
