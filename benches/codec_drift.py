"""What limits codes-only filtered search at 0.1 % on SciFact + 100k distractors: codec drift.

benches/bench_collection.py's filtered part adds SciFact's 5,183 documents first (one add, one
commit, 1.23M tokens), then the 100k distractors (benches/make_distractors.py) 20,000 at a time.
The collection's codec trains at the first commit that holds ``train_min_tokens`` tokens, so on a
sample of SciFact alone, and encodes the distractors (91 % of the tokens, Vaswani tokens plus
noise) with it. A filter keeping 0.1 % (105 documents, 4 of them SciFact's) ranks mostly
distractors. This script measures, outside the collection and on the same data:

* the codec's reconstruction error on SciFact and on distractor tokens;
* recall@10 against exact MaxSim over the allowed documents when every one of them is scored from
  codes (an index of just those documents, every list probed, every document refined: the
  ceiling of the exhaustive path), and with MaxSim over decoded unpooled vectors (pooling's
  share);
* the same with a codec trained on a uniform sample of the whole collection ("representative"),
  and with a "growth retrain": a codec trained on that sample where the documents encoded before
  (SciFact) only contribute their decoded reconstructions and are re-encoded from them (what a
  retrain can do once the original vectors of the old documents are gone);
* the representative codec applied as a retraining with a reservoir of original vectors would
  apply it: trained on originals, but SciFact re-encoded from its reconstructions (whether a
  better sample avoids the growth retrain's cost, or the re-encoding is the cost);
* the same codecs on SciFact's documents alone (their exact top 10 is what the unfiltered
  search finds), so that the price of a representative codec on SciFact shows.

Usage: python benches/codec_drift.py [--queries train|test] [--n 300] [--data DIR]
Codecs are cached under --work (default /tmp/latix-codec-drift). Not timed (no lock).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("LATIX_BENCH_DATA") or Path.home() / ".cache" / "latix" / "bench")


def main() -> int:
    import latix
    import latix._core as core
    from latix import Compression, Index, train_codec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--queries", choices=["train", "test"], default="train")
    ap.add_argument("--n", type=int, default=300, help="queries used")
    ap.add_argument("--work", default="/tmp/latix-codec-drift")
    a = ap.parse_args()
    data, work = Path(a.data), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)

    def part(d: str) -> tuple[np.ndarray, np.ndarray]:
        return np.load(data / d / "docs_vectors.npy", mmap_mode="r"), np.load(
            data / d / "doc_offsets.npy"
        )

    (sv, so), (dv, do) = part("scifact"), part("distractors")
    ns, nd = len(so) - 1, len(do) - 1
    n = ns + nd
    n_tokens = int(so[-1] + do[-1])
    perm = np.random.default_rng(7).permutation(n)  # bench_collection.py's bucket column

    def doc(j: int) -> np.ndarray:
        x = sv[so[j] : so[j + 1]] if j < ns else dv[do[j - ns] : do[j - ns + 1]]
        return np.asarray(x, np.float32)

    pre = "train_query" if a.queries == "train" else "query"
    qv, qo = (
        np.load(data / "scifact" / f"{pre}_vectors.npy"),
        np.load(data / "scifact" / f"{pre}_offsets.npy"),
    )
    queries = [np.asarray(qv[qo[i] : qo[i + 1]], np.float32) for i in range(len(qo) - 1)][: a.n]
    # bench_collection.py's K for the final size.
    k = 1 << round(np.log2(3 * np.sqrt(n_tokens / 2)))
    comp = Compression(n_centroids=k)

    def cached(name: str, fn: Callable[[], bytes]) -> bytes:
        p = work / f"{name}-{k}.codec"
        if p.is_file():
            return p.read_bytes()
        t = time.time()
        b = fn()
        p.write_bytes(b)
        print(f"trained {name} in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        return b

    sci_only = cached("scifact-only", lambda: train_codec(comp, [doc(j) for j in range(ns)]))
    sample = np.random.default_rng(1).choice(n, 6000, replace=False)
    rep = cached("representative", lambda: train_codec(comp, [doc(int(j)) for j in sample]))
    c_a = core.compressed.Codec.from_bytes(sci_only)

    def recon(c: object, x: np.ndarray) -> np.ndarray:
        return c.decode(*c.encode(x))  # type: ignore[attr-defined]

    grow = cached(
        "growth-retrain",
        lambda: train_codec(
            comp, [recon(c_a, doc(int(j))) if j < ns else doc(int(j)) for j in sample]
        ),
    )
    print(f"K {k}; {len(queries)} {a.queries} queries\n")
    print("| codec | SciFact tokens sq. error | distractor tokens sq. error |")
    print("| --- | --- | --- |")
    rng = np.random.default_rng(2)
    tok_s = np.concatenate([doc(int(j)) for j in rng.choice(ns, 200, replace=False)])
    tok_d = np.concatenate([doc(ns + int(j)) for j in rng.choice(nd, 200, replace=False)])
    for name, cb in (("scifact-only", sci_only), ("representative", rep)):
        c = core.compressed.Codec.from_bytes(cb)
        e = [float(np.sum((x - recon(c, x)) ** 2, 1).mean()) for x in (tok_s, tok_d)]
        print(f"| {name} | {e[0]:.4f} | {e[1]:.4f} |")

    def recall(ranked: Callable[[np.ndarray], list[int]], orig: list[np.ndarray]) -> float:
        off = np.zeros(len(orig) + 1, np.int64)
        np.cumsum([len(d) for d in orig], out=off[1:])
        x = np.concatenate(orig)
        r = []
        for q in queries:
            want = set(np.argsort(-latix.maxsim(q, x, off), kind="stable")[:10].tolist())
            r.append(len(want & set(ranked(q))) / 10)
        return float(np.mean(r))

    def codes_ranking(cb: bytes, stored: list[np.ndarray]) -> tuple[Index, Callable]:
        ix = Index.create(tempfile.mkdtemp(dir=work) + "/ix", 384, compression=comp, codec=cb)
        ix.add([str(i) for i in range(len(stored))], stored)
        ix.commit()

        def ranked(q: np.ndarray) -> list[int]:
            _, ids = ix.search(q, k=10, n_threads=1, nprobe=k, refine=10**9)
            return [int(i) for i in ids[0] if i]

        return ix, ranked

    def decoded_ranking(cb: bytes, stored: list[np.ndarray]) -> Callable:
        c = core.compressed.Codec.from_bytes(cb)
        dec = [recon(c, d) for d in stored]
        off = np.zeros(len(dec) + 1, np.int64)
        np.cumsum([len(d) for d in dec], out=off[1:])
        x = np.concatenate(dec)
        return lambda q: np.argsort(-latix.maxsim(q, x, off), kind="stable")[:10].tolist()

    print("\n| documents | codec | recall@10 from codes | recall@10 decoded, unpooled |")
    print("| --- | --- | --- | --- |")
    sets = {
        "0.1 % filter (105)": [int(j) for j in np.nonzero(perm < round(0.001 * n))[0]],
        f"SciFact alone ({ns})": list(range(ns)),
    }
    for sname, js in sets.items():
        orig = [doc(j) for j in js]
        regrown = [recon(c_a, d) if j < ns else d for j, d in zip(js, orig, strict=True)]
        for cname, cb, stored in (
            ("scifact-only (the benchmark's)", sci_only, orig),
            ("representative sample", rep, orig),
            ("growth retrain (old docs from reconstructions)", grow, regrown),
            # A retraining whose sample kept original vectors (a reservoir of them): the
            # representative codec, but the old documents still re-encoded from reconstructions.
            ("reservoir sample, old docs from reconstructions", rep, regrown),
        ):
            ix, ranked = codes_ranking(cb, stored)
            r_codes = recall(ranked, orig)
            ix.close()
            r_dec = recall(decoded_ranking(cb, stored), orig)
            print(f"| {sname} | {cname} | {r_codes:.3f} | {r_dec:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
