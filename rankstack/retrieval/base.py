"""The retriever interface: batch-first, returns one :class:`Ranking` per query, never mutates its input."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from rankstack.errors import BadInput
from rankstack.records import Query, Ranking

__all__ = ["Retriever", "validate_queries", "MAX_QUERY_CHARS"]

MAX_QUERY_CHARS = 4096


def validate_queries(queries: Sequence[Query], k: int, *, max_chars: int = MAX_QUERY_CHARS) -> None:
    """Reject k <= 0, empty or whitespace-only queries and queries longer than ``max_chars`` characters."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise BadInput(f"k must be a positive integer, got {k!r}")
    seen = set()
    for q in queries:
        if not isinstance(q, Query):
            raise BadInput(f"expected Query records, got {type(q).__name__}; wrap text as Query(qid=..., text=...)")
        if not q.text or not q.text.strip():
            raise BadInput(f"query {q.qid!r} is empty; give it some text")
        if len(q.text) > max_chars:
            raise BadInput(f"query {q.qid!r} has {len(q.text)} characters; the limit is {max_chars}. Shorten it")
        if q.qid in seen:
            raise BadInput(f"duplicate qid {q.qid!r} in one batch; qids must be unique")
        seen.add(q.qid)


class Retriever(ABC):
    """First-stage retrieval. Implementations override :meth:`retrieve`; :meth:`search` is the one-query form."""

    name: str = "retriever"

    @abstractmethod
    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        """Top-``k`` candidates for each query, in the order of ``queries``."""

    def search(self, query: Query | str, k: int = 10) -> Ranking:
        q = query if isinstance(query, Query) else Query(qid="q", text=query)
        return self.retrieve([q], k)[0]

    def __call__(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        return self.retrieve(queries, k)

    def __rshift__(self, stage):
        """``retriever >> stage`` builds a :class:`rankstack.pipeline.Pipeline`."""
        from rankstack.pipeline import Pipeline

        return Pipeline(self, [stage])

    def __mod__(self, k: int):
        """``retriever % k`` keeps the top ``k``."""
        from rankstack.pipeline import Cutoff, Pipeline

        return Pipeline(self, [Cutoff(k)])
