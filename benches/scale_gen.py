"""Seeded generator of competing documents for the scale benchmark (benches/bench_scale.py).

The distractors of benches/make_distractors.py are Vaswani (physics) abstracts re-noised: they
never enter exact search's top 10 of a SciFact query, so they test latency at scale but not
ranking. The documents made here are built from SciFact's own token vectors, so that some of
them score like SciFact's best documents and take exact top-10 slots, as near-duplicates and
topical neighbours do in a real collection.

Recipe, per generated document ``g`` (everything but its length drawn from its own seeded
stream ``numpy.random.default_rng([seed, 1, g])``, so a document is the same whatever batch it
is generated in, and any one can be regenerated alone):

1. Length: SciFact's document-length distribution (lengths drawn in fixed blocks of
   ``LENGTH_BLOCK`` from ``default_rng([seed, 0, block])``, so the document count of a token
   budget is known before anything is generated).
2. With probability ``p_topical`` (default ``P_TOPICAL``) the document is *topical*: a primary
   SciFact document ``A`` (uniform; the generator knows nothing of the queries) and a background
   document ``B``, another SciFact document (a topical neighbour) with probability
   ``P_SCIFACT_BACKGROUND``, else a Vaswani document (off-topic text of the same model).
   Otherwise it is *off-topic*, like benches/make_distractors.py's: ``A`` and ``B`` are two
   Vaswani documents. (Measured on 50 SciFact test queries: a topical document beats a query's
   10th-best SciFact score with probability ~5e-4, an off-topic one ~never; so ``p_topical``
   sets how fast the generated share of the exact top 10 grows with the corpus; projected from
   6,000 generated documents, at 0.1: about 12 % at 10M tokens, 35 % at 30M, 55 % at 100M.)
3. A share ``f`` of the tokens, uniform in ``[F_LOW, 1]``, are drawn (with replacement) from
   ``A``'s token vectors, the rest from ``B``'s.
4. Every token gets Gaussian noise of norm ~``s``, one of ``NOISE_LEVELS`` per document
   (uniform), and is re-normalised to unit length (float32 out). The noise is a randomly
   signed row of a seeded table of ``NOISE_ROWS`` Gaussian vectors (``N(0, I / dim)``), which
   costs a gather instead of ``dim`` normal draws per token (drawing them is what makes 30M+
   tokens slow).

A topical document competes for a query when its primary is one of that query's best SciFact
documents (more often at low noise); the more documents, the more such near-duplicates, so the
share of exact top-10 slots they take grows with the corpus (measured per size by
bench_scale.py). It never shrinks: a larger corpus holds every generated document of a smaller
one (documents ``0..n`` are the same whatever the size). Nothing of the generated corpus is
stored: batches are produced on the fly from the pools (SciFact's and a seeded sample of
Vaswani's cached encodings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

#: Generated document lengths are drawn in blocks of this many documents.
LENGTH_BLOCK = 1 << 16
#: Rows of the seeded noise table.
NOISE_ROWS = 4096
#: Noise norms; each document draws one.
NOISE_LEVELS = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
#: Lowest share of a document's tokens drawn from its primary SciFact document.
F_LOW = 0.2
#: Share of topical (SciFact-based) generated documents; the rest are off-topic (Vaswani).
P_TOPICAL = 0.1
#: Probability that the background document is another SciFact document (else Vaswani).
P_SCIFACT_BACKGROUND = 0.5
#: Vaswani documents sampled into the background pool.
N_VASWANI = 3000

F16 = npt.NDArray[np.float16]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Pools:
    """The real token vectors generated documents are made of, in memory.

    Attributes:
        vectors: float16 ``(n_tokens, dim)``, SciFact's documents then the Vaswani sample's.
        offsets: int64 ``(n_sci + n_bg + 1,)``: document ``i`` of the pool owns rows
            ``offsets[i]:offsets[i + 1]``; the first ``n_sci`` are SciFact's, in corpus order.
        n_sci: number of SciFact documents.
        sci_lengths: int64 ``(n,)`` token counts of SciFact's non-empty documents (the length
            distribution generated documents follow).
        primaries: int64, pool indices of SciFact's non-empty documents.
        backgrounds: int64, pool indices of the background's non-empty documents.
    """

    vectors: F16
    offsets: I64
    n_sci: int
    sci_lengths: I64
    primaries: I64
    backgrounds: I64

    @property
    def n_bg(self) -> int:
        """Number of background (Vaswani) documents."""
        return len(self.offsets) - 1 - self.n_sci

    @property
    def dim(self) -> int:
        """Dimension of the token vectors."""
        return int(self.vectors.shape[1])


def make_pools(
    sci_vectors: npt.ArrayLike,
    sci_offsets: npt.ArrayLike,
    bg_vectors: npt.ArrayLike,
    bg_offsets: npt.ArrayLike,
) -> Pools:
    """Pools from SciFact's and the background's packed token vectors (copied into memory)."""
    sv, so = np.asarray(sci_vectors, np.float16), np.asarray(sci_offsets, np.int64)
    bv, bo = np.asarray(bg_vectors, np.float16), np.asarray(bg_offsets, np.int64)
    if sv.ndim != 2 or bv.ndim != 2 or sv.shape[1] != bv.shape[1]:
        raise ValueError(f"pool vectors must be 2-D of one dim: {sv.shape}, {bv.shape}")
    for name, v, o in (("SciFact", sv, so), ("background", bv, bo)):
        if o.ndim != 1 or len(o) < 2 or o[0] != 0 or o[-1] != len(v) or np.any(np.diff(o) < 0):
            raise ValueError(f"{name} offsets do not describe its {len(v)} vectors")
    lengths = np.diff(so)
    full = np.nonzero(lengths > 0)[0].astype(np.int64)
    bg_full = np.nonzero(np.diff(bo) > 0)[0].astype(np.int64) + len(so) - 1
    if len(full) < 2 or len(bg_full) < 1:
        raise ValueError("the pools need two non-empty SciFact documents and one background one")
    return Pools(
        vectors=np.concatenate([sv, bv]),
        offsets=np.concatenate([so, bo[1:] + so[-1]]).astype(np.int64),
        n_sci=len(so) - 1,
        sci_lengths=lengths[full],
        primaries=full,
        backgrounds=bg_full,
    )


def load_pools(
    data: str, source: str, seed: int, vaswani: Path | None = None, identify: bool = True
) -> tuple[Pools, dict[str, str]]:
    """Pools from the cached encodings: SciFact from ``<data>/scifact`` (written by
    benches/prepare_bench_data.py) and a seeded sample of ``N_VASWANI`` Vaswani documents from
    latix's embedding cache (the entry benches/make_distractors.py made from
    ``<source>/vaswani/doc-text.trec``). Never encodes: a
    missing Vaswani entry is an error (``vaswani``: that entry's directory, if already known).
    Also returns what identifies the pools' inputs (checksums of the files read, for the exact
    reference's cache key; empty unless ``identify``)."""
    from checksums import file_digest

    sci = Path(data) / "scifact"
    vas = vaswani_entry(Path(source)) if vaswani is None else vaswani
    svec = np.load(sci / "docs_vectors.npy")  # read into memory, not mapped
    soff = np.load(sci / "doc_offsets.npy")
    pools = sampled_pools(
        svec, soff, np.load(vas / "vectors.npy", mmap_mode="r"), np.load(vas / "offsets.npy"), seed
    )
    if not identify:
        return pools, {}
    ident = {
        "scifact/docs_vectors.npy": file_digest(str(sci / "docs_vectors.npy")),
        "scifact/doc_offsets.npy": file_digest(str(sci / "doc_offsets.npy")),
        "vaswani/vectors.npy": file_digest(str(vas / "vectors.npy")),
        "vaswani/offsets.npy": file_digest(str(vas / "offsets.npy")),
    }
    return pools, ident


def sampled_pools(
    sci_vectors: npt.ArrayLike,
    sci_offsets: npt.ArrayLike,
    vas_vectors: npt.NDArray[np.float16],
    vas_offsets: I64,
    seed: int,
) -> Pools:
    """Pools of every SciFact document and a seeded sample of ``N_VASWANI`` Vaswani ones."""
    rng = np.random.default_rng([seed, 2])
    n = len(vas_offsets) - 1
    pick = np.sort(rng.choice(n, min(N_VASWANI, n), replace=False))
    rows = np.concatenate([np.arange(vas_offsets[i], vas_offsets[i + 1]) for i in pick])
    lens = vas_offsets[pick + 1] - vas_offsets[pick]
    boff = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return make_pools(sci_vectors, sci_offsets, np.asarray(vas_vectors[rows]), boff)


def vaswani_entry(source: Path) -> Path:
    """The embedding-cache directory of the Vaswani documents under the default model (the
    cache key is computed from the texts; nothing is encoded)."""
    from latix.corpus import read_corpus
    from latix.encoder import Encoder
    from latix.eval import EmbeddingCache

    docs = list(read_corpus(source / "vaswani" / "doc-text.trec"))
    entry = EmbeddingCache().entry_dir(
        Encoder.default(n_threads=1), "document", [d.id for d in docs], [d.text for d in docs]
    )
    if not (entry / "offsets.npy").is_file():
        raise SystemExit(
            f"{entry}: no cached Vaswani encodings; run benches/make_distractors.py once "
            "(it encodes them into latix's embedding cache)"
        )
    return entry


class Generator:
    """Seeded competing documents from :class:`Pools` (see the module's recipe).

    Args:
        pools: the token vectors documents are made of.
        seed: the corpus's seed; the same seed and pools give the same documents.
        p_topical: share of topical documents (0 to 1).
    """

    def __init__(self, pools: Pools, seed: int, p_topical: float = P_TOPICAL) -> None:
        if not 0.0 <= p_topical <= 1.0:
            raise ValueError(f"p_topical must be in [0, 1], got {p_topical}")
        self.pools = pools
        self.seed = int(seed)
        self.p_topical = float(p_topical)
        t = np.random.default_rng([self.seed, 3]).standard_normal((NOISE_ROWS, pools.dim))
        self._noise = (t / np.sqrt(pools.dim)).astype(np.float32)
        self._lengths: dict[int, I64] = {}

    def params(self) -> dict[str, object]:
        """The recipe's constants and seed (part of every cache key of a generated corpus)."""
        return {
            "seed": self.seed,
            "length_block": LENGTH_BLOCK,
            "noise_rows": NOISE_ROWS,
            "noise_levels": list(NOISE_LEVELS),
            "f_low": F_LOW,
            "p_topical": self.p_topical,
            "p_scifact_background": P_SCIFACT_BACKGROUND,
            "n_vaswani": N_VASWANI,
            "format": 1,
        }

    def _block(self, b: int) -> I64:
        if b not in self._lengths:
            rng = np.random.default_rng([self.seed, 0, b])
            self._lengths[b] = rng.choice(self.pools.sci_lengths, LENGTH_BLOCK).astype(np.int64)
        return self._lengths[b]

    def lengths(self, g0: int, g1: int) -> I64:
        """Token counts of generated documents ``g0:g1``."""
        if g1 <= g0:
            return np.zeros(0, np.int64)
        blocks = range(g0 // LENGTH_BLOCK, (g1 - 1) // LENGTH_BLOCK + 1)
        cat = np.concatenate([self._block(b) for b in blocks])
        start = g0 - blocks[0] * LENGTH_BLOCK
        return cat[start : start + g1 - g0]

    def n_docs_for(self, n_tokens: int) -> int:
        """Fewest generated documents holding at least ``n_tokens`` tokens (0 for <= 0)."""
        n, total = 0, 0
        while total < n_tokens:
            lens = self._block(n // LENGTH_BLOCK)
            cum = total + np.cumsum(lens)
            hit = int(np.searchsorted(cum, n_tokens))
            if hit < len(lens):
                return n + hit + 1
            n, total = n + len(lens), int(cum[-1])
        return n

    def describe(self, g: int) -> tuple[int, int, float, float]:
        """Document ``g``'s recipe: (primary pool document, background pool document, share of
        tokens from the primary, noise norm); topical iff the primary is a SciFact document
        (pool index below ``pools.n_sci``)."""
        return self._plan(g, 1)[:4]  # the recipe does not depend on the length

    def _plan(self, g: int, length: int) -> tuple[int, int, float, float, I64, I64]:
        """Document ``g``'s recipe, pool rows ``(length,)`` and signed noise-table rows."""
        p = self.pools
        rng = np.random.default_rng([self.seed, 1, g])
        u = rng.random(5)
        n_p, n_b = len(p.primaries), len(p.backgrounds)
        if u[4] < self.p_topical:
            ai = int(u[0] * n_p)
            a = int(p.primaries[ai])
            if u[1] < P_SCIFACT_BACKGROUND:
                bi = int(u[1] / P_SCIFACT_BACKGROUND * (n_p - 1))
                b = int(p.primaries[bi + (bi >= ai)])  # another SciFact document
            else:
                frac = (u[1] - P_SCIFACT_BACKGROUND) / (1 - P_SCIFACT_BACKGROUND)
                b = int(p.backgrounds[int(frac * n_b)])
        else:  # off-topic: two background documents
            a, b = int(p.backgrounds[int(u[0] * n_b)]), int(p.backgrounds[int(u[1] * n_b)])
        f = F_LOW + (1.0 - F_LOW) * float(u[2])
        s = float(NOISE_LEVELS[int(u[3] * len(NOISE_LEVELS))])
        n_a = max(1, min(length, round(f * length)))
        pos = rng.random(length)
        la, lb = p.offsets[a + 1] - p.offsets[a], p.offsets[b + 1] - p.offsets[b]
        rows = np.empty(length, np.int64)
        rows[:n_a] = p.offsets[a] + (pos[:n_a] * la).astype(np.int64)
        rows[n_a:] = p.offsets[b] + (pos[n_a:] * lb).astype(np.int64)
        # Noise: row r >> 1 of the table, negated when r is odd.
        noise = rng.integers(0, 2 * NOISE_ROWS, length)
        return a, b, f, s, rows, noise

    def batch(self, g0: int, g1: int) -> tuple[F32, I64]:
        """Generated documents ``g0:g1``, packed.

        Returns:
            (vectors float32 ``(n_tokens, dim)``, unit rows; offsets int64 ``(g1 - g0 + 1,)``).
        """
        lens = self.lengths(g0, g1)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        if g1 <= g0:
            return np.zeros((0, self.pools.dim), np.float32), offsets
        plans = [self._plan(g, int(n)) for g, n in zip(range(g0, g1), lens, strict=True)]
        rows = np.concatenate([p[4] for p in plans])
        r = np.concatenate([p[5] for p in plans])
        coef = np.repeat(np.array([p[3] for p in plans], np.float32), lens)
        coef[(r & 1) == 1] *= -1.0
        v = self.pools.vectors[rows].astype(np.float32)
        noise = self._noise[r >> 1]
        noise *= coef[:, None]
        v += noise
        del noise
        v *= (1.0 / np.sqrt(np.einsum("ij,ij->i", v, v)))[:, None]
        return v, offsets

    def doc(self, g: int) -> F32:
        """Generated document ``g`` alone (the same vectors as in any batch holding it)."""
        return self.batch(g, g + 1)[0]


def ids_of(g0: int, g1: int) -> list[str]:
    """Ids of generated documents ``g0:g1``."""
    return [f"gen-{g}" for g in range(g0, g1)]


def key_of(params: dict[str, object], ident: dict[str, str]) -> str:
    """One string identifying a generator (its parameters and its pools' inputs)."""
    return json.dumps({"params": params, "inputs": ident}, sort_keys=True)


# --- ColPali-shaped pages (issue 18: the visual-retrieval case) -------------------------------

#: Patch vectors per page (ColPali: 32 x 32 image patches + 6 instruction tokens).
PAGE_TOKENS = 1030
#: Dimension of a page's patch vectors (ColPali's projection).
PAGE_DIM = 128
#: Global topics pages draw their regions from.
PAGE_TOPICS = 2048
#: Near-blank patch directions (margins, white space) shared by every page.
PAGE_BLANKS = 16
#: Regions (page-specific clusters of patches) per page: uniform in this range.
PAGE_REGIONS = (4, 12)
#: Norm of a region centre's offset from its topic (what makes a page's regions its own).
REGION_SPREAD = 0.35
#: Patch noise norms (one per page) and the noise of blank patches.
PAGE_NOISE_LEVELS = (0.2, 0.3, 0.45)
BLANK_NOISE = 0.1
#: Share of a page's patches that are blank: uniform in this range.
BLANK_SHARE = (0.2, 0.6)
#: Tokens of a query, and the noise norm of each (a text query only nears a page's patches).
QUERY_TOKENS = 20
QUERY_NOISE = 0.6


def _unit_rows(x: F32) -> F32:
    x *= (1.0 / np.sqrt(np.einsum("ij,ij->i", x, x)))[:, None]
    return x


class PageGenerator:
    """Seeded synthetic ColPali-shaped pages: ``PAGE_TOKENS`` unit patch vectors of ``PAGE_DIM``
    dimensions per page, clustered as a page's patches are, and queries aimed at pages.

    Recipe, per page ``p`` (drawn from its own stream ``default_rng([seed, 11, p])``, so a page is
    the same in any batch and can be regenerated alone): 4-12 *regions*, each a page-specific
    centre ``REGION_SPREAD`` away from one of ``PAGE_TOPICS`` seeded global topic directions
    (topics drawn with a mild skew, ``floor(PAGE_TOPICS * u**2)``: some subjects are common); a
    blank share of the patches (20-60 %) near one of ``PAGE_BLANKS`` shared blank directions; the
    other patches near a region's centre (uniform over the regions); every patch gets noise of one
    of ``PAGE_NOISE_LEVELS`` (``BLANK_NOISE`` for blank ones: a randomly signed row of a seeded
    Gaussian table, a gather rather than fresh draws) and is re-normalised. Query ``i``
    (``default_rng([seed, 12, i])``) aims at a page ``< target_pages``: ``QUERY_TOKENS`` tokens,
    each a region centre of that page plus noise ``QUERY_NOISE`` (its target ranks first, pages
    sharing its topics compete for the rest of the top 10). Nothing is stored: pages are made on
    the fly in batches.

    Args:
        seed: the collection's seed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        d = PAGE_DIM
        rng = np.random.default_rng([self.seed, 10])
        self._topics = _unit_rows(rng.standard_normal((PAGE_TOPICS, d)).astype(np.float32))
        self._blanks = _unit_rows(rng.standard_normal((PAGE_BLANKS, d)).astype(np.float32))
        t = np.random.default_rng([self.seed, 13]).standard_normal((NOISE_ROWS, d))
        self._noise = (t / np.sqrt(d)).astype(np.float32)

    def params(self) -> dict[str, object]:
        """The recipe's constants and seed (part of every cache key of a generated collection)."""
        return {
            "seed": self.seed,
            "page_tokens": PAGE_TOKENS,
            "dim": PAGE_DIM,
            "topics": PAGE_TOPICS,
            "blanks": PAGE_BLANKS,
            "regions": list(PAGE_REGIONS),
            "region_spread": REGION_SPREAD,
            "noise_levels": list(PAGE_NOISE_LEVELS),
            "blank_noise": BLANK_NOISE,
            "blank_share": list(BLANK_SHARE),
            "noise_rows": NOISE_ROWS,
            "query_tokens": QUERY_TOKENS,
            "query_noise": QUERY_NOISE,
            "format": 1,
        }

    def _regions(self, rng: np.random.Generator) -> F32:
        """A page's region centres (the first draws of its stream)."""
        n = int(rng.integers(PAGE_REGIONS[0], PAGE_REGIONS[1] + 1))
        topics = (PAGE_TOPICS * rng.random(n) ** 2).astype(np.int64)
        off = rng.standard_normal((n, PAGE_DIM)).astype(np.float32)
        off *= REGION_SPREAD / np.sqrt(PAGE_DIM)
        return _unit_rows(self._topics[topics] + off)

    def _plan(self, p: int) -> tuple[F32, I64, I64, F32]:
        """Page ``p``: its region centres, each patch's centre row (regions first, then
        ``-1 - blank``), signed noise rows and noise norms."""
        rng = np.random.default_rng([self.seed, 11, p])
        regions = self._regions(rng)
        u = rng.random(3)
        blank_share = BLANK_SHARE[0] + (BLANK_SHARE[1] - BLANK_SHARE[0]) * float(u[0])
        blank = int(u[1] * PAGE_BLANKS)
        level = float(PAGE_NOISE_LEVELS[int(u[2] * len(PAGE_NOISE_LEVELS))])
        is_blank = rng.random(PAGE_TOKENS) < blank_share
        which = rng.integers(0, len(regions), PAGE_TOKENS)
        which[is_blank] = -1 - blank
        noise = rng.integers(0, 2 * NOISE_ROWS, PAGE_TOKENS)
        norm = np.where(is_blank, np.float32(BLANK_NOISE), np.float32(level)).astype(np.float32)
        return regions, which, noise, norm

    def _make(self, plans: list[tuple[F32, I64, I64, F32]]) -> F32:
        starts = np.cumsum([0] + [len(pl[0]) for pl in plans[:-1]])
        table = np.concatenate([self._blanks] + [pl[0] for pl in plans])
        rows = np.concatenate(
            [
                np.where(pl[1] >= 0, pl[1] + PAGE_BLANKS + s, -1 - pl[1])
                for pl, s in zip(plans, starts, strict=True)
            ]
        )
        r = np.concatenate([pl[2] for pl in plans])
        coef = np.concatenate([pl[3] for pl in plans])
        coef[(r & 1) == 1] *= -1.0
        v = table[rows]
        noise = self._noise[r >> 1]
        noise *= coef[:, None]
        v += noise
        del noise
        return _unit_rows(v)

    def batch(self, p0: int, p1: int) -> F32:
        """Pages ``p0:p1``: float32 ``(p1 - p0, PAGE_TOKENS, PAGE_DIM)``, unit rows."""
        if p1 <= p0:
            return np.zeros((0, PAGE_TOKENS, PAGE_DIM), np.float32)
        v = self._make([self._plan(p) for p in range(p0, p1)])
        return v.reshape(p1 - p0, PAGE_TOKENS, PAGE_DIM)

    def page(self, p: int) -> F32:
        """Page ``p`` alone, ``(PAGE_TOKENS, PAGE_DIM)`` (the same vectors as in any batch)."""
        return self.batch(p, p + 1)[0]

    def query(self, i: int, target_pages: int) -> tuple[int, F32]:
        """Query ``i``: (its target page, below ``target_pages``; float32 ``(QUERY_TOKENS,
        PAGE_DIM)`` unit rows)."""
        rng = np.random.default_rng([self.seed, 12, i])
        target = int(rng.integers(0, target_pages))
        regions = self._regions(np.random.default_rng([self.seed, 11, target]))
        which = rng.integers(0, len(regions), QUERY_TOKENS)
        noise = rng.standard_normal((QUERY_TOKENS, PAGE_DIM)).astype(np.float32)
        noise *= QUERY_NOISE / np.sqrt(PAGE_DIM)
        return target, _unit_rows(regions[which] + noise)


def page_ids(p0: int, p1: int) -> list[str]:
    """Ids of pages ``p0:p1``."""
    return [f"page-{p}" for p in range(p0, p1)]
