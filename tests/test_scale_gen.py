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


@pytest.mark.parametrize("seed", [0, 5])
def test_pages_deterministic_batch_independent_unit_rows(seed: int) -> None:
    """ColPali-shaped pages: the same page alone as in any batch, shape (pages, 1,030, 128),
    finite unit float32 rows, another seed another collection."""
    g = scale_gen.PageGenerator(seed)
    v = g.batch(3, 11)
    assert v.shape == (8, scale_gen.PAGE_TOKENS, scale_gen.PAGE_DIM) and v.dtype == np.float32
    assert np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=2), 1.0, atol=1e-5)
    for p in (3, 7, 10):
        np.testing.assert_array_equal(g.page(p), v[p - 3])
    np.testing.assert_array_equal(scale_gen.PageGenerator(seed).batch(6, 9), v[3:6])
    assert not np.allclose(scale_gen.PageGenerator(seed + 1).page(3), v[0])
    assert g.batch(4, 4).shape == (0, scale_gen.PAGE_TOKENS, scale_gen.PAGE_DIM)
    assert scale_gen.page_ids(2, 4) == ["page-2", "page-3"]


def test_pages_are_clustered_and_queries_find_their_page() -> None:
    """A page's patches cluster (far fewer distinct directions than patches: its regions and
    one blank direction), and a query ranks its target page first by exact MaxSim (float64,
    numpy) among 300 pages, with other pages scoring well below it."""
    g = scale_gen.PageGenerator(2)
    v = g.batch(0, 300).astype(np.float64)
    x = v[0]
    # Mean similarity to the patch's nearest other patch: high for clustered data (about 0.1
    # for random unit vectors in 128 dimensions).
    sim = x @ x.T
    np.fill_diagonal(sim, -1.0)
    assert sim.max(axis=1).mean() > 0.6
    for i in range(12):
        target, q = g.query(i, 300)
        assert 0 <= target < 300 and q.shape == (scale_gen.QUERY_TOKENS, scale_gen.PAGE_DIM)
        np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
        t2, q2 = g.query(i, 300)
        assert t2 == target and np.array_equal(q, q2)
        scores = np.einsum("qd,ptd->pqt", q.astype(np.float64), v).max(axis=2).sum(axis=1)
        order = np.argsort(-scores)
        assert order[0] == target, (i, target, order[:3])
        assert scores[order[1]] < 0.8 * scores[target]


def test_markdown_renders_the_colpali_and_policy_tables() -> None:
    """bench_scale's Markdown holds the ColPali rows (each size, its stages and exponents) and
    the merge policy run when scale.json has them, and neither section otherwise."""
    import bench_scale

    prov = ["- commit: " + "a" * 40, "- date: 2026-12-02 15:00 UTC; load 1"]
    text = {"size": "2M", "n_tokens": 2_000_000, "n_docs": 9, "n_generated_docs": 4}
    text.update(n_centroids=2048, n_segments=2, build_s=10.0, generate_s=1.0, peak_rss_mb=9.0)
    text.update(pools_rss_mb=1.0, bytes_per_token=30.0, ndcg_at_10=0.7, add_piece_docs=500)
    text.update({k: 1.0 for k in ("p50_1t_ms", "p99_1t_ms", "p50_2t_ms", "p99_2t_ms")})
    text.update(recall_at_10_vs_exact=0.9, generated_share_exact_top10=0.1, provenance=prov)
    text.update(sample_ndcg_at_10_exact=0.8, sample_ndcg_at_10=0.8)
    text["load"] = {"build": ["1", "2"], "search": ["1", "2"]}
    saved: dict = {"sizes": {"2M": text}}
    assert "ColPali" not in bench_scale.markdown(saved)
    assert "merge policy:" not in bench_scale.markdown(saved)

    def page_row(n: int, add_cpu: float) -> dict:
        r = {"size": f"{n // 1000}k pages", "n_pages": n, "n_tokens": n * 1030}
        r.update(n_centroids=2048, n_segments=3, build_s=n / 70.0, generate_s=1.0)
        r.update(peak_rss_mb=700.0, bytes_per_token=20.2, recall_at_10_vs_exact=0.5)
        r.update({k: 2.5 for k in ("p50_1t_ms", "p99_1t_ms", "p50_2t_ms", "p99_2t_ms")})
        r.update(target_in_top10=1.0, exact_target_in_top10=1.0, open_ms=0.3, commit_s_max=9.0)
        r.update(add_commit_1000_s=12.0, add_commit_1000_cpu_s=add_cpu, exact_s=100.0)
        r["add_stages"] = {"commit/read+pool": {"wall_s": 8.0, "cpu_s": add_cpu / 2}}
        r.update(load={"build": ["1", "7.5"], "search": ["1", "8.25"]}, provenance=prov)
        return r

    rows = [page_row(10_000, 6.0), page_row(30_000, 6.5)]
    saved["colpali"] = {r["size"]: r for r in rows}
    saved["colpali_fit"] = {"p50_1t_ms": {"exponent": 0.0, "at_100m": 2.5}}
    off = {"search": {"p50_ms": 4.0, "p99_ms": 9.0, "segments": 30, "load": [1, 2, 3]}}
    off.update(commit_median_s=1.0, commit_max_s=2.0, build_load=[1, 2, 3], build={})
    on = {"search": {"p50_ms": 3.0, "p99_ms": 8.0, "segments": 3, "load": [1, 2, 3]}}
    on.update(commit_median_s=1.1, commit_max_s=4.0, build_load=[1, 2, 3])
    on.update(commit_cpu_first_third_median_s=2.0, commit_cpu_last_third_median_s=2.1)
    on["build"] = {"segments_after_commit": [1, 2, 1]}
    codes = {"compact_s": 0.5, "peak_rss_mb": 400.0, "identical": True}
    codes["search"] = {"p50_ms": 2.9, "p99_ms": 7.0, "segments": 1, "load": [1, 2, 3]}
    saved["policy_run"] = {"commits": 30, "commit_tokens": 300_000, "off": off, "on": on}
    saved["policy_run"].update(compact_codes=codes, provenance=prov)
    md = bench_scale.markdown(saved)
    assert "## The merge policy: 30 commits of 300,000 tokens" in md
    assert "| merge policy (default) | 3 | 3.00 / 8.00 | 0.75x | 1.10 / 4.00 | 2.00 / 2.10 |" in md
    assert "| 10,000 | 10,300,000 | 2048 | 3 |" in md and "| 30,000 | 30,900,000 |" in md
    assert "12.00 (6.50)" in md and "| commit/read+pool | 3.00 (8.00) | 3.25 (8.00) |" in md
    assert "p50 latency, 1 thread: exponent **0.00**" in md
