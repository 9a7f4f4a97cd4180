"""The scale benchmark's document generator (benches/scale_gen.py), on small synthetic pools:
seeded determinism, a document the same alone as in any batch, shapes and lengths from the
length distribution, unit-norm finite float32 rows, the token budget, and that its documents
compete with the "SciFact" pool for queries drawn from it, where the old distractor recipe
(benches/make_distractors.py: tokens of two background documents, noise 0.3) does not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
import scale_gen  # noqa: E402

DIM = 48


def clustered(
    rng: np.random.Generator, n_docs: int, n_topics: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unit token vectors of `n_docs` documents, each around one of `n_topics` topic centres
    (like real documents: a document's tokens share a topic), float16, with offsets."""
    centres = rng.standard_normal((n_topics, DIM))
    lens = rng.integers(3, 30, n_docs)
    lens[::7] = 0 if n_docs > 7 else lens[::7]  # a few empty documents, as corpora have
    vecs = []
    for n in lens:
        c = centres[rng.integers(n_topics)]
        v = c + 0.6 * rng.standard_normal((n, DIM))
        vecs.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return np.concatenate(vecs).astype(np.float16), off


@pytest.fixture(scope="module")
def pools() -> scale_gen.Pools:
    rng = np.random.default_rng(11)
    sv, so = clustered(rng, 120, 6)  # ~20 documents per topic, so a query has 10 on topic
    bv, bo = clustered(rng, 80, 10)  # the background: other topics
    return scale_gen.make_pools(sv, so, bv, bo)


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    return float((q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum())


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_deterministic_and_batch_independent(pools: scale_gen.Pools, seed: int) -> None:
    g = scale_gen.Generator(pools, seed)
    v, off = g.batch(0, 37)
    v2, off2 = scale_gen.Generator(pools, seed).batch(0, 37)
    assert np.array_equal(v, v2) and np.array_equal(off, off2)
    other, _ = scale_gen.Generator(pools, seed + 1).batch(0, 37)
    assert other.shape != v.shape or not np.array_equal(other, v)
    # A document is the same alone and inside batches that start elsewhere.
    for a, b in [(5, 9), (30, 37), (36, 37)]:
        vb, ob = g.batch(a, b)
        assert np.array_equal(vb, v[off[a] : off[b]])
        assert np.array_equal(ob, off[a : b + 1] - off[a])
    for d in (0, 17, 36):
        assert np.array_equal(g.doc(d), v[off[d] : off[d + 1]])


def test_shapes_norms_lengths(pools: scale_gen.Pools) -> None:
    g = scale_gen.Generator(pools, 3)
    v, off = g.batch(10, 210)
    assert v.dtype == np.float32 and v.shape == (off[-1], DIM)
    assert off.dtype == np.int64 and off.shape == (201,) and off[0] == 0
    lens = np.diff(off)
    assert np.all(lens >= 1)
    assert set(lens.tolist()) <= set(pools.sci_lengths.tolist())
    assert np.array_equal(lens, g.lengths(10, 210))
    assert np.all(np.isfinite(v))
    norms = np.linalg.norm(v.astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert g.batch(5, 5)[0].shape == (0, DIM)


@pytest.mark.parametrize("budget", [1, 29, 1000, 2_000_000])
def test_token_budget(pools: scale_gen.Pools, budget: int) -> None:
    g = scale_gen.Generator(pools, 0)
    n = g.n_docs_for(budget)  # 2M tokens spans more than one length block
    assert int(g.lengths(0, n).sum()) >= budget > int(g.lengths(0, n - 1).sum())
    assert g.n_docs_for(0) == 0


def test_pool_validation() -> None:
    v = np.ones((4, DIM), np.float16)
    with pytest.raises(ValueError, match="offsets"):
        scale_gen.make_pools(v, [0, 2, 5], v, [0, 4])
    with pytest.raises(ValueError, match="dim"):
        scale_gen.make_pools(v, [0, 4], np.ones((4, 8)), [0, 4])


def old_distractors(pools: scale_gen.Pools, n: int, seed: int) -> list[np.ndarray]:
    """make_distractors.py's recipe: tokens of two background documents, noise of norm 0.3."""
    rng = np.random.default_rng(seed)
    p, out = pools, []
    bg = [j for j in range(p.n_sci, len(p.offsets) - 1) if p.offsets[j + 1] > p.offsets[j]]
    for _ in range(n):
        s1, s2 = rng.choice(bg, 2)
        cand = np.concatenate(
            [
                np.arange(p.offsets[s1], p.offsets[s1 + 1]),
                np.arange(p.offsets[s2], p.offsets[s2 + 1]),
            ]
        )
        x = p.vectors[rng.choice(cand, rng.choice(p.sci_lengths))].astype(np.float64)
        x += rng.normal(0, 0.3 / np.sqrt(DIM), x.shape)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


def test_generated_documents_compete(pools: scale_gen.Pools) -> None:
    """Queries are noisy subsets of SciFact documents; generated documents take some of the
    exact top-10 slots over SciFact + them, the old distractors take (almost) none."""
    rng = np.random.default_rng(5)
    p = pools
    sci = [p.vectors[p.offsets[j] : p.offsets[j + 1]] for j in range(p.n_sci)]
    full = [j for j in range(p.n_sci) if len(sci[j]) >= 4]
    queries = []
    for j in rng.choice(full, 30, replace=False):
        q = sci[j][rng.choice(len(sci[j]), 4, replace=False)].astype(np.float64)
        q += 0.5 * rng.standard_normal(q.shape) / np.sqrt(DIM)
        queries.append(q / np.linalg.norm(q, axis=1, keepdims=True))
    g = scale_gen.Generator(p, 0, p_topical=1.0)  # every document topical
    v, off = g.batch(0, 600)
    gen = [v[off[i] : off[i + 1]] for i in range(600)]
    old = old_distractors(p, 600, 0)

    def share(extra: list[np.ndarray]) -> float:
        docs = [d for d in sci if len(d)] + extra
        off = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
        packed = np.concatenate(docs).astype(np.float64)
        taken = 0
        for q in queries:
            scores = np.maximum.reduceat(q @ packed.T, off[:-1], axis=1).sum(axis=0)
            top = np.argsort(-scores, kind="stable")[:10]
            taken += int(np.sum(top >= len(docs) - len(extra)))
        return taken / (10 * len(queries))

    new_share, old_share = share(gen), share(old)
    print(f"shares: generated {new_share:.3f}, old distractors {old_share:.3f}")
    assert new_share >= 0.1, new_share
    assert old_share < new_share / 3, (old_share, new_share)


@pytest.mark.parametrize("p_topical", [0.0, 0.05, 0.5])
def test_topical_share(pools: scale_gen.Pools, p_topical: float) -> None:
    """The share of topical documents (primary from SciFact) is p_topical; off-topic ones are
    made of background tokens only, topical ones mostly of their primary's."""
    g = scale_gen.Generator(pools, 9, p_topical=p_topical)
    n = 4000
    recipes = [g.describe(i) for i in range(n)]
    topical = np.array([a < pools.n_sci for a, _, _, _ in recipes])
    assert abs(topical.mean() - p_topical) <= 4 * np.sqrt(p_topical * (1 - p_topical) / n) + 1e-9
    for a, b, f, s in recipes[:200]:
        assert (a < pools.n_sci) or (b >= pools.n_sci)
        assert scale_gen.F_LOW <= f <= 1.0 and s in scale_gen.NOISE_LEVELS
    with pytest.raises(ValueError, match="p_topical"):
        scale_gen.Generator(pools, 0, p_topical=1.5)


@pytest.mark.parametrize("kernel", ["latix", "numpy"])
@pytest.mark.parametrize(
    ("n_q", "k", "batch", "seed"), [(1, 1, 7, 0), (5, 10, 50, 1), (9, 20, 1000, 2)]
)
def test_exact_reference_topk(
    pools: scale_gen.Pools,
    monkeypatch: pytest.MonkeyPatch,
    kernel: str,
    n_q: int,
    k: int,
    batch: int,
    seed: int,
) -> None:
    """bench_scale's exact top k (either kernel, batches of several sizes) against a float64
    brute force over the same corpus: the scores of the returned ids are theirs, in order, and
    nothing left out scores above the k-th (ties within rounding may go either way)."""
    import bench_scale

    monkeypatch.setattr(bench_scale, "EXACT_BATCH", batch)
    rng = np.random.default_rng(seed)
    sci_tokens = int(pools.offsets[pools.n_sci])
    corpus = bench_scale.Corpus(pools, seed, sci_tokens + 3000, 100)
    sci_ids = [f"sci-{j}" for j in range(pools.n_sci)]
    qs = []
    for _ in range(n_q):
        q = rng.standard_normal((int(rng.integers(1, 9)), DIM))
        qs.append((q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    ids, scores = bench_scale.exact_topk(
        corpus, sci_ids, qs, k, bench_scale.Lock(None), kernel=kernel
    )
    p = pools
    docs = {sci_ids[j]: p.vectors[p.offsets[j] : p.offsets[j + 1]] for j in corpus.sci}
    docs.update({f"gen-{g}": corpus.gen.doc(g) for g in range(corpus.n_gen)})
    assert corpus.n_gen > batch or batch == 1000  # several generated batches in most cases
    for q, got, got_s in zip(qs, ids, scores, strict=True):
        want = {d: maxsim(q, x) for d, x in docs.items()}
        assert len(got) == len(set(got)) == k
        assert np.allclose(got_s, [want[d] for d in got], atol=1e-4)
        assert all(np.diff(got_s) <= 1e-6)
        kth = sorted(want.values(), reverse=True)[k - 1]
        assert min(got_s) >= kth - 1e-4


def test_fits_only_over_the_newest_code() -> None:
    """bench_scale's growth exponents use only the sizes measured with the newest size's latix
    code: a size of another (here unknown) commit is left out and named; with one size of the
    newest code, no exponent."""
    import bench_scale

    rng = np.random.default_rng(3)
    a, b = "a" * 40, "b" * 40

    def row(n: float, commit: str, date: str, p50: float) -> dict[str, object]:
        r: dict[str, object] = {k: float(rng.uniform(1, 9)) for k in ("peak_rss_mb", "p50_2t_ms")}
        r.update(size=f"{n / 1e6:g}M", n_tokens=int(n), p50_1t_ms=p50, build_s=3 * n / 1e6)
        r.update(bytes_per_token=30.0, add_piece_docs=500)
        r["provenance"] = [f"- commit: {commit}", f"- date: 2026-12-0{date} UTC; load 1"]
        return r

    sizes = {
        "2M": row(2e6, b, "1 10:00", 99.0),  # older code, off the curve
        "5M": row(5e6, a, "2 10:00", 5e6**0.25),
        "30M": row(3e7, a, "2 12:00", 3e7**0.25),
        "100M": row(1e8, a, "2 11:00", 1e8**0.25),
    }
    f = bench_scale.fits(sizes)
    assert f["same_code"] == ["5M", "30M", "100M"] and f["other_code"] == ["2M"]
    assert abs(f["p50_1t_ms"]["exponent"] - 0.25) < 1e-9
    assert abs(f["build_s"]["exponent"] - 1.0) < 1e-9
    assert abs(f["build_s"]["at_100m"] - 300.0) < 1e-6
    # Uncommitted changes outside latix's code leave a size's code its commit's; inside, unknown.
    sizes["5M"]["provenance"][0] = f"- commit: {a} + uncommitted changes to bench-results/x.md"
    sizes["100M"]["provenance"][0] = f"- commit: {a} + uncommitted changes to a.md, rust/x.rs"
    f = bench_scale.fits(sizes)
    assert f["same_code"] == ["5M", "30M"] and f["other_code"] == ["2M", "100M"]
    sizes["2M"]["provenance"] = [f"- commit: {b}", "- date: 2026-12-03 09:00 UTC"]  # newest
    f = bench_scale.fits(sizes)
    assert f["same_code"] == ["2M"] and "p50_1t_ms" not in f and "build_s" not in f
