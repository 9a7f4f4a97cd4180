"""A LlamaIndex retriever over a :class:`latix.Collection` (``pip install 'latix[llama-index]'``).

Example::

    import latix
    from latix.integrations.llama_index import LatixRetriever
    from llama_index.core.vector_stores import MetadataFilters, MetadataFilter

    col = latix.Collection.open("papers.latix")
    retriever = LatixRetriever(col, k=5, where={"year": {"$gte": 2020}})
    nodes = retriever.retrieve("diabetes drug")               # list[NodeWithScore]
    # LlamaIndex's own filters are translated to latix's filter language:
    f = MetadataFilters(filters=[MetadataFilter(key="lang", value="en")])
    nodes = LatixRetriever(col, filters=f).retrieve("diabetes drug")
    nodes = await retriever.aretrieve("diabetes drug")       # Collection.asearch, in a thread

Each hit becomes a ``NodeWithScore`` holding a ``TextNode`` (``id_`` = the record id, ``text``,
``metadata``) and the hit's score.
"""

from __future__ import annotations

from typing import Any, Literal

from latix._optional import require

require("llama-index", "llama_index.core")

from llama_index.core.retrievers import BaseRetriever  # noqa: E402
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from latix.collection import Collection, Hit  # noqa: E402
from latix.errors import InvalidArgumentError  # noqa: E402

__all__ = ["LatixRetriever", "filters_to_where"]

_OPS = {
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
    FilterOperator.ANY: "$in",  # list[str] field: contains any
    FilterOperator.ALL: "$all",  # list[str] field: contains all
}


def filters_to_where(filters: MetadataFilters) -> dict[str, Any]:
    """Translates LlamaIndex ``MetadataFilters`` into a latix filter (:mod:`latix.filters`).

    ``==`` and ``contains`` become equality (on a ``list[str]`` field: "contains"), ``!=``,
    ``>``, ``>=``, ``<``, ``<=``, ``in``, ``nin``, ``any`` and ``all`` their latix operators;
    conditions ``and`` / ``or`` / ``not`` (of the conjunction) become ``$and`` / ``$or`` /
    ``$not``; nested ``MetadataFilters`` nest.

    Raises:
        InvalidArgumentError: an operator latix has no equivalent for (``text_match``,
            ``text_match_insensitive``, ``is_empty``) or an empty filter list.
    """
    parts: list[dict[str, Any]] = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            parts.append(filters_to_where(f))
            continue
        assert isinstance(f, MetadataFilter)
        if f.operator in (FilterOperator.EQ, FilterOperator.CONTAINS):
            parts.append({f.key: {"$eq": f.value}})
        elif f.operator in _OPS:
            parts.append({f.key: {_OPS[f.operator]: f.value}})
        else:
            raise InvalidArgumentError(
                f"LlamaIndex filter operator {f.operator.value!r} has no latix equivalent; "
                "use ==, !=, >, >=, <, <=, in, nin, any, all or contains"
            )
    if not parts:
        raise InvalidArgumentError("MetadataFilters with no filters")
    cond = filters.condition or FilterCondition.AND
    if cond == FilterCondition.OR:
        return {"$or": parts}
    both = parts[0] if len(parts) == 1 else {"$and": parts}
    return {"$not": both} if cond == FilterCondition.NOT else both


class LatixRetriever(BaseRetriever):
    """Retrieves LlamaIndex nodes from a latix collection.

    Args:
        collection: the open :class:`latix.Collection` (with a model, for text queries).
        k: nodes per query.
        where: a latix metadata filter applied to every query.
        filters: LlamaIndex ``MetadataFilters`` (translated by :func:`filters_to_where`;
            combined with ``where`` by AND when both are given).
        mode: ``"late"``, ``"keyword"`` or ``"hybrid"``.
        **kwargs: passed to LlamaIndex's ``BaseRetriever`` (``callback_manager``, ``verbose``).
    """

    def __init__(
        self,
        collection: Collection,
        *,
        k: int = 4,
        where: dict[str, Any] | None = None,
        filters: MetadataFilters | None = None,
        mode: Literal["late", "keyword", "hybrid"] = "late",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.collection = collection
        self.k = k
        self.mode = mode
        conds = [w for w in (where, filters_to_where(filters) if filters else None) if w]
        self.where: dict[str, Any] | None = (
            None if not conds else conds[0] if len(conds) == 1 else {"$and": conds}
        )

    def _nodes(self, hits: list[Hit]) -> list[NodeWithScore]:
        return [
            NodeWithScore(
                node=TextNode(id_=h.id, text=h.text, metadata=dict(h.metadata)), score=h.score
            )
            for h in hits
        ]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.collection.search(
            query_bundle.query_str, self.k, where=self.where, mode=self.mode
        )
        return self._nodes(hits)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = await self.collection.asearch(
            query_bundle.query_str, self.k, where=self.where, mode=self.mode
        )
        return self._nodes(hits)  # type: ignore[arg-type]
