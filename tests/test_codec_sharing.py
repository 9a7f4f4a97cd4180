"""Indexes and collections created with a given codec (``codec=``), and ``latix.train_codec``:
the codec trained from given documents equals the one an index trains on them; an index given
another's codec encodes exactly as that index does (same hits and scores), from its first commit;
recall against an exact numpy MaxSim; every accepted form of codec; bad and damaged codecs fail
before anything is written."""

from __future__ import annotations

from pathlib import Path

import latix
import numpy as np
import pytest
from helpers import DIM, Data, exact_top, reseal
from latix import _core


def cfg(**kw: object) -> latix.Compression:
    base: dict[str, object] = dict(
        bytes_per_token=8,
        n_centroids=32,
        train_min_tokens=2000,
        train_sample_tokens=4000,
        seed=3,
        pool_factor=1,
    )
    base.update(kw)
    return latix.Compression(**base)  # type: ignore[arg-type]


def clustered(rng: np.random.Generator, n: int, dim: int) -> list[np.ndarray]:
    """``n`` documents of 1..30 unit vectors around 16 random centres (some documents empty of
    nothing: every one has a token)."""
    c = rng.standard_normal((16, dim))
    out = []
    for _ in range(n):
        m = int(rng.integers(1, 31))
        x = c[rng.integers(0, 16, m)] + 0.5 * rng.standard_normal((m, dim)) / np.sqrt(dim)
        out.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return out


def filled(path: Path, dim: int, comp: latix.Compression, docs: list[np.ndarray], **kw: object):
    ix = latix.Index.create(path, dim, "float32", compression=comp, **kw)  # type: ignore[arg-type]
    ix.add([f"d{i}" for i in range(len(docs))], docs)
    ix.commit()
    return ix


@pytest.mark.parametrize(
    ("dim", "pool", "bpt", "k"),
    [(32, 1, 4, 16), (48, 2, 6, None), (96, 1, 12, 64), (64, 3, 8, None)],
)
def test_train_codec_equals_the_index_training(
    tmp_path: Path, dim: int, pool: int, bpt: int, k: int | None
) -> None:
    rng = np.random.default_rng(dim + pool)
    docs = clustered(rng, 300, dim)
    comp = cfg(bytes_per_token=bpt, n_centroids=k, pool_factor=pool, train_sample_tokens=1500)
    ix = filled(tmp_path / "a", dim, comp, docs)
    trained = ix.codec_bytes()
    assert trained is not None
    # The same seeded draw, pooling and parameters as the training commit: the same bytes.
    assert latix.train_codec(comp, docs) == trained
    c = _core.compressed.Codec.from_bytes(trained)
    assert (c.dim, c.bytes_per_token) == (dim, bpt)
    # Another seed draws another sample (and seeds k-means differently).
    assert (
        latix.train_codec(
            cfg(
                bytes_per_token=bpt,
                n_centroids=k,
                pool_factor=pool,
                train_sample_tokens=1500,
                seed=4,
            ),
            docs,
        )
        != trained
    )
    ix.close()


@pytest.mark.parametrize(("dim", "pool"), [(32, 1), (64, 2), (96, 1)])
def test_given_codec_encodes_as_its_index(tmp_path: Path, dim: int, pool: int) -> None:
    rng = np.random.default_rng(7 * dim + pool)
    docs = clustered(rng, 250, dim)
    comp = cfg(bytes_per_token=dim // 8, n_centroids=16, pool_factor=pool)
    a = filled(tmp_path / "a", dim, comp, docs)
    assert a.stats()["trained"] is True
    codec = a.codec_bytes()
    assert codec is not None
    # Every accepted form; each index encodes the same documents with the same codec.
    codec_file = next((tmp_path / "a").glob("idx-codec-*"))
    forms: list[object] = [
        codec,
        a,
        codec_file,
        str(codec_file),
        _core.compressed.Codec.from_bytes(codec),
    ]
    queries = [clustered(rng, 1, dim)[0] for _ in range(8)]
    want = [a.search(q, k=10) for q in queries]
    for j, form in enumerate(forms):
        b = filled(tmp_path / f"b{j}", dim, comp, docs, codec=form)
        assert b.codec_bytes() == codec
        for q, (ws, wi) in zip(queries, want, strict=True):
            s, i = b.search(q, k=10)
            assert list(i[0]) == list(wi[0])
            np.testing.assert_array_equal(s, ws)
        b.close()
    a.close()


def test_given_codec_applies_from_the_first_commit(tmp_path: Path) -> None:
    data = Data(11)
    comp = cfg()
    a = latix.Index.create(tmp_path / "a", DIM, compression=comp)
    a.add([f"a{i}" for i in range(200)], data.docs(200))
    a.commit()
    codec = a.codec_bytes()
    assert codec is not None and a.stats()["trained"] is True
    # 30 documents, far below train_min_tokens: compressed anyway, with the given codec.
    b = latix.Index.create(tmp_path / "b", DIM, compression=comp, codec=codec)
    assert b.codec_bytes() == codec  # present before any document
    live = dict(zip([f"b{i}" for i in range(30)], data.docs(30), strict=True))
    b.add(list(live), list(live.values()))
    b.commit()
    st = b.stats()
    assert st["trained"] is True and st["n_centroids"] == 32 and st["code_bytes_per_token"] == 8
    hit = tot = 0
    for _ in range(20):
        q = data.mat(8, 0.8)
        _, ids = b.search(q, k=5, nprobe=32)  # every list: the codec's error only
        want = set(exact_top(q, live, 5))
        hit += len(want & set(ids[0]))
        tot += len(want)
    assert hit / tot >= 0.8
    b.verify()
    b.close()
    # Reopened: the same codec, still compressed.
    r = latix.Index.open(tmp_path / "b")
    assert r.codec_bytes() == codec and r.stats()["trained"] is True
    r.close()
    a.close()


def test_bad_codecs_fail_before_anything_is_written(tmp_path: Path) -> None:
    data = Data(5)
    comp = cfg()
    a = latix.Index.create(tmp_path / "a", DIM, compression=comp)
    a.add([f"a{i}" for i in range(200)], data.docs(200))
    a.commit()
    codec = a.codec_bytes()
    assert codec is not None
    untrained = latix.Index.create(tmp_path / "u", DIM, compression=comp)
    plain = latix.Index.create(tmp_path / "p", DIM)
    assert untrained.codec_bytes() is None and plain.codec_bytes() is None
    flipped = bytearray(codec)
    flipped[len(codec) // 2] ^= 0x10
    cases: list[tuple[dict[str, object], type[Exception], str]] = [
        (
            dict(dim=DIM * 2, compression=cfg(bytes_per_token=8)),
            latix.InvalidArgumentError,
            "dimension",
        ),
        (dict(compression=cfg(bytes_per_token=4)), latix.InvalidArgumentError, "code bytes"),
        (dict(compression=cfg(n_centroids=64)), latix.InvalidArgumentError, "centroids"),
        (dict(compression=None), latix.InvalidArgumentError, "compressed index only"),
        (dict(codec=bytes(flipped)), latix.CorruptedIndexError, "checksum"),
        (dict(codec=codec[:-9]), latix.CorruptedIndexError, "codec"),
        (dict(codec=b"not a codec"), latix.CorruptedIndexError, "codec"),
        (dict(codec=untrained), latix.InvalidArgumentError, "no trained codec"),
        (dict(codec=plain), latix.InvalidArgumentError, "no trained codec"),
        (dict(codec=tmp_path / "missing"), latix.NotFoundError, "does not exist"),
        (dict(codec=3), latix.InvalidArgumentError, "codec must be"),
    ]
    for j, (kw, exc, msg) in enumerate(cases):
        args: dict[str, object] = dict(dim=DIM, compression=comp, codec=codec)
        args.update(kw)
        path = tmp_path / f"bad{j}"
        with pytest.raises(exc, match=msg):
            latix.Index.create(path, **args)  # type: ignore[arg-type]
        assert not path.exists() or not any(path.iterdir()), kw
        # The directory is usable afterwards.
        latix.Index.create(path, DIM, compression=comp, codec=codec).close()
    for ix in (a, untrained, plain):
        ix.close()


def test_train_codec_bad_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    docs = clustered(rng, 40, 32)
    with pytest.raises(latix.InvalidArgumentError):
        latix.train_codec(cfg(bytes_per_token=4), [])
    with pytest.raises(latix.InvalidArgumentError, match="one dim"):
        latix.train_codec(cfg(bytes_per_token=4), [docs[0], clustered(rng, 1, 16)[0]])
    with pytest.raises(latix.InvalidArgumentError, match="at least"):
        latix.train_codec(cfg(bytes_per_token=4, n_centroids=4), docs[:3])
    bad = [d.copy() for d in docs]
    bad[0][0, 0] = np.nan
    with pytest.raises(latix.InvalidArgumentError):
        latix.train_codec(cfg(bytes_per_token=4, n_centroids=4, train_sample_tokens=10**6), bad)
    with pytest.raises(latix.InvalidArgumentError):
        latix.train_codec(cfg(bytes_per_token=17), docs)  # 34 subspaces of 32 dimensions
    with pytest.raises(latix.InvalidArgumentError):
        latix.train_codec("auto", docs)  # type: ignore[arg-type]


def test_collection_created_with_another_collections_codec(tmp_path: Path) -> None:
    data = Data(9)
    comp = cfg()
    one = latix.Collection.create(tmp_path / "one", model=None, dim=DIM, compression=comp)
    docs = data.docs(200)
    one.add([latix.Record(f"r{i}", f"text {i}") for i in range(200)], vectors=docs)
    codec = one.index.codec_bytes()
    assert codec is not None
    two = latix.Collection.create(
        tmp_path / "two", model=None, dim=DIM, compression=comp, codec=one
    )
    live = dict(zip([f"s{i}" for i in range(20)], data.docs(20), strict=True))
    two.add([latix.Record(i, "t") for i in live], vectors=list(live.values()))
    assert two.index.codec_bytes() == codec and two.index.stats()["trained"] is True
    q = data.mat(8, 0.8)
    hits = two.search(query_vectors=q, k=5, nprobe=32)
    assert len(hits) == 5 and {h.id for h in hits} <= set(live)
    # A codec that does not fit leaves no collection behind; the path can be created again.
    with pytest.raises(latix.InvalidArgumentError, match="code bytes"):
        latix.Collection.create(
            tmp_path / "bad", model=None, dim=DIM, compression=cfg(bytes_per_token=4), codec=codec
        )
    assert not latix.Collection.exists(tmp_path / "bad")
    with pytest.raises(latix.InvalidArgumentError, match="compressed"):
        latix.Collection.create(
            tmp_path / "bad", model=None, dim=DIM, compression=None, codec=codec
        )
    latix.Collection.create(
        tmp_path / "bad", model=None, dim=DIM, compression=comp, codec=codec
    ).close()
    one.close()
    two.close()


def test_crafted_codec_with_out_of_range_parameters_is_refused(tmp_path: Path) -> None:
    # Finite but absurd parameters behind a valid checksum: before, 3e38 codewords passed and
    # every search of the index returned nothing (all scores -inf); 1e30 ones scored all 0.
    rng = np.random.default_rng(2)
    dim, comp = 16, cfg(bytes_per_token=4, n_centroids=8)
    docs = clustered(rng, 120, dim)
    codec = latix.train_codec(comp, docs)
    assert reseal(codec) == codec  # the helper seals as latix does
    g = int.from_bytes(codec[20:24], "little")  # header: magic, version, dim, K, G, M, ksub, eta
    top = 36 + (g + 1) * 4
    books = top + g * dim * 4 + 8 * dim * 2
    for at, value in [(books, 3e38), (books + 40, -1e30), (top + 4, 1e30), (books, 2.1e9)]:
        b = bytearray(codec)
        b[at : at + 4] = np.float32(value).tobytes()
        path = tmp_path / f"x{at}-{value}"
        with pytest.raises(latix.CorruptedIndexError, match="beyond the range"):
            latix.Index.create(path, dim, compression=comp, codec=reseal(b))
        assert not path.exists() or not any(path.iterdir())
    # Within the range: accepted, and the index searches.
    b = bytearray(codec)
    b[books : books + 4] = np.float32(1.9e9).tobytes()
    ix = filled(tmp_path / "ok", dim, comp, docs, codec=reseal(b))
    scores, _ = ix.search(docs[0], k=3)
    assert np.isfinite(scores).all()
    ix.close()


def test_codec_path_that_is_not_a_regular_file_fails_at_once(tmp_path: Path) -> None:
    # Before: a FIFO named as the codec blocked Index.create forever (read_bytes waits for a
    # writer); a directory and a missing file already failed clearly.
    import os

    fifo = tmp_path / "codec.fifo"
    os.mkfifo(fifo)
    comp = cfg(bytes_per_token=4, n_centroids=8)
    for bad, exc in [
        (fifo, latix.LatixIOError),
        (tmp_path, latix.LatixIOError),
        (tmp_path / "missing", latix.NotFoundError),
    ]:
        with pytest.raises(exc, match="codec file"):
            latix.Index.create(tmp_path / "ix", DIM, compression=comp, codec=bad)
    codec = latix.train_codec(comp, clustered(np.random.default_rng(4), 60, DIM))
    (tmp_path / "codec").write_bytes(codec)
    latix.Index.create(tmp_path / "ix", DIM, compression=comp, codec=tmp_path / "codec").close()


def test_train_codec_refuses_bad_argument_types() -> None:
    # Before: TypeError (not an InvalidArgumentError) for these two.
    docs = clustered(np.random.default_rng(6), 40, DIM)
    comp = cfg(bytes_per_token=4, n_centroids=8)
    with pytest.raises(latix.InvalidArgumentError, match="n_threads"):
        latix.train_codec(comp, docs, n_threads="2")  # type: ignore[arg-type]
    with pytest.raises(latix.InvalidArgumentError, match="documents"):
        latix.train_codec(comp, None)  # type: ignore[arg-type]
