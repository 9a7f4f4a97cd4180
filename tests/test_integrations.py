"""The LangChain and LlamaIndex retrievers, against the real langchain-core and llama-index-core
packages from PyPI (part of the test extra: never skipped, never mocked).

References: exact MaxSim in numpy over the test's own encodings (test_serve.ref_search) and the
pure-Python filter reference of test_filters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import latix
import numpy as np
import pytest
from helpers import rand_meta, rand_text, ref_eval, ref_search
from latix.collection import Collection


@pytest.fixture(scope="module")
def data(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Collection, latix.Encoder, dict[str, dict[str, Any]]]]:
    enc = latix.Encoder.default()
    rng = np.random.default_rng(21)
    col = Collection.create(tmp_path_factory.mktemp("int") / "c", encoder=enc, compression=None)
    recs = {
        f"r{i}": {"id": f"r{i}", "text": rand_text(rng), "metadata": rand_meta(rng)}
        for i in range(40)
    }
    col.add(list(recs.values()))
    yield col, enc, recs
    col.close()


WHERES: list[dict[str, Any] | None] = [
    None,
    {"s": "en"},
    {"n": {"$gte": 2012}},
    {"tags": {"$in": ["a", "b"]}},
]


def test_langchain_retriever(data: Any) -> None:
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from latix.integrations.langchain import LatixRetriever

    col, enc, recs = data
    r = LatixRetriever(collection=col, k=5)
    assert isinstance(r, BaseRetriever)
    rng = np.random.default_rng(2)
    for where in WHERES:
        q = rand_text(rng, 1, 5)
        ret = LatixRetriever(collection=col, k=5, where=where)
        docs = ret.invoke(q)
        ref = ref_search(enc, q, recs, 5, where)
        assert all(isinstance(d, Document) for d in docs)
        assert len(docs) == len(ref)
        np.testing.assert_allclose(
            [d.metadata["score"] for d in docs], [s for _, s in ref], atol=2e-3
        )
        for d in docs:
            assert d.page_content == recs[d.id]["text"]
            meta = {k: v for k, v in d.metadata.items() if k != "score"}
            assert meta == recs[d.id]["metadata"]
            if where is not None:
                assert ref_eval(where, recs[d.id]["metadata"])
        # Per-call filter pass-through overrides the retriever's, and k too.
        docs2 = r.invoke(q, where=where, k=3)
        assert [d.id for d in docs2] == [d.id for d in docs[:3]]
        adocs = asyncio.run(ret.ainvoke(q))
        assert [d.id for d in adocs] == [d.id for d in docs]
    kw = LatixRetriever(collection=col, k=4, mode="keyword").invoke("glucose")
    assert kw and all("glucose" in d.page_content.split() for d in kw)
    with pytest.raises(latix.FilterError):
        r.invoke("glucose", where={"nope": 1})


def test_llama_index_retriever(data: Any) -> None:
    from latix.integrations.llama_index import LatixRetriever, filters_to_where
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore
    from llama_index.core.vector_stores.types import (
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
    )

    col, enc, recs = data
    rng = np.random.default_rng(3)
    li = [
        None,
        MetadataFilters(filters=[MetadataFilter(key="s", value="en")]),
        MetadataFilters(
            filters=[
                MetadataFilter(key="n", value=2010, operator=FilterOperator.GT),
                MetadataFilter(key="tags", value="a", operator=FilterOperator.CONTAINS),
            ],
            condition=FilterCondition.OR,
        ),
        MetadataFilters(
            filters=[
                MetadataFilter(key="s", value=["fr", "de"], operator=FilterOperator.IN),
                MetadataFilters(
                    filters=[MetadataFilter(key="n", value=2020, operator=FilterOperator.LTE)]
                ),
            ]
        ),
        MetadataFilters(
            filters=[MetadataFilter(key="tags", value=["a"], operator=FilterOperator.ANY)],
            condition=FilterCondition.NOT,
        ),
    ]
    # The translation, checked by the reference evaluator against LlamaIndex's meaning
    # written out by hand for each case.
    meaning = [
        None,
        lambda m: m.get("s") == "en",
        lambda m: ("n" in m and m["n"] > 2010) or "a" in m.get("tags", []),
        lambda m: m.get("s") in ("fr", "de") and "n" in m and m["n"] <= 2020,
        lambda m: "a" not in m.get("tags", []),
    ]
    for f, mean in zip(li, meaning, strict=True):
        where = None if f is None else filters_to_where(f)
        if where is not None:
            for r in recs.values():
                assert ref_eval(where, r["metadata"]) == mean(r["metadata"])  # type: ignore[misc]
        q = rand_text(rng, 1, 5)
        ret = LatixRetriever(col, k=6, filters=f)
        assert isinstance(ret, BaseRetriever)
        nodes = ret.retrieve(q)
        ref = ref_search(enc, q, recs, 6, where)
        assert all(isinstance(n, NodeWithScore) for n in nodes)
        assert len(nodes) == len(ref)
        np.testing.assert_allclose([n.score for n in nodes], [s for _, s in ref], atol=2e-3)
        for n in nodes:
            assert n.node.get_content() == recs[n.node.node_id]["text"]
            assert n.node.metadata == recs[n.node.node_id]["metadata"]
        anodes = asyncio.run(ret.aretrieve(q))
        assert [n.node.node_id for n in anodes] == [n.node.node_id for n in nodes]
    # where and filters combine by AND.
    both = LatixRetriever(
        col,
        k=40,
        where={"n": {"$lt": 2015}},
        filters=MetadataFilters(filters=[MetadataFilter(key="s", value="en")]),
    ).retrieve("glucose")
    assert all(
        recs[n.node.node_id]["metadata"].get("s") == "en"
        and recs[n.node.node_id]["metadata"]["n"] < 2015
        for n in both
    )
    with pytest.raises(latix.InvalidArgumentError, match="text_match"):
        filters_to_where(
            MetadataFilters(
                filters=[MetadataFilter(key="s", value="e", operator=FilterOperator.TEXT_MATCH)]
            )
        )


def test_missing_adapter_extras_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    from latix._optional import MissingDependencyError

    for extra, pkg, mod in [
        ("langchain", "langchain_core", "latix.integrations.langchain"),
        ("llama-index", "llama_index.core", "latix.integrations.llama_index"),
    ]:
        monkeypatch.setitem(sys.modules, pkg, None)
        monkeypatch.delitem(sys.modules, mod, raising=False)
        with pytest.raises(MissingDependencyError, match=rf"pip install 'latix\[{extra}\]'"):
            importlib.import_module(mod)
        monkeypatch.undo()
        monkeypatch.delitem(sys.modules, mod, raising=False)
