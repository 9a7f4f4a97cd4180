"""Corruption-detection harness: damage index files at random, require detection or exactness.

A seeded base index is built (several segments, tombstones, a segment spanning several vector
checksum blocks). Each case takes *every file of the index directory* as a candidate (so files
that future index kinds add are covered without changes here), picks one, and either truncates it
at a random offset or XORs one byte at a random offset with a random non-zero mask. Offsets are
drawn uniformly over the file, in its first 256 bytes (headers), or in its last 1 KiB (tables,
trailing checksums). Some cases instead replace the file by another *valid* file of the same kind
from the same index (another segment, another segment's inverted lists: checksums intact, so only
the binding of each file to the manifest can tell), or by a FIFO (which must be reported, never
block an open). The damaged copy is then used through the public API: open, len, ids,
search (all documents and a subset), get of every document, contains, verify, and a writer
commit + compaction. Every call must either raise ``CorruptedIndexError`` (or
``UnsupportedVersionError``) whose message names the damaged file, or return exactly what the
undamaged index returns. A case where nothing detects the damage passes only if every result was
exact (counted as ``undetected_exact``; with the current formats every byte is covered, so this
should stay 0).

``--compressed`` runs the same cases on a compressed index (:func:`compression`: codec trained at
the first commit, vectors dropped), so the damaged files include the compression configuration,
the codec, every segment's ``ivf`` side file and vector-free segments; :func:`compressed_search`
(registered in :data:`EXTRA_OPS`) reads the codes. There ``get`` returns decoded approximations and
search scores are estimates, so the reference is the undamaged index itself.

Cases run in long-lived worker processes; a worker that dies (segfault, abort) or exceeds the
per-case timeout (hang) fails that case and is replaced, so a crash never takes the harness down.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from harness.common import Stats, as_stored, child_env, doc_vectors, maxsim_np, python

DIM = 16
K = 10
EXTRA_OPS: list[Any] = []
"""Extra checks ``f(index, reference) -> int`` (documents checked) run on each damaged copy;
the compressed kind appends :func:`compressed_search` here so that its side files are read."""
NPROBE = 4


def compression() -> Any:
    """Configuration of ``--compressed`` bases: 16 centroids, 4 code bytes per 16-d token, no
    vectors kept, codec trained at the first commit (60 documents, about 1,200 tokens)."""
    import latix

    return latix.Compression(
        bytes_per_token=4,
        n_centroids=16,
        keep_vectors=False,
        train_min_tokens=300,
        train_sample_tokens=4000,
        seed=1,
    )


def compressed_search(ix: Any, ref: dict[str, Any]) -> int:
    """Candidate generation from codes with a non-default ``nprobe`` plus the index figures:
    must equal the undamaged index's."""
    scores, hits = ix.search(ref["queries"], k=K, nprobe=NPROBE)
    assert np.array_equal(scores, ref["np_scores"]) and np.array_equal(hits, ref["np_hits"]), (
        "compressed search (nprobe) results differ"
    )
    st = ix.stats()
    assert st["n_centroids"] == 16 and st["trained"], st
    return len(ref["ids"])


# ------------------------------------------------------------------------------------- base


def build_base(path: Path, seed: int, dtype: str, compressed: bool = False) -> None:
    """Builds the pristine index: 3 segments, tombstones in two, one segment > 2 blocks (f32)."""
    import latix

    rng = np.random.default_rng(seed)
    comp = compression() if compressed else None
    with latix.Index.create(path, dim=DIM, dtype=dtype, compression=comp) as ix:
        ids = [f"a{i}" for i in range(60)]
        ix.add(ids, [doc_vectors(seed, i, 0, DIM) for i in ids])
        ix.commit()
        ids = [f"b{i}" for i in range(40)]
        ix.add(ids, [doc_vectors(seed, i, 0, DIM) for i in ids])
        ix.delete([f"a{i}" for i in rng.choice(60, 8, replace=False)])
        ix.commit()
        # Big documents: the vectors section spans several 1 MiB checksum blocks.
        ids = [f"c{i}" for i in range(24)]
        ix.add(ids, [doc_vectors(seed, i, 0, DIM, max_tokens=3000) for i in ids])
        ix.delete([f"b{i}" for i in range(0, 40, 7)])
        ix.commit()


def reference(path: Path, seed: int) -> dict[str, Any]:
    """What the undamaged index returns for the checks (cross-checked with numpy when exact)."""
    import latix

    rng = np.random.default_rng([seed, 99])
    queries = [rng.standard_normal((5, DIM)).astype(np.float32) for _ in range(3)]
    with latix.Index.open(path) as ix:
        ids = ix.ids()
        ix.verify()
        compressed = ix.compression is not None
        vecs = {i: ix.get(i) for i in ids}
        scores, hits = ix.search(queries, k=K)
        extra: dict[str, Any] = {}
        if compressed:
            assert ix.stats()["trained"], "the compressed base must be trained"
            extra["np_scores"], extra["np_hits"] = ix.search(queries, k=K, nprobe=NPROBE)
        else:
            for i, v in vecs.items():
                want = doc_vectors(seed, i, 0, DIM, 3000 if i[0] == "c" else 40)
                assert np.array_equal(v, as_stored(want, ix.dtype))
            for q, s, h in zip(queries, scores, hits, strict=True):
                own = {i: maxsim_np(q, v) for i, v in vecs.items()}
                ref = sorted(own.values(), reverse=True)[:K]
                assert np.allclose(s, ref, rtol=1e-4, atol=1e-3)
                assert np.allclose(s, [own[i] for i in h], rtol=1e-4, atol=1e-3)
        subset = ids[::3]
        ss, sh = ix.search(queries, k=K, subset=subset)
        return {
            **extra,
            "compressed": compressed,
            "ids": ids,
            "vecs": vecs,
            "queries": queries,
            "scores": scores,
            "hits": hits,
            "subset": subset,
            "sub_scores": ss,
            "sub_hits": sh,
        }


# ------------------------------------------------------------------------------------- worker


def damage(path: Path, case: dict[str, Any], base: Path) -> None:
    """Applies one case's damage to ``path`` (a private copy; ``base`` holds the originals)."""
    if case["op"] == "truncate":
        os.truncate(path, case["at"])
    elif case["op"] == "replace":
        shutil.copyfile(base / case["src"], path)
    elif case["op"] == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:
        with open(path, "r+b") as f:
            f.seek(case["at"])
            b = f.read(1)[0]
            f.seek(case["at"])
            f.write(bytes([b ^ case["mask"]]))


def run_case(
    base: Path, scratch: Path, ref: dict[str, Any], case: dict[str, Any]
) -> dict[str, Any]:
    """Runs one case on a damaged copy of ``base``; returns the outcome record."""
    import latix

    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    for f in base.iterdir():
        if f.name == case["file"] or f.stat().st_size < 1 << 16:
            # Small files (LOCK among them: flock is per inode) are copied.
            shutil.copyfile(f, scratch / f.name)
        else:
            os.link(f, scratch / f.name)  # latix never writes a file in place: links are safe
    damage(scratch / case["file"], case, base)
    fname = case["file"]
    detected: list[str] = []
    docs = 0

    def step(what: str, fn: Any) -> Any:
        """Runs one API call: an allowed error is recorded, anything else propagates."""
        try:
            return fn()
        except (latix.CorruptedIndexError, latix.UnsupportedVersionError) as e:
            if fname not in str(e):
                raise AssertionError(f"{what}: error does not name {fname}: {e}") from e
            detected.append(what)
            return None

    ix = step("open", lambda: latix.Index.open(scratch))
    if ix is None:
        return {"outcome": "detected_open", "docs": 0}
    try:
        n = step("len", lambda: len(ix))
        assert n is None or n == len(ref["ids"]), f"len {n} != {len(ref['ids'])}"
        ids = step("ids", ix.ids)
        assert ids is None or ids == ref["ids"], "ids differ"
        r = step("search", lambda: ix.search(ref["queries"], k=K))
        if r is not None:
            assert np.array_equal(r[0], ref["scores"]) and np.array_equal(r[1], ref["hits"]), (
                "search results differ"
            )
            docs += len(ref["ids"])
        r = step("search_subset", lambda: ix.search(ref["queries"], k=K, subset=ref["subset"]))
        if r is not None:
            assert np.array_equal(r[0], ref["sub_scores"]) and np.array_equal(
                r[1], ref["sub_hits"]
            ), "subset search results differ"
        for i in ref["ids"]:
            v = step("get", lambda i=i: ix.get(i))
            if v is not None:
                assert v.dtype == ref["vecs"][i].dtype and np.array_equal(v, ref["vecs"][i]), (
                    f"get({i!r}) differs"
                )
                docs += 1
            c = step("contains", lambda i=i: i in ix)
            assert c is None or c is True, f"{i!r} not contained"
        assert step("contains_missing", lambda: "zz-not-there" in ix) in (None, False)
        for extra in EXTRA_OPS:
            docs += step("extra", lambda extra=extra: extra(ix, ref)) or 0
        step("verify", ix.verify)
    finally:
        ix.close()

    # A writer on the damaged copy: committing must work or fail cleanly, compaction must not
    # launder damaged vectors into a fresh, valid-looking segment.
    def write() -> None:
        with latix.Index.open(scratch, "w") as w:
            w.add(["new-doc"], [np.ones((2, DIM), np.float32)])
            w.commit()
            w.compact()
            got = w.ids()
            assert got == ref["ids"] + ["new-doc"], "ids after compaction differ"
            for i in ref["ids"]:
                if ref["compressed"]:
                    # Re-encoding decoded approximations may change a few codes: shapes only.
                    assert w.get(i).shape == ref["vecs"][i].shape, f"{i} differs after compaction"
                else:
                    assert np.array_equal(w.get(i), ref["vecs"][i]), f"{i} differs after compaction"
            w.verify()

    step("write", write)
    if detected:
        return {"outcome": "detected_use", "docs": docs, "by": detected[0]}
    return {"outcome": "undetected_exact", "docs": docs}


def worker(base: str, seed: int) -> None:
    """Reads cases (JSON lines) on stdin, writes one outcome line per case on stdout."""
    basep = Path(base)
    ref = reference(basep, seed)
    if ref["compressed"] and compressed_search not in EXTRA_OPS:
        EXTRA_OPS.append(compressed_search)
    # Inside the parent's temporary directory (beside the base): the parent kills its workers,
    # so this process's `finally` does not run, and the parent's removal of its directory is
    # what cleans up.
    scratch = Path(tempfile.mkdtemp(prefix="w-", dir=basep.parent)) / "ix"
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    try:
        for line in sys.stdin:
            case = json.loads(line)
            try:
                res = run_case(basep, scratch, ref, case)
            except Exception as e:  # noqa: BLE001 - reported to the parent as a failure
                tb = traceback.format_exc(limit=3)
                res = {"outcome": "fail", "msg": f"{type(e).__name__}: {e} | {tb}"}
            sys.stdout.write(json.dumps(res) + "\n")
            sys.stdout.flush()
    finally:
        shutil.rmtree(scratch.parent, ignore_errors=True)


# ------------------------------------------------------------------------------------- parent


def kind(name: str) -> str:
    """The kind of an index file, for replacing it by a valid file of the same kind."""
    if ".ivf-" in name:
        return "ivf"
    if name.startswith("seg-") and name.endswith(".lxs"):
        return "segment"
    return name


def make_cases(base: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` seeded cases over every non-empty file of ``base``."""
    rng = np.random.default_rng([seed, 7])
    files = sorted(f.name for f in base.iterdir() if f.is_file() and f.stat().st_size > 0)
    sizes = {f: (base / f).stat().st_size for f in files}
    cases = []
    for c in range(n):
        f = files[c % len(files)] if c < len(files) else files[int(rng.integers(len(files)))]
        size = sizes[f]
        siblings = [g for g in files if g != f and kind(g) == kind(f) and kind(f) != f]
        u = rng.random()
        if siblings and u < 0.1:
            src = siblings[int(rng.integers(len(siblings)))]
            cases.append({"id": c, "file": f, "op": "replace", "src": src})
            continue
        if u > 0.97:
            cases.append({"id": c, "file": f, "op": "fifo"})
            continue
        region = int(rng.integers(3))
        if region == 0:
            at = int(rng.integers(size))
        elif region == 1:
            at = int(rng.integers(min(size, 256)))
        else:
            at = size - 1 - int(rng.integers(min(size, 1024)))
        if rng.random() < 0.3:
            cases.append({"id": c, "file": f, "op": "truncate", "at": at})
        else:
            mask = int(rng.integers(1, 256))
            cases.append({"id": c, "file": f, "op": "flip", "at": at, "mask": mask})
    return cases


class Worker:
    """One worker process with a line-based protocol and a per-case timeout."""

    def __init__(self, base: Path, seed: int) -> None:
        cmd = [python(), "-m", "harness.corruption", "--worker", str(base), "--seed", str(seed)]
        self.p = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            text=True,
        )
        self.sel = selectors.DefaultSelector()
        assert self.p.stdout is not None
        self.sel.register(self.p.stdout, selectors.EVENT_READ)
        line = self.readline(300)
        if line != "READY":
            raise RuntimeError(f"worker did not start: {line!r} {self.stop()}")

    def readline(self, timeout: float) -> str | None:
        """The next line, or None on timeout or worker death."""
        assert self.p.stdout is not None
        if not self.sel.select(timeout):
            return None
        line = self.p.stdout.readline()
        return line.strip() if line else None

    def submit(self, case: dict[str, Any]) -> None:
        """Sends one case."""
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps(case) + "\n")
        self.p.stdin.flush()

    def stop(self) -> str:
        """Kills the worker; returns the tail of its stderr."""
        self.p.kill()
        self.p.wait()
        assert self.p.stderr is not None
        err = self.p.stderr.read()[-1500:]
        for s in (self.p.stdin, self.p.stdout, self.p.stderr):
            if s is not None:
                s.close()
        self.sel.close()
        return err


def run(
    cases: int,
    seed: int,
    dtype: str = "float16",
    workers: int = 2,
    timeout: float = 120.0,
    verbose: bool = False,
    compressed: bool = False,
) -> Stats:
    """Runs ``cases`` damage cases (on a compressed base if ``compressed``); returns the
    figures."""
    stats = Stats(f"corruption-{dtype}" + ("-compressed" if compressed else ""))
    tmp = Path(tempfile.mkdtemp(prefix="latix-corrupt-"))
    base = tmp / "base"
    try:
        build_base(base, seed, dtype, compressed)
        all_cases = make_cases(base, cases, seed)
        stats.details["files"] = len({c["file"] for c in all_cases})
        pending = list(reversed(all_cases))
        pool: list[tuple[Worker, dict[str, Any] | None]] = []
        for _ in range(min(workers, len(all_cases))):
            pool.append((Worker(base, seed), None))
        while pending or any(c is not None for _, c in pool):
            for i, (w, c) in enumerate(pool):
                if c is None and pending:
                    c = pending.pop()
                    w.submit(c)
                    pool[i] = (w, c)
            for i, (w, c) in enumerate(pool):
                if c is None:
                    continue
                line = w.readline(timeout)
                stats.trials += 1
                stats.count(f"{c['op']}")
                desc = f"seed={seed} dtype={dtype} case={json.dumps(c)}"
                if line is None:
                    rc = w.p.poll()
                    err = w.stop()
                    why = "hang (timeout)" if rc is None else f"worker died with status {rc}"
                    stats.fail(f"{desc}: {why}: {err}")
                    pool[i] = (Worker(base, seed), None)
                    continue
                res = json.loads(line)
                stats.count(res["outcome"])
                stats.docs_checked += res.get("docs", 0)
                if res["outcome"] == "fail":
                    stats.fail(f"{desc}: {res['msg']}")
                elif verbose:
                    print(c, res)
                pool[i] = (w, None)
        for w, _ in pool:
            w.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m harness.corruption --cases 1000 --seed 1``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dtype", default="float16", choices=["float32", "float16"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--compressed", action="store_true", help="damage a compressed index")
    ap.add_argument("--worker", metavar="BASE", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker, a.seed)
        return 0
    t = time.monotonic()
    stats = run(a.cases, a.seed, a.dtype, a.workers, verbose=a.verbose, compressed=a.compressed)
    print(stats.summary() + f" seconds={time.monotonic() - t:.1f}")
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
