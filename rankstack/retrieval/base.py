"""The retriever interface: batch-first, returns one :class:`Ranking` per query, never mutates its input.

Retrievers compose into pipelines (:mod:`rankstack.pipeline`): ``bm25 + dense`` fuses them (RRF),
``>> reranker`` reranks, ``% k`` keeps the top ``k``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import numpy as np

from rankstack.errors import BadInput
from rankstack.records import Document, Query, Ranking

__all__ = ["Retriever", "validate_queries", "rankings_from_topk"]


def validate_queries(queries: Sequence[Query], k: int) -> None:
    """Reject k <= 0, empty or whitespace-only queries and repeated qids.

    There is no length limit here: BEIR's argument-retrieval queries are whole documents. Limits that protect a
    server belong to the service's configuration (``limits.max_query_chars``).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise BadInput(f"k must be a positive integer, got {k!r}")
    seen = set()
    for q in queries:
        if not isinstance(q, Query):
            raise BadInput(f"expected Query records, got {type(q).__name__}; wrap text as Query(qid=..., text=...)")
        if not q.text or not q.text.strip():
            raise BadInput(f"query {q.qid!r} is empty; give it some text")
        if q.qid in seen:
            raise BadInput(f"duplicate qid {q.qid!r} in one batch; qids must be unique")
        seen.add(q.qid)


def rankings_from_topk(queries: Sequence[Query], topk, docids: Sequence[str | None]) -> list[Ranking]:
    """One ranking per query from a :class:`~rankstack.records.TopK` of rows (``docids[row]``), dropping ``-1``
    and ``-inf`` pads; equal scores in trec_eval's order (docid descending), sorted only where there are ties."""
    from rankstack.records import Candidate

    out = []
    for q, ids, scores in zip(queries, topk.ids, topk.scores):
        ok = (ids >= 0) & np.isfinite(scores)
        if not ok.all():
            ids, scores = ids[ok], scores[ok]
        names = [docids[i] for i in ids.tolist()]
        values = scores.tolist()
        if len(values) > 1 and (scores[:-1] == scores[1:]).any():
            pairs = sorted(zip(names, values), key=lambda p: (p[1], p[0]), reverse=True)
            names, values = [p[0] for p in pairs], [p[1] for p in pairs]
        out.append(Ranking(query=q, candidates=Candidate.many(names, values)))
    return out


class Retriever(ABC):
    """First-stage retrieval. Implementations override :meth:`retrieve`; :meth:`search` is the one-query form.

    ``kind`` names the family in stage timings (``retrieve_bm25``); ``documents`` (optional) is where a pipeline
    built from this retriever finds candidate texts for rerankers and filters.
    """

    name: str = "retriever"
    kind: str = "retriever"
    documents: Mapping[str, Document] | None = None

    @abstractmethod
    def retrieve(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        """Top-``k`` candidates for each query, in the order of ``queries``."""

    def search(self, query: Query | str, k: int = 10) -> Ranking:
        q = query if isinstance(query, Query) else Query(qid="q", text=query)
        return self.retrieve([q], k)[0]

    def __call__(self, queries: Sequence[Query], k: int = 1000) -> list[Ranking]:
        return self.retrieve(queries, k)

    def pipeline(self):
        """This retriever as a one-stage :class:`rankstack.pipeline.Pipeline`."""
        from rankstack.pipeline.core import Pipeline, Retrieve

        return Pipeline(Retrieve(self))

    def __rshift__(self, stage):
        """``retriever >> stage``: a pipeline that retrieves, then applies ``stage`` (a reranker, a stage)."""
        return self.pipeline() >> stage

    def __mod__(self, k: int):
        """``retriever % k`` retrieves ``k`` candidates (inside a fusion: fetches ``k`` per query)."""
        return self.pipeline() % k

    def __add__(self, other):
        """``a + b``: reciprocal rank fusion of the two (``rrf(a, b)``; ``a + b + c`` fuses all three at once)."""
        return self.pipeline() + other
