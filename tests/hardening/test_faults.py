"""Resource faults: a full disk (a small tmpfs, or RLIMIT_FSIZE in a child process) during
add/commit/compact gives a clear LatixIOError and leaves the last committed state intact and
writable; a read-only file system can be searched.

Mounting needs root (CAP_SYS_ADMIN); those tests skip cleanly when mounting is not permitted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import latix
import numpy as np
import pytest

DIM = 32


def _mount(target: Path, opts: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True
    )
    return r.returncode == 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (skips if mounting is not permitted)."""
    mnt = tmp_path / "mnt"
    if not _mount(mnt, "size=2m"):
        pytest.skip("needs permission to mount a tmpfs (root; CI has it)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _docs(seed: int, n: int, tokens: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"s{seed}-{i}": rng.standard_normal((tokens, DIM)).astype(np.float32) for i in range(n)}


def _assert_state(path: Path, docs: dict[str, np.ndarray]) -> None:
    with latix.Index.open(path) as ix:
        assert sorted(ix.ids()) == sorted(docs)
        for i, v in docs.items():
            assert np.array_equal(ix.get(i), v)
        ix.verify()


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_full_during_commit(small_fs: Path) -> None:
    path = small_fs / "ix"
    base = _docs(1, 20)
    with latix.Index.create(path, dim=DIM, dtype="float32") as ix:
        ix.add(list(base), list(base.values()))
        ix.commit()
    batch = _docs(2, 12)  # ~61 KiB of vectors + tables + manifest
    expected = dict(base)
    outcomes: dict[str, int] = {}
    # Leave less and less room, so the failure moves from the segment tail to the manifest to
    # CURRENT; at every point: a clear error, the last committed state intact, writes work.
    for leave in range(96 * 1024, -1, -4096):
        filler = small_fs / "filler"
        filler.unlink(missing_ok=True)
        with open(filler, "wb") as f:
            room = _free(small_fs) - leave
            if room > 0:
                f.write(b"\0" * room)
        batch = {f"{k}-{leave}": v for k, v in _docs(2, 12).items()}
        with latix.Index.open(path, "w") as ix:
            try:
                ix.add(list(batch), list(batch.values()))
                ix.commit()
                expected.update(batch)
                outcomes["committed"] = outcomes.get("committed", 0) + 1
            except latix.LatixIOError as e:
                assert "No space left" in str(e) or "os error 28" in str(e), e
                outcomes["enospc"] = outcomes.get("enospc", 0) + 1
            # Whatever happened, this handle stays usable for reads and sees a committed state.
            assert sorted(ix.ids()) == sorted(expected)
        _assert_state(path, expected)
    filler.unlink()
    print(outcomes)
    assert outcomes.get("enospc", 0) >= 5 and outcomes.get("committed", 0) >= 1, outcomes
    # After space is freed the index accepts writes and compaction.
    with latix.Index.open(path, "w") as ix:
        more = _docs(3, 5)
        ix.add(list(more), list(more.values()))
        ix.commit()
        expected.update(more)
        ix.compact()
    _assert_state(path, expected)
    # No temp files were left behind by the failed commits.
    assert not [f for f in os.listdir(path) if f.startswith("tmp-")]


def test_disk_full_during_compaction(small_fs: Path) -> None:
    path = small_fs / "ix"
    docs = _docs(4, 60, tokens=100)  # ~770 KiB: compaction needs that much again
    with latix.Index.create(path, dim=DIM, dtype="float32") as ix:
        ids = list(docs)
        for i in range(0, 60, 20):
            ix.add(ids[i : i + 20], [docs[j] for j in ids[i : i + 20]])
            ix.commit()
        ix.delete(ids[:2])
        ix.commit()
        for j in ids[:2]:
            del docs[j]
        (small_fs / "filler").write_bytes(b"\0" * (_free(small_fs) - 300 * 1024))
        with pytest.raises(latix.LatixIOError):
            ix.compact()
        assert sorted(ix.ids()) == sorted(docs)
    _assert_state(path, docs)


def test_file_size_limit_in_child(tmp_path: Path) -> None:
    # Works without mount permission: RLIMIT_FSIZE makes writes past the limit fail with EFBIG
    # (SIGXFSZ ignored), like a full disk, in a child process.
    path = tmp_path / "ix"
    base = _docs(5, 10)
    with latix.Index.create(path, dim=DIM, dtype="float32") as ix:
        ix.add(list(base), list(base.values()))
        ix.commit()
    np.save(tmp_path / "batch.npy", np.stack(list(_docs(6, 40).values())))
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        import numpy as np
        import latix
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        batch = np.load({str(tmp_path / "batch.npy")!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        ix = latix.Index.open({str(path)!r}, "w")
        try:
            ix.add([f"b{{i}}" for i in range(len(batch))], list(batch))
            ix.commit()
        except latix.LatixIOError as e:
            print("LatixIOError", e)
            sys.exit(3)
        sys.exit(0)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert "too large" in r.stdout.lower(), r.stdout
    _assert_state(path, base)
    with latix.Index.open(path, "w") as ix:  # the crashed-out writer left nothing in the way
        ix.add(["after"], [np.ones((2, DIM), np.float32)])
        ix.commit()
        assert len(ix) == 11


def test_read_only_filesystem(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    if not _mount(mnt, "size=8m"):
        pytest.skip("needs permission to mount a tmpfs (root; CI has it)")
    try:
        path = mnt / "ix"
        docs = _docs(7, 30)
        with latix.Index.create(path, dim=DIM, dtype="float16") as ix:
            ix.add(list(docs), list(docs.values()))
            ix.commit()
            q = np.random.default_rng(0).standard_normal((4, DIM)).astype(np.float32)
            want = ix.search(q, k=5)
        r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("needs permission to remount a tmpfs read-only (root; CI has it)")
        with latix.Index.open(path) as ix:
            got = ix.search(q, k=5)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
            assert len(ix) == 30 and "s7-3" in ix
            np.testing.assert_array_equal(ix.get("s7-3"), docs["s7-3"].astype(np.float16))
            ix.verify()
            # Writing is refused with a clear error, and the handle keeps working for reads.
            with pytest.raises(latix.LatixIOError, match="Read-only|os error 30"):
                ix.add(["x"], [np.ones((1, DIM), np.float32)])
            assert len(ix) == 30
        with pytest.raises(latix.LatixIOError, match="Read-only|os error 30"):
            latix.Index.open(path, "w")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True
    )


def test_merge_failure_after_a_published_commit_is_not_the_commits_error(tmp_path: Path) -> None:
    # RLIMIT_FSIZE (soft, SIGXFSZ ignored) lets each commit's segment (~42 KB) be written but not
    # the merge of three (~126 KB) the policy runs right after the third commit: that commit is
    # published, so it must return normally (a retried commit would write it twice), the failure
    # shows as a MergeWarning and in stats(), the index is consistent, and once room is back
    # the next commit (even an empty one) merges.
    path = tmp_path / "ix"
    docs = {k: v for s in (11, 12, 13) for k, v in _docs(s, 8).items()}
    np.save(tmp_path / "docs.npy", np.stack(list(docs.values())))
    r = _run_child(
        f"""
        import resource, signal, warnings
        import numpy as np
        import latix
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        vecs = np.load({str(tmp_path / "docs.npy")!r})
        ids = {list(docs)!r}
        ix = latix.Index.create({str(path)!r}, dim={DIM}, dtype="float32")
        ix.set_merge_policy(3, floor_tokens=1_000_000)
        for c in range(2):
            ix.add(ids[8 * c : 8 * c + 8], list(vecs[8 * c : 8 * c + 8]))
            ix.commit()
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
        ix.add(ids[16:], list(vecs[16:]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ix.commit()  # published; the merge after it fails
            ix.commit()  # nothing staged: the policy runs, and fails, again
        assert [w.category for w in caught] == [latix.MergeWarning] * 2, caught
        assert "too large" in str(caught[0].message).lower(), caught[0].message
        st = ix.stats()
        assert st["merge_failures"] == 2 and "too large" in st["merge_error"].lower(), st
        assert len(ix.segments()) == 3 and sorted(ix.ids()) == sorted(ids)
        ix.verify()
        with latix.Index.open({str(path)!r}) as other:
            assert sorted(other.ids()) == sorted(ids)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ix.commit()  # room again: the retried merge succeeds
        st = ix.stats()
        assert len(ix.segments()) == 1, ix.segments()
        assert st["merge_failures"] == 2 and st["merge_error"] is None, st
        ix.close()
        print("OK")
        """
    )
    assert r.returncode == 0 and "OK" in r.stdout, (r.returncode, r.stdout, r.stderr)
    _assert_state(path, docs)
    assert not [f for f in os.listdir(path) if f.startswith("tmp-")]


def test_merge_failure_is_resolved_by_compact(tmp_path: Path) -> None:
    # The same failure; compact() (with room again) merges everything and clears the error.
    path = tmp_path / "ix"
    docs = {k: v for s in (14, 15, 16) for k, v in _docs(s, 8).items()}
    np.save(tmp_path / "docs.npy", np.stack(list(docs.values())))
    r = _run_child(
        f"""
        import resource, signal, warnings
        import numpy as np
        import latix
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        vecs = np.load({str(tmp_path / "docs.npy")!r})
        ids = {list(docs)!r}
        ix = latix.Index.create({str(path)!r}, dim={DIM}, dtype="float32")
        ix.set_merge_policy(3, floor_tokens=1_000_000)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
        ix.add(ids[:8], list(vecs[:8])); ix.commit()
        ix.add(ids[8:16], list(vecs[8:16])); ix.commit()
        ix.add(ids[16:], list(vecs[16:]))
        ix.delete(ids[:1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ix.commit()
        assert [w.category for w in caught] == [latix.MergeWarning], caught
        assert ix.stats()["merge_failures"] == 1 and ids[0] not in ix
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        ix.compact()
        st = ix.stats()
        assert st["n_segments"] == 1 and st["merge_error"] is None, st
        ix.close()
        print("OK")
        """
    )
    assert r.returncode == 0 and "OK" in r.stdout, (r.returncode, r.stdout, r.stderr)
    del docs[next(iter(docs))]
    _assert_state(path, docs)


def test_collection_write_whose_merge_fails_is_not_reported_failed(tmp_path: Path) -> None:
    # The collection sees the index publish its rows and finishes them: the write must return
    # (before, it raised LatixIOError for a write that landed, inviting a duplicate retry).
    path = tmp_path / "col"
    r = _run_child(
        f"""
        import resource, signal, warnings
        import numpy as np
        import latix
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        rng = np.random.default_rng(3)
        col = latix.Collection.create({str(path)!r}, model=None, dim={DIM}, compression=None)
        vec = lambda: [rng.standard_normal((2000, {DIM})).astype(np.float32)]
        for i in range(9):  # 9 one-segment commits (~130 KB each); the default policy merges 10
            col.add([(f"r{{i}}", "text")], vectors=[vec()])
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (700_000, hard))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rep = col.add([("r9", "text")], vectors=[vec()])
        assert rep.n_added == 1, rep
        assert [w.category for w in caught] == [latix.MergeWarning], caught
        assert "r9" in col and len(col) == 10
        st = col.stats()
        assert st["index"]["merge_failures"] == 1 and st["index"]["n_segments"] == 10, st
        col.verify()
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        col.add([("r10", "text")], vectors=[vec()])
        st = col.stats()
        assert st["index"]["merge_error"] is None and st["index"]["n_segments"] < 10, st
        col.verify()
        col.close()
        print("OK")
        """
    )
    assert r.returncode == 0 and "OK" in r.stdout, (r.returncode, r.stdout, r.stderr)
    with latix.Collection.open(path) as col:
        assert len(col) == 11
        col.verify()
