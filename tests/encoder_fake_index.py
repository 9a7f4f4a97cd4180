"""Pure-numpy stand-in for latix.Index, for the encoder/CLI tests until the Rust index lands.

Same API subset the CLI uses: create/open/add/commit/search/__contains__/__len__/close. Committed
state is one .npz written to a temporary file and renamed, like the real store's atomic commits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from latix.errors import AlreadyExistsError, NotFoundError


class FakeIndex:
    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim = path, dim
        self.ids: list[str] = []
        self.vecs: list[np.ndarray] = []
        self.pending: list[tuple[str, np.ndarray]] = []
        f = path / "data.npz"
        if f.exists():
            z = np.load(f, allow_pickle=False)
            self.ids = json.loads(str(z["ids"]))
            off = z["offsets"]
            self.vecs = [z["vectors"][off[i] : off[i + 1]] for i in range(len(self.ids))]

    @classmethod
    def create(cls, path: str, dim: int, dtype: str = "float16") -> FakeIndex:
        p = Path(path)
        if p.exists():
            raise AlreadyExistsError(str(p))
        p.mkdir(parents=True)
        (p / "meta.json").write_text(json.dumps({"dim": dim}))
        return cls(p, dim)

    @classmethod
    def open(cls, path: str) -> FakeIndex:
        p = Path(path)
        if not (p / "meta.json").exists():
            raise NotFoundError(str(p))
        return cls(p, json.loads((p / "meta.json").read_text())["dim"])

    def add(self, ids, embeddings, replace=False) -> None:
        for i, e in zip(ids, embeddings, strict=False):
            assert e.shape[1] == self.dim and e.dtype == np.float32
            self.pending.append((i, e.astype(np.float16)))

    def commit(self) -> None:
        for i, e in self.pending:
            self.ids.append(i)
            self.vecs.append(e)
        self.pending = []
        off = np.cumsum([0] + [len(v) for v in self.vecs])
        tmp = self.path / "data.tmp.npz"
        np.savez(
            tmp,
            ids=json.dumps(self.ids),
            offsets=off,
            vectors=np.concatenate(self.vecs) if self.vecs else np.zeros((0, self.dim)),
        )
        os.replace(tmp, self.path / "data.npz")

    def search(self, q, k=10, n_threads=None, subset=None):
        s = np.array(
            [(q @ v.astype(np.float32).T).max(axis=1).sum() for v in self.vecs], dtype=np.float32
        )
        order = np.argsort(-s, kind="stable")[:k]
        scores = np.full((1, k), -np.inf, np.float32)
        ids = np.full((1, k), "", dtype=object)
        scores[0, : len(order)] = s[order]
        ids[0, : len(order)] = [self.ids[j] for j in order]
        return scores, ids

    def __contains__(self, i: str) -> bool:
        return i in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def close(self) -> None:
        self.pending = []
