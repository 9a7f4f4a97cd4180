"""latix.Compression's growth settings through the Python facade: ``expected_tokens`` (K chosen
for the expected size from the first training) and ``retrain_growth`` (the codec retrained, with
K of the current size, inside the commit that makes the index that many times larger than its K
suits); validation, persistence across reopen, the CLI flags, and search results against a numpy
brute force after every retraining; a retraining that fails (RLIMIT_FSIZE in a child process) is
recorded once, does not block the merge policy and is not retried at every commit. The core's own
tests are rust/core/tests/growth_retrain.rs;
the crash test is tests/hardening/test_index_crash.py.
"""

from __future__ import annotations

from pathlib import Path

import latix
import numpy as np
import pytest

DIM = 16


def docs(rng: np.random.Generator, n: int, centres: np.ndarray) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        c = centres[rng.integers(len(centres), size=int(rng.integers(6, 20)))]
        x = c + 0.5 * rng.standard_normal(c.shape) / np.sqrt(DIM)
        out.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return out


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    return float((q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum())


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"retrain_growth": 1}, "retrain_growth"),
        ({"retrain_growth": -2}, "retrain_growth"),
        ({"retrain_growth": 2**16 + 1}, "retrain_growth"),
        ({"retrain_growth": 4.0}, "retrain_growth"),
        ({"retrain_growth": 4, "n_centroids": 64}, "n_centroids"),
        ({"expected_tokens": 0}, "expected_tokens"),
        ({"expected_tokens": 2**48 + 1}, "expected_tokens"),
        ({"expected_tokens": "1M"}, "expected_tokens"),
        ({"expected_tokens": True}, "expected_tokens"),
    ],
)
def test_bad_growth_settings_are_clear_errors(kw: dict[str, object], field: str) -> None:
    with pytest.raises(latix.InvalidArgumentError, match=field):
        latix.Compression(**kw)  # type: ignore[arg-type]


def test_settings_persist_and_old_defaults_stay(tmp_path: Path) -> None:
    c = latix.Compression(expected_tokens=5_000_000, retrain_growth=4, train_min_tokens=512)
    with latix.Index.create(tmp_path / "a", dim=DIM, compression=c):
        pass
    with latix.Index.open(tmp_path / "a") as ix:
        assert ix.compression == c
    # Without them the configuration is the one an older latix wrote (version 2 for codes).
    with latix.Index.create(tmp_path / "b", dim=DIM, compression=latix.Compression()) as ix:
        assert ix.compression == latix.Compression()
        assert ix.compression.expected_tokens is None and ix.compression.retrain_growth == 0
    cfg = next((tmp_path / "b").glob("idx-compression-*")).read_bytes()
    assert cfg[:8] == b"LTXCOMPR" and int.from_bytes(cfg[8:12], "little") == 2
    cfg = next((tmp_path / "a").glob("idx-compression-*")).read_bytes()
    assert int.from_bytes(cfg[8:12], "little") == 4


def test_expected_tokens_sets_k_at_the_first_training(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((24, DIM))
    d = docs(rng, 500, centres)
    ks = []
    for expected in (None, 4_000_000):
        c = latix.Compression(train_min_tokens=2048, pool_factor=1, expected_tokens=expected)
        with latix.Index.create(tmp_path / f"ix{expected}", dim=DIM, compression=c) as ix:
            ix.add([str(i) for i in range(len(d))], d)
            ix.commit()
            st = ix.stats()
            assert st["trained"]
            ks.append(int(st["n_centroids"]))  # type: ignore[call-overload]
    n_tokens = sum(len(x) for x in d)
    # 3 * sqrt(n) rounded to a power of two, against K for 4M tokens capped by a quarter of
    # the sample (every vector here).
    assert ks[0] == 1 << round(np.log2(3 * np.sqrt(n_tokens)))
    assert ks[1] > ks[0] and ks[1] <= n_tokens // 4, ks


def test_growth_retrains_inside_commit_and_search_stays_right(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((24, DIM))
    c = latix.Compression(
        bytes_per_token=4, train_min_tokens=600, pool_factor=1, keep_vectors=True, retrain_growth=2
    )
    live: dict[str, np.ndarray] = {}
    ks: list[int] = []
    with latix.Index.create(tmp_path / "ix", dim=DIM, compression=c) as ix:
        for r in range(9):
            new = docs(rng, 40 * 2**r // 2 + 40, centres)
            ids = [f"r{r}-{i}" for i in range(len(new))]
            ix.add(ids, new)
            live.update(zip(ids, new, strict=True))
            ix.commit()
            st = ix.stats()
            assert st["merge_failures"] == 0, st["merge_error"]
            if not st["trained"]:
                continue
            k = int(st["n_centroids"])  # type: ignore[call-overload]
            if not ks or ks[-1] != k:
                ks.append(k)
            # Every list probed and everything re-ranked from the kept vectors: exact.
            q = rng.standard_normal((5, DIM)).astype(np.float32)
            scores, hits = ix.search(q, k=5, nprobe=k, rerank=True)
            ref = sorted(((maxsim(q, v), i) for i, v in live.items()), reverse=True)[:5]
            np.testing.assert_allclose(scores[0], [s for s, _ in ref], rtol=1e-3, atol=1e-3)
    # K doubled at least three times, each time at least doubling (geometric retraining).
    assert len(ks) >= 3 and all(b >= 2 * a for a, b in zip(ks, ks[1:], strict=False)), ks


def test_cli_index_takes_the_growth_flags() -> None:
    from latix.cli import _parser

    a = _parser().parse_args(
        ["index", "c.jsonl", "--out", "o", "--expected-tokens", "1000000", "--retrain-growth", "4"]
    )
    assert a.expected_tokens == 1_000_000 and a.retrain_growth == 4
    a = _parser().parse_args(["index", "c.jsonl", "--out", "o"])
    assert a.expected_tokens is None and a.retrain_growth == 0


def test_a_failing_retraining_is_recorded_once_and_merges_still_run(tmp_path: Path) -> None:
    # Fault injection as tests/hardening/test_faults.py does it: RLIMIT_FSIZE in a child
    # process makes every write past the limit fail with EFBIG. The limit lets a commit's
    # segment and the policy's small merges through but not the retraining's rewrite of the
    # whole index, so the retraining fails at the commit that makes it due.
    import json
    import subprocess
    import sys
    import textwrap

    rng = np.random.default_rng(9)
    centres = rng.standard_normal((24, DIM))
    path = tmp_path / "ix"
    c = latix.Compression(
        bytes_per_token=4, train_min_tokens=600, pool_factor=1, keep_vectors=True, retrain_growth=4
    )
    with latix.Index.create(path, dim=DIM, compression=c) as ix:
        first = docs(rng, 80, centres)
        ix.add([f"a{i}" for i in range(len(first))], first)
        ix.commit()
        st = ix.stats()
        assert st["trained"]
        k0 = int(st["n_centroids"])  # type: ignore[call-overload]
    batches = [docs(rng, 50, centres) for _ in range(16)]
    np.save(tmp_path / "b.npy", np.concatenate([np.concatenate(b) for b in batches]))
    lens = [[len(d) for d in b] for b in batches]
    (tmp_path / "lens.json").write_text(json.dumps(lens))
    code = textwrap.dedent(
        f"""
        import json, resource, signal, warnings
        import numpy as np
        import latix
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        flat = np.load({str(tmp_path / "b.npy")!r})
        lens = json.load(open({str(tmp_path / "lens.json")!r}))
        resource.setrlimit(resource.RLIMIT_FSIZE, (120_000, 120_000))
        out = []
        with latix.Index.open({str(path)!r}, "w") as ix:
            ix.set_merge_policy(segments_per_tier=2, floor_tokens=256, max_merge_tokens=1500)
            at = 0
            for b, ls in enumerate(lens):
                mats = []
                for n in ls:
                    mats.append(flat[at:at + n])
                    at += n
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always")
                    ix.add([f"b{{b}}-{{i}}" for i in range(len(mats))], mats)
                    ix.commit()
                st = ix.stats()
                out.append(dict(
                    failures=st["merge_failures"], error=st["merge_error"],
                    warned=any(issubclass(x.category, latix.MergeWarning) for x in w),
                    k=st["n_centroids"], segments=st["n_segments"], docs=st["n_docs"],
                ))
        print(json.dumps(out))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # Every commit was published; K never changed (the retraining failed).
    assert [o["docs"] for o in out] == [80 + 50 * (i + 1) for i in range(len(out))]
    assert all(o["k"] == k0 for o in out), out
    failed = [i for i, o in enumerate(out) if o["warned"]]
    # The retraining failed exactly once (recorded, warned), and was not retried at every later
    # commit: the index did not grow by another retrain_growth factor in the child.
    assert len(failed) == 1, out
    f = failed[0]
    assert f < len(out) - 3, out
    assert out[f]["failures"] == 1 and "too large" in str(out[f]["error"]).lower(), out[f]
    assert all(o["failures"] == 1 for o in out[f:]), out
    # The merge policy (pairs merged) still ran at and after that commit: without its merges
    # commit i would leave i + 2 segments.
    assert all(o["segments"] <= i // 2 + 2 for i, o in enumerate(out)), out
    # Without the limit a compaction succeeds, and the next commit retrains.
    with latix.Index.open(path, "w") as ix:
        ix.compact()
        more = docs(rng, 10, centres)
        ix.add([f"c{i}" for i in range(len(more))], more)
        ix.commit()
        st = ix.stats()
        assert st["merge_failures"] == 0 and int(st["n_centroids"]) > k0, st  # type: ignore
        ix.verify()
