"""A LangChain retriever over a :class:`latix.Collection` (``pip install 'latix[langchain]'``).

Example::

    import latix
    from latix.integrations.langchain import LatixRetriever

    col = latix.Collection.open("papers.latix")
    retriever = LatixRetriever(collection=col, k=5, where={"year": {"$gte": 2020}})
    docs = retriever.invoke("diabetes drug")                  # list[langchain Document]
    docs = retriever.invoke("diabetes drug", where={"lang": "en"}, k=3)   # per call
    docs = await retriever.ainvoke("diabetes drug")           # Collection.asearch, in a thread

Each hit becomes a ``Document`` with ``id`` = the record id, ``page_content`` = its text and
``metadata`` = the record's metadata plus its score under ``score_key``.
"""

from __future__ import annotations

from typing import Any, Literal

from latix._optional import require

require("langchain", "langchain_core")

from langchain_core.callbacks import (  # noqa: E402
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from pydantic import ConfigDict  # noqa: E402

from latix.collection import Collection, Hit  # noqa: E402

__all__ = ["LatixRetriever"]


class LatixRetriever(BaseRetriever):
    """Retrieves LangChain documents from a latix collection.

    Attributes:
        collection: the open :class:`latix.Collection` (with a model, for text queries).
        k: documents per query (overridable per call: ``invoke(q, k=3)``).
        where: metadata filter of :mod:`latix.filters` applied to every query (a per-call
            ``where=`` replaces it).
        mode: ``"late"``, ``"keyword"`` or ``"hybrid"`` (per call: ``mode=``).
        score_key: metadata key the hit's score is stored under (None: not stored).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    collection: Collection
    k: int = 4
    where: dict[str, Any] | None = None
    mode: Literal["late", "keyword", "hybrid"] = "late"
    score_key: str | None = "score"

    def _options(
        self, k: int | None, where: dict[str, Any] | None, mode: str | None
    ) -> dict[str, Any]:
        return {
            "k": self.k if k is None else k,
            "where": self.where if where is None else where,
            "mode": self.mode if mode is None else mode,
        }

    def _document(self, h: Hit) -> Document:
        meta = dict(h.metadata)
        if self.score_key is not None:
            meta[self.score_key] = h.score
        return Document(id=h.id, page_content=h.text, metadata=meta)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        where: dict[str, Any] | None = None,
        mode: str | None = None,
    ) -> list[Document]:
        hits = self.collection.search(query, **self._options(k, where, mode))
        return [self._document(h) for h in hits]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        where: dict[str, Any] | None = None,
        mode: str | None = None,
    ) -> list[Document]:
        hits = await self.collection.asearch(query, **self._options(k, where, mode))
        return [self._document(h) for h in hits]  # type: ignore[arg-type]
