"""Offline experiment for issue 13: what recall@10 against exact MaxSim would a fidelity tier reach
if its per-token residual were transform coded (a PCA rotation of the residuals, then a bit
allocation per component by reverse water-filling, Lloyd-Max levels per component) instead of
today's per-dimension 1-bit (balanced) or 2 + 1-bit (high) Lloyd-Max residual?

Everything but the residual quantiser is the product's: the index is the benchmark's own balanced
build (`bench_compressed.py --_build scifact --_fidelity balanced`), so the codec's coarse
centroids and each original token's centroid id are read from its files (`codec`, the segment's
`fid`), and the candidate lists are the index's own (codes-refined, `rerank=False`, the first
`--depth-max` of them). Each variant reconstructs every token as `c + P z^` (`P`: the residuals'
principal axes, `z^`: the quantised components, times a least-squares scale per token) and
re-ranks the first N candidates by MaxSim over the reconstructions (optionally averaged with the
codes' score, as `TIER_MIX` does). "Exact" is exact MaxSim over the first `--depth-max` (256)
candidates' full vectors: the refined top 256 holds ~99.9 % of exact's top 10 on SciFact train
queries (bench-results/fidelity.md, item B), so recall against it is within ~0.001 of recall
against exhaustive exact search.

Bytes per token are those of the tier's residual codes (`--budgets`, bytes); the tier adds 2
(centroid id) + 2 (scale) and the codes-only index 30.7, so 64 B of codes is 98.7 B/token on disk.

Run: `python benches/tier_transform_experiment.py --index <balanced index> [--queries 809]`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

DATA = os.environ.get("LATIX_BENCH_DATA") or os.path.expanduser("~/.cache/latix/bench")

# Distortion of a unit-variance Gaussian under a b-bit Lloyd-Max quantiser (Max 1960).
LM_GAUSS = [1.0, 0.3634, 0.1175, 0.03454, 0.009497, 0.002499, 0.000642, 0.000163, 0.0000412]


def read_codec(path: str) -> np.ndarray:
    """The codec file's coarse centroids (K x dim f32; layout: codec/format.rs)."""
    b = open(path, "rb").read()
    h = np.frombuffer(b, dtype="<u4", count=7, offset=8)
    _, dim, k, g = (int(v) for v in h[:4])
    pos = 36 + (g + 1) * 4 + g * dim * 4
    return (
        np.frombuffer(b, dtype="<f2", count=k * dim, offset=pos).astype(np.float32).reshape(k, dim)
    )


def read_fid_cids(path: str) -> np.ndarray:
    """Centroid ids of every original token of a single-set fid file (fidelity/mod.rs layout)."""
    b = open(path, "rb").read()
    version, dim, nbits, cid_bytes, _k = (int(v) for v in np.frombuffer(b, "<u4", 5, 8))
    n_tokens = int(np.frombuffer(b, "<u8", 1, 32)[0])
    nbits2 = int(np.frombuffer(b, "<u4", 1, 48)[0]) if version >= 2 else 0
    assert version in (1, 2), "one level set expected"

    def a64(x: int) -> int:
        return (x + 63) // 64 * 64

    levels = 64
    levels2 = a64(levels + dim * (4 << nbits))
    cids = a64(levels2 + (dim * (4 << nbits2) if nbits2 else 0))
    dt = "<u2" if cid_bytes == 2 else "<u4"
    return np.frombuffer(b, dt, n_tokens, cids).astype(np.int64)


def read_codebooks(path: str) -> tuple[np.ndarray, int]:
    """The codec's PQ codebooks (16 codewords per subspace) and its number of subspaces M."""
    b = open(path, "rb").read()
    _, dim, k, g, m = (int(v) for v in np.frombuffer(b, dtype="<u4", count=5, offset=8))
    pos = 36 + (g + 1) * 4 + g * dim * 4 + k * dim * 2
    return np.frombuffer(b, dtype="<f4", count=16 * dim, offset=pos).copy(), m


def pooled_anchors(
    X: np.ndarray, off: np.ndarray, cents: np.ndarray, books: np.ndarray, m: int
) -> np.ndarray:
    """Each original token's pooled vector as the codes decode it (an emulation of the product:
    Ward clusters of ceil(n / 2) per document, L2-normalised means (compressed/pool.rs), the
    nearest centroid by exhaustive search (the product's tree probes 4 top clusters) and the
    nearest codeword per subspace (the product's default: plain squared error))."""
    from scipy.cluster.hierarchy import fcluster, linkage

    dim = X.shape[1]
    sub = dim // m
    assert sub * m == dim
    cb = books.reshape(m, 16, sub)  # codebooks[16 * a + j * sub ...]: subspace s, codeword j
    pooled, owner = [], np.empty(int(off[-1] - off[0]), dtype=np.int64)
    base = 0
    for d in range(len(off) - 1):
        x = np.asarray(X[off[d] : off[d + 1]], dtype=np.float64)
        n = len(x)
        k = (n + 1) // 2
        if n <= 1 or k >= n:
            lab = np.arange(n)
        else:
            lab = fcluster(linkage(x, method="ward"), k, criterion="maxclust") - 1
            _, lab = np.unique(lab, return_inverse=True)
        nk = lab.max() + 1
        mean = np.zeros((nk, dim))
        np.add.at(mean, lab, x)
        mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-30)
        pooled.append(mean.astype(np.float32))
        owner[off[d] - off[0] : off[d + 1] - off[0]] = base + lab
        base += nk
    P = np.concatenate(pooled)
    c2 = (cents**2).sum(1)
    cid = np.concatenate(
        [
            np.argmin(c2[None, :] - 2 * P[i : i + 65536] @ cents.T, axis=1)
            for i in range(0, len(P), 65536)
        ]
    )
    R = (P - cents[cid]).reshape(len(P), m, sub)
    dec = np.empty_like(R)
    for s in range(m):
        dist = ((R[:, s, None, :] - cb[s][None]) ** 2).sum(-1)
        dec[:, s] = cb[s][np.argmin(dist, axis=1)]
    A = cents[cid] + dec.reshape(len(P), dim)
    print(f"pooled {len(owner):,} tokens into {len(P):,}", file=sys.stderr)
    return A[owner]


def lloyd_max(x: np.ndarray, nbits: int, iters: int = 12) -> np.ndarray:
    """Lloyd-Max levels (ascending) of the 1-D sample x (the product's start: quantile means)."""
    nl = 1 << nbits
    xs = np.sort(x)
    parts = np.array_split(xs, nl)
    lv = np.array([p.mean() for p in parts])
    for _ in range(iters):
        cuts = 0.5 * (lv[1:] + lv[:-1])
        idx = np.searchsorted(cuts, xs, side="right")
        s = np.bincount(idx, weights=xs, minlength=nl)
        c = np.bincount(idx, minlength=nl)
        lv = np.where(c > 0, s / np.maximum(c, 1), lv)
        lv.sort()
    return lv


def allocate(var: np.ndarray, budget_bits: int, allowed: list[int]) -> np.ndarray:
    """Integer bits per component from `allowed` (ascending, from 0) by greedy reverse
    water-filling: each step moves one component to its next allowed rate, the one that lowers
    the expected squared error most per bit spent (Gaussian Lloyd-Max distortions), while the
    budget lasts."""
    b = np.zeros(len(var), dtype=np.int64)
    nxt = {x: y for x, y in zip(allowed, allowed[1:], strict=False)}
    left = budget_bits
    while True:
        best, best_gain = -1, 0.0
        for d in range(len(var)):
            if b[d] not in nxt or nxt[b[d]] - b[d] > left:
                continue
            g = var[d] * (LM_GAUSS[b[d]] - LM_GAUSS[nxt[b[d]]]) / (nxt[b[d]] - b[d])
            if g > best_gain:
                best, best_gain = d, g
        if best < 0:
            return b
        left -= nxt[b[best]] - b[best]
        b[best] = nxt[b[best]]


def quantise_components(
    z: np.ndarray, zs: np.ndarray, bits: np.ndarray, uniform: bool
) -> np.ndarray:
    """z (n x D) quantised per component with bits[d] bits (levels fitted on the sample zs)."""
    out = np.zeros_like(z)
    for d in np.nonzero(bits)[0]:
        nb = int(bits[d])
        if uniform:
            lo, hi = np.quantile(zs[:, d], [0.001, 0.999])
            nl = 1 << nb
            lv = lo + (hi - lo) * (np.arange(nl) + 0.5) / nl
        else:
            lv = lloyd_max(zs[:, d], nb)
        cuts = 0.5 * (lv[1:] + lv[:-1])
        out[:, d] = lv[np.searchsorted(cuts, z[:, d], side="right")]
    return out


def ls_scale(r: np.ndarray, rh: np.ndarray) -> np.ndarray:
    """Per-token least-squares scale of rh towards r, rounded as the product stores it
    (u16 / 2^14)."""
    pp = np.einsum("ij,ij->i", rh, rh)
    s = np.where(pp > 0, np.einsum("ij,ij->i", r, rh) / np.maximum(pp, 1e-30), 1.0)
    return np.round(np.clip(s, 0, 3.99) * 16384) / 16384


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", required=True, help="a balanced index of SciFact (benchmark build)")
    ap.add_argument("--queries", type=int, default=809, help="first N SciFact train queries")
    ap.add_argument("--split", default="train", choices=["train", "test"])
    ap.add_argument("--depth-max", type=int, default=256)
    ap.add_argument("--depths", default="16,48,96,160")
    ap.add_argument("--budgets", default="48,64,96,144,160", help="bytes of residual codes")
    ap.add_argument("--max-bits", type=int, default=4, help="bits of one component at most")
    ap.add_argument(
        "--allowed-bits",
        default=None,
        help="rates a component may get, e.g. 0,1,2,4 (those that pack whole 4-bit table "
        "subspaces: 4 x 1, 2 x 2, 1 x 4); default 0..max-bits",
    )
    ap.add_argument(
        "--source",
        default=os.environ.get("LATIX_DATA", "/work/shared/data"),
        help="evaluation collections (qrels for nDCG@10)",
    )
    ap.add_argument("--anchor-cache", default=None, help="npy file of the pooled anchors (reused)")
    ap.add_argument(
        "--metric",
        default="plain",
        choices=["plain", "docs", "queries"],
        help="squared error measured as plain |e|^2, or e' M e with M the second moment of the "
        "document tokens (what a build has) or of the evaluated queries' tokens (a leak: bound)",
    )
    ap.add_argument(
        "--refines",
        default="48,96,160",
        help="the product's pipeline: the refine=N list (centroid interaction's best N, refined "
        "from codes), every one re-ranked from the tier",
    )
    ap.add_argument(
        "--anchor",
        default="centroid",
        choices=["centroid", "pooled"],
        help="what the residual is taken against: the coarse centroid (the product) or the "
        "token's pooled vector as decoded from the codes (no centroid id needed)",
    )
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--out", default=None, help="append result rows here (jsonl)")
    a = ap.parse_args()
    import latix

    t0 = time.time()
    sf = f"{DATA}/scifact"
    X = np.load(f"{sf}/docs_vectors.npy", mmap_mode="r")
    off = np.load(f"{sf}/doc_offsets.npy")
    dids = json.load(open(f"{sf}/doc_ids.json"))
    pre = "train_" if a.split == "train" else ""
    Q = np.load(f"{sf}/{pre}query_vectors.npy").astype(np.float32)
    qo = np.load(f"{sf}/{pre}query_offsets.npy")
    nq = min(a.queries, len(qo) - 1)
    cents = read_codec(glob.glob(f"{a.index}/*codec*")[0])
    fids = sorted(glob.glob(f"{a.index}/*.fid-*"))
    assert len(fids) == 1, fids
    cid = read_fid_cids(fids[0])
    assert len(cid) == len(X), (len(cid), len(X))
    Xf = np.asarray(X, dtype=np.float32)
    if a.anchor == "pooled":
        codec_path = glob.glob(f"{a.index}/*codec*")[0]
        books, m = read_codebooks(codec_path)
        if a.anchor_cache and os.path.exists(a.anchor_cache):
            anchor = np.load(a.anchor_cache)
        else:
            anchor = pooled_anchors(X, off, cents, books, m)
            if a.anchor_cache:
                np.save(a.anchor_cache, anchor)
    else:
        anchor = cents[cid]
    R = Xf - anchor
    print(f"loaded {len(X):,} tokens, K {len(cents)} ({time.time() - t0:.0f} s)", file=sys.stderr)

    # Candidates: the index's codes-refined list (no re-rank).
    ix = latix.Index.open(a.index)
    pos = {d: i for i, d in enumerate(dids)}
    cands, cscore = [], []
    for i in range(nq):
        s, h = ix.search(
            Q[qo[i] : qo[i + 1]], k=a.depth_max, refine=a.depth_max, rerank=False, n_threads=2
        )
        ids = [pos[str(d)] for d in h[0] if d]
        cands.append(np.array(ids, dtype=np.int64))
        cscore.append(np.asarray(s[0][: len(ids)], dtype=np.float64))
    refines = [int(v) for v in a.refines.split(",") if v]
    # Positions in the refine=depth_max list of each refine=N list's documents (a subset: both
    # refine candidates in centroid-interaction order).
    sub: dict[int, list[np.ndarray]] = {n: [] for n in refines}
    for i in range(nq):
        where = {d: j for j, d in enumerate(cands[i])}
        for n in refines:
            _, h = ix.search(Q[qo[i] : qo[i + 1]], k=n, refine=n, rerank=False, n_threads=2)
            sub[n].append(np.array([where[pos[str(d)]] for d in h[0] if d], dtype=np.int64))
    ix.close()
    print(f"candidates ({time.time() - t0:.0f} s)", file=sys.stderr)

    rows_of = []
    for c in cands:
        idx = np.concatenate([np.arange(off[d], off[d + 1]) for d in c])
        starts = np.concatenate([[0], np.cumsum(off[c + 1] - off[c])[:-1]])
        rows_of.append((idx, starts))

    def maxsim_all(V: np.ndarray) -> list[np.ndarray]:
        out = []
        for i in range(nq):
            idx, starts = rows_of[i]
            S = Q[qo[i] : qo[i + 1]] @ V[idx].T
            out.append(np.maximum.reduceat(S, starts, axis=1).sum(0).astype(np.float64))
        return out

    import csv

    import ir_measures
    from ir_measures import nDCG

    qids = json.load(open(f"{sf}/{pre}query_ids.json"))[:nq]
    qrels: dict[str, dict[str, int]] = {}
    with open(f"{a.source}/scifact/qrels/{a.split}.tsv") as f:
        for row in list(csv.reader(f, delimiter="\t"))[1:]:
            if row[0] in set(qids):
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])

    def ndcg(tops: list[np.ndarray]) -> float:
        run = {qids[i]: {dids[d]: 10.0 - r for r, d in enumerate(tops[i])} for i in range(nq)}
        return float(ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10])

    exact = maxsim_all(Xf)
    top_ex = [c[np.argsort(-e, kind="stable")[:10]] for c, e in zip(cands, exact, strict=True)]
    print(f"exact nDCG@10: {ndcg(top_ex):.4f}", file=sys.stderr)
    top_exact = [
        set(c[np.argsort(-e, kind="stable")[:10]]) for c, e in zip(cands, exact, strict=True)
    ]
    depths = [int(v) for v in a.depths.split(",")]

    def recall(scores: list[np.ndarray], depth: int, mix: float) -> float:
        r = []
        for i in range(nq):
            n = min(depth, len(cands[i]))
            sc = (1 - mix) * scores[i][:n] + mix * cscore[i][:n]
            top = cands[i][:n][np.argsort(-sc, kind="stable")[:10]]
            r.append(len(set(top) & top_exact[i]) / 10)
        return float(np.mean(r))

    def report(name: str, Xh: np.ndarray, extra: dict) -> None:
        cos = float(
            np.mean(
                np.einsum("ij,ij->i", Xh[::97], Xf[::97])
                / (np.linalg.norm(Xh[::97], axis=1) * np.linalg.norm(Xf[::97], axis=1))
            )
        )
        sc = maxsim_all(Xh)
        row = {"variant": name, "cos": round(cos, 4), **extra}
        for d in depths:
            row[f"r@{d}"] = round(recall(sc, d, 0.0), 4)
            row[f"r@{d}_mix.5"] = round(recall(sc, d, 0.5), 4)
        for n in refines:
            for mix in (0.0, 0.5):
                r, tops = [], []
                for i in range(nq):
                    j = sub[n][i]
                    scm = (1 - mix) * sc[i][j] + mix * cscore[i][j]
                    top = cands[i][j][np.argsort(-scm, kind="stable")[:10]]
                    tops.append(top)
                    r.append(len(set(top) & top_exact[i]) / 10)
                row[f"refine{n}:all" + ("_mix.5" if mix else "")] = round(float(np.mean(r)), 4)
                if not mix:
                    row[f"refine{n}:all_ndcg"] = round(ndcg(tops), 4)
        row["codes_only@16"] = round(recall([np.zeros(len(c)) for c in cands], 16, 1.0), 4)
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    # Sample for fitting (strided, as the product's LEVEL_SAMPLE).
    step = max(1, len(R) // 65536)
    Rs = R[::step]
    # Baselines: per-dimension Lloyd-Max (today's balanced 1 bit, high 2 + 1 bits), with scale.
    baselines = (
        ()
        if a.skip_baselines
        else (("perdim-1bit (balanced)", 1, 0), ("perdim-2+1bit (high)", 2, 1))
    )
    for name, nb, nb2 in baselines:
        bits = np.full(R.shape[1], nb)
        Rh = quantise_components(R, Rs, bits, uniform=False)
        Rh *= ls_scale(R, Rh)[:, None]
        if nb2:
            E = R - Rh
            Es = E[::step]
            Eh = quantise_components(E, Es, np.full(R.shape[1], nb2), uniform=False)
            Eh *= ls_scale(E, Eh)[:, None]
            Rh += Eh
        Rh += anchor
        report(name, Rh, {"bytes": R.shape[1] * (nb + nb2) // 8})
        del Rh
    # Transform coding: PCA of the residuals, in the space where |e|^2 is the error measure
    # (e' M e: R -> R L with L = M^(1/2); back with L^-1).
    if a.metric == "plain":
        L = Li = np.eye(R.shape[1], dtype=np.float32)
    else:
        S = Xf[::step] if a.metric == "docs" else Q[: qo[nq]]
        mw, mv = np.linalg.eigh((S.T @ S) / len(S))
        mw = np.maximum(mw, mw.max() * 1e-4)
        L = ((mv * np.sqrt(mw)) @ mv.T).astype(np.float32)
        Li = ((mv / np.sqrt(mw)) @ mv.T).astype(np.float32)
    R = R @ L
    Rs = R[::step]
    cov = (Rs.T @ Rs) / len(Rs)
    w, P = np.linalg.eigh(cov)
    order = np.argsort(-w)
    w, P = w[order], P[:, order]
    print(
        "residual variance: total %.4f; share in first 32/64/128/192 comps %.3f/%.3f/%.3f/%.3f"
        % ((w.sum(),) + tuple(w[:n].sum() / w.sum() for n in (32, 64, 128, 192))),
        file=sys.stderr,
    )
    Z = R @ P
    del R, Rs
    Zs = Z[::step]
    for budget in [int(v) for v in a.budgets.split(",")]:
        allowed = (
            [int(v) for v in a.allowed_bits.split(",")]
            if a.allowed_bits
            else list(range(a.max_bits + 1))
        )
        bits = allocate(w.copy(), budget * 8, allowed)
        hist = {int(b): int((bits == b).sum()) for b in np.unique(bits)}
        for uniform in (False,):
            Zh = quantise_components(Z, Zs, bits, uniform)
            Zh *= ls_scale(Z, Zh)[:, None]
            q_name = "uniform" if uniform else "lloyd-max"
            rates = ",".join(str(v) for v in allowed)
            name = f"pca+waterfill {budget} B ({q_name}, {a.metric}, {a.anchor}, bits {rates})"
            Xh = Zh @ (P.T @ Li)
            del Zh
            Xh += anchor
            report(name, Xh, {"bytes": budget, "bits_hist": hist})
            del Xh
    print(f"done ({time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
